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
    pub counters: std::sync::Mutex<RunCounters>,
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
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Commit everything emitted so far, with `state` if given; `sweep`
    /// full-refresh tables (only at the successful end of a run).
    pub async fn commit(
        &self,
        state: Option<(String, String)>,
        sweep: Vec<String>,
    ) -> Result<crate::store::CommitStats, HostAbort> {
        let stats = self
            .writer
            .commit(crate::store::Commit {
                run_id: self.run_id.clone(),
                connector: self.connector.clone(),
                connector_version: self.connector_version.clone(),
                state,
                sweep,
            })
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        self.update(|c| {
            c.upserted += stats.upserted;
            c.commits += 1;
            c.uncommitted_bytes = 0;
            for (stream, n) in &stats.upserted_by_stream {
                c.streams.entry(stream.clone()).or_default().upserted += n;
            }
        });
        Ok(stats)
    }
}
