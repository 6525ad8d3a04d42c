//! A test guest for the runtime's limit and isolation tests. Its config
//! picks a behaviour; every behaviour first emits `committed` records of
//! stream `items` and commits them, then emits `uncommitted` more, then
//! misbehaves:
//!
//! - `ok`: returns normally.
//! - `loop`: spins forever (fuel or deadline must stop it).
//! - `grow`: allocates memory without bound (the memory limit must stop it).
//! - `panic`: panics (a trap).
//! - `http`: GETs `url` and fails the run with the host's error, if any.
//! - `error`: returns a connector error.

use serde::Deserialize;
use sluice_sdk::{json, Connector, Error, Reader, Spec, Stream};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    behaviour: String,
    #[serde(default)]
    committed: u64,
    #[serde(default)]
    uncommitted: u64,
    #[serde(default)]
    url: Option<String>,
}

struct Misbehave;

fn item(id: u64) -> sluice_sdk::Value {
    json!({"id": id, "n": id * 2, "label": format!("item-{id}")})
}

impl Connector for Misbehave {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("misbehave", "0.1.0")
            .description("misbehaves on request, for tests")
            .config_schema(json!({"type": "object", "required": ["behaviour"]}))
            .stream(
                Stream::new(
                    "items",
                    json!({"type": "object", "properties": {
                        "id": {"type": "integer"},
                        "n": {"type": "integer"},
                        "label": {"type": "string"}
                    }}),
                )
                .primary_key(["id"])
                .incremental("id"),
            )
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        for id in 0..config.committed {
            reader.emit("items", &item(id))?;
        }
        if config.committed > 0 {
            reader.commit("items", &json!({"last": config.committed}))?;
        }
        for id in config.committed..config.committed + config.uncommitted {
            reader.emit("items", &item(id))?;
        }
        reader.flush()?;
        match config.behaviour.as_str() {
            "ok" => Ok(()),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("misbehave: deliberate panic"),
            "http" => {
                let url = config
                    .url
                    .as_deref()
                    .ok_or_else(|| Error::Config("url required".into()))?;
                sluice_sdk::http::Request::get(url)
                    .send()?
                    .error_for_status()?;
                Ok(())
            }
            "error" => Err(Error::Upstream(
                "misbehave: deliberate connector error".into(),
            )),
            other => Err(Error::Config(format!("unknown behaviour {other:?}"))),
        }
    }
}

sluice_sdk::export_connector!(Misbehave);
