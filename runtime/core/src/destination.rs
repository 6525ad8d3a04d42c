//! The destination seams: [`Destination`] (the write path: tables, state,
//! commits of records with state in one transaction) and [`RunLog`] (run
//! history, quarantine, drift, replay, the run lease), with the neutral
//! types they carry. SQLite implements both today (`sluice-store`);
//! Postgres sits beside it. [`Store`] is a backend that is both, as the one
//! writer per database holds it.

use serde::Serialize;

use crate::row::{Row, StreamTable};
pub use crate::run::{ComponentSeen, LeaseHolder, RunRecord, RunStatus, StreamCounts};
pub use crate::schema::RecordError;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (the database's own words, e.g. `sqlite: database
    /// is full`).
    #[error("{backend}: {message}")]
    Backend {
        backend: &'static str,
        message: String,
    },
    #[error("stream {stream:?}: {reason}")]
    InvalidStream { stream: String, reason: String },
    #[error("table {table:?} exists with primary key ({existing}) but the run writes it keyed by ({declared}) (an appended stream has no key); write it to another table (--table STREAM=TABLE), drop the table, or fix the stream")]
    PrimaryKeyMismatch {
        table: String,
        existing: String,
        declared: String,
    },
    #[error("cannot open database {path}: {message}")]
    Open { path: String, message: String },
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
    /// A write through a store opened read-only (it refuses every write
    /// before SQLite is asked).
    #[error("database {path} is open read-only: {operation} writes to it, which needs a write-capable open")]
    ReadOnly {
        path: String,
        /// The refused operation (its trait method's name).
        operation: &'static str,
    },
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
    /// Rows removed by full-refresh sweeps, per stream: every stream swept
    /// has an entry (0 if the sweep removed nothing).
    pub swept_by_stream: std::collections::BTreeMap<String, u64>,
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
    /// The record's primary key, if it names one
    /// ([`StreamTable::record_key`]): a full refresh never sweeps the row
    /// of a key the run quarantined.
    pub key: Option<String>,
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
    /// Full-refresh streams: delete every row of their tables that this
    /// run did not write, except the rows of keys the run quarantined (a
    /// key the run saw, valid or not, is never swept) and rows written
    /// since the run started (a replay that landed during the run may have
    /// overwritten a row the run wrote). The quarantine rows this run saw
    /// (`last_seen_run`) with a key say which keys: see
    /// [`QuarantinedRecord::key`]; the run's `started_at` in the run log
    /// says when it started (a run the log does not know sweeps by the
    /// first rule alone).
    pub sweep: &'a [std::sync::Arc<StreamTable>],
}

/// What a sweep compares `_synced_at` with when the run log has no start
/// for the sweeping run: later than any time Sluice writes, so no row is
/// kept for being newer than the run.
pub const NO_RUN_START: &str = "9999-12-31T23:59:59.999Z";

/// A stream's declaration as last seen (for replay and drift).
#[derive(Debug, Clone, Serialize)]
pub struct StreamDef {
    pub connector: String,
    pub stream: String,
    pub connector_version: String,
    pub json_schema: String,
    pub primary_key: Vec<String>,
}

/// A row of the quarantine table. One row stands for one distinct record
/// while it is open: the same record (instance, stream and raw JSON) seen
/// again, by a later run or in the same commit, counts on the open row
/// (`seen_count`, `last_seen_run`, `last_seen_at`) instead of adding one.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub id: i64,
    /// The run that first quarantined the record.
    pub run_id: String,
    pub connector: String,
    pub connector_version: String,
    pub stream: String,
    pub record: String,
    pub errors: Vec<crate::schema::RecordError>,
    /// When the record was first quarantined.
    pub quarantined_at: String,
    /// `quarantined` or `replayed`.
    pub status: String,
    pub replay_id: Option<String>,
    /// The record before an operator edited it, if edited.
    pub original_record: Option<String>,
    /// The record's primary key (a JSON array), if it names one.
    pub key: Option<String>,
    /// How many times runs emitted this record while it was open (1 for a
    /// record seen once).
    pub seen_count: u64,
    /// The run that emitted it last (`run_id` if seen once).
    pub last_seen_run: String,
    /// When a run emitted it last (`quarantined_at` if seen once): what a
    /// replay compares with the row of its key (see [`ReplayPlan`]).
    pub last_seen_at: String,
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

