//! The pipeline: resolve a connector, its config, grants and limits, drive
//! one sandbox through `spec` → `discover` → `read`, and record the run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

pub use crate::channel::RunProgress;
use crate::channel::{ReadChannel, RunCounters, RunStream};
use sluice_core::connector::{self, ConfiguredStream, SyncMode};
use sluice_core::destination::{QuarantineFilter, ReplayPlan, Store, StoreError, StreamDef};
use sluice_core::egress::HostGrant;
use sluice_core::flat::FlatCheck;
use sluice_core::limits::{Limits, LEASE_HEARTBEAT, LEASE_TTL};
use sluice_core::location::DbLocation;
use sluice_core::mode::WriteMode;
use sluice_core::row::StreamTable;
use sluice_core::run::{now_rfc3339, RunRecord, RunStatus};
use sluice_core::run_spec::ProtocolOutput;
use sluice_core::schema::{DriftKind, ParseFailure, RecordError, StreamSchema, Verdict};
use sluice_core::secrets::{SecretSource, Secrets};
use sluice_core::spec_check::{self, SpecError};
use sluice_store::WriterHandle;
use sluice_wasm::engine::{CacheOutcome, Loaded, Runtime, RuntimeError};
use sluice_wasm::host::http::HttpStats;
use sluice_wasm::sandbox::{GuestError, Sandbox};

/// Failures before a run can be recorded, or of the store under it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid config: {0}")]
    Config(String),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Another run holds the instance's lease.
    #[error(
        "instance {instance} is already running (run {run_id}, since {since}, process {holder})"
    )]
    InstanceBusy {
        instance: String,
        run_id: String,
        since: String,
        holder: String,
    },
}

/// Parse and check the operator's config text: it must be a JSON object.
pub fn check_config_json(config: &str) -> Result<(), PipelineError> {
    match serde_json::from_str::<serde_json::Value>(config) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(PipelineError::Config(
            "the config must be a JSON object".into(),
        )),
        Err(e) => Err(PipelineError::Config(format!(
            "the config is not valid JSON: {e}"
        ))),
    }
}

/// Most config-schema violations quoted in one error.
pub const MAX_CONFIG_ERRORS_SHOWN: usize = 5;

/// Validate the operator's config against the connector's own config
/// schema (from `spec`), on the host, before the connector sees it.
pub fn check_config_schema(
    spec: &connector::ConnectorSpec,
    config: &str,
) -> Result<(), PipelineError> {
    let schema: serde_json::Value = serde_json::from_str(&spec.config_schema).map_err(|e| {
        PipelineError::Config(format!(
            "connector {}'s config schema is not JSON: {e}",
            spec.name
        ))
    })?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| {
        PipelineError::Config(format!(
            "connector {}'s config schema is not a valid JSON Schema: {e}",
            spec.name
        ))
    })?;
    let value: serde_json::Value = serde_json::from_str(config)
        .map_err(|e| PipelineError::Config(format!("the config is not valid JSON: {e}")))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| {
            let path = e.instance_path().to_string();
            format!("{}: {e}", if path.is_empty() { "/" } else { &path })
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = errors
        .iter()
        .take(MAX_CONFIG_ERRORS_SHOWN)
        .map(String::as_str)
        .collect();
    let more = errors.len().saturating_sub(MAX_CONFIG_ERRORS_SHOWN);
    Err(PipelineError::Config(format!(
        "the config does not match connector {}'s config schema: {}{}",
        spec.name,
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )))
}

/// A new run id: UUID v7 (time-ordered).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `spec` of the component at `path`, refused unless it passes
/// [`spec_check::validate`].
pub async fn spec(
    runtime: &Runtime,
    path: &Path,
    limits: &Limits,
) -> Result<(Arc<Loaded>, connector::ConnectorSpec), PipelineError> {
    let (loaded, spec) = spec_unchecked(runtime, path, limits).await?;
    spec_check::validate(&spec)?;
    Ok((loaded, spec))
}

/// The spec of a sandbox's component, refused unless it passes
/// [`spec_check::validate`].
async fn checked_spec(sandbox: &mut Sandbox) -> Result<connector::ConnectorSpec, PipelineError> {
    let spec = sandbox.spec().await?;
    spec_check::validate(&spec)?;
    Ok(spec)
}

