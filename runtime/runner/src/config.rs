//! The operator's config file, `sluice.toml`: named connector *instances*,
//! each a component (a path or a registry name), its config, the hosts it
//! may reach, its secrets, its limits and its database.
//!
//! ```toml
//! db = "sluice.db"                 # default database of every instance
//! connectors_dir = "connectors-dist"
//!
//! [instances.weather-berlin]
//! component = "open-meteo"         # registry name, or a path to a .wasm
//! allow_hosts = ["api.open-meteo.com"]
//! config = { locations = [{ name = "berlin", latitude = 52.52, longitude = 13.41 }] }
//!
//! [instances.crm]
//! component = "connectors/crm.wasm"
//! config_file = "crm.json"          # JSON; or an inline `config` table
//! db = "crm.db"
//! allow_hosts = ["https://api.example.com"]
//! secrets = { API_KEY = "env:CRM_API_KEY" }
//! secret_hosts = { API_KEY = ["https://api.example.com"] }
//! limits = { fuel = 5_000_000_000, memory = "128MiB", timeout = "10m", max_record_bytes = "1MiB" }
//! http = { retries = 5, timeout = "20s" }
//! tables = { contacts = "crm_contacts" }  # default: crm__contacts
//! schedule = "*/15 * * * *"        # `sluice serve`: cron, or
//! # every = "30m"                  # a fixed interval; neither: on demand
//! timezone = "Europe/Berlin"       # of `schedule` (default UTC)
//! jitter = "30s"                   # a random delay added to each due time
//! catch_up = "once"                # a run missed while down: "once" | "skip"
//! ```
//!
//! `limits` and `http` are one [`LimitsOverride`], the same settings and
//! bounds as the CLI's limit flags. Every table refuses unknown keys. Relative paths (`db`, `config_file`,
//! `connectors_dir`, a component path) are relative to the directory of the
//! file itself, so a `sluice.toml` means the same wherever `sluice` runs.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sluice_core::egress::HostGrant;
use sluice_core::limits::{HttpOverride, LimitError, Limits, LimitsOverride};
use sluice_core::location::DbLocation;
use sluice_core::mode::WriteMode;
use sluice_core::run_spec::{ComponentSource, RunSpec};
use sluice_core::secrets::{SecretError, SecretHost, SecretSource, SecretSpec, Secrets};

use crate::schedule::{CatchUp, Schedule, ScheduleError};

/// The config file read when none is named (`--config-file`).
pub const DEFAULT_CONFIG_FILE: &str = "sluice.toml";

/// A bad or unreadable `sluice.toml`, or an instance that cannot be
/// prepared. Every variant names the file. Causes are part of the message
/// (not a `source()`), so a printed chain shows each once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A syntax error, an unknown or missing key, a bad value: where it is
    /// (`line`, `column`, the dotted `key` when one is there) and what.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{}: instance {instance:?}: {reason}", path.display())]
    Instance {
        path: PathBuf,
        instance: String,
        reason: String,
    },
    #[error("{}: instance {instance:?}: {error}", path.display())]
    Secret {
        path: PathBuf,
        instance: String,
        error: SecretError,
    },
    #[error("{}: {reason}", path.display())]
    Alerts { path: PathBuf, reason: String },
    #[error("{}: no instances: define at least one [instances.NAME] table", path.display())]
    NoInstances { path: PathBuf },
    #[error("{}: no instance named {name:?} (instances: {known})", path.display())]
    UnknownInstance {
        path: PathBuf,
        name: String,
        known: String,
    },
}

/// `sluice.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Database of instances that name none: a SQLite file (relative to
    /// this file's directory) or a `postgres://` URL without a password.
    #[serde(default)]
    pub db: Option<DbLocation>,
    /// Where the Postgres password of `db` comes from (`env:VAR` or
    /// `file:PATH`), if not from `PGPASSWORD` or the passfile.
    #[serde(default)]
    pub db_password: Option<SecretSource>,
    /// Directory of the connector registry (overridden by
    /// `--connectors-dir`).
    #[serde(default)]
    pub connectors_dir: Option<PathBuf>,
    /// Runs at once in `sluice serve` (default
    /// [`DEFAULT_MAX_CONCURRENT_RUNS`], at most [`MAX_CONCURRENT_RUNS`]).
    #[serde(default)]
    pub max_concurrent_runs: Option<usize>,
    /// Where `sluice serve`'s API bearer token comes from (`env:VAR` or
    /// `file:PATH`); `SLUICE_API_TOKEN` in the environment wins.
    #[serde(default)]
    pub api_token: Option<SecretSource>,
    /// `sluice serve`'s alert rules and webhooks.
    #[serde(default)]
    pub alerts: crate::alert_config::AlertsConfig,
    /// The connector instances, by name.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
}

