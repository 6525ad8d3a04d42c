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

crate::bindings::convert_types!();
