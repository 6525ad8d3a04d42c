//! The one `bindgen!` for the `sluice:connector/source` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "source",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use sluice::connector::{http, log, sink, state, types};
