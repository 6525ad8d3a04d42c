//! `{{name}}`: a Sluice source connector in Rust.
//!
//! One stream, `records`, keyed by `id` and incremental on `id`. The records
//! are made up locally from the config (`{"count": N}`: ids 1..=N), so the
//! skeleton runs without any network grant; replace `read` with calls to
//! your upstream (`sluice_sdk::http::get_json(url)`, or
//! `Request::get(url).header(..).send()`). The state is `{"id": <last id
//! committed>}`; the next run resumes after it.

use serde::{Deserialize, Serialize};
use sluice_sdk::{json, log, Connector, Error, Reader, Spec, Stream, SyncMode};

pub const STREAM: &str = "records";
/// Records made when the config names no `count`.
pub const DEFAULT_COUNT: u64 = 10;
/// Records committed together with their cursor.
pub const COMMIT_EVERY: u64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_count")]
    count: u64,
}

fn default_count() -> u64 {
    DEFAULT_COUNT
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    id: u64,
}

fn stream() -> Stream {
    Stream::new(
        STREAM,
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "name"],
            "properties": {
                "id": {"type": "integer"},
                "name": {"type": "string"}
            }
        }),
    )
    .primary_key(["id"])
    .incremental("id")
}

struct Source;

impl Connector for Source {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .description("{{name}}: records made from the config (a skeleton)")
            .config_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "count": {"type": "integer", "minimum": 0, "default": DEFAULT_COUNT}
                }
            }))
            .stream(stream())
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        let Some(mode) = reader.selected(STREAM) else {
            return Ok(());
        };
        let after = match mode {
            SyncMode::Incremental => reader.state::<State>(STREAM)?.unwrap_or_default().id,
            SyncMode::FullRefresh => 0,
        };
        log::info(&format!("reading ids {}..={}", after + 1, config.count));
        for id in after + 1..=config.count {
            reader.emit(STREAM, &json!({"id": id, "name": format!("record {id}")}))?;
            if id % COMMIT_EVERY == 0 || id == config.count {
                // The records so far and the cursor past them become durable together.
                reader.commit(STREAM, &State { id })?;
            }
        }
        Ok(())
    }
}

sluice_sdk::export_connector!(Source);
