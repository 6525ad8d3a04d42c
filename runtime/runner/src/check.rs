//! The record checks of a run, on the runner's side of the sink: each
//! emitted record parsed, validated against its stream's schema (the flat
//! one-pass check where it applies) and turned into a row, or quarantined;
//! large batches on two threads, in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::channel::RunStream;
use sluice_core::destination::QuarantinedRecord;
use sluice_core::row::Row;
use sluice_core::schema::{self, DriftObservation, ParseFailure, RecordError, Verdict};

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
pub(crate) fn split_checks(len: usize) -> bool {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    len >= PARALLEL_CHECK_MIN_RECORDS && ACTIVE_READS.load(Ordering::Relaxed) < cores
}

/// What the host makes of one emitted record.
pub(crate) enum Outcome {
    Row(Row),
    Quarantined(QuarantinedRecord),
    /// Not a JSON object: the batch is refused.
    Refused(String),
}

/// Records one thread takes at a time from a batch checked on two.
pub const CHECK_CHUNK_RECORDS: usize = 64;

/// What a batch's records come to, in order.
pub(crate) type Checked = Vec<(Outcome, Vec<DriftObservation>)>;

/// Parse, validate and turn into rows every record of a batch, in order;
/// with `split`, on this thread and one more. The two take chunks of
/// [`CHECK_CHUNK_RECORDS`] in turn from a shared counter, so when the
/// other thread starts late (or the machine has no core for it just then)
/// this one simply checks more chunks instead of waiting for a fixed half.
pub(crate) fn check_batch(
    target: &RunStream,
    stream: &str,
    records: Vec<String>,
    split: bool,
) -> Checked {
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
    let (outcome, drift) = check_schema(target, stream, raw);
    match outcome {
        Outcome::Row(row) if target.refuse_nul => match sluice_core::schema::nul_error(&row.raw) {
            Some(error) => (quarantined(target, stream, row.raw, vec![error]), drift),
            None => (Outcome::Row(row), drift),
        },
        other => (other, drift),
    }
}

fn check_schema(target: &RunStream, stream: &str, raw: String) -> (Outcome, Vec<DriftObservation>) {
    // Flat schemas: one pass, for records it can vouch for.
    if let Some((values, drift)) = target.flat.as_ref().and_then(|f| f.check(&raw)) {
        return (Outcome::Row(Row { values, raw }), drift);
    }
    let value = match schema::parse_record(&raw) {
        Ok(v) => v,
        Err(ParseFailure::NotARecord(why)) => return (Outcome::Refused(why), Vec::new()),
        Err(ParseFailure::DuplicateKey(error)) => {
            return (quarantined(target, stream, raw, vec![error]), Vec::new())
        }
    };
    // A record that breaks the stream's schema is quarantined.
    match target.schema.check(value) {
        Verdict::Valid { record, drift } => match target.table.row_from_value(record, raw) {
            Ok(row) => (Outcome::Row(row), drift),
            Err((message, raw)) => (
                quarantined(
                    target,
                    stream,
                    raw,
                    vec![RecordError {
                        path: String::new(),
                        message,
                    }],
                ),
                drift,
            ),
        },
        Verdict::Invalid { errors, drift } => (quarantined(target, stream, raw, errors), drift),
    }
}

/// A record that failed its checks, with its key if it names one (read
/// again from its text: only quarantined records pay for it).
fn quarantined(target: &RunStream, stream: &str, raw: String, errors: Vec<RecordError>) -> Outcome {
    Outcome::Quarantined(QuarantinedRecord {
        stream: stream.to_string(),
        key: target.table.record_key(&raw),
        record: raw,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::row::StreamTable;
    use sluice_core::schema::StreamSchema;
    use std::sync::Arc;

    const SCHEMA: &str = r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"},"name":{"type":"string"}}}"#;

    fn target() -> RunStream {
        let table = StreamTable::from_spec("s", SCHEMA, &["id".to_string()]).unwrap();
        let schema = StreamSchema::compile("s", SCHEMA).unwrap();
        let flat = sluice_core::flat::FlatCheck::new("s", schema.schema(), &table);
        assert!(flat.is_some());
        RunStream {
            table: Arc::new(table),
            schema,
            flat,
            full_refresh: false,
            refuse_nul: false,
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
    fn a_destination_without_nul_gets_records_holding_it_quarantined_with_the_path() {
        let nul = r#"{"id":1,"name":"a\u0000b"}"#;
        let plain = r#"{"id":2,"name":"a\\u0000b"}"#;
        let mut t = target();
        assert!(matches!(check_one(&t, "s", nul.into()).0, Outcome::Row(_)));
        t.refuse_nul = true;
        match check_one(&t, "s", nul.into()).0 {
            Outcome::Quarantined(q) => {
                assert_eq!(q.errors[0].path, "/name");
                assert_eq!(q.key.as_deref(), Some("[1]"));
            }
            _ => panic!("{nul} was not quarantined"),
        }
        assert!(matches!(
            check_one(&t, "s", plain.into()).0,
            Outcome::Row(_)
        ));
        // The flat fast path too (a schema of top-level scalars).
        assert!(t.flat.is_some());
    }

    #[test]
    fn quarantined_records_carry_the_key_they_name() {
        let t = target();
        let keys: Vec<Option<String>> = [
            r#"{"id":5,"name":3}"#,        // a good key, a bad field
            r#"{"id":"3","name":"x"}"#,    // a mistyped key names no row
            r#"{"name":"x"}"#,             // nor a missing one
            r#"{"id":6,"id":7,"name":1}"#, // a repeated field: as serde reads it
        ]
        .iter()
        .map(|r| match check_one(&t, "s", r.to_string()).0 {
            Outcome::Quarantined(q) => q.key,
            _ => panic!("{r} was not quarantined"),
        })
        .collect();
        assert_eq!(
            keys,
            [Some("[5]".to_string()), None, None, Some("[7]".to_string())]
        );
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
