//! The `sink` capability: batches of JSON records, checked against the
//! stream's table shape on the host, queued on the database writer for the
//! run's next commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker};

use super::{HostAbort, RunChannel, RunStream};
use crate::bindings::sink::{self, SinkError};
use crate::schema::{self, DriftBatch, DriftObservation, ParseFailure, RecordError, Verdict};
use crate::store::{Pending, QuarantinedRecord, Row};

/// Per-store state of the `sink` capability: present only during `read`.
#[derive(Default)]
pub struct SinkCtx {
    pub run: Option<Arc<RunChannel>>,
}

impl sink::Host for SinkCtx {
    async fn emit(
        &mut self,
        stream: String,
        records: Vec<String>,
    ) -> wasmtime::Result<Result<(), SinkError>> {
        let Some(run) = &self.run else {
            return Ok(Err(SinkError::Store(
                "records can only be emitted during read".into(),
            )));
        };
        let Some(target) = run.streams.get(&stream) else {
            return Ok(Err(SinkError::UnknownStream(stream)));
        };
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        if let Some(big) = records
            .iter()
            .map(|r| r.len() as u64)
            .find(|&len| len > run.max_record_bytes)
        {
            return Err(HostAbort::RecordTooLarge {
                stream,
                size: big,
                limit: run.max_record_bytes,
            }
            .into());
        }
        let over_total = run.update(|c| c.emitted_bytes + bytes > run.max_emit_bytes);
        if over_total {
            return Err(HostAbort::EmitBytes {
                limit: run.max_emit_bytes,
            }
            .into());
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
                    Outcome::Refused(reason) => return Ok(Err(invalid(index, reason))),
                    Outcome::Row(row) => rows.push(row),
                    Outcome::Quarantined(q) => pending.quarantine.push(q),
                }
                index += 1;
            }
            if records.peek().is_some() {
                if Instant::now() >= run.deadline {
                    return Err(HostAbort::Deadline.into());
                }
                tokio::task::yield_now().await;
            }
        }
        let over = run.update(|c| {
            c.uncommitted_bytes += bytes;
            c.uncommitted_bytes > run.max_uncommitted_bytes
        });
        if over {
            return Err(HostAbort::UncommittedLimit {
                limit: run.max_uncommitted_bytes,
            }
            .into());
        }
        let (valid, quarantined) = (rows.len() as u64, pending.quarantine.len() as u64);
        let drift = run.update(|c| {
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
        run.writer
            .append(run.run_id.clone(), pending)
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        Ok(Ok(()))
    }
}

/// Most bytes of records the host checks for a guest in one go: a larger
/// batch is checked in slices this size, yielding to other runs and
/// looking at the run's deadline between them. Ordinary pages fit in one
/// slice.
pub const HOST_WORK_SLICE_BYTES: usize = 256 * 1024;

/// Batches at least this long are checked on two threads (the caller's
/// and one more, sharing the batch in chunks of [`CHECK_CHUNK_RECORDS`]),
/// while the process has cores to spare (see [`ActiveRead`]); shorter ones
/// on the caller's alone.
pub const PARALLEL_CHECK_MIN_RECORDS: usize = 256;

/// Reads running in this process now.
static ACTIVE_READS: AtomicUsize = AtomicUsize::new(0);

/// Counts one running read for as long as it lives. A batch is split
/// across two threads only while fewer reads run than the machine has
/// cores: one `sluice run` gains a core for its record checks, while many
/// concurrent runs (which keep every core busy already) do not pay for
/// extra threads.
#[derive(Debug)]
pub struct ActiveRead(());

impl ActiveRead {
    pub fn start() -> Self {
        ACTIVE_READS.fetch_add(1, Ordering::Relaxed);
        ActiveRead(())
    }
}