/// Runs at once in `sluice serve` when `max_concurrent_runs` is not set.
pub const DEFAULT_MAX_CONCURRENT_RUNS: usize = 4;

/// The largest `max_concurrent_runs` accepted.
pub const MAX_CONCURRENT_RUNS: usize = 256;

/// One `[instances.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// A registry name (no `/`, no extension) or a path to a component.
    pub component: String,
    /// The connector's config, inline (converted to JSON).
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The connector's config, a JSON file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// The database; defaults to the top-level `db`.
    #[serde(default)]
    pub db: Option<DbLocation>,
    /// The Postgres password's reference; defaults to the top-level
    /// `db_password`.
    #[serde(default)]
    pub db_password: Option<SecretSource>,
    /// Hosts the connector may reach, as for `--allow-host`.
    #[serde(default, deserialize_with = "parse_each")]
    pub allow_hosts: Vec<HostGrant>,
    /// `NAME = "env:VAR"` or `NAME = "file:PATH"`, as for `--secret`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// `NAME = ["HOST", …]`: where each secret may be sent, as for
    /// `--secret-host`.
    #[serde(default)]
    pub secret_hosts: BTreeMap<String, Vec<String>>,
    /// Limits, as the limit flags (`fuel`, `memory`, `timeout`,
    /// `max_http_requests`, …); unset ones keep their defaults.
    #[serde(default)]
    pub limits: LimitsOverride,
    /// The host's HTTP policy for this instance, as the `--http-timeout`,
    /// `--retries`, `--rate-limit` and `--breaker-*` flags.
    #[serde(default)]
    pub http: HttpOverride,
    /// Ignore saved state and replace each table with this run's rows.
    #[serde(default)]
    pub full_refresh: bool,
    /// `STREAM = "TABLE"`: the destination table of a stream (default
    /// `<instance>__<stream>`), as for `--table`.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
    /// The streams to read, as for `--stream` (default: every stream).
    #[serde(default)]
    pub streams: Vec<String>,
    /// `STREAM = "append" | "merge" | "full_refresh"`: a stream's write
    /// mode, as for `--mode` (default `merge`).
    #[serde(default)]
    pub modes: BTreeMap<String, WriteMode>,
    /// `sluice serve`: a cron expression (five fields, or six with seconds
    /// first; UTC) on which the instance runs.
    #[serde(default)]
    pub schedule: Option<String>,
    /// `sluice serve`: run every this long (`"30m"`, `"1h 30m"`), from the
    /// start of the last run. Not with `schedule`.
    #[serde(default)]
    pub every: Option<String>,
    /// `sluice serve`: a scheduled run missed while the server was down
    /// runs once at start (`"once"`, the default) or is skipped (`"skip"`).
    #[serde(default)]
    pub catch_up: CatchUp,
    /// `sluice serve`: the IANA time zone of `schedule` (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// `sluice serve`: each due time is moved on by a random delay of up
    /// to this long (`"30s"`; at most [`crate::schedule::MAX_JITTER`]), so
    /// instances on one schedule do not all start at once.
    #[serde(default)]
    pub jitter: Option<String>,
}

impl InstanceConfig {
    /// The instance's `limits` and `http` tables as one override.
    pub fn overrides(&self) -> LimitsOverride {
        LimitsOverride {
            http: self.http.clone(),
            ..self.limits.clone()
        }
    }
}

/// A parsed `sluice.toml` and where it is.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    pub path: PathBuf,
    pub file: FileConfig,
}

/// Where an instance's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRef {
    /// A connector registry name.
    Name(String),
    /// A component file.
    Path(PathBuf),
}

impl ComponentRef {
    /// `text` is a registry name when it has no path separator and no
    /// `.wasm`/`.wat` extension; otherwise a path.
    pub fn parse(text: &str) -> ComponentRef {
        if is_bare_name(text) {
            ComponentRef::Name(text.to_string())
        } else {
            ComponentRef::Path(PathBuf::from(text))
        }
    }
}

