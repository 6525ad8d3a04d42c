//! # sluice-sdk
//!
//! The Rust SDK for [Sluice](../../../README.md) source connectors. A connector
//! implements [`Connector`] and exports it with [`export_connector!`]; the SDK
//! turns the raw WIT bindings (`wit/0.2.0/`, world
//! `sluice:connector/source@0.2.0`; with the `wit-0-1` feature `wit/0.1.0/`)
//! into typed config, batched [`Reader::emit`], typed state and an HTTP helper
//! returning JSON, with [`http::send_all`] for concurrent requests.
//!
//! ```ignore
//! use sluice_sdk::{Connector, Reader, Spec, Stream, Error, json};
//!
//! struct Hello;
//! impl Connector for Hello {
//!     type Config = serde_json::Value;
//!     fn spec() -> Spec {
//!         Spec::new("hello", "0.1.0").stream(
//!             Stream::new("greetings", json!({"type": "object",
//!                 "properties": {"id": {"type": "integer"}}}))
//!             .primary_key(["id"]),
//!         )
//!     }
//!     fn read(_config: &Self::Config, reader: &mut Reader) -> Result<(), Error> {
//!         reader.emit("greetings", &json!({"id": 1}))?;
//!         reader.commit("greetings", &json!({"done": true}))
//!     }
//! }
//! sluice_sdk::export_connector!(Hello);
//! ```

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use serde_json::{json, Value};

pub mod http;
pub mod log;
pub mod raw;

/// The raw WIT bindings of the contract the connector is built against:
/// `sluice:connector@0.2.0` by default, `@0.1.0` with the `wit-0-1`
/// feature. The rest of the SDK is the same for both.
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1"))]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
        world: "source",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

#[doc(hidden)]
#[cfg(feature = "wit-0-1")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.1.0",
        world: "source",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

/// The version of the WIT contract this build of the SDK implements.
#[cfg(not(feature = "wit-0-1"))]
pub const WIT_VERSION: &str = "0.2.0";
/// The version of the WIT contract this build of the SDK implements.
#[cfg(feature = "wit-0-1")]
pub const WIT_VERSION: &str = "0.1.0";

use bindings::sluice::connector::{sink, state, types};

/// Records buffered per stream before the SDK hands them to the host in one
/// `sink.emit` call. One host call per batch, not per record.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// A connector error, reported to the host as a WIT `connector-error`
/// (never a trap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The config is invalid.
    Config(String),
    /// The upstream failed or answered something unusable.
    Upstream(String),
    /// A host capability refused (HTTP denied, sink or state error).
    Host(String),
    /// Anything else.
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(m) => write!(f, "config error: {m}"),
            Error::Upstream(m) => write!(f, "upstream error: {m}"),
            Error::Host(m) => write!(f, "host error: {m}"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}

impl From<Error> for types::ConnectorError {
    fn from(e: Error) -> Self {
        match e {
            Error::Config(m) => types::ConnectorError::Config(m),
            Error::Upstream(m) => types::ConnectorError::Upstream(m),
            Error::Host(m) => types::ConnectorError::Host(m),
            Error::Internal(m) => types::ConnectorError::Internal(m),
        }
    }
}

/// How a stream is synchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    FullRefresh,
    Incremental,
}

impl From<SyncMode> for types::SyncMode {
    fn from(m: SyncMode) -> Self {
        match m {
            SyncMode::FullRefresh => types::SyncMode::FullRefresh,
            SyncMode::Incremental => types::SyncMode::Incremental,
        }
    }
}

impl From<types::SyncMode> for SyncMode {
    fn from(m: types::SyncMode) -> Self {
        match m {
            types::SyncMode::FullRefresh => SyncMode::FullRefresh,
            types::SyncMode::Incremental => SyncMode::Incremental,
        }
    }
}

/// A stream a connector can read.
#[derive(Debug, Clone)]
pub struct Stream {
    pub name: String,
    pub schema: Value,
    pub primary_key: Vec<String>,
    pub cursor_field: Option<String>,
    pub sync_modes: Vec<SyncMode>,
}

