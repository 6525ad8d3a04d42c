//! Host capabilities, one module each: its state struct, its `impl Host`,
//! and one `add_to_linker` (the shape of wasmtime's `wasi-config`).

pub mod http;
pub mod log;
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

/// What the `sink` and `state` capabilities of one `read` share: the run,
/// the database writer, the destination tables of the selected streams, and
/// the counters kept in the run record.
pub struct RunChannel {
    pub run_id: std::sync::Arc<str>,
    pub connector: std::sync::Arc<str>,
    pub writer: crate::store::Writer,
    pub tables: std::collections::HashMap<String, std::sync::Arc<crate::store::StreamTable>>,
    pub max_uncommitted_bytes: u64,
    pub max_state_bytes: u64,
    pub counters: std::sync::Mutex<RunCounters>,
}

/// Counters of the sink and state capabilities.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunCounters {
    /// Records accepted by `sink.emit`.
    pub emitted: u64,
    /// Bytes of record JSON accepted by `sink.emit`.
    pub emitted_bytes: u64,
    /// Bytes emitted since the last commit.
    pub uncommitted_bytes: u64,
    /// Records written by commits.
    pub upserted: u64,
    /// Commits (including the final one at the end of a successful read).
    pub commits: u64,
}

impl RunChannel {
    pub fn counters(&self) -> RunCounters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut RunCounters) -> R) -> R {
        f(&mut self.counters.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Commit everything emitted so far, with `state` if given.
    pub async fn commit(
        &self,
        state: Option<(String, String)>,
    ) -> Result<crate::store::CommitStats, HostAbort> {
        let stats = self
            .writer
            .commit(self.run_id.clone(), self.connector.clone(), state)
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        self.update(|c| {
            c.upserted += stats.upserted;
            c.commits += 1;
            c.uncommitted_bytes = 0;
        });
        Ok(stats)
    }
}