/// `spec` of the component at `path` as the component answered it (for
/// the conformance kit, which reports a bad spec itself).
pub async fn spec_unchecked(
    runtime: &Runtime,
    path: &Path,
    limits: &Limits,
) -> Result<(Arc<Loaded>, connector::ConnectorSpec), PipelineError> {
    let loaded = runtime.load(path)?;
    let mut sandbox = Sandbox::new(
        runtime,
        &loaded,
        &new_run_id(),
        "?",
        &[],
        &Secrets::default(),
        limits,
    )
    .await?;
    let spec = sandbox.spec().await?;
    Ok((loaded, spec))
}

/// A sandbox of the component at `path`, past `spec`, with `config`
/// checked as JSON and against the connector's config schema.
async fn configured_sandbox(
    runtime: &Runtime,
    path: &Path,
    config: &str,
    grants: &[HostGrant],
    secrets: &Secrets,
    limits: &Limits,
) -> Result<Sandbox, PipelineError> {
    check_config_json(config)?;
    let loaded = runtime.load(path)?;
    let mut sandbox = Sandbox::new(
        runtime,
        &loaded,
        &new_run_id(),
        "?",
        grants,
        secrets,
        limits,
    )
    .await?;
    let spec = checked_spec(&mut sandbox).await?;
    sandbox.set_connector(&spec.name);
    check_config_schema(&spec, config)?;
    Ok(sandbox)
}

/// `check` of the component at `path` with `config`.
pub async fn check(
    runtime: &Runtime,
    path: &Path,
    config: &str,
    grants: &[HostGrant],
    secrets: &Secrets,
    limits: &Limits,
) -> Result<(), PipelineError> {
    let mut sandbox = configured_sandbox(runtime, path, config, grants, secrets, limits).await?;
    Ok(sandbox.check(config).await?)
}

/// `discover` of the component at `path` with `config`.
pub async fn discover(
    runtime: &Runtime,
    path: &Path,
    config: &str,
    grants: &[HostGrant],
    secrets: &Secrets,
    limits: &Limits,
) -> Result<Vec<connector::Stream>, PipelineError> {
    let mut sandbox = configured_sandbox(runtime, path, config, grants, secrets, limits).await?;
    Ok(sandbox.discover(config).await?)
}

/// What `run` needs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub component: PathBuf,
    /// The connector's config, JSON text.
    pub config: String,
    /// The destination: a SQLite file or a Postgres server.
    pub db: DbLocation,
    /// Where a Postgres password comes from, if not from `PGPASSWORD` or
    /// the passfile (see `sluice_store::open`).
    pub db_password: Option<SecretSource>,
    pub grants: Vec<HostGrant>,
    /// Secrets the host substitutes into the connector's requests (to the
    /// hosts each is bound to) and redacts from everything it records.
    pub secrets: Secrets,
    pub limits: Limits,
    /// Read every stream in full-refresh mode: saved state is ignored and,
    /// when the run succeeds, rows it did not write are removed.
    pub full_refresh: bool,
    /// The instance (see [`sluice_core::instance`]): its name keys the run's
    /// state, run record, quarantine and drift rows (`connector` columns)
    /// and prefixes its tables. Never the component's own name.
    pub instance: String,
    /// Destination tables the operator chose, by stream; the others are
    /// [`sluice_core::instance::default_table`].
    pub tables: std::collections::BTreeMap<String, String>,
    /// The streams to read (empty: every stream the connector declares).
    pub streams: Vec<String>,
    /// Write modes the operator chose, by stream; the others merge
    /// (upsert by key), or are replaced when `full_refresh` is set.
    pub modes: std::collections::BTreeMap<String, WriteMode>,
    /// Protocol messages on stdout instead of tables (`db` must then be a
    /// SQLite file: the run log).
    pub output: Option<ProtocolOutput>,
    /// The operator's stop request (SIGTERM, Ctrl-C): the run ends as
    /// `cancelled` at its next commit, or after the grace period.
    pub cancel: sluice_core::cancel::Cancel,
    /// Live record counters the pipeline updates as the run goes.
    pub progress: Option<Arc<RunProgress>>,
}

impl RunRequest {
    /// The destination table of `stream`.
    pub fn table_of(&self, stream: &str) -> String {
        self.tables
            .get(stream)
            .cloned()
            .unwrap_or_else(|| sluice_core::instance::default_table(&self.instance, stream))
    }
}