impl Stream {
    /// A full-refresh stream with the given record JSON Schema.
    pub fn new(name: impl Into<String>, schema: Value) -> Self {
        Stream {
            name: name.into(),
            schema,
            primary_key: Vec::new(),
            cursor_field: None,
            sync_modes: vec![SyncMode::FullRefresh],
        }
    }

    /// Set the primary key (top-level field names).
    pub fn primary_key<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.primary_key = fields.into_iter().map(Into::into).collect();
        self
    }

    /// Mark the stream incremental on `field`.
    pub fn incremental(mut self, cursor_field: impl Into<String>) -> Self {
        self.cursor_field = Some(cursor_field.into());
        if !self.sync_modes.contains(&SyncMode::Incremental) {
            self.sync_modes.push(SyncMode::Incremental);
        }
        self
    }

    fn into_wit(self) -> types::Stream {
        types::Stream {
            name: self.name,
            json_schema: self.schema.to_string(),
            primary_key: self.primary_key,
            cursor_field: self.cursor_field,
            sync_modes: self.sync_modes.into_iter().map(Into::into).collect(),
        }
    }
}

/// What a connector is.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub config_schema: Value,
    pub streams: Vec<Stream>,
}

impl Spec {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Spec {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            config_schema: json!({"type": "object"}),
            streams: Vec::new(),
        }
    }

    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }

    pub fn config_schema(mut self, schema: Value) -> Self {
        self.config_schema = schema;
        self
    }

    pub fn stream(mut self, s: Stream) -> Self {
        self.streams.push(s);
        self
    }
}

/// A stream the operator asked to read, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredStream {
    pub name: String,
    pub sync_mode: SyncMode,
}

/// The handle `read` gets: emit records, read and commit state.
///
/// Records are buffered per stream and sent to the host in batches of
/// [`DEFAULT_BATCH_SIZE`]; [`Reader::commit`] flushes every buffer first, so
/// the state commits together with every record emitted before it.
#[derive(Debug)]
pub struct Reader {
    streams: Vec<ConfiguredStream>,
    buffers: BTreeMap<String, Vec<String>>,
    batch_size: usize,
    emitted: u64,
}

impl Reader {
    fn new(streams: Vec<ConfiguredStream>) -> Self {
        Reader {
            streams,
            buffers: BTreeMap::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            emitted: 0,
        }
    }

    /// The streams the operator selected for this run.
    pub fn streams(&self) -> &[ConfiguredStream] {
        &self.streams
    }

    /// Whether `name` was selected, and in which mode.
    pub fn selected(&self, name: &str) -> Option<SyncMode> {
        self.streams
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.sync_mode)
    }

    /// Change how many records are buffered per host call.
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n.max(1);
    }

    /// Records emitted so far in this run.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Emit one record of `stream` (any serde value that serialises to a JSON
    /// object). Sent to the host when the stream's batch is full.
    pub fn emit<T: Serialize + ?Sized>(&mut self, stream: &str, record: &T) -> Result<(), Error> {
        let text = serde_json::to_string(record)?;
        self.emit_raw(stream, text)
    }

    /// Emit one record of `stream` given as JSON text (an object), e.g. an
    /// upstream record kept as `serde_json::value::RawValue`: no copy, no
    /// re-serialisation. The host checks that it is JSON.
    pub fn emit_raw(&mut self, stream: &str, record: String) -> Result<(), Error> {
        let buf = match self.buffers.get_mut(stream) {
            Some(buf) => buf,
            None => self.buffers.entry(stream.to_string()).or_default(),
        };
        buf.push(record);
        let full = buf.len() >= self.batch_size;
        self.emitted += 1;
        if full {
            self.flush_stream(stream)?;
        }
        Ok(())
    }

    /// Send every buffered record to the host now.
    pub fn flush(&mut self) -> Result<(), Error> {
        let names: Vec<String> = self.buffers.keys().cloned().collect();
        for name in names {
            self.flush_stream(&name)?;
        }
        Ok(())
    }

    fn flush_stream(&mut self, stream: &str) -> Result<(), Error> {
        let Some(buf) = self.buffers.get_mut(stream) else {
            return Ok(());
        };
        if buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(buf);
        sink::emit(stream, &batch).map_err(|e| Error::Host(sink_error_text(e)))
    }

    /// The last committed state of `stream`, decoded from JSON.
    pub fn state<T: DeserializeOwned>(&self, stream: &str) -> Result<Option<T>, Error> {
        match state::get(stream) {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::Internal(format!("state of {stream} is not valid: {e}"))),
        }
    }

    /// Flush every buffered record, then commit `value` as the new state of
    /// `stream`: the records and the state become durable together.
    pub fn commit<T: Serialize + ?Sized>(&mut self, stream: &str, value: &T) -> Result<(), Error> {
        self.flush()?;
        let text = serde_json::to_string(value)?;
        state::commit(stream, &text).map_err(|e| {
            Error::Host(match e {
                state::StateError::UnknownStream(s) => format!("unknown stream {s}"),
                state::StateError::TooLarge(n) => format!("state value too large ({n} bytes)"),
                state::StateError::Store(m) => format!("store: {m}"),
            })
        })
    }
}

