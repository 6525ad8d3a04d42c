//! # Sluice runtime
//!
//! The host side of Sluice: a wasmtime engine that runs connector
//! components (world `sluice:connector/source@0.1.0`, see `wit/`) in
//! per-run sandboxes with fuel, memory and deadline limits; host
//! capabilities (`http`, `state`, `sink`, `log`); the SQLite store; and the
//! pipeline that ties them into runs. The `sluice` binary is a thin CLI over
//! [`pipeline`].
//!
//! Layering: `sync` → `registry`/`config` → `pipeline` → `sandbox`/`engine`
//! → `host` → `store`. Nothing below imports anything above.

pub mod bindings;
pub mod cancel;
pub mod config;
pub mod conformance;
pub mod engine;
pub mod flat;
pub mod host;
pub mod instance;
pub mod limits;
pub mod pipeline;
pub mod registry;
pub mod sandbox;
pub mod scaffold;
pub mod schema;
pub mod spec_check;
pub mod store;
pub mod sync;
pub mod text;

pub use engine::{EngineSettings, Runtime, RuntimeError, RuntimeOptions};
pub use limits::{HttpPolicy, Limits, RateLimit};
pub use pipeline::{PipelineError, RunReport, RunRequest};
pub use store::{RunRecord, RunStatus};
