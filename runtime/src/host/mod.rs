//! Host capabilities, one module each: its state struct, its `impl Host`,
//! and one `add_to_linker` (the shape of wasmtime's `wasi-config`).

pub mod http;
pub mod log;
pub mod resilience;
pub mod secrets;
pub mod sink;
pub mod state;

/// An error a host capability raises to end the run (a trap, not a value the
/// guest sees). The sandbox maps each to a run status.
#[derive(Debug, thiserror::Error)]
pub enum HostAbort {
    #[error("records emitted since the last commit exceed {limit} bytes; the connector must commit state more often")]
    UncommittedLimit { limit: u64 },
    #[error("the store failed: {0}")]
    Store(String),
    #[error(
        "the run's wall-clock deadline passed (while the host checked the connector's records)"
    )]
    Deadline,
    #[error("stopped by the operator at a commit")]
    Cancelled,
    #[error("the run's HTTP request budget of {limit} requests is spent")]
    HttpBudget { limit: u64 },
    #[error("the host refused more than {limit} of the run's HTTP requests (denied or invalid); the last: {last}")]
    HttpDeniedLimit { limit: u64, last: String },
    #[error("the run's responses exceed {limit} bytes in all")]
    HttpBytes { limit: u64 },
    #[error("the run's records exceed {limit} bytes in all")]
    EmitBytes { limit: u64 },
    #[error("a record of stream {stream} is {size} bytes, over the {limit}-byte record limit")]
    RecordTooLarge {
        stream: String,
        size: u64,
        limit: u64,
    },
    #[error(
        "the state value of stream {stream} is {size} bytes, over the {limit}-byte state limit"
    )]
    StateTooLarge {
        stream: String,
        size: u64,
        limit: u64,
    },
}

impl HostAbort {
    /// The run status this abort ends a run with.
    pub fn status(&self) -> crate::store::RunStatus {
        use crate::store::RunStatus;
        match self {
            HostAbort::UncommittedLimit { .. } => RunStatus::UncommittedLimit,
            HostAbort::Store(_) => RunStatus::StoreError,
            HostAbort::Deadline => RunStatus::Deadline,
            HostAbort::Cancelled => RunStatus::Cancelled,
            HostAbort::HttpBudget { .. } => RunStatus::HttpBudget,
            HostAbort::HttpDeniedLimit { .. } => RunStatus::HttpDeniedLimit,
            HostAbort::HttpBytes { .. } => RunStatus::HttpBytesLimit,
            HostAbort::EmitBytes { .. } => RunStatus::EmitBytesLimit,
            HostAbort::RecordTooLarge { .. } => RunStatus::RecordTooLarge,
            HostAbort::StateTooLarge { .. } => RunStatus::StateTooLarge,
        }
    }
}

/// The `types` interface has no functions; the linker only needs an
/// instance of that name for components that import it.
pub(crate) fn add_types_to_linker<T: 'static>(
    linker: &mut wasmtime::component::Linker<T>,
) -> wasmtime::Result<()> {
    linker.instance(types_instance_name())?;
    Ok(())
}

fn types_instance_name() -> &'static str {
    "sluice:connector/types@0.1.0"
}

/// A selected stream of a run: its table, compiled schema and mode.
pub struct RunStream {
    pub table: std::sync::Arc<crate::store::StreamTable>,
    pub schema: crate::schema::StreamSchema,
    /// The one-pass check, when the schema is flat (see [`crate::flat`]).
    pub flat: Option<crate::flat::FlatCheck>,
    /// Full refresh: the host hides saved state and, at the end of a
    /// successful run, removes rows the run did not write.
    pub full_refresh: bool,
}

/// What the `sink` and `state` capabilities of one `read` share: the run,
/// the database writer, the selected streams, and the counters kept in the
/// run record.
pub struct RunChannel {
    pub run_id: std::sync::Arc<str>,
    pub connector: std::sync::Arc<str>,
    pub connector_version: std::sync::Arc<str>,
    pub writer: crate::store::Writer,
    pub streams: std::collections::HashMap<String, RunStream>,
    pub max_uncommitted_bytes: u64,
    pub max_state_bytes: u64,
    /// Record bytes the run may emit in all.
    pub max_emit_bytes: u64,
    /// Largest single record.
    pub max_record_bytes: u64,
    /// The run's wall-clock deadline: host work for the guest stops there.
    pub deadline: std::time::Instant,
    /// The operator's stop request: the run ends at its next commit.
    pub cancel: crate::cancel::Cancel,
    pub counters: std::sync::Mutex<RunCounters>,
    /// Live counters for a progress display, if the caller asked for them.
    pub progress: Option<std::sync::Arc<RunProgress>>,
    /// The connector's last `state.commit`, queued on the writer while the
    /// connector goes on (fetching its next page as the last one is
    /// written). At most one is in flight: the next commit, and the end of
    /// the run, wait for it first.
    pub in_flight: std::sync::Mutex<Option<crate::store::PendingCommit>>,
    /// Counts this read among the process's running reads.
    pub active: sink::ActiveRead,
}

