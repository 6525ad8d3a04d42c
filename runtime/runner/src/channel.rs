//! The runner's end of a read's channel: what the `sink` and `state`
//! capabilities of one sandbox reach through
//! [`sluice_core::channel::RunChannel`]. It checks records, counts them,
//! queues them on the database writer, and pipelines the connector's
//! commits (one in flight, in order).

use std::time::Instant;

use sluice_core::abort::HostAbort;
use sluice_core::channel::{ChannelFuture, EmitRefused, RunChannel, StateRefused};
use sluice_core::destination::Pending;
use sluice_core::schema::DriftBatch;

use crate::check::{check_batch, split_checks, Outcome, HOST_WORK_SLICE_BYTES};

/// A selected stream of a run: its table, compiled schema and mode.
pub struct RunStream {
    pub table: std::sync::Arc<sluice_core::row::StreamTable>,
    pub schema: sluice_core::schema::StreamSchema,
    /// The one-pass check, when the schema is flat (see [`sluice_core::flat`]).
    pub flat: Option<sluice_core::flat::FlatCheck>,
    /// Full refresh: the host hides saved state and, at the end of a
    /// successful run, removes rows of keys the run neither wrote nor
    /// quarantined.
    pub full_refresh: bool,
    /// The destination cannot store the NUL character: records holding it
    /// are quarantined ([`sluice_core::schema::nul_error`]).
    pub refuse_nul: bool,
}

/// What the `sink` and `state` capabilities of one `read` share: the run,
/// the database writer, the selected streams, and the counters kept in the
/// run record.
pub struct ReadChannel {
    pub run_id: std::sync::Arc<str>,
    pub connector: std::sync::Arc<str>,
    pub connector_version: std::sync::Arc<str>,
    pub writer: sluice_store::Writer,
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
    pub cancel: sluice_core::cancel::Cancel,
    pub counters: std::sync::Mutex<RunCounters>,
    /// Live counters for a progress display, if the caller asked for them.
    pub progress: Option<std::sync::Arc<RunProgress>>,
    /// The connector's last `state.commit`, queued on the writer while the
    /// connector goes on (fetching its next page as the last one is
    /// written). At most one is in flight: the next commit, and the end of
    /// the run, wait for it first.
    pub in_flight: std::sync::Mutex<Option<sluice_store::PendingCommit>>,
    /// Counts this read among the process's running reads.
    pub active: crate::check::ActiveRead,
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
    pub streams: std::collections::BTreeMap<String, sluice_core::run::StreamCounts>,
    /// Distinct drift paths seen, per (stream, kind).
    pub drift: sluice_core::schema::DriftSummary,
}

