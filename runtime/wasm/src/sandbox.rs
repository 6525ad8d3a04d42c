//! One sandbox per run: a wasmtime `Store` with fuel, a memory/table
//! limiter and an epoch deadline, plus a wall-clock deadline around every
//! guest call (so time spent waiting in host calls counts too). Every way a
//! call can end is classified into a [`RunStatus`].

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{source_v0_1 as v0_1, source_v0_2 as v0_2, WitVersion};
use crate::engine::{Loaded, Runtime, SourcePre};
use crate::host::data::{HostState, LimitExceeded, RunLimiter, WasiState};
use crate::host::http::HttpCtx;
use crate::host::log::LogCtx;
use crate::host::sink::SinkCtx;
use crate::host::state::StateCtx;
use sluice_core::abort::HostAbort;
use sluice_core::channel::RunChannel;
use sluice_core::connector::{
    ConfiguredStream, ConnectorError, ConnectorSpec, ReadSummary, Stream,
};
use sluice_core::egress::HostGrant;
use sluice_core::limits::{Limits, GUEST_SLICE_TICKS};
use sluice_core::run::RunStatus;
use sluice_core::secrets::Secrets;

/// How a guest call can fail.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The guest returned a `connector-error`.
    #[error("{}", connector_error_text(.0))]
    Connector(ConnectorError),
    /// The sandbox stopped the guest (limit, trap, host abort).
    #[error("{status}: {message}")]
    Stopped { status: RunStatus, message: String },
}