fn sink_error_text(e: sink::SinkError) -> String {
    match e {
        sink::SinkError::UnknownStream(s) => format!("unknown stream {s}"),
        sink::SinkError::InvalidRecord((i, m)) => format!("record {i} invalid: {m}"),
        sink::SinkError::TooLarge(m) => format!("too large: {m}"),
        sink::SinkError::Store(m) => format!("store: {m}"),
    }
}

/// A source connector.
pub trait Connector {
    /// The config, deserialised from the operator's JSON.
    type Config: DeserializeOwned;

    /// Name, version, config schema and streams.
    fn spec() -> Spec;

    /// Validate the config (and credentials, if the connector can).
    fn check(_config: &Self::Config) -> Result<(), Error> {
        Ok(())
    }

    /// Streams available with this config; by default the spec's.
    fn discover(_config: &Self::Config) -> Result<Vec<Stream>, Error> {
        Ok(Self::spec().streams)
    }

    /// Read the selected streams, emitting records and committing state.
    fn read(config: &Self::Config, reader: &mut Reader) -> Result<(), Error>;

    /// The partitions `stream` splits into with this config: opaque JSON
    /// values (a date range, an id range, a shard), each meant to be read
    /// on its own. By default none: the stream is read whole. Only a
    /// `@0.2.0` build exports it (`@0.1.0` has no partitions).
    fn partitions(_config: &Self::Config, _stream: &str) -> Result<Vec<Value>, Error> {
        Ok(Vec::new())
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// The trait the component's exports implement: the `connector`
    /// interface in `@0.2.0`, the world's bare functions in `@0.1.0`.
    #[cfg(not(feature = "wit-0-1"))]
    pub use crate::bindings::exports::sluice::connector::connector::Guest;
    #[cfg(feature = "wit-0-1")]
    pub use crate::bindings::Guest;

    /// Log a panic's message at error level before the guest traps, so the
    /// host can report it (wasm32-unknown-unknown has no stderr).
    fn install_panic_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                crate::log::error(&format!("panic: {info}").replace('\n', " "));
            }));
        });
    }

    fn parse<C: Connector>(config: &str) -> Result<C::Config, Error> {
        serde_json::from_str(config).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn spec<C: Connector>() -> types::ConnectorSpec {
        install_panic_hook();
        let s = C::spec();
        types::ConnectorSpec {
            name: s.name,
            version: s.version,
            description: s.description,
            config_schema: s.config_schema.to_string(),
            streams: s.streams.into_iter().map(Stream::into_wit).collect(),
        }
    }

    pub fn check<C: Connector>(config: String) -> Result<(), types::ConnectorError> {
        install_panic_hook();
        let cfg = parse::<C>(&config)?;
        C::check(&cfg).map_err(Into::into)
    }

    pub fn discover<C: Connector>(
        config: String,
    ) -> Result<Vec<types::Stream>, types::ConnectorError> {
        install_panic_hook();
        let cfg = parse::<C>(&config)?;
        Ok(C::discover(&cfg)?
            .into_iter()
            .map(Stream::into_wit)
            .collect())
    }

    pub fn partitions<C: Connector>(
        config: String,
        stream: String,
    ) -> Result<Vec<String>, types::ConnectorError> {
        install_panic_hook();
        let cfg = parse::<C>(&config)?;
        Ok(C::partitions(&cfg, &stream)?
            .iter()
            .map(Value::to_string)
            .collect())
    }

    pub fn read<C: Connector>(
        config: String,
        streams: Vec<types::ConfiguredStream>,
    ) -> Result<types::ReadSummary, types::ConnectorError> {
        install_panic_hook();
        let cfg = parse::<C>(&config)?;
        let streams = streams
            .into_iter()
            .map(|s| ConfiguredStream {
                name: s.name,
                sync_mode: s.sync_mode.into(),
            })
            .collect();
        let mut reader = Reader::new(streams);
        C::read(&cfg, &mut reader)?;
        reader.flush()?;
        Ok(types::ReadSummary {
            records: reader.emitted,
        })
    }
}

