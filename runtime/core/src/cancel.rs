//! Stopping runs on the operator's request (SIGTERM, Ctrl-C): a first
//! request stops each run at its next commit (or, if none comes, after
//! [`crate::limits::CANCEL_GRACE`]); a second stops them at once. Either
//! way the run is recorded as `cancelled` with what it committed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// How far runs have been asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CancelLevel {
    /// Keep going.
    Run,
    /// Stop at the next commit, or after the grace period.
    Stop,
    /// Stop now.
    Abort,
}

/// A cancellation signal shared by the runs it should stop. The default
/// is never cancelled.
#[derive(Debug, Clone)]
pub struct Cancel {
    tx: Arc<watch::Sender<CancelLevel>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel {
            tx: Arc::new(watch::channel(CancelLevel::Run).0),
        }
    }
}

impl Cancel {
    /// Ask runs to stop at their next commit.
    pub fn stop(&self) {
        self.tx.send_if_modified(|level| {
            let more = *level < CancelLevel::Stop;
            if more {
                *level = CancelLevel::Stop;
            }
            more
        });
    }

    /// Ask runs to stop now.
    pub fn abort(&self) {
        self.tx.send_replace(CancelLevel::Abort);
    }

    pub fn level(&self) -> CancelLevel {
        *self.tx.borrow()
    }

    /// Resolves once a stop (or an abort) is requested.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|l| *l >= CancelLevel::Stop).await;
    }

    /// Resolves once runs must stop without waiting for a commit: `grace`
    /// after a stop request, or at an abort.
    pub async fn hard(&self, grace: Duration) {
        let mut rx = self.tx.subscribe();
        if rx.wait_for(|l| *l >= CancelLevel::Stop).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            _ = rx.wait_for(|l| *l == CancelLevel::Abort) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stop_turns_hard_after_the_grace_period_or_at_an_abort() {
        let grace = Duration::from_secs(10);
        let c = Cancel::default();
        assert_eq!(c.level(), CancelLevel::Run);
        let hard = tokio::spawn({
            let c = c.clone();
            async move { c.hard(grace).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!hard.is_finished(), "no request, no stop");
        c.stop();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!hard.is_finished(), "within the grace period");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(hard.is_finished());

        let c = Cancel::default();
        c.stop();
        let hard = tokio::spawn({
            let c = c.clone();
            async move { c.hard(grace).await }
        });
        tokio::task::yield_now().await;
        c.abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(hard.is_finished(), "an abort does not wait");
        assert_eq!(c.level(), CancelLevel::Abort);
        c.stop();
        assert_eq!(
            c.level(),
            CancelLevel::Abort,
            "a stop never lowers an abort"
        );
    }
}