impl GuestError {
    /// This error with every secret value redacted from its text.
    pub fn redacted(self, secrets: &Secrets) -> GuestError {
        let r = |m: String| secrets.redact(&m).into_owned();
        match self {
            GuestError::Connector(e) => GuestError::Connector(e.map_message(r)),
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
pub fn connector_error_text(e: &ConnectorError) -> String {
    e.to_string()
}

/// wasmtime's error when a host call's arguments exceed the store's
/// hostcall fuel (its type is private); the one place its text is matched.
const HOSTCALL_FUEL_MARKER: &str = "fuel allocated for hostcalls has been exhausted";

/// `err` as one line, the useful part first: its messages outermost first,
/// without the multi-line wasm backtrace wasmtime attaches to a trap, any
/// line breaks left folded into spaces.
pub fn one_line(err: &wasmtime::Error) -> String {
    let backtrace = err
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|b| b.to_string());
    let parts: Vec<String> = err
        .chain()
        .map(|e| e.to_string())
        .filter(|m| Some(m) != backtrace.as_ref())
        .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|m| !m.is_empty())
        .collect();
    parts.join(": ")
}

/// Map a trap or host error from a guest call onto a run status, with a
/// one-line reason; `max_batch_bytes` is the run's batch limit (the
/// store's hostcall fuel).
pub fn classify(err: &wasmtime::Error, max_batch_bytes: u64) -> (RunStatus, String) {
    if let Some(l) = err.downcast_ref::<LimitExceeded>() {
        let status = match l {
            LimitExceeded::Memory { .. } => RunStatus::MemoryLimit,
            LimitExceeded::Table { .. } => RunStatus::TableLimit,
        };
        return (status, l.to_string());
    }
    if let Some(a) = err.downcast_ref::<HostAbort>() {
        return (a.status(), a.to_string());
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
        Some(Trap::StackOverflow) => (
            RunStatus::StackOverflow,
            "the guest overflowed its wasm stack (runaway recursion?)".into(),
        ),
        Some(t) => (RunStatus::Trapped, format!("guest trapped: {t}")),
        None if err
            .chain()
            .any(|e| e.to_string().contains(HOSTCALL_FUEL_MARKER)) =>
        {
            (
                RunStatus::BatchTooLarge,
                format!(
                    "one host call (a sink.emit batch, say) carried more than the run's \
                 batch limit of {max_batch_bytes} bytes out of the guest: emit smaller batches"
                ),
            )
        }
        None => (
            RunStatus::Trapped,
            format!("guest failed: {}", one_line(err)),
        ),
    }
}

/// wasmtime reports a component creating more instances, tables or
/// memories than the limiter allows with an untyped error
/// ("resource limit exceeded: instance count too high at N"); this is the
/// one place its text is matched.
const COUNT_LIMIT_MARKER: &str = "count too high";

/// Map an instantiation failure onto a run status: the count limits, else
/// as [`classify`].
pub fn classify_instantiation(err: &wasmtime::Error, max_batch_bytes: u64) -> (RunStatus, String) {
    let text = one_line(err);
    if text.contains("resource limit exceeded") && text.contains(COUNT_LIMIT_MARKER) {
        return (
            RunStatus::InstanceLimit,
            format!("the component creates too many instances, tables or memories: {text}"),
        );
    }
    classify(err, max_batch_bytes)
}

/// The instantiated world, per WIT version.
enum Source {
    V0_1(v0_1::Source),
    V0_2(v0_2::Source),
}

/// A live sandbox: a store with its limits, and the instantiated world.
pub struct Sandbox {
    store: Store<HostState>,
    source: Source,
    fuel: u64,
    /// The run's batch limit (the store's hostcall fuel).
    batch_limit: u64,
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
            wasi: WasiState::locked_down(),
        };
        let mut store = Store::new(runtime.engine(), host);
        store.limiter(|s| &mut s.limiter);
        let batch_limit = limits.max_batch_bytes();
        store.set_hostcall_fuel(usize::try_from(batch_limit).unwrap_or(usize::MAX));
        if runtime.fuel_metering() {
            store
                .set_fuel(limits.fuel)
                .map_err(|e| GuestError::Stopped {
                    status: RunStatus::Trapped,
                    message: format!("cannot set fuel: {e}"),
                })?;
        }
        if runtime.epoch_interruption() {
            // Every GUEST_SLICE_TICKS epochs of guest execution the guest
            // yields to the other runs on its thread (a guest computing
            // for its whole fuel allowance cannot hold a thread that
            // neighbours need); past the deadline it traps.
            store.set_epoch_deadline(GUEST_SLICE_TICKS);
            store.epoch_deadline_callback(move |_| {
                if Instant::now() >= sandbox_deadline {
                    Err(Trap::Interrupt.into())
                } else {
                    Ok(UpdateDeadline::Yield(GUEST_SLICE_TICKS))
                }
            });
        }
        let instantiated = async {
            match &loaded.pre {
                SourcePre::V0_1(pre) => pre.instantiate_async(&mut store).await.map(Source::V0_1),
                SourcePre::V0_2(pre) => pre.instantiate_async(&mut store).await.map(Source::V0_2),
            }
        };
        let source = match tokio::time::timeout_at(sandbox_deadline.into(), instantiated).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let (status, message) = classify_instantiation(&e, batch_limit);
                return Err(GuestError::Stopped { status, message });
            }
            Err(_) => return Err(deadline_error()),
        };
        Ok(Sandbox {
            store,
            source,
            fuel: limits.fuel,
            batch_limit,
            deadline: sandbox_deadline,
            started,
        })
    }

    /// Wire the `sink` and `state` capabilities to a run's channel.
    pub fn attach_run(&mut self, run: Arc<dyn RunChannel>) {
        let data = self.store.data_mut();
        data.log.connector = run.connector().to_string();
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

    /// The guest log lines kept so far (the first
    /// [`sluice_core::limits::MAX_KEPT_LOG_LINES`]), taken out.
    pub fn take_log_lines(&mut self) -> Vec<sluice_core::run::LogLine> {
        std::mem::take(&mut self.store.data_mut().log.kept)
    }

    /// Fuel spent so far.
    pub fn fuel_used(&self) -> u64 {
        // Without fuel metering (measurement only) nothing is counted.
        self.store
            .get_fuel()
            .map(|left| self.fuel.saturating_sub(left))
            .unwrap_or(0)
    }

    /// The run's wall-clock deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time since the sandbox was created.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The WIT version of `sluice:connector` the component implements.
    pub fn wit_version(&self) -> WitVersion {
        match self.source {
            Source::V0_1(_) => WitVersion::V0_1,
            Source::V0_2(_) => WitVersion::V0_2,
        }
    }

    pub async fn spec(&mut self) -> Result<ConnectorSpec, GuestError> {
        let deadline = self.deadline.into();
        let r = match &self.source {
            Source::V0_1(s) => {
                let fut = s.call_spec(&mut self.store);
                finish(
                    tokio::time::timeout_at(deadline, fut)
                        .await
                        .map(|r| r.map(|spec| Ok::<_, v0_1::types::ConnectorError>(spec.into()))),
                    self.batch_limit,
                )
            }
            Source::V0_2(s) => {
                let fut = s.sluice_connector_connector().call_spec(&mut self.store);
                finish(
                    tokio::time::timeout_at(deadline, fut)
                        .await
                        .map(|r| r.map(|spec| Ok::<_, v0_2::types::ConnectorError>(spec.into()))),
                    self.batch_limit,
                )
            }
        };
        r.map_err(|e| self.explain(e))
    }

    pub async fn check(&mut self, config: &str) -> Result<(), GuestError> {
        let deadline = self.deadline.into();
        let r = match &self.source {
            Source::V0_1(s) => {
                let fut = s.call_check(&mut self.store, config);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
            }
            Source::V0_2(s) => {
                let fut = s
                    .sluice_connector_connector()
                    .call_check(&mut self.store, config);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
            }
        };
        r.map_err(|e| self.explain(e))
    }

    pub async fn discover(&mut self, config: &str) -> Result<Vec<Stream>, GuestError> {
        let deadline = self.deadline.into();
        let r = match &self.source {
            Source::V0_1(s) => {
                let fut = s.call_discover(&mut self.store, config);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
                .map(|streams| streams.into_iter().map(Stream::from).collect())
            }
            Source::V0_2(s) => {
                let fut = s
                    .sluice_connector_connector()
                    .call_discover(&mut self.store, config);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
                .map(|streams| streams.into_iter().map(Stream::from).collect())
            }
        };
        r.map_err(|e| self.explain(e))
    }

    pub async fn read(
        &mut self,
        config: &str,
        streams: &[ConfiguredStream],
    ) -> Result<ReadSummary, GuestError> {
        let deadline = self.deadline.into();
        let r = match &self.source {
            Source::V0_1(s) => {
                let streams: Vec<v0_1::types::ConfiguredStream> =
                    streams.iter().map(Into::into).collect();
                let fut = s.call_read(&mut self.store, config, &streams);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
                .map(ReadSummary::from)
            }
            Source::V0_2(s) => {
                let streams: Vec<v0_2::types::ConfiguredStream> =
                    streams.iter().map(Into::into).collect();
                let fut =
                    s.sluice_connector_connector()
                        .call_read(&mut self.store, config, &streams);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
                .map(ReadSummary::from)
            }
        };
        r.map_err(|e| self.explain(e))
    }
}