impl ReadChannel {
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
        sweep: Vec<std::sync::Arc<sluice_core::row::StreamTable>>,
    ) -> sluice_store::Commit {
        sluice_store::Commit {
            run_id: self.run_id.clone(),
            connector: self.connector.clone(),
            connector_version: self.connector_version.clone(),
            state,
            sweep,
        }
    }

    fn count_commit(&self, stats: &sluice_core::destination::CommitStats) {
        self.update(|c| {
            c.upserted += stats.upserted;
            c.commits += 1;
            for (stream, n) in &stats.upserted_by_stream {
                c.streams.entry(stream.clone()).or_default().upserted += n;
            }
            for (stream, n) in &stats.swept_by_stream {
                let swept = &mut c.streams.entry(stream.clone()).or_default().swept;
                *swept = Some(swept.unwrap_or(0) + n);
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
        if self.cancel.level() >= sluice_core::cancel::CancelLevel::Stop {
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
        sweep: Vec<std::sync::Arc<sluice_core::row::StreamTable>>,
    ) -> Result<sluice_core::destination::CommitStats, HostAbort> {
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

impl RunChannel for ReadChannel {
    fn connector(&self) -> &str {
        &self.connector
    }

    fn emit(
        &self,
        stream: String,
        records: Vec<String>,
    ) -> ChannelFuture<'_, Result<Result<(), EmitRefused>, HostAbort>> {
        Box::pin(async move {
            let Some(target) = self.streams.get(&stream) else {
                return Ok(Err(EmitRefused::UnknownStream(stream)));
            };
            let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            if let Some(big) = records
                .iter()
                .map(|r| r.len() as u64)
                .find(|&len| len > self.max_record_bytes)
            {
                return Err(HostAbort::RecordTooLarge {
                    stream,
                    size: big,
                    limit: self.max_record_bytes,
                });
            }
            let over_total = self.update(|c| c.emitted_bytes + bytes > self.max_emit_bytes);
            if over_total {
                return Err(HostAbort::EmitBytes {
                    limit: self.max_emit_bytes,
                });
            }
            let n = records.len() as u64;
            let mut rows = Vec::with_capacity(records.len());
            let mut pending = Pending::default();
            let mut drift = DriftBatch::default();
            let split = split_checks(records.len());
            // The host's work for the guest goes in slices of at most
            // HOST_WORK_SLICE_BYTES of records. Between slices it yields to the
            // other runs on this thread, and the run's deadline can end it:
            // a batch built to be costly to check neither outlives the run's
            // deadline nor starves its neighbours.
            let mut records = records.into_iter().peekable();
            let mut index = 0usize;
            while records.peek().is_some() {
                let mut slice_bytes = 0usize;
                let slice: Vec<String> = std::iter::from_fn(|| {
                    if slice_bytes >= HOST_WORK_SLICE_BYTES {
                        return None;
                    }
                    let r = records.next()?;
                    slice_bytes += r.len();
                    Some(r)
                })
                .collect();
                for (outcome, d) in check_batch(target, &stream, slice, split) {
                    drift.extend(d);
                    match outcome {
                        // A record that is not a JSON object breaks the contract:
                        // the whole batch is refused and the connector told why.
                        Outcome::Refused(reason) => {
                            let index = u32::try_from(index).unwrap_or(u32::MAX);
                            return Ok(Err(EmitRefused::InvalidRecord(index, reason)));
                        }
                        Outcome::Row(row) => rows.push(row),
                        Outcome::Quarantined(q) => pending.quarantine.push(q),
                    }
                    index += 1;
                }
                if records.peek().is_some() {
                    if Instant::now() >= self.deadline {
                        return Err(HostAbort::Deadline);
                    }
                    tokio::task::yield_now().await;
                }
            }
            let over = self.update(|c| {
                c.uncommitted_bytes += bytes;
                c.uncommitted_bytes > self.max_uncommitted_bytes
            });
            if over {
                return Err(HostAbort::UncommittedLimit {
                    limit: self.max_uncommitted_bytes,
                });
            }
            let (valid, quarantined) = (rows.len() as u64, pending.quarantine.len() as u64);
            let drift = self.update(|c| {
                c.emitted += n;
                c.valid += valid;
                c.quarantined += quarantined;
                c.emitted_bytes += bytes;
                let s = c.streams.entry(stream.clone()).or_default();
                s.emitted += n;
                s.valid += valid;
                s.quarantined += quarantined;
                // The run records at most MAX_DRIFT_PATHS_PER_RUN distinct
                // paths; observations of others are counted only.
                c.drift.admit_all(drift)
            });
            if !rows.is_empty() {
                pending.batches.push((target.table.clone(), rows));
            }
            pending.drift = drift;
            self.writer
                .append(self.run_id.clone(), pending)
                .await
                .map_err(|e| HostAbort::Store(e.to_string()))?;
            Ok(Ok(()))
        })
    }

    fn get_state(&self, stream: String) -> ChannelFuture<'_, Result<Option<String>, HostAbort>> {
        Box::pin(async move {
            match self.streams.get(&stream) {
                // Unknown streams have no state; full refresh hides saved state.
                None => return Ok(None),
                Some(s) if s.full_refresh => return Ok(None),
                Some(_) => {}
            }
            let connector = self.connector.clone();
            self.writer
                .call(move |s| s.get_state(&connector, &stream))
                .await
                .and_then(|r| r)
                .map_err(|e| HostAbort::Store(e.to_string()))
        })
    }

    fn commit_state(
        &self,
        stream: String,
        value: String,
    ) -> ChannelFuture<'_, Result<Result<(), StateRefused>, HostAbort>> {
        Box::pin(async move {
            if !self.streams.contains_key(&stream) {
                return Ok(Err(StateRefused::UnknownStream(stream)));
            }
            if value.len() as u64 > self.max_state_bytes {
                // Ends the run: a connector whose checkpoint outgrew the
                // limit cannot make progress, and must not commit a
                // truncated one.
                return Err(HostAbort::StateTooLarge {
                    stream,
                    size: value.len() as u64,
                    limit: self.max_state_bytes,
                });
            }
            self.commit_pipelined((stream, value)).await?;
            Ok(Ok(()))
        })
    }
}
