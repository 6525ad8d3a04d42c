//! The subcommands.

mod output;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::conformance;
use crate::scaffold;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sluice_core::destination::{QuarantineFilter, Store};
use sluice_core::egress::HostGrant;
use sluice_core::limits::{self, Limits, LimitsOverride};
use sluice_core::location::DbLocation;
use sluice_core::mode::{ProtocolFormat, WriteMode};
use sluice_core::run_spec::{ComponentSource, ProtocolOutput, RunSpec};
use sluice_core::secrets::{SecretHost, SecretSource, SecretSpec, Secrets};
use sluice_runner::config::{is_bare_name, ComponentRef, OperatorConfig, DEFAULT_CONFIG_FILE};
use sluice_runner::executor::{Executor, ExecutorError, LocalExecutor};
use sluice_runner::pipeline;
use sluice_runner::registry::{Registry, CONNECTORS_DIR_ENV, DEFAULT_CONNECTORS_DIR};
use sluice_runner::sync::{self as many, SyncJob};
use sluice_store::open;
use sluice_wasm::{Runtime, RuntimeOptions};

/// Sluice runs data connectors compiled to WebAssembly components, each in
/// its own sandbox, into SQLite.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Directory of compiled components (default: $SLUICE_CACHE_DIR, else
    /// ~/.cache/sluice/components).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile components every time instead of using the disk cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// The connector registry: components (*.wasm) known by their spec
    /// name [default: `connectors_dir` of sluice.toml, else
    /// ./connectors-dist].
    #[arg(long, global = true, value_name = "DIR", env = CONNECTORS_DIR_ENV)]
    connectors_dir: Option<PathBuf>,
    /// Log filter (tracing syntax), e.g. `info` or `warn,guest=debug`.
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG",
        default_value = "warn,guest=info"
    )]
    pub log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a connector's spec: name, version, config schema, streams.
    Spec {
        /// The connector: a component (.wasm, or .wat text) or a registry name.
        component: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask a connector whether a config is valid.
    Check {
        component: PathBuf,
        #[command(flatten)]
        access: Access,
    },
    /// List the streams a connector offers with a config.
    Discover {
        component: PathBuf,
        #[command(flatten)]
        access: Access,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a connector into a SQLite database.
    Run {
        component: PathBuf,
        #[command(flatten)]
        access: Access,
        /// The destination: a SQLite file (created if missing) or
        /// postgres://USER@HOST:PORT/DB[?schema=NAME], never with a password.
        /// (Parsed after clap, whose errors would echo a password.)
        #[arg(long, value_name = "FILE|URL")]
        db: String,
        /// Where a Postgres password comes from: env:VAR or file:PATH
        /// (else PGPASSWORD, else the passfile ~/.pgpass or $PGPASSFILE).
        #[arg(long, value_name = "env:VAR|file:PATH")]
        db_password: Option<SecretSource>,
        /// Ignore saved state and replace each table with this run's rows
        /// (rows that vanished upstream are removed when the run succeeds).
        #[arg(long)]
        full_refresh: bool,
        /// The instance this run belongs to: it owns the run's state,
        /// history and tables (default: the connector's registry name or
        /// the component file's name without extension).
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// The destination table of a stream (default
        /// `<instance>__<stream>`); repeatable.
        #[arg(long = "table", value_name = "STREAM=TABLE", value_parser = parse_table_arg)]
        tables: Vec<(String, String)>,
        /// Read only this stream (repeatable; default: every stream).
        #[arg(long = "stream", value_name = "NAME")]
        streams: Vec<String>,
        /// A stream's write mode: merge (upsert by key, the default),
        /// full_refresh (replace the table) or append (repeatable).
        #[arg(long = "mode", value_name = "STREAM=MODE", value_parser = sluice_core::mode::parse_stream_mode)]
        modes: Vec<(String, WriteMode)>,
        /// Write Singer or Airbyte messages to stdout instead of tables
        /// (the run summary goes to stderr; --db FILE keeps the run log:
        /// runs, quarantine, drift).
        #[arg(long, value_name = "singer|airbyte")]
        output: Option<ProtocolFormat>,
        /// With --output: resume from the state in FILE (what the target
        /// last echoed, or Meltano's state) instead of the run log's.
        #[arg(long, value_name = "FILE", requires = "output")]
        state_file: Option<PathBuf>,
        /// Print the run summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that a connector conforms: spec, config schema, check,
    /// discover, read, resume from the cursor, idempotence, default limits.
    /// Prints a pass/fail table; exits 1 if any check fails.
    TestConnector {
        component: PathBuf,
        #[command(flatten)]
        access: Access,
        /// A command that starts the upstream and prints `listening on
        /// URL` on stdout (e.g. `sluice-fixture items`): `{{fixture_url}}`
        /// in the config becomes URL and its host:port is granted; it is
        /// killed when the kit ends.
        #[arg(long, value_name = "CMD")]
        fixture: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a connector skeleton (one stream, config, README) that builds
    /// and passes `sluice test-connector` unchanged.
    New {
        /// The connector's name: [a-z][a-z0-9-]*.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: NewLang,
        /// Where to write it [default: ./NAME]; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The Sluice checkout the project builds against (its Rust SDK and
        /// build scripts) [default: the one this binary was built from].
        #[arg(long, value_name = "DIR")]
        sluice_root: Option<PathBuf>,
    },
    /// List the connectors in the registry directory: name, version,
    /// streams, the hosts each asks for, and the component path.
    Connectors {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the instances of sluice.toml (all, or those named) concurrently
    /// in one process; exits 1 unless every run succeeded.
    Sync {
        /// Instances to run (default: all).
        names: Vec<String>,
        /// The operator config file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
        config_file: PathBuf,
        /// Runs at once.
        #[arg(long, value_name = "N", default_value_t = limits::DEFAULT_SYNC_CONCURRENCY as u64,
              value_parser = clap::value_parser!(u64).range(1..=limits::MAX_SYNC_CONCURRENCY as u64))]
        concurrency: u64,
        /// Print the outcome as JSON (no progress display).
        #[arg(long)]
        json: bool,
    },
    /// The service: run the instances of sluice.toml on their schedules
    /// (`schedule`, `every`) and on demand through a JSON HTTP API
    /// (`/api/v1`, `/healthz`, `/readyz`, Prometheus `/metrics`), until
    /// SIGTERM or Ctrl-C (runs then stop at their next commit). With an
    /// API token (SLUICE_API_TOKEN, or `api_token` in sluice.toml) every
    /// request but the health checks needs `Authorization: Bearer TOKEN`;
    /// a non-loopback address needs one.
    Serve {
        /// The operator config file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
        config_file: PathBuf,
        /// The address to listen on (port 0: any free port).
        #[arg(long, value_name = "ADDR", default_value = sluice_server::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// After SIGTERM, how long running runs have to reach their next
        /// commit before they are stopped without it (`30s`, `2m`; at most
        /// 1h).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_grace)]
        grace: std::time::Duration,
    },
    /// Run history: list runs, or `show ID`.
    Runs {
        #[command(flatten)]
        db: DbArgs,
        /// How many runs, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<RunsAction>,
    },
    /// Records that failed validation: list, show, edit, replay.
    Quarantine {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// An instance's checkpoint state: show, set, reset, and the audit of
    /// every change.
    State {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: StateAction,
    },
    /// Schema drift events: new fields, changed types, missing fields.
    Drift {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        stream: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Alerts of `sluice serve`'s rules: those firing, and the newest
    /// events (fired, repeated, resolved; delivered or not), from the run
    /// logs of sluice.toml's instances.
    Alerts {
        /// The operator config file.
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_FILE)]
        config_file: PathBuf,
        /// How many events, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The store a command reads or edits.
#[derive(Debug, Args)]
struct DbArgs {
    /// A SQLite file, or postgres://USER@HOST:PORT/DB[?schema=NAME]
    /// (never with a password).
    /// (Parsed after clap, whose errors would echo a password.)
    #[arg(long, value_name = "FILE|URL", global = true)]
    db: Option<String>,
    /// Where a Postgres password comes from: env:VAR or file:PATH (else
    /// PGPASSWORD, else the passfile ~/.pgpass or $PGPASSFILE).
    #[arg(long, value_name = "env:VAR|file:PATH", global = true)]
    db_password: Option<SecretSource>,
}

impl DbArgs {
    fn location(&self) -> Result<DbLocation> {
        parse_db(self.db.as_deref().context("--db FILE|URL is required")?)
    }

    /// Open an existing store to edit (never create one for a command
    /// that edits it). It may block: call it inside [`blocking`].
    fn open_existing(&self) -> Result<Box<dyn Store>> {
        let db = self.location()?;
        Ok(open::open_existing(&db, self.db_password.as_ref())?)
    }

    /// Open an existing store read-only, for a command that only reads:
    /// it changes nothing (and works on a read-only filesystem). It may
    /// block: call it inside [`blocking`].
    fn open_read_only(&self) -> Result<Box<dyn Store>> {
        let db = self.location()?;
        Ok(open::open_read_only(&db, self.db_password.as_ref())?)
    }
}

/// `sluice serve`'s API token: `SLUICE_API_TOKEN`, else the file's
/// `api_token` reference, else none.
fn api_token(config: &OperatorConfig) -> Result<Option<sluice_server::ApiToken>> {
    let env = sluice_server::API_TOKEN_ENV;
    if let Some(value) = std::env::var_os(env) {
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{env} is not UTF-8"))?;
        return Ok(Some(sluice_server::ApiToken::new(&value, env)?));
    }
    match config.api_token() {
        None => Ok(None),
        Some(src) => {
            let value = src.read("api_token")?;
            Ok(Some(sluice_server::ApiToken::new(
                &value,
                &format!("api_token ({src})"),
            )?))
        }
    }
}

/// A `--db` value: a file or a Postgres URL (an error never shows the
/// value: it may hold a password).
fn parse_db(text: &str) -> Result<DbLocation> {
    text.parse::<DbLocation>()
        .map_err(|e| anyhow::anyhow!("--db: {e}"))
}

/// Run `f`, which may block on a database client, on this tokio worker
/// without stalling the runtime (the synchronous Postgres client runs a
/// runtime of its own, which may not start inside an async task).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NewLang {
    Rust,
    Python,
    Js,
}

impl From<NewLang> for scaffold::Lang {
    fn from(l: NewLang) -> Self {
        match l {
            NewLang::Rust => scaffold::Lang::Rust,
            NewLang::Python => scaffold::Lang::Python,
            NewLang::Js => scaffold::Lang::Js,
        }
    }
}

#[derive(Debug, Subcommand)]
enum StateAction {
    /// Each stream's state, or one stream's.
    Show {
        instance: String,
        stream: Option<String>,
    },
    /// Set a stream's state (JSON; the connector reads it on its next run).
    Set {
        instance: String,
        stream: String,
        /// The state, JSON text (or give --file).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// A file holding the state.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Remove the state of a stream, or of every stream of the instance:
    /// its next run reads from the start.
    Reset {
        instance: String,
        stream: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// The audit of state changes, newest first.
    History {
        instance: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum RunsAction {
    /// One run in full.
    Show { id: String },
}

#[derive(Debug, Args)]
struct QuarantineSelect {
    #[arg(long)]
    connector: Option<String>,
    #[arg(long)]
    stream: Option<String>,
    /// Only these quarantine ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
}

impl QuarantineSelect {
    fn filter(&self, all: bool, limit: Option<usize>) -> QuarantineFilter {
        QuarantineFilter {
            connector: self.connector.clone(),
            stream: self.stream.clone(),
            ids: self.ids.clone(),
            all,
            limit,
        }
    }
}

#[derive(Debug, Subcommand)]
enum QuarantineAction {
    /// Quarantined records (not yet replayed, unless --all).
    List {
        #[command(flatten)]
        select: QuarantineSelect,
        /// Include records already replayed.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One quarantined record: raw JSON, errors, run, connector.
    Show { id: i64 },
    /// Replace a quarantined record's JSON (the original is kept for audit).
    Edit {
        id: i64,
        /// File with the corrected record (a JSON object).
        #[arg(long, value_name = "FILE")]
        record: PathBuf,
    },
    /// Re-validate against each stream's current schema and upsert the
    /// records that now pass, in one transaction. A record whose key's row
    /// was written after the record was last quarantined is stale: it is
    /// not written (it would take the row back to an older revision) and
    /// stays in quarantine, unless --force.
    Replay {
        #[command(flatten)]
        select: QuarantineSelect,
        /// Write stale records too, over the newer rows of their keys.
        #[arg(long)]
        force: bool,
    },
}

/// Config, grants and limits of one connector invocation.
#[derive(Debug, Args)]
struct Access {
    /// The connector's config (a JSON file).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Let the connector reach [http(s)://]HOST[:PORT] (repeatable): a DNS
    /// name, *.DOMAIN (its subdomains, not the apex), an IPv4 address or
    /// [IPv6]. Nothing else is reachable; loopback, private and metadata
    /// addresses only as an IP granted exactly.
    #[arg(long = "allow-host", value_name = "[SCHEME://]HOST[:PORT]")]
    allow_hosts: Vec<HostGrant>,
    /// Bind secret NAME to the value of environment variable VAR or the
    /// contents of file PATH (repeatable). Connectors write
    /// {{secret:NAME}} in a header value or the URL query; the host
    /// substitutes it.
    #[arg(long = "secret", value_name = "NAME=env:VAR|NAME=file:PATH")]
    secrets: Vec<SecretSpec>,
    /// Let secret NAME be sent to HOST (same forms as --allow-host;
    /// repeatable). A secret with no --secret-host is sent nowhere.
    #[arg(long = "secret-host", value_name = "NAME=HOST")]
    secret_hosts: Vec<SecretHost>,
    /// Limits and the HTTP policy: the same settings, and the same bounds,
    /// as an instance's `limits` and `http` tables in sluice.toml.
    #[command(flatten)]
    limits: LimitsOverride,
}

impl Access {
    fn limits(&self) -> Result<Limits> {
        self.limits
            .limits()
            .map_err(|e| anyhow::anyhow!(e.for_flag()))
    }

    fn secrets(&self) -> Result<Secrets> {
        Ok(Secrets::load_warning(&self.secrets, &self.secret_hosts)?)
    }

    fn config_text(&self) -> Result<String> {
        read_config(&self.config)
    }
}

/// Exit code of a command refused because confirmation was not given.
pub const EXIT_NOT_CONFIRMED: u8 = 1;

/// `sluice state …`: reads read-only; changes hold the instance's lease
/// (refused while a run holds it), are applied and audited in one
/// transaction.
fn state_command(db: &DbArgs, json: bool, action: &StateAction) -> Result<ExitCode> {
    let check_instance =
        |name: &str| sluice_core::instance::check_instance_name(name).map_err(anyhow::Error::msg);
    match action {
        StateAction::Show { instance, stream } => {
            check_instance(instance)?;
            let mut states = db.open_read_only()?.list_state(instance)?;
            if let Some(stream) = stream {
                states.retain(|s| &s.stream == stream);
                anyhow::ensure!(
                    !states.is_empty(),
                    "instance {} has no state for stream {}",
                    sluice_core::text::escaped(instance),
                    sluice_core::text::escaped(stream)
                );
            }
            output::print_state(instance, &states, json)?;
        }
        StateAction::History { instance, limit } => {
            let changes = db
                .open_read_only()?
                .list_state_changes(instance.as_deref(), *limit)?;
            output::print_state_changes(&changes, json)?;
        }
        StateAction::Set {
            instance,
            stream,
            value,
            file,
        } => {
            check_instance(instance)?;
            let text = match (value, file) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .trim_end()
                    .to_string(),
                (None, None) => anyhow::bail!("give the state, or --file FILE"),
            };
            serde_json::from_str::<serde_json::Value>(&text)
                .context("the state must be JSON (as connectors commit it)")?;
            anyhow::ensure!(
                text.len() as u64 <= limits::DEFAULT_MAX_STATE_BYTES,
                "the state is {} bytes; a state is at most {} bytes",
                text.len(),
                limits::DEFAULT_MAX_STATE_BYTES
            );
            let changes = change_state(db, instance, Some(stream.clone()), Some(text))?;
            output::print_state_changes(&changes, json)?;
        }
        StateAction::Reset {
            instance,
            stream,
            yes,
        } => {
            check_instance(instance)?;
            let mut store = db.open_existing()?;
            let mut states = store.list_state(instance)?;
            drop(store);
            if let Some(stream) = stream {
                states.retain(|s| &s.stream == stream);
            }
            if states.is_empty() {
                eprintln!(
                    "instance {} has no state{}: nothing to reset",
                    sluice_core::text::escaped(instance),
                    stream
                        .as_deref()
                        .map(|s| format!(" for stream {}", sluice_core::text::escaped(s)))
                        .unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            if !*yes {
                let names: Vec<_> = states.iter().map(|s| s.stream.as_str()).collect();
                let question = format!(
                    "reset the state of instance {} (streams: {})? Its next run reads them from the start. [y/N] ",
                    sluice_core::text::escaped(instance),
                    sluice_core::text::escaped(&names.join(", "))
                );
                if !confirm(&question)? {
                    eprintln!("not reset (confirm at the prompt, or pass --yes)");
                    return Ok(ExitCode::from(EXIT_NOT_CONFIRMED));
                }
            }
            let changes = change_state(db, instance, stream.clone(), None)?;
            output::print_state_changes(&changes, json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask `question` on the terminal; false unless the answer is yes. Without
/// a terminal on stdin, nobody can answer: false.
fn confirm(question: &str) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!("stdin is not a terminal: nobody can confirm");
        return Ok(false);
    }
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// A change refused because a run holds the instance (exit
/// [`EXIT_INSTANCE_BUSY`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InstanceBusy(String);

/// Set or reset state under the instance's lease, audited.
fn change_state(
    db: &DbArgs,
    instance: &str,
    stream: Option<String>,
    value: Option<String>,
) -> Result<Vec<sluice_core::destination::StateChangeRecord>> {
    let mut store = db.open_existing()?;
    let id = format!("state-{}", uuid::Uuid::now_v7());
    let holder = sluice_store::lease_holder();
    if let Some(h) = store.claim_lease(instance, &id, &holder, limits::LEASE_TTL)? {
        return Err(InstanceBusy(format!(
            "instance {} is busy: run {} holds it (since {}, process {}); change its state when the run has ended",
            sluice_core::text::escaped(instance),
            h.run_id,
            h.since,
            h.holder
        ))
        .into());
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let result = store.change_state(&sluice_core::destination::StateChange {
        id: id.clone(),
        instance: instance.to_string(),
        stream,
        value,
        by: format!("{user}@{holder}"),
    });
    if let Err(e) = store.release_lease(instance, &id) {
        tracing::warn!(error = %e, "could not release the instance's lease (it expires)");
    }
    Ok(result?)
}

fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))
}

pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Exit code of `sluice run` when another run holds the instance's lease
/// (sysexits' EX_TEMPFAIL: try again later).
pub const EXIT_INSTANCE_BUSY: u8 = 75;

/// A cancellation that SIGTERM or Ctrl-C triggers: the first stops runs at
/// their next commit (or after the grace period), a second at once.
/// `--grace`: a duration up to [`limits::MAX_CANCEL_GRACE`].
fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 30s, 2m)"))?;
    if grace > limits::MAX_CANCEL_GRACE {
        return Err(format!(
            "at most {}",
            humantime::format_duration(limits::MAX_CANCEL_GRACE)
        ));
    }
    Ok(grace)
}

fn stop_on_signals() -> sluice_core::cancel::Cancel {
    stop_on_signals_with(limits::CANCEL_GRACE)
}

/// A stop signal raised by SIGTERM or Ctrl-C (its runs get `grace` to
/// reach a commit); a second signal aborts.
fn stop_on_signals_with(grace: std::time::Duration) -> sluice_core::cancel::Cancel {
    let cancel = sluice_core::cancel::Cancel::with_grace(grace);
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        let mut next = async || {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        next().await;
        eprintln!(
            "stopping: each run ends at its next commit (or within {}); a second signal stops at once",
            humantime::format_duration(grace)
        );
        on_signal.stop();
        next().await;
        eprintln!("stopping now");
        on_signal.abort();
    });
    cancel
}

fn runtime(cli: &Cli) -> Result<Runtime> {
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir
            .clone()
            .or_else(RuntimeOptions::default_cache_dir)
    };
    Ok(Runtime::new(RuntimeOptions { cache_dir })?)
}

/// The registry directory: `--connectors-dir` (or its environment
/// variable), else the one `sluice.toml` names, else the default.
fn connectors_dir(cli: &Cli, from_file: Option<PathBuf>) -> PathBuf {
    cli.connectors_dir
        .clone()
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONNECTORS_DIR))
}

/// A component argument: an existing file or anything path-like is a path;
/// a bare name that is not a file is looked up in the registry.
/// `STREAM=TABLE` of `--table`.
fn parse_table_arg(text: &str) -> std::result::Result<(String, String), String> {
    let (stream, table) = text
        .split_once('=')
        .ok_or_else(|| format!("expected STREAM=TABLE, got {text:?}"))?;
    sluice_core::instance::check_table_name(table)?;
    Ok((stream.to_string(), table.to_string()))
}

async fn resolve_component(cli: &Cli, rt: &Runtime, arg: &Path) -> Result<PathBuf> {
    let bare = arg.to_str().is_some_and(is_bare_name);
    if !bare || arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let registry = Registry::scan(rt, &connectors_dir(cli, None))
        .await
        .with_context(|| format!("{name} is not a file, so it is looked up as a connector name"))?;
    Ok(registry.get(&name)?.path.clone())
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Spec { component, json } => {
            let start = Instant::now();
            let rt = runtime(&cli)?;
            let component = resolve_component(&cli, &rt, component).await?;
            let (loaded, spec) = pipeline::spec(&rt, &component, &Limits::default()).await?;
            output::print_spec(&spec, *json)?;
            tracing::info!(
                cache = ?loaded.cache,
                load_ms = loaded.load_time.as_millis() as u64,
                total_ms = start.elapsed().as_millis() as u64,
                "spec answered"
            );
        }
        Command::Check { component, access } => {
            let limits = access.limits()?;
            let rt = runtime(&cli)?;
            let component = resolve_component(&cli, &rt, component).await?;
            let config = access.config_text()?;
            pipeline::check(
                &rt,
                &component,
                &config,
                &access.allow_hosts,
                &access.secrets()?,
                &limits,
            )
            .await?;
            println!("config ok");
        }
        Command::Discover {
            component,
            access,
            json,
        } => {
            let limits = access.limits()?;
            let rt = runtime(&cli)?;
            let component = resolve_component(&cli, &rt, component).await?;
            let config = access.config_text()?;
            let streams = pipeline::discover(
                &rt,
                &component,
                &config,
                &access.allow_hosts,
                &access.secrets()?,
                &limits,
            )
            .await?;
            output::print_streams(&streams, *json)?;
        }
        Command::Run {
            component,
            access,
            db,
            db_password,
            full_refresh,
            instance,
            tables,
            streams,
            modes,
            output,
            state_file,
            json,
        } => {
            // Checked here, so a bad flag is named as the flag; the executor
            // checks the same override again where the run executes.
            access.limits()?;
            let instance = match instance {
                Some(name) => {
                    sluice_core::instance::check_instance_name(name).map_err(anyhow::Error::msg)?;
                    name.clone()
                }
                None => sluice_core::instance::default_instance(component)
                    .map_err(anyhow::Error::msg)?,
            };
            let rt = Arc::new(runtime(&cli)?);
            let spec = RunSpec {
                component: ComponentSource::Path(resolve_component(&cli, &rt, component).await?),
                component_digest: None,
                config: access.config_text()?,
                destination: parse_db(db)?,
                db_password: db_password.clone(),
                instance,
                tables: tables.iter().cloned().collect(),
                grants: access.allow_hosts.clone(),
                secrets: access.secrets.clone(),
                secret_hosts: access.secret_hosts.clone(),
                limits: access.limits.clone(),
                http: access.limits.http.clone(),
                full_refresh: *full_refresh,
                streams: streams.clone(),
                modes: modes.iter().cloned().collect(),
                output: output.map(|format| ProtocolOutput {
                    format,
                    state_file: state_file.clone(),
                }),
            };
            let executor = LocalExecutor::new(rt, connectors_dir(&cli, None));
            let report = match executor.submit(spec, stop_on_signals()).finish().await {
                Err(ExecutorError::Pipeline(e @ pipeline::PipelineError::InstanceBusy { .. })) => {
                    eprintln!("error: {}", sluice_core::text::escaped(&e.to_string()));
                    return Ok(ExitCode::from(EXIT_INSTANCE_BUSY));
                }
                other => other?,
            };
            if output.is_some() {
                // stdout carries the protocol: nothing else goes there.
                output::write_report(&mut std::io::stderr().lock(), &report, *json)?;
            } else {
                output::print_report(&report, *json)?;
            }
            if !report.succeeded() {
                eprintln!(
                    "error: run {} ended {}: {}",
                    report.record.id,
                    report.record.status,
                    sluice_core::text::escaped(
                        report.record.error.as_deref().unwrap_or("(no message)")
                    )
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::TestConnector {
            component,
            access,
            fixture,
            json,
        } => {
            let limits = access.limits()?;
            let rt = runtime(&cli)?;
            let component = resolve_component(&cli, &rt, component).await?;
            let mut config = access.config_text()?;
            let mut grants = access.allow_hosts.clone();
            let fixture = match fixture {
                Some(cmd) => {
                    let f = conformance::Fixture::start(cmd)?;
                    config = config.replace(conformance::FIXTURE_URL_PLACEHOLDER, &f.url);
                    grants.extend(f.grant());
                    Some(f)
                }
                None => None,
            };
            let req = conformance::KitRequest {
                component,
                config,
                grants,
                secrets: access.secrets()?,
                limits,
            };
            let report = conformance::run(&rt, &req).await?;
            drop(fixture);
            output::print_kit_report(&report, *json)?;
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::New {
            name,
            lang,
            dir,
            sluice_root,
        } => {
            let lang = scaffold::Lang::from(*lang);
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let root = sluice_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(scaffold::BUILT_FROM));
            let root = std::fs::canonicalize(&root).with_context(|| {
                format!(
                    "the Sluice checkout {} is not there (give --sluice-root DIR)",
                    root.display()
                )
            })?;
            let made = scaffold::new(lang, name, &dir, &root)?;
            println!(
                "wrote {} files of a {} connector to {}",
                made.files.len(),
                lang.as_str(),
                made.dir.display()
            );
            let abs = std::fs::canonicalize(&made.dir).unwrap_or(made.dir.clone());
            println!("build:  {}", lang.build_command(&root, &abs));
            println!("see {}/README.md", made.dir.display());
        }
        Command::Connectors { json } => {
            let rt = runtime(&cli)?;
            let dir = connectors_dir(&cli, None);
            let registry = Registry::scan(&rt, &dir).await?;
            output::print_connectors(&registry, *json)?;
        }
        Command::Serve {
            config_file,
            listen,
            grace,
        } => {
            let config = OperatorConfig::load(config_file)?;
            let token = api_token(&config)?;
            sluice_server::check_listen(*listen, token.as_ref())?;
            let rt = Arc::new(runtime(&cli)?);
            let executor = LocalExecutor::new(rt, connectors_dir(&cli, config.connectors_dir()));
            sluice_server::serve(sluice_server::ServeOptions {
                config,
                listen: *listen,
                token,
                executor,
                cancel: stop_on_signals_with(*grace),
                on_listening: Box::new(|addr| {
                    eprintln!("sluice serve: listening on http://{addr}")
                }),
            })
            .await?;
        }
        Command::Sync {
            names,
            config_file,
            concurrency,
            json,
        } => {
            let config = OperatorConfig::load(config_file)?;
            let selected = config.select(names)?;
            let rt = Arc::new(runtime(&cli)?);
            let by_name = selected.iter().any(|n| {
                matches!(
                    ComponentRef::parse(&config.file.instances[n.as_str()].component),
                    ComponentRef::Name(_)
                )
            });
            let registry = if by_name {
                let dir = connectors_dir(&cli, config.connectors_dir());
                Some(Registry::scan(&rt, &dir).await?)
            } else {
                None
            };
            let cancel = stop_on_signals();
            let jobs: Vec<SyncJob> = selected
                .iter()
                .map(|name| SyncJob {
                    instance: name.clone(),
                    request: many::prepare(&config, name, registry.as_ref()).map(|mut r| {
                        r.cancel = cancel.clone();
                        r
                    }),
                })
                .collect();
            let display = progress::Display::new(*json);
            let outcomes = many::run_all(
                rt,
                jobs,
                usize::try_from(*concurrency).unwrap_or(limits::DEFAULT_SYNC_CONCURRENCY),
                display.observer(),
            )
            .await;
            display.finish().await;
            output::print_sync(&outcomes, *json)?;
            if !outcomes.iter().all(|o| o.succeeded()) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Runs {
            db,
            limit,
            json,
            action,
        } => {
            // Read-only, so nothing is marked: a `running` run whose lease
            // is gone is shown `crashed` (as the next write-capable command
            // records it).
            blocking(|| -> Result<()> {
                let mut store = db.open_read_only()?;
                match action {
                    None => output::print_runs(&store.list_runs(*limit)?, *json)?,
                    Some(RunsAction::Show { id }) => {
                        output::print_run(&store.get_run(id)?, &store.get_run_logs(id)?, *json)?
                    }
                }
                Ok(())
            })?;
        }
        Command::Quarantine { db, json, action } => blocking(|| -> Result<()> {
            match action {
                QuarantineAction::List { select, all, limit } => {
                    let entries = db
                        .open_read_only()?
                        .list_quarantine(&select.filter(*all, Some(*limit)))?;
                    output::print_quarantine_list(&entries, *json)?;
                }
                QuarantineAction::Show { id } => {
                    let entries = db.open_read_only()?.list_quarantine(&QuarantineFilter {
                        ids: vec![*id],
                        all: true,
                        ..QuarantineFilter::default()
                    })?;
                    let entry = entries.first().ok_or(
                        sluice_core::destination::StoreError::QuarantineNotFound(*id),
                    )?;
                    output::print_quarantine_entry(entry, *json)?;
                }
                QuarantineAction::Edit { id, record } => {
                    let mut store = db.open_existing()?;
                    let text = std::fs::read_to_string(record)
                        .with_context(|| format!("cannot read {}", record.display()))?;
                    store.edit_quarantined(*id, text.trim())?;
                    println!("quarantined record {id} updated (original kept); replay it with `sluice quarantine replay --id {id}`");
                }
                QuarantineAction::Replay { select, force } => {
                    let summary = pipeline::replay(
                        &mut *db.open_existing()?,
                        &select.filter(false, None),
                        *force,
                    )?;
                    output::print_replay(&summary, *json)?;
                }
            }
            Ok(())
        })?,
        Command::State { db, json, action } => {
            return match blocking(|| state_command(db, *json, action)) {
                Err(e) if e.downcast_ref::<InstanceBusy>().is_some() => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(EXIT_INSTANCE_BUSY))
                }
                other => other,
            };
        }
        Command::Alerts {
            config_file,
            limit,
            json,
        } => {
            let config = OperatorConfig::load(config_file)?;
            blocking(|| -> Result<()> {
                let names = config.names();
                let mut seen: Vec<DbLocation> = Vec::new();
                let (mut states, mut events) = (Vec::new(), Vec::new());
                for name in &names {
                    let Some((db, password)) = config.db_of(name) else {
                        continue;
                    };
                    if seen.contains(&db) {
                        continue;
                    }
                    // A database no run has made yet has no alerts.
                    if db.as_sqlite().is_some_and(|p| !p.exists()) {
                        seen.push(db);
                        continue;
                    }
                    let mut store = open::open_read_only(&db, password.as_ref())?;
                    let ours = |i: &str| {
                        names.iter().any(|n| n == i)
                            && config.db_of(i).is_some_and(|(d, _)| d == db)
                    };
                    states.extend(
                        store
                            .list_alerts()?
                            .into_iter()
                            .filter(|a| ours(&a.instance)),
                    );
                    events.extend(
                        store
                            .list_alert_events(*limit)?
                            .into_iter()
                            .filter(|a| ours(&a.instance)),
                    );
                    seen.push(db);
                }
                events.sort_by(|a, b| b.at.cmp(&a.at));
                events.truncate(*limit);
                output::print_alerts(&states, &events, *json)
            })?;
        }
        Command::Drift {
            db,
            connector,
            stream,
            json,
        } => blocking(|| -> Result<()> {
            let events = db
                .open_read_only()?
                .list_drift(connector.as_deref(), stream.as_deref())?;
            output::print_drift(&events, *json)?;
            Ok(())
        })?,
    }
    Ok(ExitCode::SUCCESS)
}
