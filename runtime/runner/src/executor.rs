//! Executors: where a [`RunSpec`] runs. [`Executor::submit`] takes the spec
//! and returns a [`RunHandle`] that streams the run's [`RunEvent`]s and
//! ends with its report. [`LocalExecutor`] runs it in this process, on the
//! shared [`Runtime`]; an executor on a cluster implements the same trait.
//!
//! The spec carries secret *references*; the executor resolves them where
//! the run executes (here, this process's environment and files).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use sluice_core::cancel::Cancel;
use sluice_core::limits::LimitError;
use sluice_core::run_spec::{ComponentSource, RunSpec};
use sluice_core::secrets::{SecretError, Secrets};
use sluice_wasm::engine::Runtime;

use crate::pipeline::{self, PipelineError, RunProgress, RunReport, RunRequest};
use crate::registry::{Registry, RegistryError};

/// How often a running run reports its record counts as a
/// [`RunEvent::Progress`] (only when they changed).
pub const PROGRESS_EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// What happens to a submitted run, in order: any number of progress
/// events, then exactly one `Finished`.
#[derive(Debug)]
pub enum RunEvent {
    /// Records so far.
    Progress { emitted: u64, upserted: u64 },
    /// The run ended (its report, whatever its status), or could not be
    /// run at all.
    Finished(Box<Result<RunReport, ExecutorError>>),
}

/// Why a spec could not be run (a run that starts and fails is a report
/// with its status instead).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("component {path} has sha256 {actual}, but the run spec pins {expected}")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the run ended without a result: {0}")]
    Lost(String),
}

/// A submitted run: its events, and the stop request it obeys.
#[derive(Debug)]
pub struct RunHandle {
    events: mpsc::UnboundedReceiver<RunEvent>,
    cancel: Cancel,
}

impl RunHandle {
    /// Stop the run at its next commit ([`Cancel::stop`]) or at once
    /// ([`Cancel::abort`]).
    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// The next event; `None` after `Finished`.
    pub async fn next_event(&mut self) -> Option<RunEvent> {
        self.events.recv().await
    }

    /// Wait for the end of the run, passing by its progress events.
    pub async fn finish(mut self) -> Result<RunReport, ExecutorError> {
        while let Some(event) = self.events.recv().await {
            if let RunEvent::Finished(result) = event {
                return *result;
            }
        }
        Err(ExecutorError::Lost(
            "its task stopped before it reported".into(),
        ))
    }
}

/// Runs [`RunSpec`]s somewhere.
pub trait Executor: Send + Sync {
    /// Start `spec`; the run obeys `cancel` (the caller may wire it to
    /// signals, or use [`RunHandle::cancel`]).
    fn submit(&self, spec: RunSpec, cancel: Cancel) -> RunHandle;
}

/// Runs specs in this process, on the shared runtime (the default).
#[derive(Clone)]
pub struct LocalExecutor {
    runtime: Arc<Runtime>,
    /// Where [`ComponentSource::Registry`] names are looked up.
    connectors_dir: PathBuf,
}

impl LocalExecutor {
    pub fn new(runtime: Arc<Runtime>, connectors_dir: PathBuf) -> Self {
        LocalExecutor {
            runtime,
            connectors_dir,
        }
    }

    /// The runtime runs run on (its compile cache, its upstreams'
    /// breakers).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Where registry names are looked up.
    pub fn connectors_dir(&self) -> &std::path::Path {
        &self.connectors_dir
    }

    /// The spec as this process runs it: component found, limits checked,
    /// secrets read from this process's environment and files.
    async fn request(&self, spec: RunSpec, cancel: Cancel) -> Result<RunRequest, ExecutorError> {
        let mut limits = spec.limits.clone();
        limits.http = spec.http.clone();
        let limits = limits.limits()?;
        let component = match &spec.component {
            ComponentSource::Path(p) => p.clone(),
            ComponentSource::Registry(name) => {
                let registry = Registry::scan(&self.runtime, &self.connectors_dir).await?;
                registry.get(name)?.path.clone()
            }
        };
        if let Some(expected) = &spec.component_digest {
            let loaded = self.runtime.load(&component).map_err(PipelineError::from)?;
            if !loaded.hash.eq_ignore_ascii_case(expected) {
                return Err(ExecutorError::DigestMismatch {
                    path: component,
                    expected: expected.clone(),
                    actual: loaded.hash.clone(),
                });
            }
        }
        let secrets = Secrets::load_warning(&spec.secrets, &spec.secret_hosts)?;
        Ok(RunRequest {
            component,
            config: spec.config,
            db: spec.destination,
            db_password: spec.db_password,
            grants: spec.grants,
            secrets,
            limits,
            full_refresh: spec.full_refresh,
            instance: spec.instance,
            tables: spec.tables,
            streams: spec.streams,
            modes: spec.modes,
            output: spec.output,
            cancel,
            progress: Some(Arc::new(RunProgress::default())),
        })
    }
}

impl LocalExecutor {
    /// [`Executor::submit`] with the run id chosen by the caller (a new
    /// one, as [`pipeline::new_run_id`] makes), so that it is known before
    /// the run ends.
    pub fn submit_as(&self, spec: RunSpec, cancel: Cancel, run_id: String) -> RunHandle {
        let (tx, events) = mpsc::unbounded_channel();
        let this = self.clone();
        let run_cancel = cancel.clone();
        tokio::spawn(async move {
            let req = match this.request(spec, run_cancel).await {
                Ok(req) => req,
                Err(e) => {
                    let _ = tx.send(RunEvent::Finished(Box::new(Err(e))));
                    return;
                }
            };
            let progress = req.progress.clone().unwrap_or_default();
            let run = pipeline::run_as(&this.runtime, &req, run_id);
            tokio::pin!(run);
            let mut tick = tokio::time::interval(PROGRESS_EVENT_INTERVAL);
            let mut last = (0, 0);
            let result = loop {
                tokio::select! {
                    result = &mut run => break result,
                    _ = tick.tick() => {
                        let now = progress.get();
                        if now != last {
                            last = now;
                            let _ = tx.send(RunEvent::Progress { emitted: now.0, upserted: now.1 });
                        }
                    }
                }
            };
            let _ = tx.send(RunEvent::Finished(Box::new(
                result.map_err(ExecutorError::from),
            )));
        });
        RunHandle { events, cancel }
    }
}

impl Executor for LocalExecutor {
    fn submit(&self, spec: RunSpec, cancel: Cancel) -> RunHandle {
        self.submit_as(spec, cancel, pipeline::new_run_id())
    }
}
