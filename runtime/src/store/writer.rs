//! One writer thread per database. Sandboxes hand it validated batches over
//! a bounded channel (back-pressure), so `sink.emit` never waits on disk;
//! `state.commit` waits until the writer has written the run's pending
//! batches and the state in one transaction.
//!
//! Pending batches are kept per run, so concurrent runs into one database
//! never commit each other's records.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{Batch, CommitStats, Row, Store, StoreError, StreamTable};
use crate::limits::WRITER_CHANNEL_CAPACITY;

type Job = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Msg {
    Append {
        run_id: Arc<str>,
        table: Arc<StreamTable>,
        rows: Vec<Row>,
    },
    Commit {
        run_id: Arc<str>,
        connector: Arc<str>,
        state: Option<(String, String)>,
        reply: oneshot::Sender<Result<CommitStats, StoreError>>,
    },
    Discard {
        run_id: Arc<str>,
        reply: oneshot::Sender<usize>,
    },
    Call(Job),
}

/// A cheap, cloneable handle to a database's writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
}

/// Owns the writer thread; [`WriterHandle::close`] waits for it to finish.
pub struct WriterHandle {
    pub writer: Writer,
    join: JoinHandle<()>,
}

impl WriterHandle {
    /// Start a writer thread that owns `store`.
    pub fn spawn(store: Box<dyn Store>) -> WriterHandle {
        let (tx, rx) = mpsc::channel(WRITER_CHANNEL_CAPACITY);
        let join = std::thread::Builder::new()
            .name("sluice-writer".into())
            .spawn(move || writer_loop(store, rx))
            .expect("spawn writer thread");
        WriterHandle {
            writer: Writer { tx },
            join,
        }
    }

    /// Drop this handle's sender and wait (off the async threads) until
    /// every clone is gone and the thread has closed the store.
    pub async fn close(self) {
        drop(self.writer);
        let join = self.join;
        let _ = tokio::task::spawn_blocking(move || join.join()).await;
    }
}

fn writer_loop(mut store: Box<dyn Store>, mut rx: mpsc::Receiver<Msg>) {
    let mut pending: HashMap<Arc<str>, Vec<Batch>> = HashMap::new();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Append {
                run_id,
                table,
                rows,
            } => {
                let batches = pending.entry(run_id).or_default();
                match batches.last_mut() {
                    Some((t, r)) if Arc::ptr_eq(t, &table) => r.extend(rows),
                    _ => batches.push((table, rows)),
                }
            }
            Msg::Commit {
                run_id,
                connector,
                state,
                reply,
            } => {
                let batches = pending.remove(&run_id).unwrap_or_default();
                let state = state.as_ref().map(|(s, v)| (s.as_str(), v.as_str()));
                let result = store.commit(&connector, &run_id, &batches, state);
                let _ = reply.send(result);
            }
            Msg::Discard { run_id, reply } => {
                let n = pending
                    .remove(&run_id)
                    .map_or(0, |b| b.iter().map(|(_, r)| r.len()).sum());
                let _ = reply.send(n);
            }
            Msg::Call(job) => job(store.as_mut()),
        }
    }
}

impl Writer {
    /// Queue validated rows of `table` for `run_id`'s next commit.
    pub async fn append(
        &self,
        run_id: Arc<str>,
        table: Arc<StreamTable>,
        rows: Vec<Row>,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Append {
                run_id,
                table,
                rows,
            })
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    /// Write `run_id`'s queued rows and `state` in one transaction.
    pub async fn commit(
        &self,
        run_id: Arc<str>,
        connector: Arc<str>,
        state: Option<(String, String)>,
    ) -> Result<CommitStats, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Commit {
                run_id,
                connector,
                state,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Drop `run_id`'s uncommitted rows; returns how many were dropped.
    pub async fn discard(&self, run_id: Arc<str>) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Discard { run_id, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }

    /// Run `f` on the writer thread with the store.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Store) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |s| {
            let _ = reply.send(f(s));
        });
        self.tx
            .send(Msg::Call(job))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)
    }
}