/// How a run went: its history row plus details for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    #[serde(flatten)]
    pub record: RunRecord,
    /// The streams the run read.
    pub selected_streams: Vec<String>,
    /// The destination table of each stream read.
    pub tables: std::collections::BTreeMap<String, String>,
    pub http_failed: u64,
    /// Requests failed fast because an upstream's circuit breaker was open.
    pub http_circuit_open: u64,
    pub log_lines_suppressed: u64,
    /// Requests the host refused as invalid (denied ones are `http_denied`).
    pub http_invalid: u64,
    /// The host's own `sluice::http` log lines about the run over the cap.
    pub http_log_lines_suppressed: u64,
    pub component_cache: &'static str,
    pub component_load_ms: u64,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.record.status == RunStatus::Succeeded
    }
}

/// A run that ended badly, with its status.
struct Failure {
    status: RunStatus,
    message: String,
}

impl From<GuestError> for Failure {
    fn from(e: GuestError) -> Self {
        match e {
            GuestError::Stopped { status, message } => Failure { status, message },
            GuestError::Connector(_) => Failure {
                status: RunStatus::Failed,
                message: e.to_string(),
            },
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            status: RunStatus::StoreError,
            message: e.to_string(),
        }
    }
}

/// Run a connector into the database: the whole `sluice run`.
pub async fn run(runtime: &Runtime, req: &RunRequest) -> Result<RunReport, PipelineError> {
    run_as(runtime, req, new_run_id()).await
}

/// [`run`] with the run id chosen by the caller (`sluice serve` answers
/// with it before the run ends); it must be new, as [`new_run_id`] makes.
pub async fn run_as(
    runtime: &Runtime,
    req: &RunRequest,
    run_id: String,
) -> Result<RunReport, PipelineError> {
    check_config_json(&req.config)?;
    let loaded = runtime.load(&req.component)?;
    let db = match &req.output {
        None => shared_database(&req.db, req.db_password.as_ref()).await?,
        Some(output) => protocol_database(&req.db, output).await?,
    };
    let writer = db.handle.writer.clone();
    let result = match claim_lease(&writer, &req.instance, &run_id).await {
        Ok(()) => {
            // Renew the lease while the run lasts; give it back after.
            let heartbeat = tokio::spawn(heartbeat(
                writer.clone(),
                req.instance.clone(),
                run_id.clone(),
            ));
            let result = run_with_writer(runtime, &loaded, req, &writer, run_id.clone()).await;
            heartbeat.abort();
            let (instance, id) = (req.instance.clone(), run_id);
            if let Err(e) = writer
                .call(move |s| s.release_lease(&instance, &id))
                .await
                .and_then(|r| r)
            {
                tracing::warn!(error = %e, "could not release the instance's lease (it expires)");
            }
            result
        }
        Err(e) => Err(e),
    };
    drop(writer);
    db.release().await;
    result
}

/// One database's writer, shared by every run of the process that writes
/// it (one write connection per database: runs never contend for SQLite's
/// write lock with each other).
struct SharedDatabase {
    handle: WriterHandle,
}

impl SharedDatabase {
    /// The run is done with it: the last one out closes the writer (and
    /// waits for its final checkpoint).
    async fn release(self: Arc<Self>) {
        if let Some(db) = Arc::into_inner(self) {
            db.handle.close().await;
        }
    }
}

/// The process's open databases, by [`database_key`].
static DATABASES: std::sync::OnceLock<Mutex<HashMap<String, std::sync::Weak<SharedDatabase>>>> =
    std::sync::OnceLock::new();

/// The same database however it is spelled: a file's directory made
/// absolute; a server's URL with its schema.
fn database_key(location: &DbLocation) -> String {
    match location {
        DbLocation::Sqlite(path) => {
            let abs = match (path.parent(), path.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
                .map(|d| d.join(name))
                .unwrap_or_else(|_| path.to_path_buf()),
                _ => path.to_path_buf(),
            };
            format!("sqlite:{}", abs.display())
        }
        DbLocation::Postgres(pg) => format!("postgres:{}#{}", pg.url(), pg.schema()),
    }
}

