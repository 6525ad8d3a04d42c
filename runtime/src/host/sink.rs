//! The `sink` capability: batches of JSON records, checked against the
//! stream's table shape on the host, queued on the database writer for the
//! run's next commit.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{HostAbort, RunChannel};
use crate::bindings::sink::{self, SinkError};

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
        let Some(table) = run.tables.get(&stream) else {
            return Ok(Err(SinkError::UnknownStream(stream)));
        };
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        let mut rows = Vec::with_capacity(records.len());
        for (i, raw) in records.into_iter().enumerate() {
            match table.row(raw) {
                Ok(row) => rows.push(row),
                Err(reason) => {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    return Ok(Err(SinkError::InvalidRecord((index, reason))));
                }
            }
        }
        let n = rows.len() as u64;
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
        run.writer
            .append(run.run_id.clone(), table.clone(), rows)
            .await
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        run.update(|c| {
            c.emitted += n;
            c.emitted_bytes += bytes;
        });
        Ok(Ok(()))
    }
}

/// Link the `sink` interface, reaching each store's [`SinkCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SinkCtx,
) -> wasmtime::Result<()> {
    sink::add_to_linker::<T, HasSelf<SinkCtx>>(linker, get)
}
