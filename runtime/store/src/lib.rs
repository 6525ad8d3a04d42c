//! # sluice-store
//!
//! Backends of the [`Destination`](sluice_core::destination::Destination)
//! and [`RunLog`](sluice_core::destination::RunLog) seams — [`sqlite`], the
//! embedded default, and [`postgres`] — and the per-database [`writer`] thread that
//! owns a backend's one write connection, shared by every run in the
//! process. Depends on `sluice-core` only.

pub mod postgres;
pub mod quarantine;
pub mod sqlite;
pub mod writer;

pub use postgres::PostgresStore;
pub use sqlite::{lease_holder, SqliteStore};
pub use writer::{Commit, PendingCommit, Writer, WriterHandle};
