//! The service's state and its scheduler: which instances are running,
//! when each is next due (persisted in the instance's run log, so a
//! restart neither loses nor doubles runs), and the start of every run
//! (scheduled or on demand) through the [`LocalExecutor`], never two of
//! one instance at once and at most `max_concurrent_runs` in all.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use sluice_core::cancel::{Cancel, CancelLevel};
use sluice_core::destination::Store;
use sluice_core::destination::{
    AlertEvent, AlertState, DriftEvent, QuarantineEntry, QuarantineFilter, RunPage, RunQuery,
    RunStatus, ScheduleEntry, StoreError,
};
use sluice_core::location::DbLocation;
use sluice_core::run::{now_rfc3339, RunRecord};
use sluice_core::secrets::SecretSource;
use sluice_runner::config::OperatorConfig;
use sluice_runner::executor::ExecutorError;
use sluice_runner::pipeline::{new_run_id, PipelineError, ReplaySummary};
use sluice_runner::schedule::{rfc3339_ms, unix_ms, CatchUp, Schedule};
use sluice_runner::LocalExecutor;

/// How often the scheduler looks for due instances.
pub const SCHEDULER_TICK: Duration = Duration::from_millis(250);

/// `/readyz` calls the scheduler dead when it has not ticked for this long.
pub const SCHEDULER_STALL: Duration = Duration::from_secs(30);

/// Why a run was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no instance named {0:?}")]
    UnknownInstance(String),
    #[error("instance {instance} is already running (run {run_id})")]
    Busy { instance: String, run_id: String },
    #[error("the server is stopping")]
    Stopping,
    #[error(transparent)]
    Config(#[from] sluice_runner::config::ConfigError),
}

/// Why a run was not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("run {0} not found")]
    NotFound(String),
    #[error("run {run_id} is not running here (it is {status})")]
    NotRunning { run_id: String, status: String },
}

/// A run that did not happen, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub at: String,
    /// The run id it would have had (when one was handed out).
    pub run_id: Option<String>,
    pub reason: String,
}

/// The last run of an instance this process started.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub run_id: String,
    /// Its status, or `not_started` when it could not run at all.
    pub status: String,
    pub ended_at: String,
    pub error: Option<String>,
}

/// What the service knows of one instance.
#[derive(Debug, Clone, Default)]
struct InstanceState {
    schedule: Option<Schedule>,
    jitter: Option<Duration>,
    catch_up: CatchUp,
    next_run_at_ms: Option<i64>,
    running: Option<String>,
    last_run: Option<LastRun>,
    skipped: u64,
    last_skip: Option<Skip>,
}

/// One instance as `GET /api/v1/instances` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub name: String,
    /// The cron expression, if scheduled so.
    pub schedule: Option<String>,
    /// The interval, if scheduled so.
    pub every: Option<String>,
    pub catch_up: &'static str,
    /// The time zone of the cron expression (`None`: UTC).
    pub timezone: Option<&'static str>,
    /// The largest random delay added to each due time.
    pub jitter: Option<String>,
    pub next_run_at: Option<String>,
    /// The run going now, if any.
    pub running: Option<String>,
    /// The last run this server started (since it started).
    pub last_run: Option<LastRun>,
    /// The newest run in the run log (whoever started it; skipped runs
    /// aside).
    pub last_recorded_run: Option<RunRecord>,
    /// `ok` (last run succeeded), `failing` (it did not), `running`, or
    /// `unknown` (no run yet).
    pub health: &'static str,
    /// Due runs skipped since the server started (e.g. the previous run was
    /// still going).
    pub skipped_runs: u64,
    pub last_skip: Option<Skip>,
}

/// One open run log per database the instances use.
type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// The config and the run logs it names (replaced whole at a reload).
struct Topology {
    config: Arc<OperatorConfig>,
    /// The run log of each instance, by instance (several may share one).
    stores: BTreeMap<String, SharedStore>,
    /// The distinct run logs.
    logs: Vec<(DbLocation, SharedStore)>,
}

impl Topology {
    /// Open the run log of every instance of `config`, reusing those of
    /// `previous` that it still names.
    async fn open(
        config: OperatorConfig,
        previous: Option<&Topology>,
    ) -> Result<Topology, StoreError> {
        let mut logs: Vec<(DbLocation, SharedStore)> = Vec::new();
        let mut stores = BTreeMap::new();
        for name in config.names() {
            // Checked at load: every instance has a database.
            let Some((db, password)) = config.db_of(&name) else {
                continue;
            };
            let known = logs
                .iter()
                .chain(previous.into_iter().flat_map(|p| p.logs.iter()))
                .find(|(d, _)| *d == db)
                .map(|(_, s)| s.clone());
            let store = match known {
                Some(s) => s,
                None => open_store(db.clone(), password).await?,
            };
            if !logs.iter().any(|(d, _)| *d == db) {
                logs.push((db, store.clone()));
            }
            stores.insert(name, store);
        }
        Ok(Topology {
            config: Arc::new(config),
            stores,
            logs,
        })
    }

