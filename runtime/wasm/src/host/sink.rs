//! The `sink` capability: batches of JSON records, handed to the run's
//! channel, where the runner checks them against the stream's table shape
//! and queues them for the run's next commit.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::sink::{self, SinkError};
use crate::bindings::source_v0_2 as v0_2;
use sluice_core::channel::{EmitRefused, RunChannel};

/// Per-store state of the `sink` capability: present only during `read`.
#[derive(Default)]
pub struct SinkCtx {
    pub run: Option<Arc<dyn RunChannel>>,
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
        Ok(run.emit(stream, records).await?.map_err(|e| match e {
            EmitRefused::UnknownStream(s) => SinkError::UnknownStream(s),
            EmitRefused::InvalidRecord(index, reason) => SinkError::InvalidRecord((index, reason)),
            EmitRefused::Store(m) => SinkError::Store(m),
        }))
    }
}

impl v0_2::sink::Host for SinkCtx {
    async fn emit(
        &mut self,
        stream: String,
        records: Vec<String>,
    ) -> wasmtime::Result<Result<(), v0_2::sink::SinkError>> {
        Ok(sink::Host::emit(self, stream, records)
            .await?
            .map_err(Into::into))
    }
}

/// Link the `sink` interface of every WIT version, reaching each store's
/// [`SinkCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SinkCtx,
) -> wasmtime::Result<()> {
    sink::add_to_linker::<T, HasSelf<SinkCtx>>(linker, get)?;
    v0_2::sink::add_to_linker::<T, HasSelf<SinkCtx>>(linker, get)
}
