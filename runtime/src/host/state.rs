//! The `state` capability: per-stream checkpoint values. `commit` queues the
//! run's pending records and the value as one transaction and lets the
//! connector go on while the writer writes it (see
//! [`RunChannel::commit_pipelined`]).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::{HostAbort, RunChannel};
use crate::bindings::state::{self, StateError};

/// Per-store state of the `state` capability: present only during `read`.
#[derive(Default)]
pub struct StateCtx {
    pub run: Option<Arc<RunChannel>>,
}

impl state::Host for StateCtx {
    async fn get(&mut self, stream: String) -> wasmtime::Result<Option<String>> {
        let Some(run) = &self.run else {
            return Ok(None);
        };
        match run.streams.get(&stream) {
            // Unknown streams have no state; full refresh hides saved state.
            None => return Ok(None),
            Some(s) if s.full_refresh => return Ok(None),
            Some(_) => {}
        }
        let connector = run.connector.clone();
        let value = run
            .writer
            .call(move |s| s.get_state(&connector, &stream))
            .await
            .and_then(|r| r)
            .map_err(|e| HostAbort::Store(e.to_string()))?;
        Ok(value)
    }

    async fn commit(
        &mut self,
        stream: String,
        value: String,
    ) -> wasmtime::Result<Result<(), StateError>> {
        let Some(run) = &self.run else {
            return Ok(Err(StateError::Store(
                "state can only be committed during read".into(),
            )));
        };
        if !run.streams.contains_key(&stream) {
            return Ok(Err(StateError::UnknownStream(stream)));
        }
        if value.len() as u64 > run.max_state_bytes {
            // Ends the run: a connector whose checkpoint outgrew the limit
            // cannot make progress, and must not commit a truncated one.
            return Err(HostAbort::StateTooLarge {
                stream,
                size: value.len() as u64,
                limit: run.max_state_bytes,
            }
            .into());
        }
        run.commit_pipelined((stream, value))
            .await
            .map_err(wasmtime::Error::new)?;
        Ok(Ok(()))
    }
}

/// Link the `state` interface, reaching each store's [`StateCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut StateCtx,
) -> wasmtime::Result<()> {
    state::add_to_linker::<T, HasSelf<StateCtx>>(linker, get)
}
