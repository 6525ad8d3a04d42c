//! The per-run channel between a sandbox's host capabilities and the
//! runner. The `sink` and `state` capabilities are thin: they hand each
//! call to a [`RunChannel`], and the runner behind it validates, counts,
//! quarantines and commits. A transform step can sit there later without
//! the sandbox knowing.

use std::future::Future;
use std::pin::Pin;

use crate::abort::HostAbort;

/// A boxed future a channel returns (the channel is a trait object).
pub type ChannelFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a `sink.emit` batch was refused; the guest is told and the run goes
/// on (a [`HostAbort`] ends it instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitRefused {
    /// The run did not select this stream.
    UnknownStream(String),
    /// The record at this index of the batch is not a JSON object.
    InvalidRecord(u32, String),
    /// The records could not be accepted (e.g. outside a read).
    Store(String),
}

/// Why a `state.commit` was refused; the guest is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRefused {
    UnknownStream(String),
    Store(String),
}

/// What the host capabilities of one read call.
pub trait RunChannel: Send + Sync {
    /// The connector's name (log lines are tagged with it).
    fn connector(&self) -> &str;
    /// A batch of records (JSON text) of `stream`.
    fn emit(
        &self,
        stream: String,
        records: Vec<String>,
    ) -> ChannelFuture<'_, Result<Result<(), EmitRefused>, HostAbort>>;
    /// The committed state of `stream`, as the read may see it.
    fn get_state(&self, stream: String) -> ChannelFuture<'_, Result<Option<String>, HostAbort>>;
    /// Commit every record emitted so far with `stream`'s new state.
    fn commit_state(
        &self,
        stream: String,
        value: String,
    ) -> ChannelFuture<'_, Result<Result<(), StateRefused>, HostAbort>>;
}