/// The outcome of a replay's checks, applied in one transaction.
///
/// **Stale records.** A record that now passes is *stale* when the row of
/// its key was written after the record was last seen: the row's
/// `_synced_at` (the time of the commit or replay that wrote it) is at or
/// after the quarantine row's `last_seen_at`. The row is newer than the
/// record, and writing the record would take it back to an older
/// revision. A stale record is not written (unless `force`); it stays
/// open in quarantine and the replay reports it. "At" counts as newer: a
/// row and a record of one commit share one time, and which came last is
/// not known. Rows this replay writes itself do not count (two records of
/// one key replayed together: the later one wins, as in a run). A stream
/// without a primary key has no rows to be stale against. Both times come
/// from the clocks of the processes that committed.
#[derive(Debug, Default)]
pub struct ReplayPlan {
    pub replay_id: String,
    /// Quarantine id, destination table and row of records that now pass.
    pub accepted: Vec<(i64, std::sync::Arc<StreamTable>, Row)>,
    /// Quarantine id and current errors of records that still fail.
    pub rejected: Vec<(i64, Vec<crate::schema::RecordError>)>,
    /// Write stale records too (`sluice quarantine replay --force`).
    pub force: bool,
}

/// What [`RunLog::apply_replay`] did with the accepted records.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayApplied {
    /// Quarantine ids written into their tables (now `replayed`).
    pub replayed: Vec<i64>,
    /// Quarantine ids not written because a newer row holds their key
    /// (still open; see [`ReplayPlan`]).
    pub stale: Vec<i64>,
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

/// The write path of a destination: a stream's table, its saved state,
/// and commits that make records durable together with the state.
pub trait Destination: Send + 'static {
    /// Create the stream's table, or add columns the stream gained.
    fn ensure_table(&mut self, table: &StreamTable) -> Result<(), StoreError>;
    /// Make `table`'s destination table `instance`'s (for its stream), or
    /// refuse if another instance or stream owns it, or if it exists and
    /// no instance does.
    fn claim_table(&mut self, instance: &str, table: &StreamTable) -> Result<(), StoreError>;
    /// The destination table of `instance`'s `stream`, if it has one.
    fn table_of(&mut self, instance: &str, stream: &str) -> Result<Option<String>, StoreError>;
    /// The committed state of (`connector`, `stream`).
    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError>;
    /// Write a commit (records, quarantine, drift, state, sweeps) in ONE
    /// transaction.
    fn commit(&mut self, req: &CommitRequest<'_>) -> Result<CommitStats, StoreError>;
    /// The rows of `table` now (for the conformance kit and the destination
    /// test suite): column names, and each row's values in column order;
    /// `None` if there is no such table.
    fn scan(&mut self, table: &str) -> Result<Option<Scan>, StoreError>;
    /// Can text hold the NUL character (`\u0000`)? PostgreSQL's `text` and
    /// `jsonb` cannot: records holding it are quarantined before they
    /// reach such a destination (see [`crate::schema::nul_error`]).
    fn stores_nul(&self) -> bool {
        true
    }
}

/// What [`Destination::scan`] read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scan {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<crate::value::Value>>,
}

/// One stream's checkpoint state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateEntry {
    pub stream: String,
    /// The state the connector committed (or the operator set): text,
    /// usually JSON.
    pub value: String,
    /// The run that committed it, or `operator:<change id>`.
    pub run_id: String,
    pub updated_at: String,
}

