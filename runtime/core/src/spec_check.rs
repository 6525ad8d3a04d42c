//! The check every connector spec passes before Sluice acts on it: the
//! connector's name, its semver version, and a non-empty list of streams
//! without duplicates. One implementation for every command (`spec`,
//! `check`, `discover`, `run`, `sync`, the registry) and the conformance
//! kit, which adds its stricter per-stream checks on top.

use std::collections::BTreeSet;

use crate::connector::ConnectorSpec;

/// A spec Sluice refuses, with every reason (one line).
#[derive(Debug, thiserror::Error)]
#[error("connector spec refused: {}", .problems.join("; "))]
pub struct SpecError {
    pub problems: Vec<String>,
}

/// Whether `name` is a connector name: `[a-z][a-z0-9_-]*`.
pub fn valid_connector_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// What is wrong with the spec's identity and stream list (empty when
/// nothing is). Names and versions are quoted with `{:?}`, so control
/// characters in them are escaped.
pub fn problems(spec: &ConnectorSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if !valid_connector_name(&spec.name) {
        problems.push(format!("name {:?} is not [a-z][a-z0-9_-]*", spec.name));
    }
    if let Err(e) = semver::Version::parse(&spec.version) {
        problems.push(format!("version {:?} is not semver: {e}", spec.version));
    }
    if spec.streams.is_empty() {
        problems.push("no streams".into());
    }
    let mut seen = BTreeSet::new();
    for s in &spec.streams {
        if !seen.insert(s.name.as_str()) {
            problems.push(format!("stream {:?} declared twice", s.name));
        }
    }
    problems
}

/// The spec, if Sluice accepts it.
pub fn validate(spec: &ConnectorSpec) -> Result<(), SpecError> {
    let problems = problems(spec);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SpecError { problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{Stream, SyncMode};

    fn spec(name: &str, version: &str, streams: &[&str]) -> ConnectorSpec {
        ConnectorSpec {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            config_schema: "{}".into(),
            streams: streams
                .iter()
                .map(|s| Stream {
                    name: s.to_string(),
                    json_schema: "{}".into(),
                    primary_key: vec![],
                    cursor_field: None,
                    sync_modes: vec![SyncMode::FullRefresh],
                })
                .collect(),
        }
    }

    #[test]
    fn names() {
        assert!(valid_connector_name("github-issues"));
        assert!(valid_connector_name("a1_b"));
        assert!(!valid_connector_name("Github"));
        assert!(!valid_connector_name("1x"));
        assert!(!valid_connector_name(""));
        assert!(!valid_connector_name("../../x"));
    }

    #[test]
    fn refuses_bad_names_versions_and_stream_lists() {
        assert!(validate(&spec("items", "0.1.0", &["a", "b"])).is_ok());
        let e = validate(&spec("../../x", "1.x", &["a", "a"])).unwrap_err();
        let text = e.to_string();
        for want in [
            "name \"../../x\"",
            "version \"1.x\" is not semver",
            "stream \"a\" declared twice",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
        assert_eq!(problems(&spec("x", "1.0.0", &[])), ["no streams"]);
        let e = validate(&spec("a\nrun 1 succeeded", "1.0.0", &["s"])).unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
