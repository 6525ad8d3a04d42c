//! The service's state and its scheduler: which instances are running,
//! when each is next due (persisted in the instance's run log, so a
//! restart neither loses nor doubles runs), and the start of every run
//! (scheduled or on demand) through the [`LocalExecutor`], never two of
//! one instance at once and at most `max_concurrent_runs` in all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use sluice_core::cancel::{Cancel, CancelLevel};
use sluice_core::destination::Store;
use sluice_core::destination::{ScheduleEntry, StoreError};
use sluice_core::location::DbLocation;
use sluice_core::run::{now_rfc3339, RunRecord};
use sluice_core::secrets::SecretSource;
use sluice_runner::config::OperatorConfig;
use sluice_runner::executor::ExecutorError;
use sluice_runner::pipeline::{new_run_id, PipelineError};
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
    pub next_run_at: Option<String>,
    /// The run going now, if any.
    pub running: Option<String>,
    /// The last run this server started (since it started).
    pub last_run: Option<LastRun>,
    /// The newest run in the run log (whoever started it).
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

/// The running service: the config, the executor, the state of each
/// instance, the run slots and the stop request.
pub struct Service {
    config: OperatorConfig,
    executor: LocalExecutor,
    cancel: Cancel,
    slots: Arc<Semaphore>,
    instances: Mutex<BTreeMap<String, InstanceState>>,
    /// The run log of each instance, by instance (several may share one).
    stores: BTreeMap<String, SharedStore>,
    /// The distinct run logs.
    logs: Vec<SharedStore>,
    /// Runs started and not yet ended.
    active: watch::Sender<usize>,
    /// When the scheduler last ticked (ms since the epoch).
    last_tick_ms: std::sync::atomic::AtomicI64,
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
        let mut opened: Vec<(DbLocation, SharedStore)> = Vec::new();
        let mut stores = BTreeMap::new();
        let mut instances = BTreeMap::new();
        for name in config.names() {
            // Checked at load: every instance has a database.
            let Some((db, password)) = config.db_of(&name) else {
                continue;
            };
            let store = match opened.iter().find(|(d, _)| *d == db) {
                Some((_, s)) => s.clone(),
                None => {
                    let s = open_store(db.clone(), password).await?;
                    opened.push((db, s.clone()));
                    s
                }
            };
            stores.insert(name.clone(), store);
            instances.insert(
                name.clone(),
                InstanceState {
                    schedule: config.schedule(&name),
                    catch_up: config.catch_up(&name),
                    ..Default::default()
                },
            );
        }
        let service = Service {
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs())),
            config,
            executor,
            cancel,
            instances: Mutex::new(instances),
            stores,
            logs: opened.into_iter().map(|(_, s)| s).collect(),
            active: watch::channel(0).0,
            last_tick_ms: now_ms().into(),
        };
        service.load_schedules().await?;
        Ok(service)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, InstanceState>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn load_schedules(&self) -> Result<(), StoreError> {
        let scheduled: Vec<(String, Schedule, CatchUp)> = self
            .lock()
            .iter()
            .filter_map(|(n, s)| s.schedule.clone().map(|sc| (n.clone(), sc, s.catch_up)))
            .collect();
        for (name, schedule, catch_up) in scheduled {
            let store = &self.stores[&name];
            let n = name.clone();
            let saved = with_store(store, move |s| s.get_schedule(&n)).await?;
            let next = next_at_start(saved.as_ref(), &schedule, catch_up, now_ms());
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
        with_store(&self.stores[name], move |s| s.set_schedule(&entry)).await
    }

    /// Start a run of `name` now; returns its run id. It may wait for a
    /// slot (`max_concurrent_runs`) before it starts.
    pub fn start_run(self: &Arc<Self>, name: &str) -> Result<String, StartError> {
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
        let spec = match self.config.run_spec(name) {
            Ok(spec) => spec,
            Err(e) => {
                self.finish(name, &run_id, "not_started", Some(e.to_string()));
                return Err(e.into());
            }
        };
        self.active.send_modify(|n| *n += 1);
        let this = self.clone();
        let name = name.to_string();
        let id = run_id.clone();
        tokio::spawn(async move {
            let _slot = this.slots.clone().acquire_owned().await;
            if this.cancel.level() >= CancelLevel::Stop {
                this.skip(
                    &name,
                    Some(id.clone()),
                    "the server stopped before the run got a slot",
                );
                this.clear_running(&name, &id);
            } else {
                tracing::info!(instance = %name, run_id = %id, "run starts");
                let handle = this
                    .executor
                    .submit_as(spec, this.cancel.clone(), id.clone());
                match handle.finish().await {
                    Ok(report) => {
                        let status = serde_json::to_value(report.record.status)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default();
                        tracing::info!(instance = %name, run_id = %id, %status, "run ended");
                        this.finish(&name, &id, &status, report.record.error.clone());
                    }
                    Err(ExecutorError::Pipeline(e @ PipelineError::InstanceBusy { .. })) => {
                        this.skip(&name, Some(id.clone()), &e.to_string());
                        this.clear_running(&name, &id);
                    }
                    Err(e) => {
                        tracing::error!(instance = %name, run_id = %id, error = %e, "the run could not run");
                        this.finish(&name, &id, "not_started", Some(e.to_string()));
                    }
                }
            }
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

    /// Record (log and count) a due run that did not happen.
    fn skip(&self, name: &str, run_id: Option<String>, reason: &str) {
        tracing::warn!(instance = %name, reason, "run skipped");
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
        let due: Vec<(String, Schedule)> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.next_run_at_ms.is_some_and(|t| t <= now))
            .filter_map(|(n, s)| s.schedule.clone().map(|sc| (n.clone(), sc)))
            .collect();
        for (name, schedule) in due {
            let next = schedule.next_after(now);
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
            match self.start_run(&name) {
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
        for log in &self.logs {
            with_store(log, |s| s.list_runs(1).map(|_| ())).await?;
        }
        Ok(())
    }

    /// Does `name` exist?
    pub fn has_instance(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Every instance, by name.
    pub async fn instances(&self) -> Result<Vec<InstanceView>, StoreError> {
        let states: Vec<(String, InstanceState)> = self
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        // The newest run of each instance, one read of each run log.
        let mut newest: Vec<BTreeMap<String, RunRecord>> = Vec::new();
        for log in &self.logs {
            let runs = with_store(log, |s| s.list_runs(crate::api::MAX_RUNS_SCANNED)).await?;
            let mut by_instance = BTreeMap::new();
            for r in runs {
                by_instance.entry(r.connector.clone()).or_insert(r);
            }
            newest.push(by_instance);
        }
        let mut out = Vec::new();
        for (name, s) in states {
            let last_recorded_run = self
                .logs
                .iter()
                .position(|log| Arc::ptr_eq(log, &self.stores[&name]))
                .and_then(|i| newest[i].get(&name).cloned());
            let health = if s.running.is_some() {
                "running"
            } else {
                match &last_recorded_run {
                    None => "unknown",
                    Some(r) if r.status == sluice_core::run::RunStatus::Succeeded => "ok",
                    Some(_) => "failing",
                }
            };
            out.push(InstanceView {
                schedule: match &s.schedule {
                    Some(Schedule::Cron { pattern, .. }) => Some(pattern.clone()),
                    _ => None,
                },
                every: match &s.schedule {
                    Some(Schedule::Every { text, .. }) => Some(text.clone()),
                    _ => None,
                },
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
            });
        }
        Ok(out)
    }

    /// Runs of every run log (newest first), filtered, at most
    /// [`crate::api::MAX_RUNS_SCANNED`] per run log.
    pub async fn runs(
        &self,
        instance: Option<String>,
        status: Option<String>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let logs: Vec<SharedStore> = match &instance {
            Some(name) => self.stores.get(name).into_iter().cloned().collect(),
            None => self.logs.clone(),
        };
        let mut all = Vec::new();
        for log in logs {
            let runs = with_store(&log, |s| s.list_runs(crate::api::MAX_RUNS_SCANNED)).await?;
            all.extend(runs.into_iter().filter(|r| {
                instance.as_ref().is_none_or(|i| &r.connector == i)
                    && status.as_ref().is_none_or(|st| {
                        serde_json::to_value(r.status)
                            .ok()
                            .is_some_and(|v| v.as_str() == Some(st.as_str()))
                    })
            }));
        }
        all.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        Ok(all)
    }

    /// One run, from whichever run log has it.
    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        for log in &self.logs {
            let id = id.to_string();
            match with_store(log, move |s| s.get_run(&id)).await {
                Ok(run) => return Ok(Some(run)),
                Err(StoreError::RunNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
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