/// An operator's change of an instance's checkpoint state (`sluice state
/// set|reset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The change's id (it becomes the state's `run_id` as
    /// `operator:<id>`).
    pub id: String,
    pub instance: String,
    /// One stream, or (reset only) every stream of the instance.
    pub stream: Option<String>,
    /// The new state; `None` removes it (the next run starts from the
    /// beginning).
    pub value: Option<String>,
    /// Who made it: `user@host:pid`.
    pub by: String,
}

/// One audited state change, as the run log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChangeRecord {
    pub id: String,
    pub at: String,
    pub instance: String,
    pub stream: String,
    /// `set` or `reset`.
    pub action: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub by: String,
}

/// The prefix of the `run_id` of a state an operator set.
pub const OPERATOR_RUN_PREFIX: &str = "operator:";

/// One instance's next scheduled run, as `sluice serve` keeps it so that a
/// restart neither loses nor doubles runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleEntry {
    pub instance: String,
    /// The schedule the time was computed from (`cron:…` or `every:…`):
    /// when the operator changes it, the server computes a new time.
    pub schedule: String,
    /// When the next run is due, in milliseconds since the Unix epoch.
    pub next_run_at_ms: i64,
    pub updated_at: String,
}

/// An alert rule's state for one instance, as `sluice serve` keeps it
/// (`_sluice_alerts`): firing or resolved, since when, and when it was
/// last sent (a firing alert is sent again only after the repeat
/// interval).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertState {
    pub rule: String,
    pub instance: String,
    pub firing: bool,
    /// When it started firing (or resolved).
    pub since: String,
    /// When a notification of this state last reached a webhook.
    pub last_sent_at: Option<String>,
    pub message: String,
    /// The figure the rule looked at (a ratio, a count, seconds).
    pub value: Option<f64>,
    pub updated_at: String,
}

/// A change of an alert, or a repeat of a firing one, and whether its
/// notification was delivered (`_sluice_alert_events`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub at: String,
    pub rule: String,
    pub instance: String,
    /// `firing`, `resolved` or `repeat`.
    pub event: String,
    pub message: String,
    pub delivered: bool,
    /// Why delivery failed (after its retries), if it did.
    pub error: Option<String>,
}

/// Which runs [`RunLog::query_runs`] answers: those of `instance` (or of
/// every instance) with `status` (or any) but not `exclude`, newest first,
/// `limit` of them after skipping `offset`. With `counted`, the page's
/// `total` is how many runs the filter picks in all (one more indexed
/// read); without it, only what the page itself tells (`offset` plus the
/// runs it holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunQuery {
    pub instance: Option<String>,
    pub status: Option<RunStatus>,
    pub exclude: Option<RunStatus>,
    pub limit: usize,
    pub offset: usize,
    pub counted: bool,
}

impl RunQuery {
    /// The newest `limit` runs of `instance`, skipped runs aside.
    pub fn recent(instance: &str, limit: usize) -> Self {
        RunQuery {
            instance: Some(instance.to_string()),
            status: None,
            exclude: Some(RunStatus::Skipped),
            limit,
            offset: 0,
            counted: false,
        }
    }

    /// Whether `run` passes the filter (paging aside).
    pub fn picks(&self, run: &RunRecord) -> bool {
        self.instance.as_ref().is_none_or(|i| &run.connector == i)
            && self.status.is_none_or(|s| run.status == s)
            && self.exclude.is_none_or(|s| run.status != s)
    }

    /// The total of a page of `found` runs, if it needs no count: the
    /// query is not `counted`, or the page is the last one (and not past
    /// the end).
    pub fn total_of_page(&self, found: usize) -> Option<u64> {
        (!self.counted || (found < self.limit && (found > 0 || self.offset == 0)))
            .then(|| (self.offset + found) as u64)
    }
}

/// One page of runs and how many runs the query picks in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub total: u64,
}