fn open_databases(
) -> std::sync::MutexGuard<'static, HashMap<String, std::sync::Weak<SharedDatabase>>> {
    DATABASES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The shared writer of the database at `location`, opened (and its
/// crashed runs marked) if no run of this process has it open. The open
/// happens on a blocking thread: the Postgres client blocks.
async fn shared_database(
    location: &DbLocation,
    password: Option<&SecretSource>,
) -> Result<Arc<SharedDatabase>, PipelineError> {
    let key = database_key(location);
    if let Some(db) = open_databases()
        .get(&key)
        .and_then(std::sync::Weak::upgrade)
    {
        return Ok(db);
    }
    // One open at a time in the process: two runs opening one SQLite file
    // at once would meet its write lock (the open makes tables and marks
    // crashed runs). Opens are rare; runs that find the database open
    // never wait here.
    static OPENING: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    let _opening = OPENING.get_or_init(Default::default).lock().await;
    if let Some(db) = open_databases()
        .get(&key)
        .and_then(std::sync::Weak::upgrade)
    {
        return Ok(db);
    }
    let (loc, pw) = (location.clone(), password.cloned());
    let store = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut store = sluice_store::open::open(&loc, pw.as_ref())?;
        store.mark_crashed()?;
        Ok(store)
    })
    .await
    .map_err(|e| StoreError::Backend {
        backend: "runner",
        message: format!("opening the database failed: {e}"),
    })??;
    // Registered under `OPENING`, so no other open can have raced this one.
    let db = Arc::new(SharedDatabase {
        handle: WriterHandle::spawn(store),
    });
    let mut open = open_databases();
    open.retain(|_, w| w.strong_count() > 0);
    open.insert(key, Arc::downgrade(&db));
    Ok(db)
}

/// A protocol output on stdout with its run log in the SQLite file `db`:
/// a writer of the run's own (it is not shared: another run's records must
/// not reach this run's stdout).
async fn protocol_database(
    db: &DbLocation,
    output: &ProtocolOutput,
) -> Result<Arc<SharedDatabase>, PipelineError> {
    let Some(path) = db.as_sqlite() else {
        return Err(StoreError::Invalid(format!(
            "--output {} keeps its run log (quarantine, drift, runs) in a local SQLite file: give --db FILE, not a server",
            output.format
        ))
        .into());
    };
    let (path, output) = (path.to_path_buf(), output.clone());
    let store = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut log = sluice_store::SqliteStore::open(&path)?;
        sluice_core::destination::RunLog::mark_crashed(&mut log)?;
        let store = sluice_store::ProtocolStore::new(
            output.format,
            log,
            Box::new(std::io::stdout()),
            output.state_file.as_deref(),
        )?;
        Ok(Box::new(store) as Box<dyn Store>)
    })
    .await
    .map_err(|e| StoreError::Backend {
        backend: "runner",
        message: format!("opening the run log failed: {e}"),
    })??;
    Ok(Arc::new(SharedDatabase {
        handle: WriterHandle::spawn(store),
    }))
}

/// Take `instance`'s lease for `run_id`, or say who holds it.
async fn claim_lease(
    writer: &sluice_store::Writer,
    instance: &str,
    run_id: &str,
) -> Result<(), PipelineError> {
    let (i, id) = (instance.to_string(), run_id.to_string());
    let held = writer
        .call(move |s| s.claim_lease(&i, &id, &sluice_store::lease_holder(), LEASE_TTL))
        .await??;
    match held {
        None => Ok(()),
        Some(h) => Err(PipelineError::InstanceBusy {
            instance: instance.to_string(),
            run_id: h.run_id,
            since: h.since,
            holder: h.holder,
        }),
    }
}

/// Renew the lease every [`LEASE_HEARTBEAT`] until aborted. A lost lease
/// (it expired and another run took it) is not fought over: the run's next
/// commit is refused by the fence.
async fn heartbeat(writer: sluice_store::Writer, instance: String, run_id: String) {
    loop {
        tokio::time::sleep(LEASE_HEARTBEAT).await;
        let (i, id) = (instance.clone(), run_id.clone());
        match writer
            .call(move |s| s.renew_lease(&i, &id, LEASE_TTL))
            .await
        {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(%instance, %run_id, "the run lost its lease; its commits will be refused");
                return;
            }
            Ok(Err(e)) => tracing::warn!(%instance, error = %e, "could not renew the lease"),
            Err(_) => return,
        }
    }
}