    fn logs(&self) -> Vec<SharedStore> {
        self.logs.iter().map(|(_, s)| s.clone()).collect()
    }

    /// Is `log` the run log of instance `name`?
    fn is_log_of(&self, name: &str, log: &SharedStore) -> bool {
        self.stores.get(name).is_some_and(|s| Arc::ptr_eq(s, log))
    }
}

/// What a reload of `sluice.toml` changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Instances whose schedule, jitter or catch-up changed.
    pub rescheduled: Vec<String>,
}

/// The running service: the config, the executor, the state of each
/// instance, the run slots and the stop request.
pub struct Service {
    topology: std::sync::RwLock<Arc<Topology>>,
    executor: LocalExecutor,
    cancel: Cancel,
    slots: Arc<Semaphore>,
    instances: Mutex<BTreeMap<String, InstanceState>>,
    /// Runs started and not yet ended.
    active: Arc<watch::Sender<usize>>,
    /// When the scheduler last ticked (ms since the epoch).
    last_tick_ms: std::sync::atomic::AtomicI64,
    /// The stop signal of each run this process started and that has not
    /// ended (a child of the service's: a server stop reaches them all).
    run_cancels: Mutex<HashMap<String, Cancel>>,
    /// Runs executing now (past their slot).
    executing: AtomicUsize,
    pub metrics: crate::metrics::Metrics,
    /// When the service started (ms since the epoch): staleness of an
    /// instance that never succeeded counts from here.
    started_ms: i64,
    /// One alert evaluation at a time (so one change is sent once).
    alerting: tokio::sync::Mutex<()>,
    /// Alert evaluations done.
    evaluations: std::sync::atomic::AtomicU64,
    /// The webhooks' client.
    http: reqwest::Client,
}

fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// Run `f` on `store` on a blocking thread.
async fn with_store<R, F>(store: &SharedStore, f: F) -> Result<R, StoreError>
where
    F: FnOnce(&mut dyn Store) -> Result<R, StoreError> + Send + 'static,
    R: Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.as_mut())
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("the store task failed: {e}")))?
}

