//! World `sluice:connector/source@0.1.0`: the one `bindgen!` of it, and
//! the conversions between its generated types and the runtime's own
//! ([`sluice_core::connector`]). Nothing outside `sluice-wasm` sees a
//! generated type.

use sluice_core::connector as core;

wasmtime::component::bindgen!({
    path: "../../wit/0.1.0",
    world: "source",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use sluice::connector::{http, log, sink, state, types};

/// The fully qualified name of the `types` interface (it has no functions;
/// the linker only needs an instance of that name).
pub const TYPES_INTERFACE: &str = "sluice:connector/types@0.1.0";

impl From<types::SyncMode> for core::SyncMode {
    fn from(m: types::SyncMode) -> Self {
        match m {
            types::SyncMode::FullRefresh => core::SyncMode::FullRefresh,
            types::SyncMode::Incremental => core::SyncMode::Incremental,
        }
    }
}

impl From<core::SyncMode> for types::SyncMode {
    fn from(m: core::SyncMode) -> Self {
        match m {
            core::SyncMode::FullRefresh => types::SyncMode::FullRefresh,
            core::SyncMode::Incremental => types::SyncMode::Incremental,
        }
    }
}

impl From<types::Stream> for core::Stream {
    fn from(s: types::Stream) -> Self {
        core::Stream {
            name: s.name,
            json_schema: s.json_schema,
            primary_key: s.primary_key,
            cursor_field: s.cursor_field,
            sync_modes: s.sync_modes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<types::ConnectorSpec> for core::ConnectorSpec {
    fn from(s: types::ConnectorSpec) -> Self {
        core::ConnectorSpec {
            name: s.name,
            version: s.version,
            description: s.description,
            config_schema: s.config_schema,
            streams: s.streams.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<&core::ConfiguredStream> for types::ConfiguredStream {
    fn from(s: &core::ConfiguredStream) -> Self {
        types::ConfiguredStream {
            name: s.name.clone(),
            sync_mode: s.sync_mode.into(),
        }
    }
}

impl From<types::ReadSummary> for core::ReadSummary {
    fn from(s: types::ReadSummary) -> Self {
        core::ReadSummary { records: s.records }
    }
}

impl From<types::ConnectorError> for core::ConnectorError {
    fn from(e: types::ConnectorError) -> Self {
        match e {
            types::ConnectorError::Config(m) => core::ConnectorError::Config(m),
            types::ConnectorError::Upstream(m) => core::ConnectorError::Upstream(m),
            types::ConnectorError::Host(m) => core::ConnectorError::Host(m),
            types::ConnectorError::Internal(m) => core::ConnectorError::Internal(m),
        }
    }
}

impl From<types::Level> for core::Level {
    fn from(l: types::Level) -> Self {
        match l {
            types::Level::Trace => core::Level::Trace,
            types::Level::Debug => core::Level::Debug,
            types::Level::Info => core::Level::Info,
            types::Level::Warn => core::Level::Warn,
            types::Level::Error => core::Level::Error,
        }
    }
}