async fn run_with_writer(
    runtime: &Runtime,
    loaded: &Loaded,
    req: &RunRequest,
    writer: &sluice_store::Writer,
    run_id: String,
) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let mut sandbox = Sandbox::new(
        runtime,
        loaded,
        &run_id,
        "?",
        &req.grants,
        &req.secrets,
        &req.limits,
    )
    .await?;
    // A refused spec fails the command before a run is recorded.
    let spec = checked_spec(&mut sandbox).await?;
    let key = req.instance.clone();
    sandbox.set_connector(&key);
    // The instance may run another component than last time (a new
    // version, or another connector): allowed, and recorded in the run.
    let (instance, hash) = (key.clone(), loaded.hash.clone());
    let (name, version) = (spec.name.clone(), spec.version.clone());
    let previous = writer
        .call(move |s| s.note_component(&instance, &hash, &name, &version))
        .await??;
    let component_change = previous.and_then(|p| {
        (p.component_hash != loaded.hash).then(|| {
            format!(
                "{} {} ({}) -> {} {} ({})",
                p.connector,
                p.connector_version,
                short_hash(&p.component_hash),
                spec.name,
                spec.version,
                short_hash(&loaded.hash)
            )
        })
    });
    if let Some(change) = &component_change {
        tracing::info!(instance = %key, %change, "the instance runs another component than last time");
    }

    let mut record = RunRecord::started(&run_id, &key, &spec.version, &loaded.hash);
    record.component_change = component_change;
    let inserted = record.clone();
    writer.call(move |s| s.insert_run(&inserted)).await??;

    let channel: Arc<Mutex<Option<Arc<ReadChannel>>>> = Arc::default();
    let mut streams = std::collections::BTreeMap::new();
    let outcome = drive(
        &mut sandbox,
        &spec,
        req,
        writer,
        &run_id,
        &channel,
        &mut streams,
    )
    .await;

    let run_channel = channel.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut outcome = outcome;
    if let Some(c) = &run_channel {
        // A commit the connector made may still be in flight (a run that
        // failed after it): let it land and count it.
        if let Err(e) = c.settle().await {
            if outcome.is_ok() {
                outcome = Err(Failure {
                    status: RunStatus::StoreError,
                    message: e.to_string(),
                });
            }
        }
    }
    let counters = run_channel.map(|c| c.counters()).unwrap_or_default();
    if outcome.is_err() {
        // Nothing after the last commit is written.
        writer.discard(Arc::from(run_id.as_str())).await?;
    }
    let host = sandbox.host();
    let http: HttpStats = host.http.stats();
    let log_suppressed = host.log.suppressed;
    let peak_memory = host.limiter.peak_memory;
    let fuel_used = sandbox.fuel_used();
    let log_lines = sandbox.take_log_lines();
    drop(sandbox);

    let (status, error) = match outcome {
        Ok(()) => (RunStatus::Succeeded, None),
        // The error goes to the run record, the report and the terminal.
        Err(f) => (f.status, Some(req.secrets.redact(&f.message).into_owned())),
    };
    fill(
        &mut record,
        status,
        error,
        &counters,
        &http,
        fuel_used,
        peak_memory,
        started,
    );
    let updated = record.clone();
    if let Err(e) = writer
        .call(move |s| s.update_run(&updated))
        .await
        .and_then(|r| r)
    {
        // The store failed under the run (a full disk, say), so its end
        // cannot be recorded: the report still says what happened, and the
        // run row is `crashed` once its lease expires.
        tracing::error!(%run_id, error = %e, "could not record the run's end");
        record.status = RunStatus::StoreError;
        let unrecorded = format!("the run's end could not be recorded: {e}");
        record.error = Some(match record.error.take() {
            Some(first) if first.contains(&e.to_string()) => first,
            Some(first) => format!("{first}; {unrecorded}"),
            None => unrecorded,
        });
    }
    if !log_lines.is_empty() {
        let id = run_id.clone();
        if let Err(e) = writer
            .call(move |s| s.insert_run_logs(&id, &log_lines))
            .await
            .and_then(|r| r)
        {
            tracing::warn!(%run_id, error = %e, "could not keep the run's log lines");
        }
    }
    Ok(RunReport {
        record,
        selected_streams: streams.keys().cloned().collect(),
        tables: streams,
        http_failed: http.failed,
        http_circuit_open: http.circuit_open,
        log_lines_suppressed: log_suppressed,
        http_invalid: http.invalid,
        http_log_lines_suppressed: http.log_lines_suppressed,
        component_cache: match loaded.cache {
            CacheOutcome::Memory => "memory",
            CacheOutcome::Disk => "disk",
            CacheOutcome::Compiled => "compiled",
        },
        component_load_ms: loaded.load_time.as_millis() as u64,
    })
}