/// The run log: run history, streams declared, quarantine and replay,
/// drift events, the component each instance ran, and the run lease.
pub trait RunLog: Send + 'static {
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
    /// Record that `instance` runs the component `hash` (`connector`
    /// `version`); returns the one it ran before, if any.
    fn note_component(
        &mut self,
        instance: &str,
        hash: &str,
        connector: &str,
        version: &str,
    ) -> Result<Option<ComponentSeen>, StoreError>;
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
    /// Upsert accepted records that are not stale (or all, with
    /// `plan.force`), mark them replayed, refresh the errors of rejected
    /// ones and record the replay, in ONE transaction.
    fn apply_replay(&mut self, plan: &ReplayPlan) -> Result<ReplayApplied, StoreError>;
    /// Drift events, newest first.
    fn list_drift(
        &mut self,
        connector: Option<&str>,
        stream: Option<&str>,
    ) -> Result<Vec<DriftEvent>, StoreError>;
    /// Record the start of a run.
    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError>;
    /// Mark `running` runs that hold no live lease (it expired, or its
    /// process on this host is gone) as `crashed`; returns how many.
    fn mark_crashed(&mut self) -> Result<u64, StoreError>;
    /// Update a run's row (end, status, counters).
    fn update_run(&mut self, run: &RunRecord) -> Result<(), StoreError>;
    /// The newest `limit` runs, newest first.
    fn list_runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;
    /// One page of the runs `query` picks, newest first, and how many it
    /// picks in all: filtered and paged by the store (SQL) where it can, so
    /// a page of a long history costs one indexed read. This default reads
    /// the whole history through [`RunLog::list_runs`].
    fn query_runs(&mut self, query: &RunQuery) -> Result<RunPage, StoreError> {
        let picked: Vec<RunRecord> = self
            .list_runs(usize::MAX)?
            .into_iter()
            .filter(|r| query.picks(r))
            .collect();
        Ok(RunPage {
            total: picked.len() as u64,
            runs: picked
                .into_iter()
                .skip(query.offset)
                .take(query.limit)
                .collect(),
        })
    }
    /// One run by id.
    fn get_run(&mut self, id: &str) -> Result<RunRecord, StoreError>;
    /// Every stream's checkpoint state of `instance`, by stream name.
    fn list_state(&mut self, instance: &str) -> Result<Vec<StateEntry>, StoreError>;
    /// Apply an operator's state change and audit it, in ONE transaction;
    /// returns the audit rows it wrote (one per stream changed; none when
    /// there was nothing to reset). The caller holds the instance's lease.
    fn change_state(&mut self, change: &StateChange) -> Result<Vec<StateChangeRecord>, StoreError>;
    /// The audit of state changes (of `instance`, or all), newest first.
    fn list_state_changes(
        &mut self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StateChangeRecord>, StoreError>;
    /// The persisted next run of `instance` (`sluice serve`), if any.
    fn get_schedule(&mut self, instance: &str) -> Result<Option<ScheduleEntry>, StoreError>;
    /// Persist the next run of `entry.instance`, replacing the one before.
    fn set_schedule(&mut self, entry: &ScheduleEntry) -> Result<(), StoreError>;
    /// Keep `lines`, the guest log lines of run `run_id`.
    fn insert_run_logs(
        &mut self,
        run_id: &str,
        lines: &[crate::run::LogLine],
    ) -> Result<(), StoreError>;
    /// The kept log lines of run `run_id`, in order.
    fn get_run_logs(&mut self, run_id: &str) -> Result<Vec<crate::run::LogLine>, StoreError>;
    /// Every alert's state (`sluice serve`'s alert rules).
    fn list_alerts(&mut self) -> Result<Vec<AlertState>, StoreError>;
    /// Replace `state`'s row and, if given, append `event`, in ONE
    /// transaction.
    fn record_alert(
        &mut self,
        state: &AlertState,
        event: Option<&AlertEvent>,
    ) -> Result<(), StoreError>;
    /// The newest `limit` alert events, newest first.
    fn list_alert_events(&mut self, limit: usize) -> Result<Vec<AlertEvent>, StoreError>;
}

/// A backend that is a destination and a run log in one database (SQLite
/// today): what the per-database writer holds.
pub trait Store: Destination + RunLog {}

impl<T: Destination + RunLog> Store for T {}
