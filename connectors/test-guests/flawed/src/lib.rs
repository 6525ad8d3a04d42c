//! A test guest for the conformance kit (`sluice test-connector`): a small
//! incremental connector (`count` records of stream `items` per run, ids
//! after the saved cursor) with at most one deliberate flaw, picked by its
//! config's `flaw`:
//!
//! - `none`: conforms (the control).
//! - `invalid_record`: one record per run has `label` of the wrong type.
//! - `rewind`: ignores the saved cursor and reads from id 0 every time.
//! - `lenient_check`: `check` accepts a config without the required `count`.
//! - `bad_key`: `discover` offers the stream keyed by a field it does not declare.
//! - `churn`: every run rewrites the rows with different values.
//! - `wrong_error`: `check` rejects a bad config as an upstream error.

use serde::{Deserialize, Serialize};
use sluice_sdk::{json, Connector, Error, Reader, Spec, Stream, SyncMode};

pub const STREAM: &str = "items";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Required by the config schema; optional here so that the
    /// `lenient_check` flaw can let a config without it through.
    count: Option<u64>,
    #[serde(default)]
    flaw: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    id: Option<u64>,
    runs: u64,
}

fn stream(key: &str) -> Stream {
    Stream::new(
        STREAM,
        json!({"type": "object", "required": ["id"], "properties": {
            "id": {"type": "integer"},
            "label": {"type": "string"}
        }}),
    )
    .primary_key([key])
    .incremental("id")
}

struct Flawed;

impl Connector for Flawed {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("flawed", "0.1.0")
            .description("a connector with one deliberate flaw, for tests")
            .config_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["count"],
                "properties": {
                    "count": {"type": "integer", "minimum": 1},
                    "flaw": {"type": "string"}
                }
            }))
            .stream(stream("id"))
    }

    fn check(config: &Config) -> Result<(), Error> {
        match (config.count, config.flaw.as_str()) {
            (_, "lenient_check") => Ok(()),
            (None, "wrong_error") => Err(Error::Upstream("no count".into())),
            (None, _) => Err(Error::Config("`count` is required".into())),
            (Some(_), _) => Ok(()),
        }
    }

    fn discover(config: &Config) -> Result<Vec<Stream>, Error> {
        Ok(vec![stream(if config.flaw == "bad_key" {
            "uuid"
        } else {
            "id"
        })])
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        let Some(mode) = reader.selected(STREAM) else {
            return Ok(());
        };
        let mut state: State = match mode {
            SyncMode::Incremental => reader.state(STREAM)?.unwrap_or_default(),
            SyncMode::FullRefresh => State::default(),
        };
        let count = config
            .count
            .ok_or_else(|| Error::Config("`count` is required".into()))?;
        // Read from the cursor; a first read (or a full refresh) reads 0..count.
        let start = match (state.id, config.flaw.as_str()) {
            (_, "rewind") | (None, _) => 0,
            (Some(last), _) => last,
        };
        let end = if state.id.is_none() { count } else { start + 1 };
        state.runs += 1;
        for id in start..end {
            let label = if config.flaw == "invalid_record" && id == start {
                json!(id)
            } else if config.flaw == "churn" {
                json!(format!("item {id}, run {}", state.runs))
            } else {
                json!(format!("item {id}"))
            };
            reader.emit(STREAM, &json!({"id": id, "label": label}))?;
        }
        state.id = Some(end.max(1) - 1);
        reader.commit(STREAM, &state)?;
        Ok(())
    }
}

sluice_sdk::export_connector!(Flawed);
