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
/// is never cancelled. A [`Cancel::child`] also obeys its parent: a
/// service's stop reaches every run, and one run can be stopped alone.
#[derive(Debug, Clone)]
pub struct Cancel {
    tx: Arc<watch::Sender<CancelLevel>>,
    parent: Option<Box<Cancel>>,
    /// How long a run may go on after a stop request before it is stopped
    /// without its commit (its children's too).
    grace: Duration,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::with_grace(crate::limits::CANCEL_GRACE)
    }
}

impl Cancel {
    /// A signal whose runs get `grace` to reach a commit after a stop
    /// request (the default: [`crate::limits::CANCEL_GRACE`]).
    pub fn with_grace(grace: Duration) -> Cancel {
        Cancel {
            tx: Arc::new(watch::channel(CancelLevel::Run).0),
            parent: None,
            grace,
        }
    }

    /// The grace period of this signal's runs.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A signal of its own that is also stopped (or aborted) whenever
    /// this one is; stopping the child leaves this one running.
    pub fn child(&self) -> Cancel {
        Cancel {
            tx: Arc::new(watch::channel(CancelLevel::Run).0),
            parent: Some(Box::new(self.clone())),
            grace: self.grace,
        }
    }

    /// Resolves once this signal or an ancestor reaches `min`.
    fn reached(
        &self,
        min: CancelLevel,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut rx = self.tx.subscribe();
            // The sender lives in `self`, so `wait_for` never fails.
            match &self.parent {
                None => {
                    let _ = rx.wait_for(|l| *l >= min).await;
                }
                Some(parent) => {
                    tokio::select! {
                        _ = rx.wait_for(|l| *l >= min) => {}
                        () = parent.reached(min) => {}
                    }
                }
            }
        })
    }

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

    /// How far this signal (or an ancestor) asks runs to stop.
    pub fn level(&self) -> CancelLevel {
        let own = *self.tx.borrow();
        match &self.parent {
            None => own,
            Some(parent) => own.max(parent.level()),
        }
    }

    /// Resolves once a stop (or an abort) is requested.
    pub async fn stopped(&self) {
        self.reached(CancelLevel::Stop).await;
    }

    /// Resolves once runs must stop without waiting for a commit: `grace`
    /// after a stop request, or at an abort.
    pub async fn hard(&self, grace: Duration) {
        self.reached(CancelLevel::Stop).await;
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            () = self.reached(CancelLevel::Abort) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_child_obeys_its_parent_and_stops_alone() {
        let grace = Duration::from_secs(10);
        let parent = Cancel::default();
        let (a, b) = (parent.child(), parent.child());
        a.stop();
        assert_eq!(a.level(), CancelLevel::Stop);
        assert_eq!(b.level(), CancelLevel::Run, "a sibling keeps running");
        assert_eq!(parent.level(), CancelLevel::Run, "the parent keeps running");
        tokio::time::timeout(Duration::from_secs(1), a.stopped())
            .await
            .expect("the child's own stop");
        let b_stopped = tokio::spawn({
            let b = b.clone();
            async move { b.stopped().await }
        });
        let b_hard = tokio::spawn({
            let b = b.clone();
            async move { b.hard(grace).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!b_stopped.is_finished());
        parent.stop();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            b_stopped.is_finished(),
            "the parent's stop reaches the child"
        );
        assert_eq!(b.level(), CancelLevel::Stop);
        assert!(!b_hard.is_finished(), "within the grace period");
        parent.abort();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(b_hard.is_finished(), "the parent's abort does not wait");
        assert_eq!(b.child().level(), CancelLevel::Abort, "a grandchild too");
    }

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