impl Service {
    /// Open each instance's run log and load (or compute, and persist)
    /// each scheduled instance's next run.
    pub async fn start(
        config: OperatorConfig,
        executor: LocalExecutor,
        cancel: Cancel,
    ) -> Result<Service, crate::ServerError> {
        let topology = Topology::open(config, None).await?;
        let config = &topology.config;
        let instances: BTreeMap<String, InstanceState> = config
            .names()
            .into_iter()
            .map(|name| {
                let state = InstanceState {
                    schedule: config.schedule(&name),
                    jitter: config.jitter(&name),
                    catch_up: config.catch_up(&name),
                    ..Default::default()
                };
                (name, state)
            })
            .collect();
        let names: Vec<String> = instances.keys().cloned().collect();
        let service = Service {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs())),
            topology: std::sync::RwLock::new(Arc::new(topology)),
            executor,
            cancel,
            instances: Mutex::new(instances),
            active: Arc::new(watch::channel(0).0),
            last_tick_ms: now_ms().into(),
            run_cancels: Mutex::new(HashMap::new()),
            executing: AtomicUsize::new(0),
            metrics: crate::metrics::Metrics::new(),
            started_ms: now_ms(),
            alerting: tokio::sync::Mutex::new(()),
            evaluations: 0.into(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| StoreError::Invalid(format!("the webhook client: {e}")))?,
        };
        service.load_schedules(&names).await?;
        service.load_last_successes().await?;
        Ok(service)
    }

    /// The config and run logs now.
    fn topo(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read `sluice.toml` from `path` (SIGHUP): instances added,
    /// removed (a run going on ends as it would) or rescheduled; runs
    /// already started keep the config they started with. A bad file
    /// changes nothing. `max_concurrent_runs` takes effect at a restart.
    pub async fn reload(&self, path: &std::path::Path) -> Result<Reloaded, crate::ServerError> {
        let config = OperatorConfig::load(path)?;
        let old = self.topo();
        if config.max_concurrent_runs() != old.config.max_concurrent_runs() {
            tracing::warn!("max_concurrent_runs changed; it takes effect when the server restarts");
        }
        let topology = Topology::open(config, Some(&old)).await?;
        let mut out = Reloaded::default();
        let mut to_schedule = Vec::new();
        {
            let mut instances = self.lock();
            instances.retain(|name, _| {
                let keep = topology.stores.contains_key(name);
                if !keep {
                    out.removed.push(name.clone());
                }
                keep
            });
            for name in topology.config.names() {
                let schedule = topology.config.schedule(&name);
                let jitter = topology.config.jitter(&name);
                let catch_up = topology.config.catch_up(&name);
                match instances.get_mut(&name) {
                    None => {
                        out.added.push(name.clone());
                        to_schedule.push(name.clone());
                        instances.insert(
                            name,
                            InstanceState {
                                schedule,
                                jitter,
                                catch_up,
                                ..Default::default()
                            },
                        );
                    }
                    Some(state) => {
                        let key = |s: &Option<Schedule>| s.as_ref().map(Schedule::key);
                        if key(&state.schedule) != key(&schedule)
                            || state.jitter != jitter
                            || state.catch_up != catch_up
                        {
                            out.rescheduled.push(name.clone());
                            to_schedule.push(name.clone());
                            state.schedule = schedule;
                            state.jitter = jitter;
                            state.catch_up = catch_up;
                            state.next_run_at_ms = None;
                        }
                    }
                }
            }
        }
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(topology);
        self.load_schedules(&to_schedule).await?;
        Ok(out)
    }

    /// Seed `sluice_last_success_timestamp_seconds` from the run logs, so
    /// a restart does not make every instance look stale.
    async fn load_last_successes(&self) -> Result<(), StoreError> {
        for name in self.topo().config.names() {
            let query = RunQuery {
                status: Some(RunStatus::Succeeded),
                exclude: None,
                ..RunQuery::recent(&name, 1)
            };
            if let Some(run) = self.runs(query).await?.runs.first() {
                self.metrics.succeeded(&name, run);
            }
        }
        Ok(())
    }

    /// Ask a run this process started to stop: at its next commit
    /// (`now = false`; after the grace period at the latest) or at once.
    pub async fn cancel_run(&self, run_id: &str, now: bool) -> Result<(), CancelError> {
        let cancel = self
            .run_cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned();
        if let Some(cancel) = cancel {
            if now {
                cancel.abort();
            } else {
                cancel.stop();
            }
            tracing::info!(run_id, now, "run cancel requested");
            return Ok(());
        }
        match self.run(run_id).await {
            Ok(Some(run)) => Err(CancelError::NotRunning {
                run_id: run_id.to_string(),
                status: run.status.as_str().to_string(),
            }),
            _ => Err(CancelError::NotFound(run_id.to_string())),
        }
    }

    /// Runs executing now.
    pub fn running_runs(&self) -> usize {
        self.executing.load(Ordering::Relaxed)
    }

    /// The text of `/metrics`.
    pub fn scrape(&self) -> String {
        let breakers = self.executor.runtime().upstreams().breakers();
        self.metrics.encode(self.running_runs(), &breakers)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, InstanceState>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Load (or compute, and persist) the next run of each scheduled
    /// instance of `names`.
    async fn load_schedules(&self, names: &[String]) -> Result<(), StoreError> {
        let scheduled: Vec<(String, Schedule, CatchUp, Option<Duration>)> = self
            .lock()
            .iter()
            .filter(|(n, _)| names.contains(n))
            .filter_map(|(n, s)| {
                s.schedule
                    .clone()
                    .map(|sc| (n.clone(), sc, s.catch_up, s.jitter))
            })
            .collect();
        for (name, schedule, catch_up, jitter) in scheduled {
            let Ok(store) = self.store_of(&name) else {
                continue;
            };
            let n = name.clone();
            let saved = with_store(&store, move |s| s.get_schedule(&n)).await?;
            let now = now_ms();
            let next = next_at_start(saved.as_ref(), &schedule, catch_up, now);
            // A time newly computed from the schedule gets its jitter; a
            // persisted one has it already, and a catch-up runs now.
            let fresh = next.is_some_and(|t| t > now)
                && saved
                    .as_ref()
                    .is_none_or(|e| Some(e.next_run_at_ms) != next);
            let next = if fresh {
                next.map(|t| jittered(t, jitter))
            } else {
                next
            };
            if let Some(e) = saved.as_ref().filter(|e| e.schedule == schedule.key()) {
                if next != Some(e.next_run_at_ms) {
                    tracing::info!(instance = %name, due = %rfc3339_ms(e.next_run_at_ms), ?catch_up, "a run fell due while the server was down");
                }
            }
            if let Some(next) = next {
                self.persist(&name, &schedule, next).await?;
            }
            if let Some(state) = self.lock().get_mut(&name) {
                state.next_run_at_ms = next;
            }
        }
        Ok(())
    }

    async fn persist(&self, name: &str, schedule: &Schedule, next: i64) -> Result<(), StoreError> {
        let entry = ScheduleEntry {
            instance: name.to_string(),
            schedule: schedule.key(),
            next_run_at_ms: next,
            updated_at: now_rfc3339(),
        };
        match self.store_of(name) {
            Ok(store) => with_store(&store, move |s| s.set_schedule(&entry)).await,
            // Removed by a reload meanwhile.
            Err(_) => Ok(()),
        }
    }

    /// Start a run of `name` now; returns its run id. It may wait for a
    /// slot (`max_concurrent_runs`) before it starts.
    pub fn start_run(self: &Arc<Self>, name: &str) -> Result<String, StartError> {
        self.start_due(name, None)
    }

    /// Start a run of `name`, due at `due_at` (ms since the epoch) when
    /// the schedule started it: its lag is measured when it gets its slot.
    fn start_due(self: &Arc<Self>, name: &str, due_at: Option<i64>) -> Result<String, StartError> {
        if self.cancel.level() >= CancelLevel::Stop {
            return Err(StartError::Stopping);
        }
        let run_id = {
            let mut instances = self.lock();
            let state = instances
                .get_mut(name)
                .ok_or_else(|| StartError::UnknownInstance(name.to_string()))?;
            if let Some(run_id) = &state.running {
                return Err(StartError::Busy {
                    instance: name.to_string(),
                    run_id: run_id.clone(),
                });
            }
            let run_id = new_run_id();
            state.running = Some(run_id.clone());
            run_id
        };
        let spec = match self.topo().config.run_spec(name) {
            Ok(spec) => spec,
            Err(e) => {
                self.metrics.not_started(name);
                self.finish(
                    name,
                    &run_id,
                    crate::metrics::NOT_STARTED,
                    Some(e.to_string()),
                );
                return Err(e.into());
            }
        };
        self.active.send_modify(|n| *n += 1);
        let cancel = self.cancel.child();
        self.run_cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone(), cancel.clone());
        let this = self.clone();
        let name = name.to_string();
        let id = run_id.clone();
        tokio::spawn(async move {
            let _slot = this.slots.clone().acquire_owned().await;
            if cancel.level() >= CancelLevel::Stop {
                let why = if this.cancel.level() >= CancelLevel::Stop {
                    "the server stopped before the run got a slot"
                } else {
                    "the run was cancelled before it got a slot"
                };
                this.skip(&name, Some(id.clone()), why);
                this.clear_running(&name, &id);
            } else {
                tracing::info!(instance = %name, run_id = %id, "run starts");
                if let Some(due_at) = due_at {
                    this.metrics.schedule_lag(now_ms() - due_at);
                }
                this.executing.fetch_add(1, Ordering::Relaxed);
                let handle = this.executor.submit_as(spec, cancel, id.clone());
                let result = handle.finish().await;
                this.executing.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(report) => {
                        let status = report.record.status.as_str();
                        tracing::info!(instance = %name, run_id = %id, %status, "run ended");
                        this.metrics.run_ended(&name, &report);
                        this.finish(&name, &id, status, report.record.error.clone());
                        this.evaluate_alerts(Some(&name)).await;
                    }
                    Err(ExecutorError::Pipeline(e @ PipelineError::InstanceBusy { .. })) => {
                        this.skip(&name, Some(id.clone()), &e.to_string());
                        this.clear_running(&name, &id);
                    }
                    Err(e) => {
                        tracing::error!(instance = %name, run_id = %id, error = %e, "the run could not run");
                        this.metrics.not_started(&name);
                        this.finish(&name, &id, crate::metrics::NOT_STARTED, Some(e.to_string()));
                    }
                }
            }
            this.run_cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            this.active.send_modify(|n| *n -= 1);
        });
        Ok(run_id)
    }

    fn clear_running(&self, name: &str, run_id: &str) {
        if let Some(state) = self.lock().get_mut(name) {
            if state.running.as_deref() == Some(run_id) {
                state.running = None;
            }
        }
    }

    fn finish(&self, name: &str, run_id: &str, status: &str, error: Option<String>) {
        if let Some(state) = self.lock().get_mut(name) {
            state.last_run = Some(LastRun {
                run_id: run_id.to_string(),
                status: status.to_string(),
                ended_at: now_rfc3339(),
                error,
            });
        }
        self.clear_running(name, run_id);
    }

    /// Record (log, count, and write to the run log as `skipped`) a due
    /// run that did not happen.
    fn skip(&self, name: &str, run_id: Option<String>, reason: &str) {
        tracing::warn!(instance = %name, reason, "run skipped");
        self.metrics.skipped(name);
        let record = RunRecord::skipped(run_id.as_deref().unwrap_or(&new_run_id()), name, reason);
        if let Ok(store) = self.store_of(name) {
            self.active.send_modify(|n| *n += 1);
            let active = self.active.clone();
            tokio::spawn(async move {
                if let Err(e) = with_store(&store, move |s| s.insert_run(&record)).await {
                    tracing::error!(error = %e, "could not record a skipped run");
                }
                active.send_modify(|n| *n -= 1);
            });
        }
        if let Some(state) = self.lock().get_mut(name) {
            state.skipped += 1;
            state.last_skip = Some(Skip {
                at: now_rfc3339(),
                run_id,
                reason: reason.to_string(),
            });
        }
    }

    /// Start the runs that are due, and move their next times on.
    async fn tick(self: &Arc<Self>) {
        self.last_tick_ms
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        let now = now_ms();
        let due: Vec<(String, Schedule, i64, Option<Duration>)> = self
            .lock()
            .iter()
            .filter_map(|(n, s)| {
                let at = s.next_run_at_ms.filter(|t| *t <= now)?;
                s.schedule.clone().map(|sc| (n.clone(), sc, at, s.jitter))
            })
            .collect();
        for (name, schedule, due_at, jitter) in due {
            let next = schedule.next_after(now).map(|t| jittered(t, jitter));
            // Persisted before the run starts: a crash during the run does
            // not run it again at restart.
            if let Some(next) = next {
                if let Err(e) = self.persist(&name, &schedule, next).await {
                    tracing::error!(instance = %name, error = %e, "could not persist the next run time; will retry");
                    continue;
                }
            }
            if let Some(state) = self.lock().get_mut(&name) {
                state.next_run_at_ms = next;
            }
            match self.start_due(&name, Some(due_at)) {
                Ok(_) | Err(StartError::Stopping) => {}
                Err(StartError::Busy { run_id, .. }) => self.skip(
                    &name,
                    None,
                    &format!("the previous run {run_id} was still going"),
                ),
                Err(e) => {
                    tracing::error!(instance = %name, error = %e, "scheduled run not started")
                }
            }
        }
    }

    /// Wait until every run started has ended.
    pub async fn wait_for_runs(&self) {
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Has the scheduler ticked recently?
    pub fn scheduler_alive(&self) -> bool {
        let last = self.last_tick_ms.load(std::sync::atomic::Ordering::Relaxed);
        now_ms().saturating_sub(last)
            < i64::try_from(SCHEDULER_STALL.as_millis()).unwrap_or(i64::MAX)
    }

    /// Can every run log be read?
    pub async fn stores_reachable(&self) -> Result<(), StoreError> {
        for log in self.topo().logs() {
            with_store(&log, |s| s.list_runs(1).map(|_| ())).await?;
        }
        Ok(())
    }

    /// Is `run_id` a run this server started that is going (or waiting
    /// for its slot, before the run log has it)?
    pub fn is_running(&self, run_id: &str) -> bool {
        self.lock()
            .values()
            .any(|s| s.running.as_deref() == Some(run_id))
    }

    /// Does `name` exist?
    pub fn has_instance(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Every instance, by name.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, StoreError> {
        Ok(self
            .instances_with_runs(1)
            .await?
            .into_iter()
            .map(|(view, _)| view)
            .collect())
    }

    /// Every instance, by name, with its newest `recent` runs (newest
    /// first; skipped runs, which say nothing of its health, aside): one
    /// indexed read of its run log each.
    pub async fn instances_with_runs(
        &self,
        recent: usize,
    ) -> Result<Vec<(InstanceView, Vec<RunRecord>)>, StoreError> {
        self.views(None, recent).await
    }

    /// Instance `name` (None: there is none) with its newest `recent`
    /// runs, as [`Service::instances_with_runs`].
    pub async fn instance(
        &self,
        name: &str,
        recent: usize,
    ) -> Result<Option<(InstanceView, Vec<RunRecord>)>, StoreError> {
        Ok(self.views(Some(name), recent).await?.pop())
    }

    async fn views(
        &self,
        only: Option<&str>,
        recent: usize,
    ) -> Result<Vec<(InstanceView, Vec<RunRecord>)>, StoreError> {
        let states: Vec<(String, InstanceState)> = self
            .lock()
            .iter()
            .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let mut out = Vec::new();
        for (name, s) in states {
            let runs = self
                .runs(RunQuery::recent(&name, recent.max(1)))
                .await?
                .runs;
            let last_recorded_run = runs.first().cloned();
            let health = if s.running.is_some() {
                "running"
            } else {
                match &last_recorded_run {
                    None => "unknown",
                    Some(r) if r.status == RunStatus::Succeeded => "ok",
                    Some(_) => "failing",
                }
            };
            let view = InstanceView {
                schedule: match &s.schedule {
                    Some(Schedule::Cron { pattern, .. }) => Some(pattern.clone()),
                    _ => None,
                },
                every: match &s.schedule {
                    Some(Schedule::Every { text, .. }) => Some(text.clone()),
                    _ => None,
                },
                timezone: s.schedule.as_ref().and_then(Schedule::timezone),
                jitter: s.jitter.map(|j| humantime::format_duration(j).to_string()),
                catch_up: match s.catch_up {
                    CatchUp::Once => "once",
                    CatchUp::Skip => "skip",
                },
                next_run_at: s.next_run_at_ms.map(rfc3339_ms),
                running: s.running,
                last_run: s.last_run,
                last_recorded_run,
                health,
                skipped_runs: s.skipped,
                last_skip: s.last_skip,
                name,
            };
            out.push((view, runs));
        }
        Ok(out)
    }

    /// One page of the runs `query` picks (newest first) and how many it
    /// picks in all. An instance's runs are paged by its run log (one
    /// indexed read); across several run logs, each gives its first
    /// `offset + limit` and they are merged.
    pub async fn runs(&self, query: RunQuery) -> Result<RunPage, StoreError> {
        let t = self.topo();
        let logs: Vec<SharedStore> = match &query.instance {
            Some(name) => t.stores.get(name).into_iter().cloned().collect(),
            None => t.logs(),
        };
        if let [log] = logs.as_slice() {
            return with_store(log, move |s| s.query_runs(&query)).await;
        }
        let each = RunQuery {
            offset: 0,
            limit: query.offset.saturating_add(query.limit),
            ..query.clone()
        };
        let mut page = RunPage::default();
        for log in logs {
            let q = each.clone();
            let part = with_store(&log, move |s| s.query_runs(&q)).await?;
            page.total += part.total;
            page.runs.extend(part.runs);
        }
        page.runs
            .sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        page.runs = page
            .runs
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect();
        if !query.counted {
            page.total = (query.offset + page.runs.len()) as u64;
        }
        Ok(page)
    }

    /// Evaluate the alert rules (of instance `only`, or of every
    /// instance), send what changed, and record it.
    pub async fn evaluate_alerts(&self, only: Option<&str>) {
        let _one = self.alerting.lock().await;
        let t = self.topo();
        let alerts = &t.config.file.alerts;
        if alerts.rules.is_empty() {
            return;
        }
        let _count = CountOnDrop(&self.evaluations);
        for (log_db, log) in &t.logs {
            let names: Vec<String> = t
                .config
                .names()
                .into_iter()
                .filter(|n| t.is_log_of(n, log) && only.is_none_or(|o| o == n))
                .collect();
            if names.is_empty() {
                continue;
            }
            let read = with_store(log, |s| {
                Ok((
                    s.list_alerts()?,
                    s.list_runs(crate::alerts::ALERT_RUNS_SCANNED)?,
                ))
            })
            .await;
            let (states, runs) = match read {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(db = %log_db, error = %e, "cannot evaluate alerts");
                    continue;
                }
            };
            let now = now_ms();
            for rule_cfg in &alerts.rules {
                let Ok(rule) = rule_cfg.rule() else { continue };
                for name in names
                    .iter()
                    .filter(|n| rule_cfg.instances().is_empty() || rule_cfg.instances().contains(n))
                {
                    let mine: Vec<RunRecord> = runs
                        .iter()
                        .filter(|r| &r.connector == name)
                        .cloned()
                        .collect();
                    let cond = crate::alerts::evaluate(&rule, &mine, now, self.started_ms);
                    let before = states
                        .iter()
                        .find(|s| s.rule == rule_cfg.name() && &s.instance == name);
                    let crate::alerts::Step::Notify(event) =
                        crate::alerts::step(before, &cond, now, alerts.repeat_interval())
                    else {
                        continue;
                    };
                    let no_webhooks = alerts.webhooks.is_empty();
                    let next = |delivery: &Result<(), String>| {
                        crate::alerts::next_state(
                            rule_cfg.name(),
                            name,
                            before,
                            &cond,
                            event,
                            delivery,
                            no_webhooks,
                        )
                    };
                    // What is sent is the state as it will be stored.
                    let (sent, _) = next(&Ok(()));
                    let delivery = if no_webhooks {
                        Ok(())
                    } else {
                        crate::alerts::deliver(&self.http, alerts, rule_cfg, &sent, event).await
                    };
                    let (state, ev) = next(&delivery);
                    match &delivery {
                        Ok(()) => {
                            tracing::warn!(rule = rule_cfg.name(), instance = %name, event, message = %cond.message, "alert")
                        }
                        Err(e) => {
                            tracing::error!(rule = rule_cfg.name(), instance = %name, event, error = %e, "alert not delivered")
                        }
                    }
                    if let Err(e) =
                        with_store(log, move |s| s.record_alert(&state, Some(&ev))).await
                    {
                        tracing::error!(error = %e, "could not record an alert");
                    }
                }
            }
        }
    }

    /// Alert evaluations finished so far.
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::SeqCst)
    }

    /// Every alert state and the newest alert events of the run logs.
    pub async fn alerts(
        &self,
        events: usize,
    ) -> Result<(Vec<AlertState>, Vec<AlertEvent>), StoreError> {
        let t = self.topo();
        let (mut states, mut evs) = (Vec::new(), Vec::new());
        for log in t.logs() {
            let (s, e) = with_store(&log, move |s| {
                Ok((s.list_alerts()?, s.list_alert_events(events)?))
            })
            .await?;
            states.extend(s.into_iter().filter(|a| t.is_log_of(&a.instance, &log)));
            evs.extend(e.into_iter().filter(|a| t.is_log_of(&a.instance, &log)));
        }
        evs.sort_by(|a, b| b.at.cmp(&a.at));
        evs.truncate(events);
        Ok((states, evs))
    }

    /// The run log of instance `name`.
    fn store_of(&self, name: &str) -> Result<SharedStore, StoreError> {
        self.topo()
            .stores
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::Invalid(format!("no instance named {name:?}")))
    }

    /// Quarantined records of instance `name` matching `filter`.
    pub async fn quarantine(
        &self,
        name: &str,
        mut filter: QuarantineFilter,
    ) -> Result<Vec<QuarantineEntry>, StoreError> {
        filter.connector = Some(name.to_string());
        with_store(&self.store_of(name)?, move |s| s.list_quarantine(&filter)).await
    }

    /// Replace quarantined record `id` of instance `name` (the original is
    /// kept); it must be quarantined by that instance.
    pub async fn edit_quarantined(
        &self,
        name: &str,
        id: i64,
        record: String,
    ) -> Result<QuarantineEntry, StoreError> {
        let instance = name.to_string();
        with_store(&self.store_of(name)?, move |s| {
            let of = |s: &mut dyn Store| {
                s.list_quarantine(&QuarantineFilter {
                    connector: Some(instance.clone()),
                    ids: vec![id],
                    all: true,
                    ..QuarantineFilter::default()
                })
            };
            if of(s)?.is_empty() {
                return Err(StoreError::QuarantineNotFound(id));
            }
            s.edit_quarantined(id, &record)?;
            of(s)?
                .into_iter()
                .next()
                .ok_or(StoreError::QuarantineNotFound(id))
        })
        .await
    }

    /// Replay quarantined records of instance `name` (see
    /// [`sluice_runner::pipeline::replay`]).
    pub async fn replay(
        &self,
        name: &str,
        mut filter: QuarantineFilter,
        force: bool,
    ) -> Result<ReplaySummary, PipelineError> {
        filter.connector = Some(name.to_string());
        let store = self.store_of(name)?;
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            sluice_runner::pipeline::replay(guard.as_mut(), &filter, force)
        })
        .await
        .map_err(|e| {
            PipelineError::from(StoreError::Invalid(format!("the replay task failed: {e}")))
        })?
    }

    /// Drift events of every run log, or of instance `name`'s.
    pub async fn drift(
        &self,
        name: Option<String>,
        stream: Option<String>,
    ) -> Result<Vec<DriftEvent>, StoreError> {
        let t = self.topo();
        let logs: Vec<SharedStore> = match &name {
            Some(n) => vec![self.store_of(n)?],
            None => t.logs(),
        };
        let mut all = Vec::new();
        for log in logs {
            let (n, st) = (name.clone(), stream.clone());
            let events =
                with_store(&log, move |s| s.list_drift(n.as_deref(), st.as_deref())).await?;
            // A run log shared with instances of another config: only ours.
            all.extend(
                events
                    .into_iter()
                    .filter(|e| t.is_log_of(&e.connector, &log)),
            );
        }
        Ok(all)
    }

    /// The connectors of the registry.
    pub async fn connectors(
        &self,
    ) -> Result<sluice_runner::registry::Registry, sluice_runner::registry::RegistryError> {
        sluice_runner::registry::Registry::scan(
            self.executor.runtime(),
            self.executor.connectors_dir(),
        )
        .await
    }

    /// One run and its kept log lines, from whichever run log has it.
    pub async fn run_with_log(
        &self,
        id: &str,
    ) -> Result<Option<(RunRecord, Vec<sluice_core::run::LogLine>)>, StoreError> {
        self.find_run(id, |s, id| Ok((s.get_run(id)?, s.get_run_logs(id)?)))
            .await
    }

    /// One run, from whichever run log has it.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.find_run(id, |s, id| s.get_run(id)).await
    }

    /// `read` of run `id` from the first run log that has the run.
    async fn find_run<R: Send + 'static>(
        &self,
        id: &str,
        read: fn(&mut dyn Store, &str) -> Result<R, StoreError>,
    ) -> Result<Option<R>, StoreError> {
        for log in self.topo().logs() {
            let id = id.to_string();
            match with_store(&log, move |s| read(s, &id)).await {
                Ok(found) => return Ok(Some(found)),
                Err(StoreError::RunNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// `t` moved on by a random delay below `jitter`.
fn jittered(t: i64, jitter: Option<Duration>) -> i64 {
    let Some(jitter) = jitter else { return t };
    let max = i64::try_from(jitter.as_millis()).unwrap_or(i64::MAX);
    if max <= 0 {
        return t;
    }
    t.saturating_add(rand::random_range(0..max))
}

/// The first due time of an instance when the server starts at `now`,
/// given what was persisted: a future time is kept; a time that passed
/// while the server was down is `now` (`catch_up = "once"`: one run,
/// however many were missed) or the next time from now (`"skip"`);
/// nothing persisted, or for another schedule: [`Schedule::first_due`].
pub fn next_at_start(
    saved: Option<&ScheduleEntry>,
    schedule: &Schedule,
    catch_up: CatchUp,
    now: i64,
) -> Option<i64> {
    match saved {
        Some(e) if e.schedule == schedule.key() => {
            if e.next_run_at_ms > now {
                Some(e.next_run_at_ms)
            } else {
                match catch_up {
                    CatchUp::Once => Some(now),
                    CatchUp::Skip => schedule.next_after(now),
                }
            }
        }
        _ => schedule.first_due(now),
    }
}

async fn open_store(
    db: DbLocation,
    password: Option<SecretSource>,
) -> Result<SharedStore, StoreError> {
    tokio::task::spawn_blocking(move || sluice_store::open::open(&db, password.as_ref()))
        .await
        .map_err(|e| StoreError::Invalid(format!("opening the store failed: {e}")))?
        .map(|s| Arc::new(Mutex::new(s)))
}

/// Counts one when dropped (at the end of an evaluation, however it ends).
struct CountOnDrop<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Evaluate the alert rules on their timer until a stop is requested.
pub async fn run_alerts(service: Arc<Service>) {
    loop {
        let every = service.topo().config.file.alerts.evaluate_every();
        tokio::select! {
            () = tokio::time::sleep(every) => service.evaluate_alerts(None).await,
            () = service.cancel.stopped() => break,
        }
    }
}

/// Tick until a stop is requested.
pub async fn run_scheduler(service: Arc<Service>) {
    let mut tick = tokio::time::interval(SCHEDULER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => service.tick().await,
            () = service.cancel.stopped() => break,
        }
    }
    tracing::info!("scheduler stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(schedule: &Schedule, next: i64) -> ScheduleEntry {
        ScheduleEntry {
            instance: "a".into(),
            schedule: schedule.key(),
            next_run_at_ms: next,
            updated_at: String::new(),
        }
    }

    #[test]
    fn jitter_delays_within_its_bound() {
        assert_eq!(jittered(1000, None), 1000);
        let j = Some(Duration::from_millis(50));
        let seen: std::collections::BTreeSet<i64> = (0..200).map(|_| jittered(1000, j)).collect();
        assert!(seen.iter().all(|t| (1000..1050).contains(t)), "{seen:?}");
        assert!(seen.len() > 1, "always the same delay: {seen:?}");
    }

    #[test]
    fn a_persisted_future_time_is_kept() {
        let hourly = Schedule::parse(None, Some("1h")).unwrap().unwrap();
        let e = saved(&hourly, 5_000_000);
        for catch_up in [CatchUp::Once, CatchUp::Skip] {
            assert_eq!(
                next_at_start(Some(&e), &hourly, catch_up, 1_000),
                Some(5_000_000)
            );
        }
    }

    #[test]
    fn a_missed_run_runs_once_or_is_skipped() {
        let hourly = Schedule::parse(None, Some("1h")).unwrap().unwrap();
        // Due at 1 000; the server comes back at 10 h: many were missed.
        let e = saved(&hourly, 1_000);
        let now = 10 * 3_600_000;
        assert_eq!(
            next_at_start(Some(&e), &hourly, CatchUp::Once, now),
            Some(now)
        );
        assert_eq!(
            next_at_start(Some(&e), &hourly, CatchUp::Skip, now),
            Some(now + 3_600_000)
        );
        let cron = Schedule::parse(Some("0 * * * *"), None).unwrap().unwrap();
        let e = saved(&cron, 0);
        assert_eq!(
            next_at_start(Some(&e), &cron, CatchUp::Skip, now + 1),
            Some(11 * 3_600_000)
        );
    }

    #[test]
    fn nothing_persisted_or_a_changed_schedule_starts_afresh() {
        let every = Schedule::parse(None, Some("1h")).unwrap().unwrap();
        assert_eq!(next_at_start(None, &every, CatchUp::Once, 7), Some(7));
        let cron = Schedule::parse(Some("0 * * * *"), None).unwrap().unwrap();
        assert_eq!(
            next_at_start(None, &cron, CatchUp::Once, 1),
            Some(3_600_000)
        );
        // Persisted for the interval, now a cron expression.
        let e = saved(&every, 99 * 3_600_000);
        assert_eq!(
            next_at_start(Some(&e), &cron, CatchUp::Once, 1),
            Some(3_600_000)
        );
    }
}
