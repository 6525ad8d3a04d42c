//! The integration tests: one binary (one link of wasmtime, cranelift and
//! SQLite for all of them), a module per area, sharing one harness
//! (`common`: scratch directories, the built guests, the `sluice` binary).
//! Run one area with `cargo test -p sluice --test it adversarial::`.

mod browser;
mod common;

mod adversarial;
mod cli;
mod conformance;
mod crash;
mod egress;
mod executor;
mod github;
mod guarantees;
mod js_guest;
mod meltano;
mod on_postgres;
mod operator;
mod protocol;
mod resilience;
mod sandbox;
mod scaffold;
mod serve;
mod sync;
mod wit_versions;
