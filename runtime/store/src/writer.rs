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

use sluice_core::destination::{CommitRequest, CommitStats, Pending, Store, StoreError};
use sluice_core::limits::WRITER_CHANNEL_CAPACITY;

type Job = Box<dyn FnOnce(&mut dyn Store) + Send>;

enum Msg {
    Append {
        run_id: Arc<str>,
        pending: Pending,
    },
    Commit {
        commit: Commit,
        reply: oneshot::Sender<Result<CommitStats, StoreError>>,
    },
    Discard {
        run_id: Arc<str>,
        reply: oneshot::Sender<usize>,
    },
    Call(Job),
}

/// What a commit message carries (besides the run's pending records).
#[derive(Debug, Clone)]
pub struct Commit {
    pub run_id: Arc<str>,
    pub connector: Arc<str>,
    pub connector_version: Arc<str>,
    /// (stream, value)
    pub state: Option<(String, String)>,
    /// Full-refresh streams to sweep (only at the end of a successful run).
    pub sweep: Vec<Arc<sluice_core::row::StreamTable>>,
}

/// A commit queued on the writer, not yet known to have landed.
#[derive(Debug)]
pub struct PendingCommit(oneshot::Receiver<Result<CommitStats, StoreError>>);

impl PendingCommit {
    /// Wait for the commit's transaction to end.
    pub async fn finish(self) -> Result<CommitStats, StoreError> {
        self.0.await.map_err(|_| StoreError::WriterGone)?
    }
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
    let mut pending: HashMap<Arc<str>, Pending> = HashMap::new();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Append {
                run_id,
                pending: more,
            } => pending.entry(run_id).or_default().merge(more),
            Msg::Commit { commit, reply } => {
                let run = pending.remove(&commit.run_id).unwrap_or_default();
                let result = store.commit(&CommitRequest {
                    run_id: &commit.run_id,
                    connector: &commit.connector,
                    connector_version: &commit.connector_version,
                    pending: &run,
                    state: commit.state.as_ref().map(|(s, v)| (s.as_str(), v.as_str())),
                    sweep: &commit.sweep,
                });
                let _ = reply.send(result);
            }
            Msg::Discard { run_id, reply } => {
                let n = pending.remove(&run_id).map_or(0, |p| p.records());
                let _ = reply.send(n);
            }
            Msg::Call(job) => job(store.as_mut()),
        }
    }
}

impl Writer {
    /// Queue validated rows, quarantined records and drift for `run_id`'s
    /// next commit.
    pub async fn append(&self, run_id: Arc<str>, pending: Pending) -> Result<(), StoreError> {
        self.tx
            .send(Msg::Append { run_id, pending })
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    /// Write the run's queued records and the commit's state (and sweeps)
    /// in one transaction.
    pub async fn commit(&self, commit: Commit) -> Result<CommitStats, StoreError> {
        self.commit_begin(commit).await?.finish().await
    }

    /// Queue the commit behind everything sent before it and return at
    /// once; [`PendingCommit::finish`] waits for its outcome. The writer
    /// handles messages in order, so records emitted after this call are
    /// never part of it.
    pub async fn commit_begin(&self, commit: Commit) -> Result<PendingCommit, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Commit { commit, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(PendingCommit(rx))
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
