//! The store: destination tables, checkpoint state and run history behind
//! the small [`Store`] trait (SQLite today; Postgres can sit beside it), and
//! the per-database [`writer`] thread that owns the one write connection.

pub mod checkpoint;
mod sqlite;
mod table;
pub mod writer;

use serde::Serialize;

pub use sqlite::{lease_holder, SqliteStore};
pub use table::{quote_ident, Column, ColumnKind, Row, StreamTable, META_COLUMNS};
pub use writer::{Commit, PendingCommit, Writer, WriterHandle};

pub use crate::schema::RecordError;

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
    #[error("quarantined record {0} not found")]
    QuarantineNotFound(i64),
    #[error("{0}")]
    Invalid(String),
    #[error("table {table:?} belongs to instance {owner:?} (stream {owner_stream:?}); instance {instance:?} cannot write stream {stream:?} into it: name another table with --table or `tables` in sluice.toml")]
    TableTaken {
        table: String,
        owner: String,
        owner_stream: String,
        instance: String,
        stream: String,
    },
    #[error("run {run_id} no longer holds the lease of instance {instance:?} (it expired and was taken over); its commit is refused")]
    LeaseLost { instance: String, run_id: String },
    #[error("table {table:?} exists but no Sluice instance owns it; instance {instance:?} will not write into it: name another table with --table or `tables` in sluice.toml")]
    TableForeign { table: String, instance: String },
}

/// Who holds an instance's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub run_id: String,
    /// `host:pid` of the process running it.
    pub holder: String,
    /// When the run took the lease (RFC 3339).
    pub since: String,
}

/// The component an instance ran last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSeen {
    pub component_hash: String,
    pub connector: String,
    pub connector_version: String,
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
    /// A table grew past its element limit.
    TableLimit,
    /// The component creates more instances, tables or memories than allowed.
    InstanceLimit,
    /// The guest overflowed the wasm stack.
    StackOverflow,
    /// The run made more HTTP requests than allowed.
    HttpBudget,
    /// The host refused more of the run's HTTP requests (denied or
    /// invalid) than allowed.
    HttpDeniedLimit,
    /// The run received more response bytes in all than allowed.
    HttpBytesLimit,
    /// The run emitted more record bytes in all than allowed.
    EmitBytesLimit,
    /// One record was larger than allowed.
    RecordTooLarge,
    /// One state value was larger than allowed.
    StateTooLarge,
    /// One host call (a `sink.emit` batch, say) carried more bytes out of
    /// the guest than the run's batch limit.
    BatchTooLarge,
    /// The process running it ended without recording an end (killed,
    /// power loss): its lease expired. Found and marked by a later `sluice`
    /// on the database.
    Crashed,
    /// Stopped by the operator (SIGTERM, Ctrl-C) at a commit or after the
    /// grace period; its counts are what was committed.
    Cancelled,
}

impl RunStatus {
    /// Whether the run was stopped by one of its limits.
    pub fn is_limit(self) -> bool {
        !matches!(
            self,
            RunStatus::Running
                | RunStatus::Succeeded
                | RunStatus::Failed
                | RunStatus::Trapped
                | RunStatus::StoreError
                | RunStatus::Crashed
                | RunStatus::Cancelled
        )
    }

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
            RunStatus::TableLimit => "table_limit",
            RunStatus::InstanceLimit => "instance_limit",
            RunStatus::StackOverflow => "stack_overflow",
            RunStatus::HttpBudget => "http_budget",
            RunStatus::HttpDeniedLimit => "http_denied_limit",
            RunStatus::HttpBytesLimit => "http_bytes_limit",
            RunStatus::EmitBytesLimit => "emit_bytes_limit",
            RunStatus::RecordTooLarge => "record_too_large",
            RunStatus::StateTooLarge => "state_too_large",
            RunStatus::BatchTooLarge => "batch_too_large",
            RunStatus::Crashed => "crashed",
            RunStatus::Cancelled => "cancelled",
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
            RunStatus::Crashed,
            RunStatus::Cancelled,
            RunStatus::TableLimit,
            RunStatus::InstanceLimit,
            RunStatus::StackOverflow,
            RunStatus::HttpBudget,
            RunStatus::HttpDeniedLimit,
            RunStatus::HttpBytesLimit,
            RunStatus::EmitBytesLimit,
            RunStatus::RecordTooLarge,
            RunStatus::StateTooLarge,
            RunStatus::BatchTooLarge,
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

/// Per-stream counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamCounts {
    pub emitted: u64,
    pub valid: u64,
    pub quarantined: u64,
    pub upserted: u64,
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
    pub records_valid: u64,
    pub records_quarantined: u64,
    pub records_upserted: u64,
    /// Counters per stream.
    pub streams: std::collections::BTreeMap<String, StreamCounts>,
    /// Drift seen in this run, one line each (e.g. "3 new fields in stream X").
    pub drift: Vec<String>,
    pub commits: u64,
    pub http_requests: u64,
    pub http_denied: u64,
    pub http_bytes: u64,
    /// HTTP attempts repeated after transient failures.
    pub http_retries: u64,
    /// Time spent waiting for rate-limit tokens, in milliseconds.
    pub http_throttled_ms: u64,
    /// Times this run's failures opened an upstream's circuit breaker.
    pub http_breaker_trips: u64,
    pub fuel_used: u64,
    pub peak_memory_bytes: u64,
    pub error: Option<String>,
    /// "old -> new" when the instance ran another component last time.
    pub component_change: Option<String>,
}

