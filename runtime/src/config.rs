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
//! limits = { fuel = 5_000_000_000, memory = "128MiB", timeout = "10m" }
//! tables = { contacts = "crm_contacts" }  # default: crm__contacts
//! ```
//!
//! Every table refuses unknown keys. Relative paths (`db`, `config_file`,
//! `connectors_dir`, a component path) are relative to the directory of the
//! file itself, so a `sluice.toml` means the same wherever `sluice` runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::host::http::HostGrant;
use crate::host::secrets::{SecretError, SecretHost, SecretSpec, Secrets};
use crate::limits::{self, Limits};

/// The config file read when none is named (`--config-file`).
pub const DEFAULT_CONFIG_FILE: &str = "sluice.toml";

/// A bad or unreadable `sluice.toml`, or an instance that cannot be
/// prepared. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
    #[error("{}: instance {instance:?}: {source}", path.display())]
    Secret {
        path: PathBuf,
        instance: String,
        #[source]
        source: SecretError,
    },
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
    /// Database of instances that name none.
    #[serde(default)]
    pub db: Option<PathBuf>,
    /// Directory of the connector registry (overridden by
    /// `--connectors-dir`).
    #[serde(default)]
    pub connectors_dir: Option<PathBuf>,
    /// The connector instances, by name.
    #[serde(default)]
    pub instances: BTreeMap<String, InstanceConfig>,
}

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
    pub db: Option<PathBuf>,
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
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The host's HTTP policy for this instance.
    #[serde(default)]
    pub http: HttpConfig,
    /// Ignore saved state and replace each table with this run's rows.
    #[serde(default)]
    pub full_refresh: bool,
    /// `STREAM = "TABLE"`: the destination table of a stream (default
    /// `<instance>__<stream>`), as for `--table`.
    #[serde(default)]
    pub tables: BTreeMap<String, String>,
}

/// An instance's `limits` table; unset limits keep their defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Fuel (≈ instructions) per run.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Linear memory: a number of bytes or a size such as `"256MiB"`.
    #[serde(default, deserialize_with = "parse_bytes_opt")]
    pub memory: Option<u64>,
    /// Wall-clock deadline: seconds, or a duration such as `"90s"`, `"15m"`.
    #[serde(default, deserialize_with = "parse_duration_opt")]
    pub timeout: Option<Duration>,
}

/// An instance's `http` table (as the `--http-timeout`, `--retries`,
/// `--rate-limit`, `--breaker-*` flags); unset settings keep their defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Timeout of one request attempt: seconds or `"30s"`.
    #[serde(default, deserialize_with = "parse_duration_opt")]
    pub timeout: Option<Duration>,
    /// Retries of a failed idempotent request.
    #[serde(default)]
    pub retries: Option<u32>,
    /// `["HOST=RPS[/BURST]", …]`, as for `--rate-limit`.
    #[serde(default, deserialize_with = "parse_each")]
    pub rate_limits: Vec<crate::limits::RateLimit>,
    /// Consecutive failures that open an upstream's breaker (0 = none).
    #[serde(default)]
    pub breaker_threshold: Option<u32>,
    /// How long an open breaker fails fast: seconds or `"30s"`.
    #[serde(default, deserialize_with = "parse_duration_opt")]
    pub breaker_cooldown: Option<Duration>,
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
    pub db: PathBuf,
    pub grants: Vec<HostGrant>,
    pub secrets: Secrets,
    pub limits: Limits,
    pub full_refresh: bool,
    /// Destination tables the operator chose, by stream.
    pub tables: BTreeMap<String, String>,
}