impl Sandbox {
    /// The partitions `stream` splits into with `config`, as opaque JSON
    /// texts (WIT `@0.2.0`); empty when it does not split. A `@0.1.0`
    /// component has no partitions: every stream is read whole.
    pub async fn partitions(
        &mut self,
        config: &str,
        stream: &str,
    ) -> Result<Vec<String>, GuestError> {
        let deadline = self.deadline.into();
        let r = match &self.source {
            Source::V0_1(_) => Ok(Vec::new()),
            Source::V0_2(s) => {
                let fut =
                    s.sluice_connector_connector()
                        .call_partitions(&mut self.store, config, stream);
                finish(
                    tokio::time::timeout_at(deadline, fut).await,
                    self.batch_limit,
                )
            }
        };
        r.map_err(|e| self.explain(e))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let data = self.store.data();
        data.wasi
            .log_output(&data.log.run_id, &data.log.connector, &data.log.secrets);
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
fn finish<T, E: Into<ConnectorError>>(
    r: Result<wasmtime::Result<Result<T, E>>, tokio::time::error::Elapsed>,
    batch_limit: u64,
) -> Result<T, GuestError> {
    match r {
        Err(_) => Err(deadline_error()),
        Ok(Err(trap)) => {
            let (status, message) = classify(&trap, batch_limit);
            Err(GuestError::Stopped { status, message })
        }
        Ok(Ok(Err(e))) => Err(GuestError::Connector(e.into())),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_line_outermost_first() {
        let err = wasmtime::Error::msg("root\ncause").context("while emitting");
        assert_eq!(one_line(&err), "while emitting: root cause");
        let (status, reason) = classify(&err, 1024);
        assert_eq!(status, RunStatus::Trapped);
        assert!(!reason.contains('\n'), "{reason}");
    }

    #[test]
    fn exhausted_hostcall_fuel_is_batch_too_large() {
        let err = wasmtime::Error::msg(
            "too much data is being copied between the host and the guest: \
             fuel allocated for hostcalls has been exhausted",
        )
        .context("error while executing at wasm backtrace:\n    0: 0x1 - f");
        let (status, reason) = classify(&err, 1024);
        assert_eq!(status, RunStatus::BatchTooLarge);
        assert!(reason.contains("batch limit of 1024 bytes"), "{reason}");
    }
}
