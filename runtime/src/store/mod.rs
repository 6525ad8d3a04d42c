//! The store: destination tables, checkpoint state and run history behind
//! the small [`Store`] trait (SQLite today; Postgres can sit beside it), and
//! the per-database [`writer`] thread that owns the one write connection.

mod sqlite;
mod table;
pub mod writer;

use serde::Serialize;

pub use sqlite::SqliteStore;
pub use table::{Column, ColumnKind, Row, StreamTable, META_COLUMNS};
pub use writer::{Writer, WriterHandle};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stream {stream:?}: {reason}")]
    InvalidStream { stream: String, reason: String },
    #[error("table {table:?} exists with primary key ({existing}) but the stream declares ({declared}); drop the table or fix the stream")]
    PrimaryKeyMismatch {
        table: String,
        existing: String,
        declared: String,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("run {0} not found")]
    RunNotFound(String),
}

/// How a run ended (or that it is still running).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// The connector returned an error.
    Failed,
    FuelExhausted,
    MemoryLimit,
    Deadline,
    /// The guest trapped (panic, unreachable, stack overflow, …).
    Trapped,
    /// Too many records emitted without a commit.
    UncommittedLimit,
    /// The store failed under the run.
    StoreError,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::FuelExhausted => "fuel_exhausted",
            RunStatus::MemoryLimit => "memory_limit",
            RunStatus::Deadline => "deadline",
            RunStatus::Trapped => "trapped",
            RunStatus::UncommittedLimit => "uncommitted_limit",
            RunStatus::StoreError => "store_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::FuelExhausted,
            RunStatus::MemoryLimit,
            RunStatus::Deadline,
            RunStatus::Trapped,
            RunStatus::UncommittedLimit,
            RunStatus::StoreError,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of run history.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub connector: String,
    pub connector_version: String,
    pub component_hash: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub status: RunStatus,
    pub records_emitted: u64,
    pub records_upserted: u64,
    pub commits: u64,
    pub http_requests: u64,
    pub http_denied: u64,
    pub http_bytes: u64,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub error: Option<String>,
}

/// What one commit wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub upserted: u64,
}

/// Records of one stream waiting for the next commit.
pub type Batch = (std::sync::Arc<StreamTable>, Vec<Row>);

/// The destination: tables, state and run history.
pub trait Store: Send + 'static {
    /// Create the stream's table, or add columns the stream gained.
    fn ensure_table(&mut self, table: &StreamTable) -> Result<(), StoreError>;
    /// The committed state of (`connector`, `stream`).
    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError>;
    /// Upsert `batches` and set `state` (stream, value) in ONE transaction.
    fn commit(
        &mut self,
        connector: &str,
        run_id: &str,
        batches: &[Batch],
        state: Option<(&str, &str)>,
    ) -> Result<CommitStats, StoreError>;
    /// Record the start of a run.
    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError>;
    /// Update a run's row (end, status, counters).
    fn update_run(&mut self, run: &RunRecord) -> Result<(), StoreError>;
    /// The newest `limit` runs, newest first.
    fn list_runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// One run by id.
    fn get_run(&mut self, id: &str) -> Result<RunRecord, StoreError>;
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
