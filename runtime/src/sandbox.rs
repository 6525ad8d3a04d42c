//! One sandbox per run: a wasmtime `Store` with fuel, a memory/table
//! limiter and an epoch deadline, plus a wall-clock deadline around every
//! guest call (so time spent waiting in host calls counts too). Every way a
//! call can end is classified into a [`RunStatus`].

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{ResourceLimiter, Store, Trap};

use crate::bindings::{types, Source};
use crate::engine::{Loaded, Runtime};
use crate::host::http::{HostGrant, HttpCtx};
use crate::host::log::LogCtx;
use crate::host::secrets::Secrets;
use crate::host::sink::SinkCtx;
use crate::host::state::StateCtx;
use crate::host::{HostAbort, RunChannel};
use crate::limits::{
    Limits, DEFAULT_MAX_INSTANCES, DEFAULT_MAX_MEMORIES, DEFAULT_MAX_TABLES,
    DEFAULT_MAX_TABLE_ELEMENTS, EPOCH_TICK,
};
use crate::store::RunStatus;

/// A resource limit the guest tried to exceed (raised as a trap).
#[derive(Debug, thiserror::Error)]
pub enum LimitExceeded {
    #[error("linear memory limit of {limit} bytes exceeded (asked for {asked} bytes in all)")]
    Memory { limit: u64, asked: u64 },
    #[error("table limit of {limit} elements exceeded (asked for {asked})")]
    Table { limit: usize, asked: usize },
}

/// Tracks and caps a run's memories and tables.
#[derive(Debug)]
pub struct RunLimiter {
    max_memory: u64,
    max_table_elements: usize,
    /// Bytes of all the run's linear memories now.
    pub memory: u64,
    /// Largest `memory` seen.
    pub peak_memory: u64,
}

impl RunLimiter {
    pub fn new(limits: &Limits) -> Self {
        RunLimiter {
            max_memory: limits.memory_bytes,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            memory: 0,
            peak_memory: 0,
        }
    }
}

impl ResourceLimiter for RunLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_sub(current as u64) + desired as u64;
        if total > self.max_memory {
            return Err(LimitExceeded::Memory {
                limit: self.max_memory,
                asked: total,
            }
            .into());
        }
        self.memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            return Err(LimitExceeded::Table {
                limit: self.max_table_elements,
                asked: desired,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        DEFAULT_MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        DEFAULT_MAX_TABLES
    }
    fn memories(&self) -> usize {
        DEFAULT_MAX_MEMORIES
    }
}

/// The data of one run's wasmtime store: the limiter and every capability.
pub struct HostState {
    pub limiter: RunLimiter,
    pub http: HttpCtx,
    pub sink: SinkCtx,
    pub state: StateCtx,
    pub log: LogCtx,
}

/// How a guest call can fail.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest returned a `connector-error`.
    #[error("{}", connector_error_text(.0))]
    Connector(types::ConnectorError),
    /// The sandbox stopped the guest (limit, trap, host abort).
    #[error("{status}: {message}")]
    Stopped { status: RunStatus, message: String },
}

impl GuestError {
    /// This error with every secret value redacted from its text.
    pub fn redacted(self, secrets: &Secrets) -> GuestError {
        let r = |m: String| secrets.redact(&m).into_owned();
        match self {
            GuestError::Connector(e) => GuestError::Connector(match e {
                types::ConnectorError::Config(m) => types::ConnectorError::Config(r(m)),
                types::ConnectorError::Upstream(m) => types::ConnectorError::Upstream(r(m)),
                types::ConnectorError::Host(m) => types::ConnectorError::Host(r(m)),
                types::ConnectorError::Internal(m) => types::ConnectorError::Internal(r(m)),
            }),
            GuestError::Stopped { status, message } => GuestError::Stopped {
                status,
                message: r(message),
            },
        }
    }

    pub fn status(&self) -> RunStatus {
        match self {
            GuestError::Connector(_) => RunStatus::Failed,
            GuestError::Stopped { status, .. } => *status,
        }
    }
}

/// A `connector-error` as one line.
pub fn connector_error_text(e: &types::ConnectorError) -> String {
    match e {
        types::ConnectorError::Config(m) => format!("connector rejected its config: {m}"),
        types::ConnectorError::Upstream(m) => format!("upstream error: {m}"),
        types::ConnectorError::Host(m) => format!("host refused: {m}"),
        types::ConnectorError::Internal(m) => format!("connector error: {m}"),
    }
}