impl RunRecord {
    /// A run that starts now: `running`, nothing counted yet.
    pub fn started(id: &str, connector: &str, version: &str, component_hash: &str) -> Self {
        RunRecord {
            id: id.to_string(),
            connector: connector.to_string(),
            connector_version: version.to_string(),
            component_hash: component_hash.to_string(),
            started_at: now_rfc3339(),
            ended_at: None,
            duration_ms: None,
            status: RunStatus::Running,
            records_emitted: 0,
            records_valid: 0,
            records_quarantined: 0,
            records_upserted: 0,
            streams: Default::default(),
            drift: Vec::new(),
            commits: 0,
            http_requests: 0,
            http_denied: 0,
            http_bytes: 0,
            http_retries: 0,
            http_throttled_ms: 0,
            http_breaker_trips: 0,
            fuel_used: 0,
            peak_memory_bytes: 0,
            error: None,
            component_change: None,
        }
    }
}

/// What one commit wrote.
#[derive(Debug, Default, Clone)]
pub struct CommitStats {
    pub upserted: u64,
    pub quarantined: u64,
    /// Rows upserted per stream.
    pub upserted_by_stream: std::collections::BTreeMap<String, u64>,
    /// Rows removed by full-refresh sweeps.
    pub swept: u64,
}

/// Records of one stream waiting for the next commit.
pub type Batch = (std::sync::Arc<StreamTable>, Vec<Row>);

/// A record that failed validation, waiting for the next commit.
#[derive(Debug, Clone)]
pub struct QuarantinedRecord {
    pub stream: String,
    /// The record exactly as the connector emitted it.
    pub record: String,
    pub errors: Vec<crate::schema::RecordError>,
}

/// Everything a run emitted since its last commit.
#[derive(Debug, Default)]
pub struct Pending {
    pub batches: Vec<Batch>,
    pub quarantine: Vec<QuarantinedRecord>,
    pub drift: crate::schema::DriftBatch,
}

impl Pending {
    /// Append `more`, merging consecutive batches of one table.
    pub fn merge(&mut self, more: Pending) {
        for (table, rows) in more.batches {
            match self.batches.last_mut() {
                Some((t, r)) if std::sync::Arc::ptr_eq(t, &table) => r.extend(rows),
                _ => self.batches.push((table, rows)),
            }
        }
        self.quarantine.extend(more.quarantine);
        self.drift.extend(more.drift);
    }

    pub fn records(&self) -> usize {
        self.batches.iter().map(|(_, r)| r.len()).sum::<usize>() + self.quarantine.len()
    }
}

/// One commit: the run's pending records, quarantine and drift, the new
/// state, and (at the end of a successful run) full-refresh sweeps, all in
/// one transaction.
#[derive(Debug)]
pub struct CommitRequest<'a> {
    pub run_id: &'a str,
    pub connector: &'a str,
    pub connector_version: &'a str,
    pub pending: &'a Pending,
    /// (stream, value)
    pub state: Option<(&'a str, &'a str)>,
    /// Full-refresh tables: delete every row this run did not write.
    pub sweep: &'a [String],
}

/// A stream's declaration as last seen (for replay and drift).
#[derive(Debug, Clone, Serialize)]
pub struct StreamDef {
    pub connector: String,
    pub stream: String,
    pub connector_version: String,
    pub json_schema: String,
    pub primary_key: Vec<String>,
}