/// The first 12 hex digits of a component digest, for messages.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// "3 new fields in stream X" lines for the run summary.
fn drift_lines(drift: &sluice_core::schema::DriftSummary) -> Vec<String> {
    let mut lines: Vec<String> = drift
        .paths
        .iter()
        .map(|((stream, kind), paths)| {
            let n = paths.len();
            let what = match (kind, n) {
                (DriftKind::NewField, 1) => "new field",
                (DriftKind::NewField, _) => "new fields",
                (DriftKind::TypeChanged, 1) => "field changed type",
                (DriftKind::TypeChanged, _) => "fields changed type",
                (DriftKind::MissingRequired, 1) => "required field missing",
                (DriftKind::MissingRequired, _) => "required fields missing",
            };
            let list: Vec<&str> = paths.iter().map(String::as_str).take(5).collect();
            let more = if n > 5 { ", …" } else { "" };
            format!("{n} {what} in stream {stream} ({}{more})", list.join(", "))
        })
        .collect();
    if drift.unrecorded > 0 {
        lines.push(format!(
            "{} more drift observations of further paths counted, not recorded \
             (a run records at most {} distinct drift paths)",
            drift.unrecorded,
            sluice_core::schema::MAX_DRIFT_PATHS_PER_RUN
        ));
    }
    lines
}

#[allow(clippy::too_many_arguments)]
fn fill(
    record: &mut RunRecord,
    status: RunStatus,
    error: Option<String>,
    c: &RunCounters,
    http: &HttpStats,
    fuel_used: u64,
    peak_memory: u64,
    started: Instant,
) {
    record.status = status;
    record.error = error;
    record.ended_at = Some(now_rfc3339());
    record.duration_ms = Some(started.elapsed().as_millis() as u64);
    record.records_emitted = c.emitted;
    record.records_valid = c.valid;
    record.records_quarantined = c.quarantined;
    record.records_upserted = c.upserted;
    record.streams = c.streams.clone();
    record.drift = drift_lines(&c.drift);
    record.commits = c.commits;
    record.http_requests = http.requests;
    record.http_denied = http.denied;
    record.http_bytes = http.bytes_received;
    record.http_retries = http.retries;
    record.http_throttled_ms = http.throttled_ms;
    record.http_breaker_trips = http.breaker_trips;
    record.fuel_used = fuel_used;
    record.peak_memory_bytes = peak_memory;
}

