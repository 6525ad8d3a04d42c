//! `items`: a paginated JSON REST API with an `updated_at` cursor
//! (`GET /v1/items?limit=N&updated_since=TS[&page_token=T]` →
//! `{"items": [...], "next_page_token": …}`), the shape of most SaaS APIs.
//!
//! One stream, `items`, keyed by `id`, incremental on `updated_at`: the
//! state is the largest `updated_at` committed; each page is emitted and
//! committed with its cursor, so a crash loses at most one page of work and
//! never skips one. The operator may override the stream's JSON Schema in
//! the config (`schema`), e.g. to accept a type the upstream started sending.

use serde::{Deserialize, Serialize};
use sluice_sdk::{http, json, raw, Connector, Error, Reader, Spec, Stream, SyncMode, Value};

/// Page size asked for when the config names none.
pub const DEFAULT_PAGE_SIZE: u32 = 1_000;
pub const STREAM: &str = "items";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    base_url: String,
    #[serde(default = "default_page_size")]
    page_size: u32,
    /// Replaces the built-in record schema.
    #[serde(default)]
    schema: Option<Value>,
}

fn default_page_size() -> u32 {
    DEFAULT_PAGE_SIZE
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    updated_at: Option<String>,
}

fn default_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id", "updated_at", "name"],
        "properties": {
            "id": {"type": "integer"},
            "updated_at": {"type": "string"},
            "name": {"type": "string"},
            "email": {"type": "string"},
            "amount": {"type": "number"},
            "active": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "version": {"type": "integer"},
            "note": {"type": "string"}
        }
    })
}

fn stream(config: Option<&Config>) -> Stream {
    let schema = config
        .and_then(|c| c.schema.clone())
        .unwrap_or_else(default_schema);
    Stream::new(STREAM, schema)
        .primary_key(["id"])
        .incremental("updated_at")
}

struct Items;

impl Connector for Items {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("items", env!("CARGO_PKG_VERSION"))
            .description("A paginated JSON REST API with an updated_at cursor")
            .config_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["base_url"],
                "properties": {
                    "base_url": {"type": "string"},
                    "page_size": {"type": "integer", "minimum": 1, "maximum": 5000},
                    "schema": {"type": "object"}
                }
            }))
            .stream(stream(None))
    }

    fn check(config: &Config) -> Result<(), Error> {
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(Error::Config("`base_url` must be an http(s) URL".into()));
        }
        if config.page_size == 0 {
            return Err(Error::Config("`page_size` must be at least 1".into()));
        }
        Ok(())
    }

    fn discover(config: &Config) -> Result<Vec<Stream>, Error> {
        Self::check(config)?;
        Ok(vec![stream(Some(config))])
    }

    fn read(config: &Config, reader: &mut Reader) -> Result<(), Error> {
        Self::check(config)?;
        let Some(mode) = reader.selected(STREAM) else {
            return Ok(());
        };
        let mut state: State = match mode {
            SyncMode::Incremental => reader.state(STREAM)?.unwrap_or_default(),
            SyncMode::FullRefresh => State::default(),
        };
        reader.set_batch_size(config.page_size as usize);
        let base = format!(
            "{}/v1/items?limit={}",
            config.base_url.trim_end_matches('/'),
            config.page_size
        );
        let since = state.updated_at.clone();
        let mut token: Option<String> = None;
        loop {
            let mut url = base.clone();
            if let Some(s) = &since {
                url.push_str(&format!("&updated_since={}", http::encode(s)));
            }
            if let Some(t) = &token {
                url.push_str(&format!("&page_token={}", http::encode(t)));
            }
            let body = http::Request::get(&url).send()?.error_for_status()?.body;
            let body = String::from_utf8(body)
                .map_err(|_| Error::Upstream("the page is not UTF-8".into()))?;
            // Records stay the upstream's JSON text (the host parses and
            // validates each anyway): one scan of the page finds them and
            // each one's cursor, decoding nothing else.
            let page = raw::Page::parse(&body, "items", "updated_at").ok_or_else(|| {
                Error::Upstream("the page is not a JSON object with an `items` array".into())
            })?;
            let mut newest: Option<&str> = None;
            for record in &page.records {
                if let Some(u) = record.cursor.as_deref() {
                    if newest.is_none_or(|n| u > n) {
                        newest = Some(u);
                    }
                }
                reader.emit_raw(STREAM, record.text.to_string())?;
            }
            if let Some(u) = newest {
                if state.updated_at.as_deref().is_none_or(|c| u > c) {
                    state.updated_at = Some(u.to_string());
                }
            }
            // The page and the cursor past it become durable together.
            reader.commit(STREAM, &state)?;
            let next =
                match page.field("next_page_token") {
                    None | Some("null") => None,
                    Some(_) => Some(page.string_field("next_page_token").ok_or_else(|| {
                        Error::Upstream("`next_page_token` is not a string".into())
                    })?),
                };
            match next {
                Some(t) if !page.records.is_empty() => token = Some(t.into_owned()),
                _ => break,
            }
        }
        Ok(())
    }
}

sluice_sdk::export_connector!(Items);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            http::encode("2026-01-01T00:00:17Z"),
            "2026-01-01T00%3A00%3A17Z"
        );
        assert_eq!(http::encode("a b+c"), "a%20b%2Bc");
    }
}
