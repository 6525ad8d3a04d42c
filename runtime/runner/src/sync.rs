//! Many connector instances in one process: `sluice sync`. Every instance
//! of `sluice.toml` becomes a [`RunRequest`] keyed by its instance name; the
//! runs share one [`Runtime`] (engine, compile cache, `InstancePre`s) and
//! run on tokio with bounded concurrency, each in its own sandbox through
//! [`pipeline::run`]. One failing (or even panicking) does not stop the
//! others.
//!
//! The module is UI-agnostic: callers watch runs through a [`SyncEvent`]
//! callback and each run's [`RunProgress`] counters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::{ComponentRef, ConfigError, OperatorConfig};
use crate::pipeline::{self, PipelineError, RunProgress, RunReport, RunRequest};
use crate::registry::{Registry, RegistryError};
use sluice_wasm::engine::Runtime;

/// Why an instance did not produce a run report.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("component {0:?} is a connector name, but no connectors directory was scanned")]
    NoRegistry(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the run's task panicked: {0}")]
    Panicked(String),
}

/// One instance to run: its name and its request, or why it could not be
/// prepared (it then fails alone).
#[derive(Debug)]
pub struct SyncJob {
    pub instance: String,
    pub request: Result<RunRequest, SyncError>,
}

/// How one instance went.
#[derive(Debug)]
pub struct SyncOutcome {
    pub instance: String,
    pub result: Result<RunReport, SyncError>,
    /// From the start of its run (after waiting for a slot).
    pub duration: Duration,
}

impl SyncOutcome {
    /// Did the instance's run succeed?
    pub fn succeeded(&self) -> bool {
        self.result.as_ref().is_ok_and(RunReport::succeeded)
    }
}

/// What a [`run_all`] observer is told.
#[derive(Debug)]
pub enum SyncEvent<'a> {
    /// An instance got a slot and its run starts; `progress` counts its
    /// records as it goes.
    Started {
        instance: &'a str,
        progress: &'a Arc<RunProgress>,
    },
    /// An instance finished (or could not start).
    Finished(&'a SyncOutcome),
}

/// Called from the runs' tasks; must not block.
pub type Observer = Arc<dyn Fn(SyncEvent<'_>) + Send + Sync>;

/// The [`RunRequest`] of instance `name`: config JSON, secrets, grants,
/// limits, its database, and its component resolved through `registry`
/// when it is given by name. State and run history are keyed by the
/// instance name.
pub fn prepare(
    config: &OperatorConfig,
    name: &str,
    registry: Option<&Registry>,
) -> Result<RunRequest, SyncError> {
    let inst = config.instance(name)?;
    let component = match inst.component {
        ComponentRef::Path(p) => p,
        ComponentRef::Name(n) => registry
            .ok_or_else(|| SyncError::NoRegistry(n.clone()))?
            .get(&n)?
            .path
            .clone(),
    };
    Ok(RunRequest {
        component,
        config: inst.config,
        db: inst.db,
        db_password: inst.db_password,
        grants: inst.grants,
        secrets: inst.secrets,
        limits: inst.limits,
        full_refresh: inst.full_refresh,
        instance: inst.name,
        tables: inst.tables,
        streams: inst.streams,
        modes: inst.modes,
        output: None,
        cancel: Default::default(),
        progress: None,
    })
}

/// Run `jobs`, at most `concurrency` at once (at least one), in the order
/// given as slots free up. Returns an outcome per job, in that order.
pub async fn run_all(
    runtime: Arc<Runtime>,
    jobs: Vec<SyncJob>,
    concurrency: usize,
    observer: Observer,
) -> Vec<SyncOutcome> {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let names: Vec<String> = jobs.iter().map(|j| j.instance.clone()).collect();
    let mut tasks = JoinSet::new();
    let mut task_index = std::collections::HashMap::new();
    for (index, job) in jobs.into_iter().enumerate() {
        let runtime = runtime.clone();
        let slots = slots.clone();
        let observer = observer.clone();
        let handle = tasks.spawn(async move {
            let outcome = run_one(&runtime, job, &slots, &observer).await;
            observer(SyncEvent::Finished(&outcome));
            (index, outcome)
        });
        task_index.insert(handle.id(), index);
    }
    let mut outcomes: Vec<Option<SyncOutcome>> = names.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next_with_id().await {
        match joined {
            Ok((_, (index, outcome))) => outcomes[index] = Some(outcome),
            Err(e) => {
                let Some(&index) = task_index.get(&e.id()) else {
                    continue;
                };
                let outcome = SyncOutcome {
                    instance: names[index].clone(),
                    result: Err(SyncError::Panicked(e.to_string())),
                    duration: Duration::ZERO,
                };
                observer(SyncEvent::Finished(&outcome));
                outcomes[index] = Some(outcome);
            }
        }
    }
    outcomes
        .into_iter()
        .zip(names)
        .map(|(o, instance)| {
            o.unwrap_or_else(|| SyncOutcome {
                instance,
                result: Err(SyncError::Panicked("the run's task vanished".into())),
                duration: Duration::ZERO,
            })
        })
        .collect()
}

async fn run_one(
    runtime: &Runtime,
    job: SyncJob,
    slots: &Semaphore,
    observer: &Observer,
) -> SyncOutcome {
    let mut request = match job.request {
        Ok(r) => r,
        Err(e) => {
            return SyncOutcome {
                instance: job.instance,
                result: Err(e),
                duration: Duration::ZERO,
            }
        }
    };
    // The semaphore is never closed, so acquiring only waits.
    let _slot = slots.acquire().await;
    let progress = Arc::new(RunProgress::default());
    request.progress = Some(progress.clone());
    observer(SyncEvent::Started {
        instance: &job.instance,
        progress: &progress,
    });
    let start = Instant::now();
    let result = pipeline::run(runtime, &request)
        .await
        .map_err(SyncError::from);
    SyncOutcome {
        instance: job.instance,
        result,
        duration: start.elapsed(),
    }
}