impl OperatorConfig {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<OperatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
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
        for (name, inst) in &config.file.instances {
            config.check_instance(name, inst)?;
        }
        Ok(config)
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
        crate::instance::check_instance_name(name).map_err(|e| self.instance_error(name, e))?;
        for (stream, table) in &inst.tables {
            crate::instance::check_table_name(table).map_err(|e| {
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
        Ok(())
    }

    fn secret_specs(
        &self,
        name: &str,
        inst: &InstanceConfig,
    ) -> Result<(Vec<SecretSpec>, Vec<SecretHost>), ConfigError> {
        let secret_err = |source| ConfigError::Secret {
            path: self.path.clone(),
            instance: name.to_string(),
            source,
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
        let secrets = Secrets::load(&specs, &hosts).map_err(|source| ConfigError::Secret {
            path: self.path.clone(),
            instance: name.to_string(),
            source,
        })?;
        let mut limits = Limits::default();
        if let Some(f) = inst.limits.fuel {
            limits.fuel = f;
        }
        if let Some(m) = inst.limits.memory {
            limits.memory_bytes = m;
        }
        if let Some(t) = inst.limits.timeout {
            limits.timeout = t;
        }
        let http = &inst.http;
        if let Some(t) = http.timeout {
            limits.http.timeout = t;
            limits.http.connect_timeout = limits.http.connect_timeout.min(t);
        }
        if let Some(r) = http.retries {
            if r > crate::limits::MAX_HTTP_RETRIES {
                return Err(self.instance_error(
                    name,
                    format!(
                        "http.retries is at most {}",
                        crate::limits::MAX_HTTP_RETRIES
                    ),
                ));
            }
            limits.http.retries = r;
        }
        limits
            .http
            .rate_limits
            .extend(http.rate_limits.iter().cloned());
        if let Some(b) = http.breaker_threshold {
            limits.http.breaker_threshold = b;
        }
        if let Some(c) = http.breaker_cooldown {
            limits.http.breaker_cooldown = c;
        }
        let db = inst
            .db
            .as_deref()
            .or(self.file.db.as_deref())
            .map(|p| self.resolve_path(p))
            .ok_or_else(|| self.instance_error(name, "no database"))?;
        let component = match ComponentRef::parse(&inst.component) {
            ComponentRef::Path(p) => ComponentRef::Path(self.resolve_path(&p)),
            named => named,
        };
        Ok(Instance {
            name: name.to_string(),
            component,
            config,
            db,
            grants: inst.allow_hosts.clone(),
            secrets,
            limits,
            full_refresh: inst.full_refresh,
            tables: inst.tables.clone(),
        })
    }
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
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.is_empty() && !k.contains(['{', '[', '"', '\'']));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
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

/// A byte size: an integer, or a string such as `"64MiB"`.
fn parse_bytes_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Bytes;
    impl Visitor<'_> for Bytes {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte size: a number of bytes or a string such as \"256MiB\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a byte size cannot be negative"))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            limits::parse_bytes(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Bytes).map(Some)
}

/// A duration: seconds (integer or float), or a string such as `"90s"`.
fn parse_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct Dur;
    impl Visitor<'_> for Dur {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration: seconds, or a string such as \"90s\" or \"15m\"")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            self.visit_f64(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_f64(v as f64)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(E::custom("a timeout must be a positive number of seconds"))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            match humantime::parse_duration(v) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(E::custom("a timeout must be positive")),
                Err(e) => Err(E::custom(format!("{v:?} is not a duration: {e}"))),
            }
        }
    }
    d.deserialize_any(Dur).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OperatorConfig, ConfigError> {
        OperatorConfig::parse(Path::new("/etc/sluice/sluice.toml"), text)
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
        assert_eq!(a.db, Path::new("/etc/sluice/all.db"));
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
        assert_eq!(b.limits.http, crate::limits::HttpPolicy::default());
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
        assert_eq!(b.db, Path::new("/var/b.db"));
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
    fn bare_names_and_paths() {
        assert!(is_bare_name("open-meteo"));
        assert!(!is_bare_name("./x"));
        assert!(!is_bare_name("items.wasm"));
        assert!(!is_bare_name("a/b"));
    }
}
