//! What a connector says about itself and what a run asks of it, as the
//! runtime's own types. Each WIT world and version has its bindings in
//! `sluice-wasm`, which convert to and from these; nothing above the
//! sandbox sees a generated type.

use serde::Serialize;

/// How a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    FullRefresh,
    Incremental,
}

/// A stream a connector offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub name: String,
    /// The JSON Schema of its records (JSON text).
    pub json_schema: String,
    pub primary_key: Vec<String>,
    pub cursor_field: Option<String>,
    pub sync_modes: Vec<SyncMode>,
}

/// A connector's `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorSpec {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The JSON Schema of its config (JSON text).
    pub config_schema: String,
    pub streams: Vec<Stream>,
}

/// A stream selected for a read, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredStream {
    pub name: String,
    pub sync_mode: SyncMode,
}

/// What a connector's `read` reports when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSummary {
    pub records: u64,
}

/// An error a connector returns (a value, not a trap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorError {
    /// The config is invalid.
    Config(String),
    /// The upstream failed or answered something the connector cannot use.
    Upstream(String),
    /// A host capability refused or failed.
    Host(String),
    /// The connector's own bug.
    Internal(String),
}

impl ConnectorError {
    /// The kind and the message.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            ConnectorError::Config(m) => ("config", m),
            ConnectorError::Upstream(m) => ("upstream", m),
            ConnectorError::Host(m) => ("host", m),
            ConnectorError::Internal(m) => ("internal", m),
        }
    }
}

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl std::fmt::Display for ConnectorError {
    /// One line, saying who refused what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectorError::Config(m) => write!(f, "connector rejected its config: {m}"),
            ConnectorError::Upstream(m) => write!(f, "upstream error: {m}"),
            ConnectorError::Host(m) => write!(f, "host refused: {m}"),
            ConnectorError::Internal(m) => write!(f, "connector error: {m}"),
        }
    }
}

impl ConnectorError {
    /// The same error with its message passed through `f` (redaction).
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            ConnectorError::Config(m) => ConnectorError::Config(f(m)),
            ConnectorError::Upstream(m) => ConnectorError::Upstream(f(m)),
            ConnectorError::Host(m) => ConnectorError::Host(f(m)),
            ConnectorError::Internal(m) => ConnectorError::Internal(f(m)),
        }
    }
}
