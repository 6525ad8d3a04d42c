//! Generated bindings, one module per world and version. Each converts its
//! types to and from [`sluice_core::connector`]; the sandbox picks the
//! module a component was built against ([`WitVersion`]).
//!
//! The host's own capabilities work on `@0.1.0`'s generated types; the
//! `@0.2.0` types, the same records and variants, convert to and from
//! them field by field (`source_v0_2`).

pub mod source_v0_1;
pub mod source_v0_2;

pub use source_v0_1::{http, log, sink, state, types, Source, SourcePre};

/// The versions of the WIT package `sluice:connector` this host loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WitVersion {
    /// `sluice:connector@0.1.0`: the world's functions are bare exports.
    V0_1,
    /// `sluice:connector@0.2.0`: the functions are the exported
    /// `connector` interface; `http.send-all`.
    V0_2,
}

impl WitVersion {
    /// Every version this host loads, oldest first.
    pub const ALL: [WitVersion; 2] = [WitVersion::V0_1, WitVersion::V0_2];

    /// The version as the WIT package spells it, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
        }
    }

    /// The versions this host supports, for messages:
    /// `sluice:connector@0.1.0 and @0.2.0`.
    pub fn supported() -> String {
        let versions: Vec<String> = Self::ALL
            .iter()
            .map(|v| format!("@{}", v.as_str()))
            .collect();
        format!("sluice:connector{}", versions.join(" and "))
    }
}

impl std::fmt::Display for WitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The conversions between one version's generated `types` and the
/// runtime's own ([`sluice_core::connector`]); invoked in each version's
/// module, where `types` and `core` name its types and the runtime's.
macro_rules! convert_types {
    () => {
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
    };
}
pub(crate) use convert_types;
