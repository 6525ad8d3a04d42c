//! Host capabilities, one module each: its state struct, its `impl Host`,
//! and one `add_to_linker` (the shape of wasmtime's `wasi-config`). `http`
//! and `log` do their work here; `sink` and `state` only adapt WIT calls
//! to the run's [`RunChannel`](sluice_core::channel::RunChannel).
//! [`data`] holds a store's data: the limiter, WASI and each capability.

pub mod data;
pub mod http;
pub mod log;
pub mod resilience;
pub mod sink;
pub mod state;

/// The `types` interface has no functions; the linker only needs an
/// instance of that name for components that import it.
pub(crate) fn add_types_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    linker.instance(crate::bindings::source_v0_1::TYPES_INTERFACE)?;
    linker.instance(crate::bindings::source_v0_2::TYPES_INTERFACE)?;
    Ok(())
}