/// Map a trap or host error from a guest call onto a run status.
pub fn classify(err: &wasmtime::Error) -> (RunStatus, String) {
    if let Some(l) = err.downcast_ref::<LimitExceeded>() {
        return (RunStatus::MemoryLimit, l.to_string());
    }
    if let Some(a) = err.downcast_ref::<HostAbort>() {
        let status = match a {
            HostAbort::UncommittedLimit { .. } => RunStatus::UncommittedLimit,
            HostAbort::Store(_) => RunStatus::StoreError,
        };
        return (status, a.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (
            RunStatus::FuelExhausted,
            "the run's fuel (instruction budget) ran out".into(),
        ),
        Some(Trap::Interrupt) => (
            RunStatus::Deadline,
            "the run's wall-clock deadline passed".into(),
        ),
        Some(t) => (RunStatus::Trapped, format!("guest trapped: {t}")),
        None => (RunStatus::Trapped, format!("guest failed: {err:#}")),
    }
}

/// A live sandbox: a store with its limits, and the instantiated world.
pub struct Sandbox {
    store: Store<HostState>,
    source: Source,
    fuel: u64,
    deadline: Instant,
    started: Instant,
}

impl Sandbox {
    /// Instantiate `loaded` in a fresh store with `limits`, `grants` and
    /// `secrets`.
    pub async fn new(
        runtime: &Runtime,
        loaded: &Loaded,
        run_id: &str,
        connector: &str,
        grants: &[HostGrant],
        secrets: &Secrets,
        limits: &Limits,
    ) -> Result<Sandbox, GuestError> {
        let started = Instant::now();
        let mut sandbox_deadline = started + limits.timeout;
        if sandbox_deadline < started {
            sandbox_deadline = started;
        }
        let http = HttpCtx::new(
            grants,
            secrets,
            limits,
            runtime.upstreams().clone(),
            sandbox_deadline,
        )
        .map_err(|e| GuestError::Stopped {
            status: RunStatus::Trapped,
            message: format!("cannot set up HTTP client: {e}"),
        })?;
        let host = HostState {
            limiter: RunLimiter::new(limits),
            http,
            sink: SinkCtx::default(),
            state: StateCtx::default(),
            log: LogCtx::new(run_id, connector, limits.max_log_lines, secrets),
        };
        let mut store = Store::new(runtime.engine(), host);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| GuestError::Stopped {
                status: RunStatus::Trapped,
                message: format!("cannot set fuel: {e}"),
            })?;
        let ticks = (limits.timeout.as_millis() / EPOCH_TICK.as_millis().max(1)) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let source = match tokio::time::timeout_at(
            sandbox_deadline.into(),
            loaded.pre.instantiate_async(&mut store),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let (status, message) = classify(&e);
                return Err(GuestError::Stopped { status, message });
            }
            Err(_) => return Err(deadline_error()),
        };
        Ok(Sandbox {
            store,
            source,
            fuel: limits.fuel,
            deadline: sandbox_deadline,
            started,
        })
    }

    /// Wire the `sink` and `state` capabilities to a run's channel.
    pub fn attach_run(&mut self, run: Arc<RunChannel>) {
        let data = self.store.data_mut();
        data.log.connector = run.connector.to_string();
        data.sink.run = Some(run.clone());
        data.state.run = Some(run);
    }

    /// Rename the connector in log lines (known only after `spec`).
    pub fn set_connector(&mut self, connector: &str) {
        self.store.data_mut().log.connector = connector.to_string();
    }

    pub fn host(&self) -> &HostState {
        self.store.data()
    }

    /// Fuel spent so far.
    pub fn fuel_used(&self) -> u64 {
        self.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0))
    }

    /// Time since the sandbox was created.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub async fn spec(&mut self) -> Result<types::ConnectorSpec, GuestError> {
        let fut = self.source.call_spec(&mut self.store);
        finish(
            tokio::time::timeout_at(self.deadline.into(), fut)
                .await
                .map(|r| r.map(Ok)),
        )
        .map_err(|e| self.explain(e))
    }

    pub async fn check(&mut self, config: &str) -> Result<(), GuestError> {
        let fut = self.source.call_check(&mut self.store, config);
        finish(tokio::time::timeout_at(self.deadline.into(), fut).await)
            .map_err(|e| self.explain(e))
    }

    pub async fn discover(&mut self, config: &str) -> Result<Vec<types::Stream>, GuestError> {
        let fut = self.source.call_discover(&mut self.store, config);
        finish(tokio::time::timeout_at(self.deadline.into(), fut).await)
            .map_err(|e| self.explain(e))
    }

    pub async fn read(
        &mut self,
        config: &str,
        streams: &[types::ConfiguredStream],
    ) -> Result<types::ReadSummary, GuestError> {
        let fut = self.source.call_read(&mut self.store, config, streams);
        finish(tokio::time::timeout_at(self.deadline.into(), fut).await)
            .map_err(|e| self.explain(e))
    }
}

fn deadline_error() -> GuestError {
    GuestError::Stopped {
        status: RunStatus::Deadline,
        message: "the run's wall-clock deadline passed (while the guest waited on the host)".into(),
    }
}

impl Sandbox {
    /// Add the guest's last error log line (e.g. the panic message the SDK
    /// logs) to a trap's message, and redact every secret value: the text
    /// goes to the run record and the operator's terminal.
    fn explain(&self, e: GuestError) -> GuestError {
        let data = self.store.data();
        let e = e.redacted(&data.log.secrets);
        match (e, &data.log.last_error) {
            (
                GuestError::Stopped {
                    status: RunStatus::Trapped,
                    message,
                },
                Some(last),
            ) => GuestError::Stopped {
                status: RunStatus::Trapped,
                message: format!("{message} (guest's last error log: {last})"),
            },
            (e, _) => e,
        }
    }
}

/// Flatten (deadline, trap, connector error) into one result.
fn finish<T>(
    r: Result<wasmtime::Result<Result<T, types::ConnectorError>>, tokio::time::error::Elapsed>,
) -> Result<T, GuestError> {
    match r {
        Err(_) => Err(deadline_error()),
        Ok(Err(trap)) => {
            let (status, message) = classify(&trap);
            Err(GuestError::Stopped { status, message })
        }
        Ok(Ok(Err(e))) => Err(GuestError::Connector(e)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}
