//! The `sink` capability: batches of JSON records, checked against the
//! stream's table shape on the host, queued on the database writer for the
//! run's next commit.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use serde_json::Value;

use super::{HostAbort, RunChannel};
use crate::bindings::sink::{self, SinkError};
use crate::schema::{self, RecordError, Verdict};
use crate::store::{Pending, QuarantinedRecord};

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
        let mut drift = Vec::new();
        for (i, raw) in records.into_iter().enumerate() {
            // A record that is not a JSON object breaks the contract: the
            // whole batch is refused and the connector told why.
            let value: Value = match serde_json::from_str(&raw) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return Ok(Err(invalid(i, "not a JSON object".into()))),
                Err(e) => return Ok(Err(invalid(i, format!("not valid JSON: {e}")))),
            };
            // A record that breaks the stream's schema is quarantined.
            match target.schema.check(value) {
                Verdict::Valid { record, drift: d } => {
                    schema::aggregate(&mut drift, d);
                    match target.table.row_from_value(record, raw) {
                        Ok(row) => rows.push(row),
                        Err((message, raw)) => pending.quarantine.push(QuarantinedRecord {
                            stream: stream.clone(),
                            record: raw,
                            errors: vec![RecordError {
                                path: String::new(),
                                message,
                            }],
                        }),
                    }
                }
                Verdict::Invalid { errors, drift: d } => {
                    schema::aggregate(&mut drift, d);
                    pending.quarantine.push(QuarantinedRecord {
                        stream: stream.clone(),
                        record: raw,
                        errors,
                    });
                }
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
        run.update(|c| {
            c.emitted += n;
            c.valid += valid;
            c.quarantined += quarantined;
            c.emitted_bytes += bytes;
            let s = c.streams.entry(stream.clone()).or_default();
            s.emitted += n;
            s.valid += valid;
            s.quarantined += quarantined;
            for d in &drift {
                c.drift
                    .entry((d.stream.clone(), d.kind))
                    .or_default()
                    .insert(d.path.clone());
            }
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
