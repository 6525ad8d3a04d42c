//! `github-issues`: a GitHub repository's issues (pull requests included, as
//! GitHub lists them) through the REST API:
//! `GET /repos/{owner}/{repo}/issues?state=all&sort=updated&direction=asc
//! &per_page=N[&since=TS]`, following the `Link: <…>; rel="next"` header.
//!
//! One stream, `issues`, keyed by `id`, incremental on `updated_at`: the
//! state is the largest `updated_at` committed; each page is emitted and
//! committed with its cursor. GitHub's `since` is inclusive, so the issue at
//! the cursor is read again and upserted in place (idempotent).
//!
//! The same connector exists in Python (`connectors/github-issues-py`) and
//! JavaScript (`connectors/github-issues-js`); all three store identical
//! tables.

use serde::{Deserialize, Serialize};
use sluice_sdk::http::{self, Request};
use sluice_sdk::{json, Connector, Error, Reader, Spec, Stream, SyncMode, Value};

pub const STREAM: &str = "issues";
/// The real API, when the config names no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.github.com";
/// GitHub's largest page, asked for when the config names none.
pub const DEFAULT_PER_PAGE: u32 = 100;
pub const MAX_PER_PAGE: u32 = 100;
/// The REST API version this connector speaks.
pub const API_VERSION: &str = "2022-11-28";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    owner: String,
    repo: String,
    #[serde(default = "default_per_page")]
    per_page: u32,
    /// The name of the host secret holding the token; the host substitutes
    /// it into the header, the connector never sees it.
    #[serde(default)]
    token_secret: Option<String>,
    /// The initial `since` (ISO 8601), before any state exists.
    #[serde(default)]
    start_date: Option<String>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.to_string()
}

fn default_per_page() -> u32 {
    DEFAULT_PER_PAGE
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    updated_at: Option<String>,
}

fn stream() -> Stream {
    Stream::new(
        STREAM,
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "number", "title", "state", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "integer"},
                "number": {"type": "integer"},
                "title": {"type": "string"},
                "state": {"type": "string"},
                "user_login": {"type": ["string", "null"]},
                "labels": {"type": "array", "items": {"type": "string"}},
                "comments": {"type": "integer"},
                "created_at": {"type": "string"},
                "updated_at": {"type": "string"},
                "closed_at": {"type": ["string", "null"]},
                "body": {"type": ["string", "null"]},
                "is_pull_request": {"type": "boolean"},
                "html_url": {"type": "string"}
            }
        }),
    )
    .primary_key(["id"])
    .incremental("updated_at")
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_string())
    })
}

/// The stored record of one GitHub issue.
fn record(issue: &Value) -> Value {
    let labels: Vec<Value> = issue
        .get("labels")
        .and_then(Value::as_array)
        .map(|ls| ls.iter().filter_map(|l| l.get("name").cloned()).collect())
        .unwrap_or_default();
    let field = |k: &str| issue.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "id": field("id"),
        "number": field("number"),
        "title": field("title"),
        "state": field("state"),
        "user_login": issue.get("user").and_then(|u| u.get("login")).cloned().unwrap_or(Value::Null),
        "labels": labels,
        "comments": field("comments"),
        "created_at": field("created_at"),
        "updated_at": field("updated_at"),
        "closed_at": field("closed_at"),
        "body": field("body"),
        "is_pull_request": issue.get("pull_request").is_some(),
        "html_url": field("html_url"),
    })
}

/// The error for a non-2xx answer: GitHub's `message`, else the body text.
fn upstream_error(status: u16, body: &[u8]) -> Error {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let end = body.len().min(sluice_sdk::http::ERROR_BODY_SNIPPET);
            String::from_utf8_lossy(&body[..end]).into_owned()
        });
    Error::Upstream(format!("GitHub answered {status}: {text}"))
}

struct GithubIssues;

impl Connector for GithubIssues {
    type Config = Config;

