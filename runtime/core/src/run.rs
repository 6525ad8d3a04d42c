//! Run records and statuses: what a run is, how it ended, what it counted.

use serde::Serialize;

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
    /// A due run of `sluice serve` that did not run (the previous run was
    /// still going, or the server stopped first); its error says why. It
    /// read and wrote nothing.
    Skipped,
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
                | RunStatus::Skipped
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
            RunStatus::Skipped => "skipped",
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
            RunStatus::Skipped,
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

/// One guest log line of a run, as its run log keeps it (redacted and
/// truncated; not escaped: whoever shows it escapes it for its medium).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Its place among the run's lines, from 0.
    pub seq: u64,
    pub at: String,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

/// Per-stream counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StreamCounts {
    pub emitted: u64,
    pub valid: u64,
    pub quarantined: u64,
    pub upserted: u64,
    /// Rows the run's full refresh removed from the stream's table (rows
    /// of keys the run neither wrote nor quarantined); `None` for a stream
    /// that was not swept (incremental, or a run that did not succeed),
    /// and in run records written before Sluice counted sweeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swept: Option<u64>,
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
    /// A due run that did not run, now, and why.
    pub fn skipped(id: &str, connector: &str, reason: &str) -> Self {
        let now = now_rfc3339();
        RunRecord {
            ended_at: Some(now.clone()),
            started_at: now,
            duration_ms: Some(0),
            status: RunStatus::Skipped,
            error: Some(reason.to_string()),
            ..RunRecord::started(id, connector, "", "")
        }
    }

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

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
