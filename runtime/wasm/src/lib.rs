//! # sluice-wasm
//!
//! The sandbox: a wasmtime [`engine::Runtime`] with its compile cache, one
//! [`sandbox::Sandbox`] per run (fuel, memory, epoch deadline), the
//! generated [`bindings`] per world and version (`sluice:connector@0.1.0`
//! and `@0.2.0`, both loaded through the one engine), and the host capabilities
//! ([`host`]): `http` (egress checks, secrets, retries, rate limits,
//! breakers), `log`, and `sink`/`state`, which only adapt WIT calls to the
//! runner's [`sluice_core::channel::RunChannel`].
//!
//! Depends on `sluice-core` only. Inside: `sandbox` → `engine` → `host` →
//! `bindings`; nothing below imports anything above.

pub mod bindings;
pub mod engine;
pub mod host;
pub mod sandbox;

pub use bindings::WitVersion;
pub use engine::{EngineSettings, Runtime, RuntimeError, RuntimeOptions};
