//! WAL checkpoints off the writer's thread.
//!
//! In WAL mode every committed page is written twice: to the WAL at commit,
//! and into the database file when a checkpoint copies it back (with an
//! `fsync` of each file). SQLite's automatic checkpoint does that copy
//! inside the commit that crosses its threshold, so the writer (and the
//! run waiting on its commit) stalls for it, and the connection's close at
//! the end of a run copies whatever is left.
//!
//! A [`Checkpointer`] runs `PRAGMA wal_checkpoint(PASSIVE)` on a thread and
//! a connection of its own, at most every [`CHECKPOINT_INTERVAL`] while
//! commits arrive. A passive checkpoint never blocks the writer (nor
//! readers) and never loses or reorders anything: it only copies frames
//! already committed. The writer keeps SQLite's automatic checkpoint at
//! [`BACKSTOP_CHECKPOINT_PAGES`]: it bounds the WAL, and mostly finds the
//! frames already copied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// Shortest time between two background checkpoints of one database. Each
/// costs up to two `fsync`s; commits in between are copied together.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(30);

/// WAL size (in pages) at which the writer's own connection checkpoints
/// anyway, should the background checkpoints fall behind. SQLite's default:
/// it keeps the WAL file (16 MiB at 16 KiB pages) from growing, and by the
/// time it is reached the background has usually copied most frames, so
/// the writer's checkpoint has little left to do. (4,096 pages measured no
/// faster, and the larger WAL file costs more to remove at close.)
pub const BACKSTOP_CHECKPOINT_PAGES: u32 = 1_000;

/// Page cache of the checkpoint connection (a checkpoint copies frames
/// through a buffer of its own; the cache only serves the WAL index).
const CHECKPOINT_CACHE_KIB: i64 = 64;

#[derive(Default)]
struct Signal {
    /// Commits have landed since the last checkpoint.
    dirty: bool,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    signal: Mutex<Signal>,
    wake: Condvar,
    /// Checkpoints run so far.
    done: AtomicU64,
}

impl Shared {
    /// Set a flag of the signal and wake the thread.
    fn raise(&self, set: impl FnOnce(&mut Signal)) {
        set(&mut self.signal.lock().unwrap_or_else(|e| e.into_inner()));
        self.wake.notify_one();
    }
}

/// The background checkpoints of one database, started at the first
/// [`Checkpointer::nudge`]; dropping it stops the thread (the store's own
/// connection then closes and checkpoints the remainder).
pub struct Checkpointer {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub fn new(path: &Path) -> Self {
        Checkpointer {
            path: path.to_path_buf(),
            shared: Arc::default(),
            thread: None,
        }
    }

    /// A commit has landed: checkpoint soon.
    pub fn nudge(&mut self) {
        if self.thread.is_none() {
            let (path, shared) = (self.path.clone(), self.shared.clone());
            match std::thread::Builder::new()
                .name("sluice-ckpt".into())
                .spawn(move || run(&path, &shared))
            {
                Ok(handle) => self.thread = Some(handle),
                // The writer's automatic checkpoints carry on alone.
                Err(e) => {
                    tracing::debug!(error = %e, "no thread for background checkpoints");
                    return;
                }
            }
        }
        self.shared.raise(|s| s.dirty = true);
    }

    /// Checkpoints run so far.
    pub fn checkpoints(&self) -> u64 {
        self.shared.done.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.raise(|s| s.stop = true);
            let _ = thread.join();
        }
    }
}

fn run(path: &Path, shared: &Shared) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "background checkpoints: cannot open the database");
            return;
        }
    };
    let _ = conn.pragma_update(None, "cache_size", -CHECKPOINT_CACHE_KIB);
    loop {
        {
            let mut signal = shared.signal.lock().unwrap_or_else(|e| e.into_inner());
            while !signal.dirty && !signal.stop {
                signal = shared.wake.wait(signal).unwrap_or_else(|e| e.into_inner());
            }
            if signal.stop {
                return;
            }
            signal.dirty = false;
        }
        // (busy, frames in the WAL, frames copied): a busy or failed
        // checkpoint is simply tried again after the next commit.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
        {
            tracing::debug!(error = %e, "background checkpoint failed");
        }
        shared.done.fetch_add(1, Ordering::Relaxed);
        let signal = shared.signal.lock().unwrap_or_else(|e| e.into_inner());
        let (signal, _) = shared
            .wake
            .wait_timeout_while(signal, CHECKPOINT_INTERVAL, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        if signal.stop {
            return;
        }
    }
}
