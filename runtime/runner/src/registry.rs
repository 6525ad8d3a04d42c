//! The connector registry: every component (`*.wasm`) in a directory,
//! known by the name its `spec` declares. Discovery loads each component
//! through the shared [`Runtime`] (the compiled-component cache makes a
//! warm scan cost milliseconds per component) and calls `spec` in a
//! sandbox with small limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::pipeline::{self, PipelineError};
use sluice_core::limits::{Limits, REGISTRY_SPEC_FUEL, REGISTRY_SPEC_TIMEOUT};
use sluice_core::text::escaped;
use sluice_wasm::engine::Runtime;

/// The registry directory used when neither `--connectors-dir` nor
/// `sluice.toml` names one (relative to the working directory).
pub const DEFAULT_CONNECTORS_DIR: &str = "connectors-dist";

/// Environment variable naming the registry directory.
pub const CONNECTORS_DIR_ENV: &str = "SLUICE_CONNECTORS_DIR";

/// A registry that cannot be built, or a name it does not know.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read connectors directory {}: {error}", dir.display())]
    ReadDir { dir: PathBuf, error: std::io::Error },
    #[error("two components claim connector name {name:?}: {} and {}", first.display(), second.display())]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no connector named {name:?} in {} (known: {known})", dir.display())]
    NotFound {
        name: String,
        dir: PathBuf,
        known: String,
    },
}

/// One registered connector.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub version: String,
    pub description: String,
    /// Streams the spec declares.
    pub streams: Vec<String>,
    /// Hosts the connector asks for, as far as its spec says: the host of
    /// every `http(s)` URL that is a `default` in its config schema.
    pub hosts: Vec<String>,
    pub path: PathBuf,
    /// SHA-256 of the component, hex.
    pub hash: String,
}

/// A `*.wasm` in the directory that could not be registered.
#[derive(Debug, Clone, Serialize)]
pub struct Broken {
    pub path: PathBuf,
    pub error: String,
}

/// The connectors of one directory, by name.
#[derive(Debug, Clone, Serialize)]
pub struct Registry {
    pub dir: PathBuf,
    pub entries: BTreeMap<String, Entry>,
    /// Components that failed to load or answer `spec`; never matched by
    /// name.
    pub broken: Vec<Broken>,
}

impl Registry {
    /// Register every `*.wasm` file in `dir` (not recursive). Two
    /// components with one name are an error naming both; a component that
    /// does not load is listed in [`Registry::broken`].
    pub async fn scan(runtime: &Runtime, dir: &Path) -> Result<Registry, RegistryError> {
        let read_err = |error| RegistryError::ReadDir {
            dir: dir.to_path_buf(),
            error,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let limits = Limits {
            fuel: REGISTRY_SPEC_FUEL,
            timeout: REGISTRY_SPEC_TIMEOUT,
            ..Limits::default()
        };
        let mut registry = Registry {
            dir: dir.to_path_buf(),
            entries: BTreeMap::new(),
            broken: Vec::new(),
        };
        for path in paths {
            let (loaded, spec) = match pipeline::spec(runtime, &path, &limits).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %escaped(&e.to_string()), "not a usable connector");
                    registry.broken.push(Broken {
                        path,
                        error: error_line(&e),
                    });
                    continue;
                }
            };
            if let Some(first) = registry.entries.get(&spec.name) {
                return Err(RegistryError::Duplicate {
                    name: spec.name,
                    first: first.path.clone(),
                    second: path,
                });
            }
            let entry = Entry {
                name: spec.name.clone(),
                version: spec.version,
                description: spec.description,
                streams: spec.streams.iter().map(|s| s.name.clone()).collect(),
                hosts: hosts_from_schema(&spec.config_schema),
                path,
                hash: loaded.hash.clone(),
            };
            registry.entries.insert(spec.name, entry);
        }
        Ok(registry)
    }

    /// The connector named `name`.
    pub fn get(&self, name: &str) -> Result<&Entry, RegistryError> {
        self.entries
            .get(name)
            .ok_or_else(|| RegistryError::NotFound {
                name: name.to_string(),
                dir: self.dir.clone(),
                known: if self.entries.is_empty() {
                    "none".into()
                } else {
                    self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

fn error_line(e: &PipelineError) -> String {
    e.to_string().replace('\n', " ")
}

/// Hosts of the `http(s)` URLs given as a `default` of a top-level property
/// of a config schema (e.g. `base_url`), as `HOST` or `HOST:PORT`.
pub fn hosts_from_schema(schema: &str) -> Vec<String> {
    let Ok(schema) = serde_json::from_str::<serde_json::Value>(schema) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    let props = schema.get("properties").and_then(|p| p.as_object());
    for prop in props.into_iter().flat_map(|p| p.values()) {
        let Some(default) = prop.get("default").and_then(|d| d.as_str()) else {
            continue;
        };
        let Ok(url) = url::Url::parse(default) else {
            continue;
        };
        if !matches!(url.scheme(), "http" | "https") {
            continue;
        }
        if let Some(host) = url.host_str() {
            let h = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_from_url_defaults() {
        let schema = r#"{"properties": {
            "base_url": {"type": "string", "default": "https://api.open-meteo.com"},
            "other": {"type": "string", "default": "http://10.0.0.1:8080/x"},
            "days": {"default": 7},
            "name": {"default": "not a url"}}}"#;
        assert_eq!(
            hosts_from_schema(schema),
            ["api.open-meteo.com", "10.0.0.1:8080"]
        );
        assert!(hosts_from_schema("{}").is_empty());
    }
}