/// Records so far of one run, readable while it runs (e.g. by a progress
/// display polling it). Updated by the `sink` and `state` capabilities;
/// UI-agnostic.
#[derive(Debug, Default)]
pub struct RunProgress {
    /// Records received by `sink.emit` so far.
    pub emitted: std::sync::atomic::AtomicU64,
    /// Records written by commits so far.
    pub upserted: std::sync::atomic::AtomicU64,
}

impl RunProgress {
    /// (emitted, upserted) now.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.emitted.load(Relaxed), self.upserted.load(Relaxed))
    }
}

/// Counters of the sink and state capabilities.
#[derive(Debug, Default, Clone)]
pub struct RunCounters {
    /// Records received by `sink.emit`.
    pub emitted: u64,
    /// Records that passed validation.
    pub valid: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Bytes of record JSON accepted by `sink.emit`.
    pub emitted_bytes: u64,
    /// Bytes emitted since the last commit.
    pub uncommitted_bytes: u64,
    /// Records written by commits.
    pub upserted: u64,
    /// Commits (including the final one at the end of a successful read).
    pub commits: u64,
    /// Counters per stream.
    pub streams: std::collections::BTreeMap<String, crate::store::StreamCounts>,
    /// Distinct drift paths seen, per (stream, kind).
    pub drift: crate::schema::DriftSummary,
}

impl RunChannel {
    pub fn counters(&self) -> RunCounters {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut RunCounters) -> R) -> R {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut counters);
        if let Some(p) = &self.progress {
            use std::sync::atomic::Ordering::Relaxed;
            p.emitted.store(counters.emitted, Relaxed);
            p.upserted.store(counters.upserted, Relaxed);
        }
        r
    }

    fn commit_request(
        &self,
        state: Option<(String, String)>,
        sweep: Vec<String>,
    ) -> crate::store::Commit {
        crate::store::Commit {
            run_id: self.run_id.clone(),
            connector: self.connector.clone(),
            connector_version: self.connector_version.clone(),
            state,
            sweep,
        }
    }

    fn count_commit(&self, stats: &crate::store::CommitStats) {
        self.update(|c| {
            c.upserted += stats.upserted;
            c.commits += 1;
            for (stream, n) in &stats.upserted_by_stream {
                c.streams.entry(stream.clone()).or_default().upserted += n;
            }
        });
    }

    /// Wait for the commit in flight, if any, and count what it wrote.
    pub async fn settle(&self) -> Result<(), HostAbort> {
        let pending = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = pending {
            let stats = p
                .finish()
                .await
                .map_err(|e| HostAbort::Store(e.to_string()))?;
            self.count_commit(&stats);
        }
        Ok(())
    }

    /// The connector's `state.commit`: wait for the previous commit, then
    /// queue this one (every record emitted so far, with `state`) and
    /// return while the writer writes it. The records and the state still
    /// land in one transaction, in order, so a crash leaves the store as of
    /// some commit the connector made; a failure surfaces at the next
    /// commit or at the end of the run.
    pub async fn commit_pipelined(&self, state: (String, String)) -> Result<(), HostAbort> {
        self.settle().await?;
        let pending = self
            .writer
            .commit_begin(self.commit_request(Some(state), Vec::new()))
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some(pending);
        // The bytes emitted so far belong to the queued commit now.
        self.update(|c| c.uncommitted_bytes = 0);
        if self.cancel.level() >= crate::cancel::CancelLevel::Stop {
            // Stop here, once this commit has landed (and is counted).
            self.settle().await?;
            return Err(HostAbort::Cancelled);
        }
        Ok(())
    }

    /// Commit everything emitted so far, with `state` if given, and wait
    /// for it; `sweep` full-refresh tables (only at the successful end of a
    /// run).
    pub async fn commit(
        &self,
        state: Option<(String, String)>,
        sweep: Vec<String>,
    ) -> Result<crate::store::CommitStats, HostAbort> {
        self.settle().await?;
        let stats = self
            .writer
            .commit(self.commit_request(state, sweep))
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        self.count_commit(&stats);
        self.update(|c| c.uncommitted_bytes = 0);
        Ok(stats)
    }
}
