//! The `state` capability: per-stream checkpoint values, handed to the
//! run's channel. A commit queues the run's pending records and the value
//! as one transaction and lets the connector go on while it is written.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::source_v0_2 as v0_2;
use crate::bindings::state::{self, StateError};
use sluice_core::channel::{RunChannel, StateRefused};

/// Per-store state of the `state` capability: present only during `read`.
#[derive(Default)]
pub struct StateCtx {
    pub run: Option<Arc<dyn RunChannel>>,
}

impl state::Host for StateCtx {
    async fn get(&mut self, stream: String) -> wasmtime::Result<Option<String>> {
        let Some(run) = &self.run else {
            return Ok(None);
        };
        Ok(run.get_state(stream).await?)
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
        Ok(run.commit_state(stream, value).await?.map_err(|e| match e {
            StateRefused::UnknownStream(s) => StateError::UnknownStream(s),
            StateRefused::Store(m) => StateError::Store(m),
        }))
    }
}

impl v0_2::state::Host for StateCtx {
    async fn get(&mut self, stream: String) -> wasmtime::Result<Option<String>> {
        state::Host::get(self, stream).await
    }

    async fn commit(
        &mut self,
        stream: String,
        value: String,
    ) -> wasmtime::Result<Result<(), v0_2::state::StateError>> {
        Ok(state::Host::commit(self, stream, value)
            .await?
            .map_err(Into::into))
    }
}

/// Link the `state` interface of every WIT version, reaching each store's
/// [`StateCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut StateCtx,
) -> wasmtime::Result<()> {
    state::add_to_linker::<T, HasSelf<StateCtx>>(linker, get)?;
    v0_2::state::add_to_linker::<T, HasSelf<StateCtx>>(linker, get)
}
