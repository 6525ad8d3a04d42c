//! # sluice-core
//!
//! What every other Sluice crate shares, with no sandbox and no database in
//! it: run records and statuses ([`run`]), limits and the one override type
//! the CLI and `sluice.toml` share ([`limits`]), the egress grant grammar
//! and IP policy ([`egress`]), secret references ([`secrets`]), stream
//! schemas and the record checks ([`schema`], [`flat`]), neutral rows
//! ([`row`], [`value`]), the connector's domain types ([`connector`]), and
//! the seams: [`destination::Destination`] and [`destination::RunLog`] (a
//! backend implements them), [`channel::RunChannel`] (the host
//! capabilities call the runner through it).
//!
//! Crates: `sluice-core` ← `sluice-wasm`, `sluice-store` ← `sluice-runner`
//! ← `sluice` (the CLI). Dependencies point one way only.

pub mod abort;
pub mod cancel;
pub mod channel;
pub mod connector;
pub mod destination;
pub mod egress;
pub mod flat;
pub mod instance;
pub mod limits;
pub mod location;
pub mod mode;
pub mod row;
pub mod run;
pub mod run_spec;
pub mod schema;
pub mod secrets;
pub mod spec_check;
pub mod text;
pub mod value;

pub use limits::{HttpPolicy, Limits, RateLimit};
pub use run::{RunRecord, RunStatus};