    fn spec() -> Spec {
        Spec::new("github-issues", env!("CARGO_PKG_VERSION"))
            .description("A GitHub repository's issues and pull requests (REST API)")
            .config_schema(json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["owner", "repo"],
                "properties": {
                    "base_url": {"type": "string", "default": DEFAULT_BASE_URL},
                    "owner": {"type": "string"},
                    "repo": {"type": "string"},
                    "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE},
                    "token_secret": {"type": "string"},
                    "start_date": {"type": "string"}
                }
            }))
            .stream(stream())
    }

    fn check(config: &Config) -> Result<(), Error> {
        if !(config.base_url.starts_with("http://") || config.base_url.starts_with("https://")) {
            return Err(Error::Config("`base_url` must be an http(s) URL".into()));
        }
        if !(1..=MAX_PER_PAGE).contains(&config.per_page) {
            return Err(Error::Config(format!(
                "`per_page` must be 1..={MAX_PER_PAGE}"
            )));
        }
        if config.owner.is_empty() || config.repo.is_empty() {
            return Err(Error::Config("`owner` and `repo` must not be empty".into()));
        }
        Ok(())
    }

    fn discover(config: &Config) -> Result<Vec<Stream>, Error> {
        Self::check(config)?;
        Ok(vec![stream()])
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
        reader.set_batch_size(config.per_page as usize);
        let mut url = format!(
            "{}/repos/{}/{}/issues?state=all&sort=updated&direction=asc&per_page={}",
            config.base_url.trim_end_matches('/'),
            http::encode(&config.owner),
            http::encode(&config.repo),
            config.per_page
        );
        if let Some(since) = state.updated_at.as_ref().or(config.start_date.as_ref()) {
            url.push_str(&format!("&since={}", http::encode(since)));
        }
        loop {
            let mut req = Request::get(&url)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION)
                .header("User-Agent", "sluice-github-issues");
            if let Some(secret) = &config.token_secret {
                req = req.header("Authorization", format!("Bearer {{{{secret:{secret}}}}}"));
            }
            let resp = req.send()?;
            if !(200..300).contains(&resp.status) {
                return Err(upstream_error(resp.status, &resp.body));
            }
            let issues: Vec<Value> = resp.json()?;
            if issues.is_empty() {
                break;
            }
            for issue in &issues {
                let rec = record(issue);
                if let Some(u) = rec["updated_at"].as_str() {
                    if state.updated_at.as_deref().is_none_or(|c| u > c) {
                        state.updated_at = Some(u.to_string());
                    }
                }
                reader.emit(STREAM, &rec)?;
            }
            // The page and the cursor past it become durable together.
            reader.commit(STREAM, &state)?;
            match resp.header("link").and_then(next_link) {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(())
    }
}

sluice_sdk::export_connector!(GithubIssues);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let h = r#"<http://h/r?page=2>; rel="next", <http://h/r?page=5>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("http://h/r?page=2"));
        let h = r#"<http://h/r?page=1>; rel="prev", <http://h/r?page=1>; rel="first""#;
        assert_eq!(next_link(h), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn maps_an_issue() {
        let issue = json!({"id": 7, "number": 1, "title": "t", "state": "open",
            "user": {"login": "octo"}, "labels": [{"name": "bug"}, {"name": "ui"}],
            "comments": 2, "created_at": "a", "updated_at": "b", "closed_at": null,
            "body": null, "html_url": "u", "pull_request": {}, "extra": 1});
        let r = record(&issue);
        assert_eq!(r.as_object().unwrap().len(), 13);
        assert_eq!(r["user_login"], "octo");
        assert_eq!(r["labels"], json!(["bug", "ui"]));
        assert_eq!(r["is_pull_request"], true);
        assert_eq!(record(&json!({"user": null}))["user_login"], Value::Null);
    }

    #[test]
    fn quotes_githubs_message() {
        let e = upstream_error(401, br#"{"message":"Bad credentials"}"#);
        assert_eq!(
            e,
            Error::Upstream("GitHub answered 401: Bad credentials".into())
        );
        let e = upstream_error(502, b"bad gateway");
        assert_eq!(
            e,
            Error::Upstream("GitHub answered 502: bad gateway".into())
        );
    }
}