/// Export a [`Connector`] implementation as the component's `source` world
/// (as its `connector` interface in `@0.2.0`, as bare functions in `@0.1.0`).
///
/// The exports exist only on `wasm32` targets: natively (e.g. `cargo test`
/// of a connector's pure functions) the world's export names, such as
/// `read`, would clash with the C library's symbols.
#[macro_export]
#[rustfmt::skip] // rustfmt's formatting of this macro body is not stable.
macro_rules! export_connector {
    ($connector:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SluiceExport;

            impl $crate::__private::Guest for __SluiceExport {
                fn spec() -> $crate::bindings::sluice::connector::types::ConnectorSpec {
                    $crate::__private::spec::<$connector>()
                }
                fn check(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), $crate::bindings::sluice::connector::types::ConnectorError> {
                    $crate::__private::check::<$connector>(config)
                }
                fn discover(
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::vec::Vec<$crate::bindings::sluice::connector::types::Stream>,
                    $crate::bindings::sluice::connector::types::ConnectorError,
                > {
                    $crate::__private::discover::<$connector>(config)
                }
                fn read(
                    config: ::std::string::String,
                    streams: ::std::vec::Vec<$crate::bindings::sluice::connector::types::ConfiguredStream>,
                ) -> ::std::result::Result<
                    $crate::bindings::sluice::connector::types::ReadSummary,
                    $crate::bindings::sluice::connector::types::ConnectorError,
                > {
                    $crate::__private::read::<$connector>(config, streams)
                }
                $crate::__partitions_export!($connector);
            }

            $crate::bindings::export!(__SluiceExport with_types_in $crate::bindings);
        };

        // Natively, still reference the connector so it counts as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $crate::__private::spec::<$connector>;
            let _ = $crate::__private::check::<$connector>;
            let _ = $crate::__private::discover::<$connector>;
            let _ = $crate::__private::read::<$connector>;
            let _ = $crate::__private::partitions::<$connector>;
        };
    };
}

/// The `partitions` export of the `connector` interface (`@0.2.0` only),
/// inside [`export_connector!`]'s `impl`.
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1"))]
#[macro_export]
#[rustfmt::skip]
macro_rules! __partitions_export {
    ($connector:ty) => {
        fn partitions(
            config: ::std::string::String,
            stream: ::std::string::String,
        ) -> ::std::result::Result<
            ::std::vec::Vec<::std::string::String>,
            $crate::bindings::sluice::connector::types::ConnectorError,
        > {
            $crate::__private::partitions::<$connector>(config, stream)
        }
    };
}

/// `@0.1.0` has no `partitions` export.
#[doc(hidden)]
#[cfg(feature = "wit-0-1")]
#[macro_export]
macro_rules! __partitions_export {
    ($connector:ty) => {};
}