impl Drop for ActiveRead {
    fn drop(&mut self) {
        ACTIVE_READS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a batch of `len` records should be checked on two threads.
fn split_checks(len: usize) -> bool {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    len >= PARALLEL_CHECK_MIN_RECORDS && ACTIVE_READS.load(Ordering::Relaxed) < cores
}

/// What the host makes of one emitted record.
enum Outcome {
    Row(Row),
    Quarantined(QuarantinedRecord),
    /// Not a JSON object: the batch is refused.
    Refused(String),
}

/// Records one thread takes at a time from a batch checked on two.
pub const CHECK_CHUNK_RECORDS: usize = 64;

/// What a batch's records come to, in order.
type Checked = Vec<(Outcome, Vec<DriftObservation>)>;

/// Parse, validate and turn into rows every record of a batch, in order;
/// with `split`, on this thread and one more. The two take chunks of
/// [`CHECK_CHUNK_RECORDS`] in turn from a shared counter, so when the
/// other thread starts late (or the machine has no core for it just then)
/// this one simply checks more chunks instead of waiting for a fixed half.
fn check_batch(target: &RunStream, stream: &str, records: Vec<String>, split: bool) -> Checked {
    let check_all = |batch: Vec<String>| -> Checked {
        batch
            .into_iter()
            .map(|r| check_one(target, stream, r))
            .collect()
    };
    if !split || records.len() <= CHECK_CHUNK_RECORDS {
        return check_all(records);
    }
    let mut chunks = Vec::with_capacity(records.len().div_ceil(CHECK_CHUNK_RECORDS));
    let mut records = records.into_iter();
    loop {
        let chunk: Vec<String> = records.by_ref().take(CHECK_CHUNK_RECORDS).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(Mutex::new((chunk, None)));
    }
    let next = AtomicUsize::new(0);
    // Take chunks until none are left; each chunk's outcome goes back into
    // its own slot, so the order is the batch's whoever checked it.
    let work = || loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = chunks.get(k) else { return };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let records = std::mem::take(&mut slot.0);
        slot.1 = Some(check_all(records));
    };
    std::thread::scope(|scope| {
        let other = std::thread::Builder::new()
            .name("sluice-check".into())
            .spawn_scoped(scope, work);
        if let Err(e) = &other {
            // No thread to be had: this one takes every chunk.
            tracing::debug!(error = %e, "no thread for the record checks");
        }
        work();
        if let Ok(handle) = other {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    chunks
        .into_iter()
        .flat_map(|slot| {
            let (_, checked) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
            checked.unwrap_or_default()
        })
        .collect()
}

fn check_one(target: &RunStream, stream: &str, raw: String) -> (Outcome, Vec<DriftObservation>) {
    // Flat schemas: one pass, for records it can vouch for.
    if let Some((values, drift)) = target.flat.as_ref().and_then(|f| f.check(&raw)) {
        return (Outcome::Row(Row { values, raw }), drift);
    }
    let value = match schema::parse_record(&raw) {
        Ok(v) => v,
        Err(ParseFailure::NotARecord(why)) => return (Outcome::Refused(why), Vec::new()),
        Err(ParseFailure::DuplicateKey(error)) => {
            return (
                Outcome::Quarantined(QuarantinedRecord {
                    stream: stream.to_string(),
                    record: raw,
                    errors: vec![error],
                }),
                Vec::new(),
            )
        }
    };
    // A record that breaks the stream's schema is quarantined.
    match target.schema.check(value) {
        Verdict::Valid { record, drift } => match target.table.row_from_value(record, raw) {
            Ok(row) => (Outcome::Row(row), drift),
            Err((message, raw)) => (
                Outcome::Quarantined(QuarantinedRecord {
                    stream: stream.to_string(),
                    record: raw,
                    errors: vec![RecordError {
                        path: String::new(),
                        message,
                    }],
                }),
                drift,
            ),
        },
        Verdict::Invalid { errors, drift } => (
            Outcome::Quarantined(QuarantinedRecord {
                stream: stream.to_string(),
                record: raw,
                errors,
            }),
            drift,
        ),
    }
}

fn invalid(index: usize, reason: String) -> SinkError {
    SinkError::InvalidRecord((u32::try_from(index).unwrap_or(u32::MAX), reason))
}

/// Link the `sink` interface, reaching each store's [`SinkCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SinkCtx,
) -> wasmtime::Result<()> {
    sink::add_to_linker::<T, HasSelf<SinkCtx>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::StreamSchema;
    use crate::store::StreamTable;

    const SCHEMA: &str = r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"},"name":{"type":"string"}}}"#;

    fn target() -> RunStream {
        let table = StreamTable::from_spec("s", SCHEMA, &["id".to_string()]).unwrap();
        let schema = StreamSchema::compile("s", SCHEMA).unwrap();
        let flat = crate::flat::FlatCheck::new("s", schema.schema(), &table);
        assert!(flat.is_some());
        RunStream {
            table: Arc::new(table),
            schema,
            flat,
            full_refresh: false,
        }
    }

    /// Record `i` of a test batch: every 7th has a wrong type, every 11th a
    /// new field; the rest are plain.
    fn record(i: usize) -> String {
        if i % 7 == 3 {
            format!(r#"{{"id":"{i}"}}"#)
        } else if i % 11 == 5 {
            format!(r#"{{"id":{i},"extra":true}}"#)
        } else {
            format!(r#"{{"id":{i},"name":"n{i}"}}"#)
        }
    }

    /// What a batch comes to, as text: one line per record, in order.
    fn summary(out: &[(Outcome, Vec<DriftObservation>)]) -> Vec<String> {
        out.iter()
            .map(|(o, d)| {
                let drift: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
                match o {
                    Outcome::Row(r) => format!("row {:?} {drift:?}", r.values),
                    Outcome::Quarantined(q) => format!("quarantined {} {drift:?}", q.record),
                    Outcome::Refused(why) => format!("refused {why}"),
                }
            })
            .collect()
    }

    #[test]
    fn a_batch_checked_on_two_threads_comes_out_as_one_checked_in_order() {
        let t = target();
        let n = PARALLEL_CHECK_MIN_RECORDS * 2 + 3;
        let batch: Vec<String> = (0..n).map(record).collect();
        let two = summary(&check_batch(&t, "s", batch.clone(), true));
        // The same records checked on one thread, a few at a time.
        let one: Vec<String> = batch
            .chunks(PARALLEL_CHECK_MIN_RECORDS - 1)
            .flat_map(|c| summary(&check_batch(&t, "s", c.to_vec(), false)))
            .collect();
        assert_eq!(two.len(), n);
        assert_eq!(two, one);
        assert!(
            two[3].starts_with("quarantined {\"id\":\"3\"}"),
            "{}",
            two[3]
        );
        // The second half (checked on the other thread) keeps its place.
        let last = n - 1;
        assert_eq!(
            two[last],
            summary(&check_batch(&t, "s", vec![record(last)], false))[0]
        );
        assert!(two[5].contains("/extra"), "{}", two[5]);
    }

    #[test]
    fn the_first_record_that_is_not_an_object_names_its_index() {
        let t = target();
        let mut batch: Vec<String> = (0..PARALLEL_CHECK_MIN_RECORDS * 2).map(record).collect();
        let late = PARALLEL_CHECK_MIN_RECORDS + 10;
        batch[late] = "[1]".into();
        batch[late + 5] = "{".into();
        let out = check_batch(&t, "s", batch, true);
        let refused: Vec<usize> = out
            .iter()
            .enumerate()
            .filter(|(_, (o, _))| matches!(o, Outcome::Refused(_)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(refused, [late, late + 5]);
    }
}