/// Could `text` be a registry name rather than a path?
pub fn is_bare_name(text: &str) -> bool {
    !text.is_empty()
        && !text.contains(['/', '\\'])
        && !text.ends_with(".wasm")
        && !text.ends_with(".wat")
        && text != "."
        && text != ".."
}

/// One instance, ready to run (secrets read, config JSON in hand).
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub component: ComponentRef,
    /// The connector's config, JSON text.
    pub config: String,
    pub db: DbLocation,
    pub db_password: Option<SecretSource>,
    pub grants: Vec<HostGrant>,
    pub secrets: Secrets,
    pub limits: Limits,
    pub full_refresh: bool,
    /// Destination tables the operator chose, by stream.
    pub tables: BTreeMap<String, String>,
    /// The streams to read (empty: all).
    pub streams: Vec<String>,
    /// Write modes the operator chose, by stream.
    pub modes: BTreeMap<String, WriteMode>,
}

impl OperatorConfig {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<OperatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(path, &text)
    }

    /// Parse `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<OperatorConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_column(text, offset);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                key: key_at(text, offset),
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let config = OperatorConfig {
            path: path.to_path_buf(),
            file,
        };
        if config.file.instances.is_empty() {
            return Err(ConfigError::NoInstances {
                path: path.to_path_buf(),
            });
        }
        if let Some(n) = config.file.max_concurrent_runs {
            if !(1..=MAX_CONCURRENT_RUNS).contains(&n) {
                let offset = value_span(text, &["max_concurrent_runs"]).map_or(0, |s| s.start);
                let (line, column) = line_column(text, offset);
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    key: Some("max_concurrent_runs".into()),
                    message: format!("must be between 1 and {MAX_CONCURRENT_RUNS}, got {n}"),
                });
            }
        }
        config
            .file
            .alerts
            .check(&config.names())
            .map_err(|reason| ConfigError::Alerts {
                path: path.to_path_buf(),
                reason,
            })?;
        for (name, inst) in &config.file.instances {
            config.check_instance(name, inst)?;
            if let Err(e) = inst.overrides().check() {
                return Err(config.limit_parse_error(text, name, &e));
            }
        }
        Ok(config)
    }

    /// A limit out of bounds as a parse error at its key (the instance's
    /// `limits` or `http` table when the key cannot be found).
    fn limit_parse_error(&self, text: &str, instance: &str, e: &LimitError) -> ConfigError {
        let table = e.setting.table();
        let key = e.setting.key();
        let offset = value_span(text, &["instances", instance, table, key])
            .or_else(|| value_span(text, &["instances", instance, table]))
            .or_else(|| value_span(text, &["instances", instance]))
            .map_or(0, |span| span.start);
        let (line, column) = line_column(text, offset);
        ConfigError::Parse {
            path: self.path.clone(),
            line,
            column,
            key: Some(format!("instances.{instance}.{table}.{key}")),
            message: e.problem.clone(),
        }
    }

    fn limit_error(&self, instance: &str, e: &LimitError) -> ConfigError {
        self.instance_error(instance, e.to_string())
    }

    fn instance_error(&self, instance: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Instance {
            path: self.path.clone(),
            instance: instance.to_string(),
            reason: reason.into(),
        }
    }

    /// Checks that need no I/O: the name, config vs. config_file, secrets.
    fn check_instance(&self, name: &str, inst: &InstanceConfig) -> Result<(), ConfigError> {
        sluice_core::instance::check_instance_name(name)
            .map_err(|e| self.instance_error(name, e))?;
        for (stream, table) in &inst.tables {
            sluice_core::instance::check_table_name(table).map_err(|e| {
                self.instance_error(name, format!("tables: stream {stream:?}: {e}"))
            })?;
        }
        if inst.config.is_some() && inst.config_file.is_some() {
            return Err(self.instance_error(name, "set `config` or `config_file`, not both"));
        }
        if inst.component.trim().is_empty() {
            return Err(self.instance_error(name, "`component` is empty"));
        }
        if inst.db.is_none() && self.file.db.is_none() {
            return Err(self.instance_error(
                name,
                "no database: set `db` in the instance or at the top of the file",
            ));
        }
        self.secret_specs(name, inst)?;
        Self::instance_schedule(inst).map_err(|e| self.instance_error(name, e.to_string()))?;
        crate::schedule::parse_jitter(inst.jitter.as_deref())
            .map_err(|e| self.instance_error(name, e.to_string()))?;
        Ok(())
    }

    /// An instance's schedule, in its time zone.
    fn instance_schedule(inst: &InstanceConfig) -> Result<Option<Schedule>, ScheduleError> {
        let schedule = Schedule::parse(inst.schedule.as_deref(), inst.every.as_deref())?;
        match (schedule, inst.timezone.as_deref()) {
            (Some(s), Some(tz)) => s.in_timezone(tz).map(Some),
            (None, Some(_)) => Err(ScheduleError::TimezoneWithoutCron),
            (s, None) => Ok(s),
        }
    }

    /// The `jitter` of instance `name` (checked at load).
    pub fn jitter(&self, name: &str) -> Option<std::time::Duration> {
        let inst = self.file.instances.get(name)?;
        crate::schedule::parse_jitter(inst.jitter.as_deref())
            .ok()
            .flatten()
    }

    /// The database of instance `name` and its password's reference,
    /// without reading its config file or secrets (so an instance whose
    /// secret is missing still has its run log).
    pub fn db_of(&self, name: &str) -> Option<(DbLocation, Option<SecretSource>)> {
        let inst = self.file.instances.get(name)?;
        let db = match inst.db.as_ref().or(self.file.db.as_ref())? {
            DbLocation::Sqlite(p) => DbLocation::Sqlite(self.resolve_path(p)),
            pg => pg.clone(),
        };
        let password = inst
            .db_password
            .as_ref()
            .or(self.file.db_password.as_ref())
            .cloned();
        Some((db, password))
    }

    /// Runs at once in `sluice serve`.
    pub fn max_concurrent_runs(&self) -> usize {
        self.file
            .max_concurrent_runs
            .unwrap_or(DEFAULT_MAX_CONCURRENT_RUNS)
    }

    /// The schedule of instance `name` (`None`: on demand only, or no
    /// such instance). Checked at load, so it parses.
    pub fn schedule(&self, name: &str) -> Option<Schedule> {
        let inst = self.file.instances.get(name)?;
        Self::instance_schedule(inst).ok().flatten()
    }

    /// The `catch_up` of instance `name`.
    pub fn catch_up(&self, name: &str) -> CatchUp {
        self.file
            .instances
            .get(name)
            .map(|i| i.catch_up)
            .unwrap_or_default()
    }

    /// Instance `name` as a [`RunSpec`] for an executor: its config read,
    /// its secrets as references (the executor reads them where the run
    /// executes), a registry name left for the executor to look up.
    pub fn run_spec(&self, name: &str) -> Result<RunSpec, ConfigError> {
        let inst = self.instance(name)?;
        let file = &self.file.instances[name];
        let (secrets, secret_hosts) = self.secret_specs(name, file)?;
        Ok(RunSpec {
            component: match inst.component {
                ComponentRef::Name(n) => ComponentSource::Registry(n),
                ComponentRef::Path(p) => ComponentSource::Path(p),
            },
            component_digest: None,
            config: inst.config,
            destination: inst.db,
            db_password: inst.db_password,
            instance: inst.name,
            tables: inst.tables,
            grants: inst.grants,
            secrets,
            secret_hosts,
            limits: file.limits.clone(),
            http: file.http.clone(),
            full_refresh: inst.full_refresh,
            streams: inst.streams,
            modes: inst.modes,
            output: None,
        })
    }

    fn secret_specs(
        &self,
        name: &str,
        inst: &InstanceConfig,
    ) -> Result<(Vec<SecretSpec>, Vec<SecretHost>), ConfigError> {
        let secret_err = |error| ConfigError::Secret {
            path: self.path.clone(),
            instance: name.to_string(),
            error,
        };
        let specs = inst
            .secrets
            .iter()
            .map(|(n, source)| SecretSpec::from_str(&format!("{n}={source}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(secret_err)?;
        let mut hosts = Vec::new();
        for (n, list) in &inst.secret_hosts {
            for h in list {
                hosts.push(SecretHost::from_str(&format!("{n}={h}")).map_err(secret_err)?);
            }
        }
        if let Some(unknown) = hosts.iter().find(|h| !inst.secrets.contains_key(&h.name)) {
            return Err(secret_err(SecretError::HostForUnknown(
                unknown.name.clone(),
            )));
        }
        Ok((specs, hosts))
    }

    /// The directory relative paths in the file are relative to.
    pub fn base_dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }

    /// `p` relative to the file's directory (absolute paths unchanged).
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// The registry directory the file names, resolved.
    pub fn connectors_dir(&self) -> Option<PathBuf> {
        self.file
            .connectors_dir
            .as_deref()
            .map(|p| self.resolve_path(p))
    }

    /// Where the API token comes from, if the file says (a relative
    /// `file:` path is relative to the file's directory).
    pub fn api_token(&self) -> Option<SecretSource> {
        self.file.api_token.as_ref().map(|src| match src {
            SecretSource::File(p) => SecretSource::File(self.resolve_path(p)),
            other => other.clone(),
        })
    }

    /// Instance names, in order.
    pub fn names(&self) -> Vec<String> {
        self.file.instances.keys().cloned().collect()
    }

    /// Check that every name in `names` is an instance (all instances when
    /// `names` is empty); returns them in order, without repeats.
    pub fn select(&self, names: &[String]) -> Result<Vec<String>, ConfigError> {
        if names.is_empty() {
            return Ok(self.names());
        }
        let mut out: Vec<String> = Vec::new();
        for n in names {
            if !self.file.instances.contains_key(n) {
                return Err(ConfigError::UnknownInstance {
                    path: self.path.clone(),
                    name: n.clone(),
                    known: self.names().join(", "),
                });
            }
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// Prepare instance `name` to run: read its config file and secrets.
    pub fn instance(&self, name: &str) -> Result<Instance, ConfigError> {
        let inst = self
            .file
            .instances
            .get(name)
            .ok_or_else(|| ConfigError::UnknownInstance {
                path: self.path.clone(),
                name: name.to_string(),
                known: self.names().join(", "),
            })?;
        let config = match (&inst.config, &inst.config_file) {
            (Some(table), _) => toml_to_json(&toml::Value::Table(table.clone())).to_string(),
            (None, Some(file)) => {
                let file = self.resolve_path(file);
                std::fs::read_to_string(&file).map_err(|e| {
                    self.instance_error(
                        name,
                        format!("cannot read config_file {}: {e}", file.display()),
                    )
                })?
            }
            (None, None) => "{}".to_string(),
        };
        let (specs, hosts) = self.secret_specs(name, inst)?;
        let secrets = Secrets::load(&specs, &hosts).map_err(|error| ConfigError::Secret {
            path: self.path.clone(),
            instance: name.to_string(),
            error,
        })?;
        let limits = inst
            .overrides()
            .limits()
            .map_err(|e| self.limit_error(name, &e))?;
        let db = match inst.db.as_ref().or(self.file.db.as_ref()) {
            Some(DbLocation::Sqlite(p)) => DbLocation::Sqlite(self.resolve_path(p)),
            Some(pg) => pg.clone(),
            None => return Err(self.instance_error(name, "no database")),
        };
        let db_password = inst
            .db_password
            .as_ref()
            .or(self.file.db_password.as_ref())
            .cloned();
        let component = match ComponentRef::parse(&inst.component) {
            ComponentRef::Path(p) => ComponentRef::Path(self.resolve_path(&p)),
            named => named,
        };
        Ok(Instance {
            name: name.to_string(),
            component,
            config,
            db,
            db_password,
            grants: inst.allow_hosts.clone(),
            secrets,
            limits,
            full_refresh: inst.full_refresh,
            tables: inst.tables.clone(),
            streams: inst.streams.clone(),
            modes: inst.modes.clone(),
        })
    }
}

/// Where the value at the dotted `path` of TOML `text` is (a table's
/// value, for a `[header]` table, starts at its header), if it is there.
fn value_span(text: &str, path: &[&str]) -> Option<std::ops::Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let (last, init) = path.split_last()?;
    let mut table = root.get_ref();
    for part in init {
        let (_, v) = table.iter().find(|(k, _)| k.get_ref() == part)?;
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return None,
        }
    }
    let (k, v) = table.iter().find(|(k, _)| k.get_ref() == last)?;
    // A `[a.b]` header's table has no span of its own: use the key's.
    let span = v.span();
    Some(if span.is_empty() { k.span() } else { span })
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key written at byte `offset` of `text`, as far as the text
/// shows it: the table header above it and the key of its line
/// (`instances.a.allow_hosts`), or the header itself when `offset` is on it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let header = |l: &str| {
        let l = l.trim();
        (l.starts_with('[') && !l.starts_with("[[") && l.ends_with(']'))
            .then(|| l.trim_matches(['[', ']']).trim().to_string())
    };
    if let Some(h) = header(line) {
        return Some(h);
    }
    let table = text[..start].lines().rev().find_map(header);
    let key = inline_key(&text[start..offset]).or_else(|| {
        line.split_once('=')
            .map(|(k, _)| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.contains(['{', '[', '"', '\'']))
    });
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// The dotted key a line's text up to a position is inside, following
/// inline tables: `limits = { fuel = 1, timeout = ` is in
/// `limits.timeout`, `limits = { ` in `limits`. Quoted keys and strings are
/// skipped, not parsed; `None` when no key is open.
fn inline_key(prefix: &str) -> Option<String> {
    // Open `{` / `[` with the key each belongs to; the key being written.
    let mut open: Vec<(char, Option<String>)> = Vec::new();
    let mut pending: Option<String> = None;
    let mut token = String::new();
    let mut quote: Option<char> = None;
    for c in prefix.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '=' => {
                let k = token.trim();
                pending = (!k.is_empty()).then(|| k.to_string());
                token.clear();
            }
            '{' | '[' => {
                open.push((c, pending.take()));
                token.clear();
            }
            '}' | ']' => {
                open.pop();
                pending = None;
                token.clear();
            }
            ',' => {
                if matches!(open.last(), Some(('{', _)) | None) {
                    pending = None;
                }
                token.clear();
            }
            c => token.push(c),
        }
    }
    let keys: Vec<String> = open
        .into_iter()
        .filter_map(|(_, k)| k)
        .chain(pending)
        .collect();
    (!keys.is_empty()).then(|| keys.join("."))
}