async fn drive(
    sandbox: &mut Sandbox,
    spec: &connector::ConnectorSpec,
    req: &RunRequest,
    writer: &sluice_store::Writer,
    run_id: &str,
    channel_slot: &Mutex<Option<Arc<ReadChannel>>>,
    stream_tables: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), Failure> {
    let key = req.instance.as_str();
    check_config_schema(spec, &req.config).map_err(|e| Failure {
        status: RunStatus::Failed,
        message: e.to_string(),
    })?;
    let discovered = sandbox.discover(&req.config).await?;
    let invalid = |message: String| Failure {
        status: RunStatus::Failed,
        message: format!(
            "connector {} declared an invalid stream: {message}",
            spec.name
        ),
    };
    let mut streams = HashMap::new();
    let mut configured = Vec::new();
    let mut defs = Vec::new();
    let mut sweep = Vec::new();
    let declared = || {
        discovered
            .iter()
            .map(|s| format!("{:?}", s.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let undeclared = |what: &str, stream: &str| Failure {
        status: RunStatus::Failed,
        message: format!(
            "{what} stream {stream:?}, which connector {} does not declare (it declares {})",
            spec.name,
            declared()
        ),
    };
    let is_declared = |name: &str| discovered.iter().any(|s| s.name == name);
    if let Some(unknown) = req.tables.keys().find(|t| !is_declared(t)) {
        return Err(undeclared("a table is named for", unknown));
    }
    if let Some(unknown) = req.modes.keys().find(|t| !is_declared(t)) {
        return Err(undeclared("a write mode is set for", unknown));
    }
    if let Some(unknown) = req.streams.iter().find(|t| !is_declared(t)) {
        return Err(undeclared("the run selects", unknown));
    }
    let selected = |name: &str| req.streams.is_empty() || req.streams.iter().any(|s| s == name);
    let refuse_nul = !writer.call(|st| st.stores_nul()).await?;
    for s in discovered.iter().filter(|s| selected(&s.name)) {
        let table_name = req.table_of(&s.name);
        let mode = req.modes.get(&s.name).copied().unwrap_or_default();
        if mode == WriteMode::Append && req.full_refresh {
            return Err(Failure {
                status: RunStatus::Failed,
                message: format!(
                    "stream {:?}: --full-refresh replaces tables, and its write mode is append: choose one",
                    s.name
                ),
            });
        }
        // An appended stream's table has no key: every record is a row.
        let table_key: &[String] = match mode {
            WriteMode::Append => &[],
            WriteMode::Merge | WriteMode::FullRefresh => &s.primary_key,
        };
        let table = StreamTable::from_spec(&s.name, &s.json_schema, table_key)
            .map_err(|e| invalid(e.to_string()))?
            .in_table(table_name.clone());
        let schema =
            StreamSchema::compile(&s.name, &s.json_schema).map_err(|e| invalid(e.to_string()))?;
        // Read in full (saved state ignored) …
        let full_refresh = req.full_refresh
            || mode == WriteMode::FullRefresh
            || !s.sync_modes.contains(&SyncMode::Incremental);
        // … and replace the table, unless the stream appends.
        let sweeps = full_refresh && mode != WriteMode::Append;
        let flat = FlatCheck::new(&s.name, schema.schema(), &table);
        let run_stream = RunStream {
            table: Arc::new(table),
            schema,
            flat,
            full_refresh,
            refuse_nul,
        };
        let stream_table = run_stream.table.clone();
        if streams.insert(s.name.clone(), run_stream).is_some() {
            return Err(invalid(format!("stream {:?} is declared twice", s.name)));
        }
        configured.push(ConfiguredStream {
            name: s.name.clone(),
            sync_mode: if full_refresh {
                SyncMode::FullRefresh
            } else {
                SyncMode::Incremental
            },
        });
        if sweeps {
            sweep.push(stream_table);
        }
        defs.push(StreamDef {
            connector: key.to_string(),
            stream: s.name.clone(),
            connector_version: spec.version.clone(),
            json_schema: s.json_schema.clone(),
            // What the table is keyed by (none when appended): what a
            // replay writes by.
            primary_key: table_key.to_vec(),
        });
        if req.output.is_none() {
            // A protocol output makes no tables.
            stream_tables.insert(s.name.clone(), table_name);
        }
    }
    for s in streams.values() {
        let (t, instance) = (s.table.clone(), key.to_string());
        // The table must be this instance's (or no one's yet).
        writer
            .call(move |st| {
                st.claim_table(&instance, &t)?;
                st.ensure_table(&t)
            })
            .await??;
    }
    writer.call(move |st| st.record_streams(&defs)).await??;
    let channel = Arc::new(ReadChannel {
        run_id: Arc::from(run_id),
        connector: Arc::from(key),
        connector_version: Arc::from(spec.version.as_str()),
        writer: writer.clone(),
        streams,
        max_uncommitted_bytes: req.limits.max_uncommitted_bytes,
        max_state_bytes: req.limits.max_state_bytes,
        max_emit_bytes: req.limits.max_emit_bytes,
        max_record_bytes: req.limits.max_record_bytes,
        deadline: sandbox.deadline(),
        cancel: req.cancel.clone(),
        counters: Mutex::default(),
        progress: req.progress.clone(),
        in_flight: Mutex::default(),
        active: crate::check::ActiveRead::start(),
    });
    *channel_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel.clone());
    sandbox.attach_run(channel.clone());
    tokio::select! {
        read = sandbox.read(&req.config, &configured) => { read?; }
        () = req.cancel.hard(req.cancel.grace()) => {
            return Err(Failure {
                status: RunStatus::Cancelled,
                message: format!(
                    "stopped by the operator: no commit within the {} grace period, or a second \
                     stop request; records since the last commit are discarded",
                    humantime::format_duration(req.cancel.grace())
                ),
            })
        }
    }
    // Records emitted after the connector's last commit become durable now,
    // under the state it last committed (replays are idempotent upserts).
    // Full-refresh streams drop the rows this run did not write, in the
    // same transaction.
    channel.commit(None, sweep).await.map_err(|e| Failure {
        status: RunStatus::StoreError,
        message: e.to_string(),
    })?;
    Ok(())
}

/// What a quarantine replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub replay_id: String,
    pub examined: usize,
    /// Records written into their tables (now `replayed`).
    pub replayed: usize,
    pub still_invalid: usize,
    /// Records that pass but were not written: the row of their key was
    /// written after they were last seen (see
    /// [`ReplayPlan`](sluice_core::destination::ReplayPlan)). They stay in
    /// quarantine; `force` writes them.
    pub stale: usize,
    /// The quarantine ids of the stale records.
    pub stale_ids: Vec<i64>,
    /// Whether stale records were written anyway (`--force`).
    pub forced: bool,
}

/// A stream's table and compiled schema, for replay.
type ReplayTarget = (Arc<StreamTable>, StreamSchema);

/// Re-validate quarantined records against their stream's current schema
/// (as last declared by the connector) and upsert those that now pass and
/// are not stale (all of them with `force`), all in one transaction; the
/// rest keep their (refreshed) errors.
pub fn replay(
    store: &mut dyn Store,
    filter: &QuarantineFilter,
    force: bool,
) -> Result<ReplaySummary, PipelineError> {
    let entries = store.list_quarantine(&QuarantineFilter {
        all: false,
        ..filter.clone()
    })?;
    let mut targets: HashMap<(String, String), Option<ReplayTarget>> = HashMap::new();
    let mut plan = ReplayPlan {
        replay_id: format!("replay-{}", new_run_id()),
        force,
        ..ReplayPlan::default()
    };
    for e in &entries {
        let key = (e.connector.clone(), e.stream.clone());
        if !targets.contains_key(&key) {
            let target = match store.stream_def(&e.connector, &e.stream)? {
                Some(def) => {
                    // The table the instance's runs write this stream to.
                    let name = store.table_of(&e.connector, &e.stream)?.unwrap_or_else(|| {
                        sluice_core::instance::default_table(&e.connector, &e.stream)
                    });
                    let table =
                        StreamTable::from_spec(&def.stream, &def.json_schema, &def.primary_key)?
                            .in_table(name);
                    store.claim_table(&e.connector, &table)?;
                    store.ensure_table(&table)?;
                    let schema = StreamSchema::compile(&def.stream, &def.json_schema)
                        .map_err(|err| PipelineError::Config(err.to_string()))?;
                    Some((Arc::new(table), schema))
                }
                None => None,
            };
            targets.insert(key.clone(), target);
        }
        let Some((table, schema)) = &targets[&key] else {
            plan.rejected.push((
                e.id,
                vec![RecordError {
                    path: String::new(),
                    message: format!(
                        "connector {} no longer declares stream {}",
                        e.connector, e.stream
                    ),
                }],
            ));
            continue;
        };
        // The boundary's own parse: an edited record with a repeated key
        // stays in quarantine.
        let value = match sluice_core::schema::parse_record(&e.record) {
            Ok(v) => v,
            Err(ParseFailure::DuplicateKey(error)) => {
                plan.rejected.push((e.id, vec![error]));
                continue;
            }
            Err(ParseFailure::NotARecord(message)) => {
                plan.rejected.push((
                    e.id,
                    vec![RecordError {
                        path: String::new(),
                        message,
                    }],
                ));
                continue;
            }
        };
        match schema.check(value) {
            Verdict::Valid { record, .. } => match table.row_from_value(record, e.record.clone()) {
                Ok(row) if !store.stores_nul() => match sluice_core::schema::nul_error(&row.raw) {
                    Some(error) => plan.rejected.push((e.id, vec![error])),
                    None => plan.accepted.push((e.id, table.clone(), row)),
                },
                Ok(row) => plan.accepted.push((e.id, table.clone(), row)),
                Err((message, _)) => plan.rejected.push((
                    e.id,
                    vec![RecordError {
                        path: String::new(),
                        message,
                    }],
                )),
            },
            Verdict::Invalid { errors, .. } => plan.rejected.push((e.id, errors)),
        }
    }
    let applied = store.apply_replay(&plan)?;
    Ok(ReplaySummary {
        replay_id: plan.replay_id,
        examined: entries.len(),
        replayed: applied.replayed.len(),
        still_invalid: plan.rejected.len(),
        stale: applied.stale.len(),
        stale_ids: applied.stale,
        forced: force,
    })
}
