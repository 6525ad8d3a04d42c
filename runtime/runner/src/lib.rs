//! # sluice-runner
//!
//! The path of a run from source to destination: [`pipeline`] (lease the
//! instance, drive a sandbox, validate and queue records through the run's
//! [`channel`], commit with state), the connector [`registry`],
//! `sluice.toml` ([`config`]), instance schedules ([`schedule`]), and many
//! instances at once ([`sync`]).
//! Depends on `sluice-core`, `sluice-wasm` and `sluice-store`.

pub mod alert_config;
pub mod channel;
pub mod check;
pub mod config;
pub mod executor;
pub mod pipeline;
pub mod registry;
pub mod schedule;
pub mod sync;

pub use executor::{Executor, LocalExecutor, RunEvent, RunHandle};
pub use pipeline::{PipelineError, RunReport, RunRequest};
