//! World `sluice:connector/source@0.2.0`: the one `bindgen!` of it, the
//! conversions between its generated types and the runtime's own
//! ([`sluice_core::connector`]), and between its host-interface types and
//! `@0.1.0`'s, which the host capabilities work on (the records and
//! variants are the same in both versions). Nothing outside `sluice-wasm`
//! sees a generated type.

use sluice_core::connector as core;

use super::source_v0_1 as v1;

wasmtime::component::bindgen!({
    path: "../../wit/0.2.0",
    world: "source",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use exports::sluice::connector::connector;
pub use sluice::connector::{http, log, sink, state, types};

/// The fully qualified name of the `types` interface (it has no functions;
/// the linker only needs an instance of that name).
pub const TYPES_INTERFACE: &str = "sluice:connector/types@0.2.0";

/// The interface a `@0.2.0` component exports its functions in.
pub const CONNECTOR_INTERFACE: &str = "sluice:connector/connector@0.2.0";

crate::bindings::convert_types!();

impl From<http::Method> for v1::http::Method {
    fn from(m: http::Method) -> Self {
        match m {
            http::Method::Get => v1::http::Method::Get,
            http::Method::Head => v1::http::Method::Head,
            http::Method::Post => v1::http::Method::Post,
            http::Method::Put => v1::http::Method::Put,
            http::Method::Patch => v1::http::Method::Patch,
            http::Method::Delete => v1::http::Method::Delete,
        }
    }
}

impl From<http::Request> for v1::http::Request {
    fn from(r: http::Request) -> Self {
        v1::http::Request {
            method: r.method.into(),
            url: r.url,
            headers: r.headers,
            body: r.body,
            retryable: r.retryable,
        }
    }
}

impl From<v1::http::Response> for http::Response {
    fn from(r: v1::http::Response) -> Self {
        http::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<v1::http::HttpError> for http::HttpError {
    fn from(e: v1::http::HttpError) -> Self {
        use v1::http::HttpError as E;
        match e {
            E::Denied(m) => http::HttpError::Denied(m),
            E::InvalidRequest(m) => http::HttpError::InvalidRequest(m),
            E::Timeout => http::HttpError::Timeout,
            E::Connect(m) => http::HttpError::Connect(m),
            E::TooLarge(n) => http::HttpError::TooLarge(n),
            E::BudgetExhausted => http::HttpError::BudgetExhausted,
            E::Other(m) => http::HttpError::Other(m),
            E::CircuitOpen(m) => http::HttpError::CircuitOpen(m),
        }
    }
}

impl From<v1::sink::SinkError> for sink::SinkError {
    fn from(e: v1::sink::SinkError) -> Self {
        use v1::sink::SinkError as E;
        match e {
            E::UnknownStream(s) => sink::SinkError::UnknownStream(s),
            E::InvalidRecord(r) => sink::SinkError::InvalidRecord(r),
            E::TooLarge(m) => sink::SinkError::TooLarge(m),
            E::Store(m) => sink::SinkError::Store(m),
        }
    }
}

impl From<v1::state::StateError> for state::StateError {
    fn from(e: v1::state::StateError) -> Self {
        use v1::state::StateError as E;
        match e {
            E::UnknownStream(s) => state::StateError::UnknownStream(s),
            E::TooLarge(n) => state::StateError::TooLarge(n),
            E::Store(m) => state::StateError::Store(m),
        }
    }
}

impl From<types::Level> for v1::types::Level {
    fn from(l: types::Level) -> Self {
        match l {
            types::Level::Trace => v1::types::Level::Trace,
            types::Level::Debug => v1::types::Level::Debug,
            types::Level::Info => v1::types::Level::Info,
            types::Level::Warn => v1::types::Level::Warn,
            types::Level::Error => v1::types::Level::Error,
        }
    }
}
