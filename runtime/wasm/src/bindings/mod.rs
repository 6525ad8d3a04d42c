//! Generated bindings, one module per world and version. Each converts its
//! types to and from [`sluice_core::connector`]; the sandbox picks the
//! module a component was built against.

pub mod source_v0_1;

pub use source_v0_1::{http, log, sink, state, types, Source, SourcePre};
