//! # sluice-store
//!
//! Backends of the [`Destination`](sluice_core::destination::Destination)
//! and [`RunLog`](sluice_core::destination::RunLog) seams — [`sqlite`], the
//! embedded default, and [`postgres`] — the Singer and Airbyte outputs
//! ([`protocol`]: the write half on a byte stream, the run log in SQLite),
//! and the per-database [`writer`] thread that owns a backend's one write
//! connection, shared by every run in the process. Depends on `sluice-core`
//! only.

pub mod open;
pub mod postgres;
pub mod protocol;
pub mod quarantine;
mod run_query;
pub mod sqlite;
mod state_change;
pub mod writer;

pub use postgres::PostgresStore;
pub use protocol::{ProtocolFormat, ProtocolStore};
pub use sqlite::{lease_holder, SqliteStore};
pub use writer::{Commit, PendingCommit, Writer, WriterHandle};
