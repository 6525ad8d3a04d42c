//! [`RunSpec`]: one run, as data. Everything an executor needs to run it
//! anywhere — on this process's threads or, later, on another machine —
//! and nothing that must not travel: secrets are references (`env:VAR`,
//! `file:PATH`) resolved where the run executes, never values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::egress::HostGrant;
use crate::limits::{HttpOverride, LimitsOverride};
use crate::location::DbLocation;
use crate::mode::{ProtocolFormat, WriteMode};
use crate::secrets::{SecretHost, SecretSource, SecretSpec};

/// The component a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentSource {
    /// A component file on the executing machine.
    Path(PathBuf),
    /// A connector of the executing machine's registry, by name.
    Registry(String),
}

/// One run, serialisable (JSON): component, config, destination, access,
/// limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub component: ComponentSource,
    /// The sha256 (hex) the component's bytes must have, if the submitter
    /// pinned it: an executor refuses a different component.
    #[serde(default)]
    pub component_digest: Option<String>,
    /// The connector's config, JSON text.
    pub config: String,
    /// The destination: a SQLite database file or a Postgres URL (which
    /// never holds a password).
    pub destination: DbLocation,
    /// Where the destination's password comes from on the executing
    /// machine (`env:VAR` or `file:PATH`), if not from `PGPASSWORD` or the
    /// libpq passfile there.
    #[serde(default)]
    pub db_password: Option<SecretSource>,
    /// The instance the run belongs to (state, history, tables).
    pub instance: String,
    /// Destination tables chosen by stream.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// Hosts the connector may reach (`--allow-host` forms).
    #[serde(default)]
    pub grants: Vec<HostGrant>,
    /// Secret references (`NAME=env:VAR`, `NAME=file:PATH`).
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// The hosts each secret may be sent to (`NAME=HOST`).
    #[serde(default)]
    pub secret_hosts: Vec<SecretHost>,
    /// Limits over the defaults, checked (with the same bounds as the CLI
    /// and `sluice.toml`) where the run executes.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// The HTTP policy over the defaults.
    #[serde(default)]
    pub http: HttpOverride,
    /// Read every stream in full-refresh mode.
    #[serde(default)]
    pub full_refresh: bool,
    /// The streams to read (empty: all).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Write modes by stream (the others merge).
    #[serde(default)]
    pub modes: BTreeMap<String, WriteMode>,
    /// Speak a protocol on the executing process's stdout instead of
    /// writing tables (the destination is then the local SQLite run log).
    #[serde(default)]
    pub output: Option<ProtocolOutput>,
}

/// A run whose records and state go to stdout as protocol messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolOutput {
    pub format: ProtocolFormat,
    /// Resume from the state in this file (what the target last echoed)
    /// instead of the run log's.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

impl RunSpec {
    /// The spec as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a run spec always serialises")
    }

    /// A spec from JSON text.
    pub fn from_json(text: &str) -> Result<RunSpec, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{ByteSize, Seconds};

    fn spec() -> RunSpec {
        RunSpec {
            component: ComponentSource::Registry("items".into()),
            component_digest: Some("ab".repeat(32)),
            config: r#"{"base_url":"http://127.0.0.1:1"}"#.into(),
            destination: "postgres://sluice@127.0.0.1:5432/app?schema=raw"
                .parse()
                .unwrap(),
            db_password: Some("env:PG_PW".parse().unwrap()),
            instance: "items".into(),
            tables: [("items".to_string(), "t".to_string())].into(),
            grants: vec![
                "127.0.0.1:8080".parse().unwrap(),
                "https://*.example.com".parse().unwrap(),
            ],
            secrets: vec![
                "TOKEN=env:GH_TOKEN".parse().unwrap(),
                "KEY=file:/run/key".parse().unwrap(),
            ],
            secret_hosts: vec!["TOKEN=api.example.com".parse().unwrap()],
            limits: LimitsOverride {
                fuel: Some(7),
                memory: Some(ByteSize(1 << 20)),
                timeout: Some(Seconds(f64::NAN)),
                ..LimitsOverride::default()
            },
            http: HttpOverride {
                retries: Some(2),
                rate_limits: vec!["api.example.com=2.5/4".parse().unwrap()],
                ..HttpOverride::default()
            },
            full_refresh: true,
            streams: vec!["items".into()],
            modes: [("items".to_string(), WriteMode::Append)].into(),
            output: Some(ProtocolOutput {
                format: ProtocolFormat::Singer,
                state_file: Some("/tmp/state.json".into()),
            }),
        }
    }

    #[test]
    fn a_spec_survives_json_and_carries_secret_references_only() {
        let s = spec();
        let json = s.to_json();
        assert!(json.contains(r#""TOKEN=env:GH_TOKEN""#), "{json}");
        assert!(json.contains(r#""KEY=file:/run/key""#), "{json}");
        assert!(json.contains(r#""db_password":"env:PG_PW""#), "{json}");
        assert!(json.contains(r#""modes":{"items":"append"}"#), "{json}");
        assert!(
            json.contains(r#""destination":"postgres://sluice@127.0.0.1:5432/app?schema=raw""#),
            "{json}"
        );
        let back = RunSpec::from_json(&json).unwrap();
        // NaN is never equal to itself: compare it apart.
        assert!(back.limits.timeout.unwrap().0.is_nan());
        let strip = |mut s: RunSpec| {
            s.limits.timeout = None;
            s
        };
        assert_eq!(strip(back), strip(s));
    }

    #[test]
    fn a_bad_spec_is_an_error_naming_the_field() {
        let mut v: serde_json::Value = serde_json::from_str(&spec().to_json()).unwrap();
        v["grants"] = serde_json::json!(["ftp://x"]);
        let e = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("ftp"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&spec().to_json()).unwrap();
        v["secrets"] = serde_json::json!(["TOKEN=hunter2"]);
        let e = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("never the secret itself"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&spec().to_json()).unwrap();
        v["destination"] = serde_json::json!("postgres://u:hunter2@h/db");
        let e = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(
            e.contains("holds a password") && !e.contains("hunter2"),
            "{e}"
        );
        let mut v: serde_json::Value = serde_json::from_str(&spec().to_json()).unwrap();
        v["db_password"] = serde_json::json!("hunter2");
        let e = RunSpec::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("never the secret itself"), "{e}");
        let e = RunSpec::from_json(r#"{"surprise": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("surprise"), "{e}");
    }
}