/// A row of the quarantine table.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    pub run_id: String,
    pub connector: String,
    pub connector_version: String,
    pub stream: String,
    pub record: String,
    pub errors: Vec<crate::schema::RecordError>,
    pub quarantined_at: String,
    /// `quarantined` or `replayed`.
    pub status: String,
    pub replay_id: Option<String>,
    /// The record before an operator edited it, if edited.
    pub original_record: Option<String>,
}

/// Which quarantine rows to list or replay.
#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    pub connector: Option<String>,
    pub stream: Option<String>,
    pub ids: Vec<i64>,
    /// Include rows already replayed.
    pub all: bool,
    pub limit: Option<usize>,
}

/// The outcome of a replay, applied in one transaction.
#[derive(Debug, Default)]
pub struct ReplayPlan {
    pub replay_id: String,
    /// Quarantine id, destination table and row of records that now pass.
    pub accepted: Vec<(i64, std::sync::Arc<StreamTable>, Row)>,
    /// Quarantine id and current errors of records that still fail.
    pub rejected: Vec<(i64, Vec<crate::schema::RecordError>)>,
}

/// An aggregated drift event.
#[derive(Debug, Clone, Serialize)]
pub struct DriftEvent {
    pub connector: String,
    pub stream: String,
    pub path: String,
    pub kind: String,
    pub observed_type: String,
    pub first_seen_run: String,
    pub last_seen_run: String,
    pub first_seen_at: String,
    pub sample: String,
    pub count: u64,
}

/// The destination: tables, state and run history.
pub trait Store: Send + 'static {
    /// Create the stream's table, or add columns the stream gained.
    fn ensure_table(&mut self, table: &StreamTable) -> Result<(), StoreError>;
    /// Make `table`'s destination table `instance`'s (for its stream), or
    /// refuse if another instance or stream owns it, or if it exists and
    /// no instance does.
    fn claim_table(&mut self, instance: &str, table: &StreamTable) -> Result<(), StoreError>;
    /// Take `instance`'s lease for `run_id`, held by process `holder`
    /// (`host:pid`) for `ttl` unless renewed. An expired lease (or one of a
    /// process on this host that is gone) is taken over; a live one is
    /// not: its holder comes back.
    fn claim_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseHolder>, StoreError>;
    /// Extend the lease `run_id` holds by `ttl` from now; false if it no
    /// longer holds it.
    fn renew_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError>;
    /// Give the lease back (if `run_id` still holds it).
    fn release_lease(&mut self, instance: &str, run_id: &str) -> Result<(), StoreError>;
    /// The destination table of `instance`'s `stream`, if it has one.
    fn table_of(&mut self, instance: &str, stream: &str) -> Result<Option<String>, StoreError>;
    /// Record that `instance` runs the component `hash` (`connector`
    /// `version`); returns the one it ran before, if any.
    fn note_component(
        &mut self,
        instance: &str,
        hash: &str,
        connector: &str,
        version: &str,
    ) -> Result<Option<ComponentSeen>, StoreError>;
    /// The committed state of (`connector`, `stream`).
    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError>;
    /// Write a commit (records, quarantine, drift, state, sweeps) in ONE
    /// transaction.
    fn commit(&mut self, req: &CommitRequest<'_>) -> Result<CommitStats, StoreError>;
    /// Remember the streams a connector declared in this run.
    fn record_streams(&mut self, defs: &[StreamDef]) -> Result<(), StoreError>;
    /// The last declaration of (`connector`, `stream`).
    fn stream_def(
        &mut self,
        connector: &str,
        stream: &str,
    ) -> Result<Option<StreamDef>, StoreError>;
    /// Quarantine rows matching `filter`, oldest first.
    fn list_quarantine(
        &mut self,
        filter: &QuarantineFilter,
    ) -> Result<Vec<QuarantineEntry>, StoreError>;
    /// Replace a quarantined record's JSON (keeping the original for audit).
    fn edit_quarantined(&mut self, id: i64, record: &str) -> Result<(), StoreError>;
    /// Upsert accepted records, mark them replayed and record the replay,
    /// in ONE transaction.
    fn apply_replay(&mut self, plan: &ReplayPlan) -> Result<(), StoreError>;
    /// Drift events, newest first.
    fn list_drift(
        &mut self,
        connector: Option<&str>,
        stream: Option<&str>,
    ) -> Result<Vec<DriftEvent>, StoreError>;
    /// Record the start of a run.
    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError>;
    /// Mark `running` runs whose process (recorded pid, on this machine)
    /// is gone as `crashed`; returns how many.
    fn mark_crashed(&mut self) -> Result<u64, StoreError>;
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