/// TOML to JSON: tables → objects, arrays → arrays, datetimes → strings.
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// A list of strings, each parsed with `FromStr` (errors carry the key).
fn parse_each<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(de::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<OperatorConfig, ConfigError> {
        OperatorConfig::parse(Path::new("/etc/sluice/sluice.toml"), text)
    }

    #[test]
    fn a_postgres_db_is_a_url_without_a_password_and_its_password_a_reference() {
        let c = parse(
            r#"
db = "postgres://sluice@127.0.0.1:5432/app?schema=raw"
db_password = "env:SLUICE_PG_PASSWORD"
[instances.a]
component = "items"
[instances.b]
component = "items"
db = "b.db"
[instances.c]
component = "items"
db_password = "file:/run/pg"
"#,
        )
        .unwrap();
        let a = c.instance("a").unwrap();
        match &a.db {
            DbLocation::Postgres(pg) => assert_eq!(pg.schema(), "raw"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.db_password,
            Some(SecretSource::Env("SLUICE_PG_PASSWORD".into()))
        );
        assert_eq!(
            c.instance("b").unwrap().db,
            DbLocation::sqlite("/etc/sluice/b.db")
        );
        assert_eq!(
            c.instance("c").unwrap().db_password,
            Some(SecretSource::File("/run/pg".into()))
        );
        let e = parse("db = \"postgres://u:hunter2@h/db\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds a password") && !e.contains("hunter2"),
            "{e}"
        );
        let e = parse("db = \"x.db\"\ndb_password = \"hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("never the secret itself") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn parses_instances_and_resolves_paths() {
        let c = parse(
            r#"
db = "all.db"
[instances.a]
component = "items"
allow_hosts = ["127.0.0.1:8080", "*.example.com"]
config = { base_url = "http://127.0.0.1:8080", page_size = 10, nested = { x = [1, 2.5] } }
limits = { fuel = 1000, memory = "64MiB", timeout = "90s" }
http = { retries = 7, timeout = "5s", rate_limits = ["api.example.com=2/4"], breaker_threshold = 0 }
[instances.b]
component = "../c/items.wasm"
db = "/var/b.db"
"#,
        )
        .unwrap();
        assert_eq!(c.names(), ["a", "b"]);
        let a = c.instance("a").unwrap();
        assert_eq!(a.component, ComponentRef::Name("items".into()));
        assert_eq!(a.db, DbLocation::sqlite("/etc/sluice/all.db"));
        assert_eq!(a.grants.len(), 2);
        assert_eq!(a.limits.fuel, 1000);
        assert_eq!(a.limits.memory_bytes, 64 << 20);
        assert_eq!(a.limits.timeout, Duration::from_secs(90));
        assert_eq!(a.limits.http.retries, 7);
        assert_eq!(a.limits.http.timeout, Duration::from_secs(5));
        assert_eq!(a.limits.http.rate_limits.len(), 1);
        assert_eq!(a.limits.http.rate_limits[0].burst, 4);
        assert_eq!(a.limits.http.breaker_threshold, 0);
        let b = c.instance("b").unwrap();
        assert_eq!(b.limits.http, sluice_core::limits::HttpPolicy::default());
        let bad =
            parse("[instances.x]\ncomponent = \"items\"\nhttp = { retrys = 1 }\n").unwrap_err();
        assert!(bad.to_string().contains("retrys"), "{bad}");
        let json: serde_json::Value = serde_json::from_str(&a.config).unwrap();
        assert_eq!(json["page_size"], 10);
        assert_eq!(json["nested"]["x"][1], 2.5);
        let b = c.instance("b").unwrap();
        assert_eq!(
            b.component,
            ComponentRef::Path("/etc/sluice/../c/items.wasm".into())
        );
        assert_eq!(b.db, DbLocation::sqlite("/var/b.db"));
        assert_eq!(b.config, "{}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = parse("db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/sluice/sluice.toml:4:1: "), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = parse("[instances.a]\ncomponent = \"x\"\ndb = \"a.db\"\nlimits = { fule = 1 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fule") && e.contains(":4:"), "{e}");
        assert!(e.contains("instances.a.limits: "), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let bad_grant = "db = \"x\"\n[instances.a]\ncomponent = \"c\"\nallow_hosts = [\"a/b\"]\n";
        let e = parse(bad_grant).unwrap_err().to_string();
        assert!(
            e.contains(":4:") && e.contains("instances.a.allow_hosts: "),
            "{e}"
        );
        let both =
            "db = \"x\"\n[instances.a]\ncomponent = \"c\"\nconfig = {}\nconfig_file = \"c.json\"\n";
        assert!(parse(both).unwrap_err().to_string().contains("not both"));
        let no_db = "[instances.a]\ncomponent = \"c\"\n";
        assert!(parse(no_db)
            .unwrap_err()
            .to_string()
            .contains("no database"));
        let bad_secret =
            "db = \"x\"\n[instances.a]\ncomponent = \"c\"\nsecrets = { K = \"hunter2\" }\n";
        assert!(parse(bad_secret)
            .unwrap_err()
            .to_string()
            .contains("env:VAR"));
        let stray_host =
            "db = \"x\"\n[instances.a]\ncomponent = \"c\"\nsecret_hosts = { K = [\"a.com\"] }\n";
        assert!(parse(stray_host).unwrap_err().to_string().contains("K"));
        let bad_name = "db = \"x\"\n[instances.\"a b\"]\ncomponent = \"c\"\n";
        assert!(parse(bad_name)
            .unwrap_err()
            .to_string()
            .contains("instance names"));
        let c = parse("db = \"x\"\n[instances.a]\ncomponent = \"c\"\n").unwrap();
        assert!(c
            .select(&["nope".into()])
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn every_limit_flag_has_a_key() {
        let c = parse(
            r#"
db = "x.db"
[instances.a]
component = "items"
limits = { fuel = 7, memory = "64MB", timeout = 1.5, max_http_requests = 0, max_http_denied = 3, max_http_bytes = "1GB", max_emit_bytes = 4096, max_record_bytes = "2KiB", max_state_bytes = "1 MiB" }
[instances.a.http]
timeout = "20s"
retries = 0
rate_limits = ["a.example.com=1"]
breaker_threshold = 0
breaker_cooldown = 2
max_in_flight = 3
"#,
        )
        .unwrap();
        let l = c.instance("a").unwrap().limits;
        assert_eq!((l.fuel, l.memory_bytes), (7, 64_000_000));
        assert_eq!(l.timeout, Duration::from_millis(1500));
        assert_eq!((l.max_http_requests, l.max_http_denied), (0, 3));
        assert_eq!((l.max_http_bytes, l.max_emit_bytes), (1_000_000_000, 4096));
        assert_eq!((l.max_record_bytes, l.max_state_bytes), (2048, 1 << 20));
        assert_eq!(l.http.timeout, Duration::from_secs(20));
        assert_eq!(l.http.connect_timeout, Duration::from_secs(10));
        assert_eq!((l.http.retries, l.http.breaker_threshold), (0, 0));
        assert_eq!(l.http.breaker_cooldown, Duration::from_secs(2));
        assert_eq!(l.http.max_in_flight, 3);
        assert_eq!(l.http.rate_limits.len(), 1);
    }

    #[test]
    fn out_of_range_limits_name_their_line_and_key() {
        let head = "db = \"x.db\"\n[instances.a]\ncomponent = \"c\"\n";
        for (table, value, key) in [
            (
                "limits = { timeout = 1e20 }",
                "",
                "instances.a.limits.timeout",
            ),
            (
                "limits = { timeout = nan }",
                "",
                "instances.a.limits.timeout",
            ),
            ("limits = { fuel = 0 }", "", "instances.a.limits.fuel"),
            ("limits = { memory = 0 }", "", "instances.a.limits.memory"),
            (
                "limits = { max_state_bytes = \"0MiB\" }",
                "",
                "instances.a.limits.max_state_bytes",
            ),
            ("http = { retries = 21 }", "", "instances.a.http.retries"),
            ("http = { timeout = -inf }", "", "instances.a.http.timeout"),
            (
                "[instances.a.http]",
                "breaker_cooldown = \"1000000y\"",
                "instances.a.http.breaker_cooldown",
            ),
        ] {
            let text = format!("{head}{table}\n{value}\n");
            let e = parse(&text).unwrap_err().to_string();
            let line = if value.is_empty() { 4 } else { 5 };
            assert!(
                e.starts_with(&format!("/etc/sluice/sluice.toml:{line}:")),
                "{text}: {e}"
            );
            assert!(e.contains(&format!("{key}: must be")), "{text}: {e}");
        }
        // Values no setting could hold are refused while parsing, at their key.
        for (table, key) in [
            ("limits = { fuel = -1 }", "instances.a.limits"),
            ("limits = { fuel = 1e20 }", "instances.a.limits"),
            ("limits = { memory = \"16EiB\" }", "instances.a.limits"),
            ("limits = { memory = -5 }", "instances.a.limits"),
            ("http = { retries = 4294967296 }", "instances.a.http"),
            ("http = { breaker_threshold = -1 }", "instances.a.http"),
            ("http = { rate_limits = [\"x=0\"] }", "instances.a.http"),
        ] {
            let text = format!("{head}{table}\n");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/sluice/sluice.toml:4:"), "{text}: {e}");
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn keys_inside_inline_tables_are_named() {
        assert_eq!(
            inline_key("limits = { fuel = ").as_deref(),
            Some("limits.fuel")
        );
        assert_eq!(
            inline_key("limits = { fuel = 1, memory = \"x\", timeout = ").as_deref(),
            Some("limits.timeout")
        );
        assert_eq!(inline_key("limits = { ").as_deref(), Some("limits"));
        assert_eq!(
            inline_key("http = { rate_limits = [\"a=1\", ").as_deref(),
            Some("http.rate_limits")
        );
        assert_eq!(inline_key("a = { b = { c = ").as_deref(), Some("a.b.c"));
        assert_eq!(
            inline_key("a = { b = { c = 1 }, d = ").as_deref(),
            Some("a.d")
        );
        assert_eq!(inline_key(""), None);
    }

    #[test]
    fn a_file_without_instances_is_an_error() {
        for text in ["", "db = \"x.db\"\n", "[instances]\n"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains("no instances"), "{text:?}: {e}");
        }
    }

    #[test]
    fn bare_names_and_paths() {
        assert!(is_bare_name("open-meteo"));
        assert!(!is_bare_name("./x"));
        assert!(!is_bare_name("items.wasm"));
        assert!(!is_bare_name("a/b"));
    }
}
