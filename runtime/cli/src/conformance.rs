//! The conformance kit behind `sluice test-connector`: what a connector
//! must do to be run by Sluice, checked end to end against a real upstream
//! (or a fixture the kit starts). Each check yields a row (pass, fail or
//! skip, with a detail); a connector conforms when no row fails.
//!
//! The checks: the spec is well formed (name, semver version, stream names,
//! keys and cursors among the declared properties, schemas that compile);
//! the config validates against the config schema; `check` accepts it and
//! rejects a config derived to break the schema, with a message; `discover`
//! offers the spec's streams; a read succeeds, writes only declared streams
//! and quarantines nothing; a second read from the saved state writes
//! nothing older than the cursor; re-running changes nothing (incremental
//! and full refresh); and the connector stays within the default limits.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use sluice_core::connector::{self, ConnectorError, SyncMode};
use sluice_core::destination::{Destination, QuarantineFilter, RunLog};
use sluice_core::egress::HostGrant;
use sluice_core::limits::Limits;
use sluice_core::location::DbLocation;
use sluice_core::row::META_COLUMNS;
use sluice_core::schema::StreamSchema;
use sluice_core::secrets::Secrets;
use sluice_core::spec_check;
use sluice_core::value::Value as CellValue;
use sluice_runner::pipeline::{self, new_run_id, PipelineError, RunRequest};
use sluice_store::SqliteStore;
use sluice_wasm::sandbox::{GuestError, Sandbox};
use sluice_wasm::Runtime;

/// How long `--fixture` may take to print its `listening on URL` line.
pub const FIXTURE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a fixture that closed its stdout gets to exit, for the error.
pub const FIXTURE_EXIT_GRACE: Duration = Duration::from_secs(2);
/// The placeholder in the config text replaced by the fixture's URL.
pub const FIXTURE_URL_PLACEHOLDER: &str = "{{fixture_url}}";
/// The line a fixture prints when it is ready, followed by its URL.
pub const FIXTURE_READY_PREFIX: &str = "listening on ";

/// Why the kit could not run at all (a failing connector is not an error:
/// it is a report with failing rows).
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("cannot start the fixture `{command}`: {reason}")]
    Fixture { command: String, reason: String },
    #[error("cannot make a scratch database: {0}")]
    Scratch(std::io::Error),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not applicable, or not reachable because an earlier check failed.
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub check: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// The kit's report on one connector.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub connector: String,
    pub version: String,
    pub rows: Vec<CheckRow>,
}

impl Report {
    /// No check failed.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.outcome != Outcome::Fail)
    }

    fn row(&mut self, check: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.rows.push(CheckRow {
            check,
            outcome,
            detail: detail.into(),
        });
    }

    fn result(&mut self, check: &'static str, r: Result<String, String>) -> bool {
        match r {
            Ok(d) => {
                self.row(check, Outcome::Pass, d);
                true
            }
            Err(d) => {
                self.row(check, Outcome::Fail, d);
                false
            }
        }
    }
}

/// What the kit runs.
#[derive(Debug, Clone)]
pub struct KitRequest {
    pub component: PathBuf,
    /// The config, JSON text (with the fixture URL already substituted).
    pub config: String,
    pub grants: Vec<HostGrant>,
    pub secrets: Secrets,
    /// Limits of the kit's runs; usage is judged against the defaults.
    pub limits: Limits,
}

/// A fixture upstream started for the kit: a shell command that prints
/// `listening on URL` on stdout, run as `sh -c "exec CMD"`. Killed on drop.
#[derive(Debug)]
pub struct Fixture {
    child: Child,
    pub url: String,
}

impl Fixture {
    pub fn start(command: &str) -> Result<Fixture, ConformanceError> {
        let fail = |reason: String| ConformanceError::Fixture {
            command: command.to_string(),
            reason,
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.trim().strip_prefix(FIXTURE_READY_PREFIX) {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut fixture = Fixture {
            child,
            url: String::new(),
        };
        match rx.recv_timeout(FIXTURE_START_TIMEOUT) {
            Ok(url) => {
                fixture.url = url;
                Ok(fixture)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed without the line: it is exiting (give it
                // a moment to be reaped, then say how it ended).
                let deadline = std::time::Instant::now() + FIXTURE_EXIT_GRACE;
                let mut status = None;
                while status.is_none() && std::time::Instant::now() < deadline {
                    status = fixture.child.try_wait().ok().flatten();
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fail(match status {
                    Some(s) => {
                        format!("it exited ({s}) without printing `{FIXTURE_READY_PREFIX}URL`")
                    }
                    None => {
                        format!("it closed its stdout without printing `{FIXTURE_READY_PREFIX}URL`")
                    }
                }))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(fail(format!(
                "it printed no `{FIXTURE_READY_PREFIX}URL` line within {} s",
                FIXTURE_START_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The `host:port` of the fixture's URL, to grant.
    pub fn grant(&self) -> Option<HostGrant> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        format!("{host}:{port}").parse().ok()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // `sh -c "exec CMD"` made the command itself the child.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `name` is a stream name: `[a-z][a-z0-9_]*`.
pub fn valid_stream_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Problems of one declared stream (empty when it is well formed).
fn stream_problems(s: &connector::Stream) -> Vec<String> {
    let mut problems = Vec::new();
    if !valid_stream_name(&s.name) {
        problems.push(format!("stream name {:?} is not [a-z][a-z0-9_]*", s.name));
    }
    if let Err(e) = StreamSchema::compile(&s.name, &s.json_schema) {
        problems.push(e.to_string());
        return problems;
    }
    let schema: Value = serde_json::from_str(&s.json_schema).unwrap_or(Value::Null);
    let props: BTreeSet<&str> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        problems.push(format!(
            "stream {}: schema `type` is not \"object\"",
            s.name
        ));
    }
    if s.primary_key.is_empty() {
        problems.push(format!("stream {}: no primary key", s.name));
    }
    for k in &s.primary_key {
        if !props.contains(k.as_str()) {
            problems.push(format!(
                "stream {}: primary key field {k:?} is not a declared property",
                s.name
            ));
        }
    }
    match &s.cursor_field {
        Some(c) if !props.contains(c.as_str()) => problems.push(format!(
            "stream {}: cursor field {c:?} is not a declared property",
            s.name
        )),
        None if s.sync_modes.contains(&SyncMode::Incremental) => problems.push(format!(
            "stream {}: incremental without a cursor field",
            s.name
        )),
        _ => {}
    }
    if s.sync_modes.is_empty() {
        problems.push(format!("stream {}: no sync modes", s.name));
    }
    problems
}

/// The spec's own problems (empty when it is well formed): those every
/// command refuses ([`spec_check::problems`]), then the kit's stricter
/// per-stream ones.
fn spec_problems(spec: &connector::ConnectorSpec) -> Vec<String> {
    let mut problems = spec_check::problems(spec);
    for s in &spec.streams {
        problems.extend(stream_problems(s));
    }
    problems
}

/// A spec's config schema, parsed, or why it is not JSON.
fn parse_config_schema(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// The verdict on a spec's config schema (as [`parse_config_schema`] read
/// it): JSON, a JSON Schema that compiles, of `type` object.
fn config_schema_verdict(parsed: &Result<Value, String>) -> Result<String, String> {
    let schema = parsed.as_ref().map_err(Clone::clone)?;
    jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("its `type` is not \"object\"".into());
    }
    Ok("compiles; type object".into())
}

/// A config the config schema rejects, derived from `valid`: a required
/// property removed, else a property of the wrong type, else not an object.
pub fn invalid_config(schema: &Value, valid: &Value) -> (Value, String) {
    let mut broken = valid.clone();
    if let (Some(required), Some(obj)) = (
        schema.get("required").and_then(Value::as_array),
        broken.as_object_mut(),
    ) {
        if let Some(name) = required.iter().filter_map(Value::as_str).next() {
            obj.remove(name);
            return (broken, format!("required `{name}` removed"));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let wrong = match prop.get("type").and_then(Value::as_str) {
                Some("string") => Value::from(12_345),
                Some("integer" | "number") => Value::from("not a number"),
                Some("boolean") => Value::from("not a boolean"),
                Some("object" | "array") => Value::from(42),
                _ => continue,
            };
            if let Some(obj) = broken.as_object_mut() {
                obj.insert(name.clone(), wrong);
                return (broken, format!("`{name}` of the wrong type"));
            }
        }
    }
    (
        Value::from("not an object"),
        "a JSON string instead of an object".into(),
    )
}

/// The kit's scratch database, opened through the destination seams.
fn open_db(db: &Path) -> Result<SqliteStore, String> {
    SqliteStore::open(db).map_err(|e| e.to_string())
}

/// A table's rows, every column but the run id and sync time, sorted.
fn snapshot(db: &Path, table: &str) -> Result<Vec<Vec<String>>, String> {
    // A stream that wrote nothing has a table (created at run start); a
    // missing one is simply empty.
    let Some(scan) = open_db(db)?.scan(table).map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    let keep: Vec<usize> = scan
        .columns
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != META_COLUMNS[1] && **n != META_COLUMNS[2])
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = scan
        .rows
        .iter()
        .map(|r| keep.iter().map(|&i| format!("{:?}", r[i])).collect())
        .collect();
    rows.sort();
    Ok(rows)
}

/// The smallest and largest value of `column` in `table` (as SQL orders
/// them: numbers before text, nulls left out), over all rows or those
/// written by `run_id`, and how many rows that is.
fn cursor_range(
    db: &Path,
    table: &str,
    column: &str,
    run_id: Option<&str>,
) -> Result<(Option<CellValue>, Option<CellValue>, i64), String> {
    let Some(scan) = open_db(db)?.scan(table).map_err(|e| e.to_string())? else {
        return Err(format!("no table {table}"));
    };
    let index = |name: &str| {
        scan.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| format!("table {table} has no column {name}"))
    };
    let col = index(column)?;
    let run_col = index(META_COLUMNS[1])?;
    let (mut min, mut max, mut count) = (None::<CellValue>, None::<CellValue>, 0i64);
    for row in &scan.rows {
        if let Some(id) = run_id {
            if row[run_col] != CellValue::Text(id.to_string()) {
                continue;
            }
        }
        count += 1;
        let v = &row[col];
        if *v == CellValue::Null {
            continue;
        }
        if min.as_ref().is_none_or(|m| sql_before(v, m)) {
            min = Some(v.clone());
        }
        if max.as_ref().is_none_or(|m| sql_before(m, v)) {
            max = Some(v.clone());
        }
    }
    Ok((min, max, count))
}

/// `a < b` for values of one kind (numbers by value, text by bytes);
/// values of different kinds are not ordered.
fn sql_lt(a: &CellValue, b: &CellValue) -> bool {
    use CellValue as V;
    match (a, b) {
        (V::Integer(x), V::Integer(y)) => x < y,
        (V::Integer(x), V::Real(y)) => (*x as f64) < *y,
        (V::Real(x), V::Integer(y)) => *x < *y as f64,
        (V::Real(x), V::Real(y)) => x < y,
        (V::Text(x), V::Text(y)) => x < y,
        _ => false,
    }
}

/// Whether SQL's `min`/`max` put `a` before `b`: as [`sql_lt`], and
/// numbers before text.
fn sql_before(a: &CellValue, b: &CellValue) -> bool {
    use CellValue as V;
    matches!((a, b), (V::Integer(_) | V::Real(_), V::Text(_))) || sql_lt(a, b)
}

fn show(v: &Option<CellValue>) -> String {
    use CellValue as V;
    match v {
        Some(V::Integer(n)) => n.to_string(),
        Some(V::Real(f)) => f.to_string(),
        Some(V::Text(t)) => format!("{t:?}"),
        _ => "null".into(),
    }
}

/// A new sandbox of the connector, for one `check`.
async fn fresh_sandbox(
    runtime: &Runtime,
    loaded: &sluice_wasm::engine::Loaded,
    name: &str,
    req: &KitRequest,
) -> Result<Sandbox, GuestError> {
    Sandbox::new(
        runtime,
        loaded,
        &new_run_id(),
        name,
        &req.grants,
        &req.secrets,
        &req.limits,
    )
    .await
}

fn guest_text(e: &GuestError) -> String {
    e.to_string()
}

/// Run every check on the connector of `req`.
pub async fn run(runtime: &Runtime, req: &KitRequest) -> Result<Report, ConformanceError> {
    let mut report = Report {
        connector: String::new(),
        version: String::new(),
        rows: Vec::new(),
    };
    let defaults = Limits::default();

    // The spec.
    // Unchecked: the kit reports a bad spec as a row, not an error.
    let spec = match pipeline::spec_unchecked(runtime, &req.component, &req.limits).await {
        Ok((_, spec)) => spec,
        Err(e) => {
            report.row("spec", Outcome::Fail, e.to_string());
            return Ok(report);
        }
    };
    report.connector = spec.name.clone();
    report.version = spec.version.clone();
    let problems = spec_problems(&spec);
    report.result(
        "spec is well formed",
        if problems.is_empty() {
            Ok(format!(
                "{} {}, {} stream(s): {}",
                spec.name,
                spec.version,
                spec.streams.len(),
                spec.streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else {
            Err(problems.join("; "))
        },
    );
    if spec_check::validate(&spec).is_err() {
        // Every later step would refuse this spec too.
        return Ok(report);
    }
    let parsed_schema = parse_config_schema(&spec.config_schema);
    let schema_ok = report.result(
        "config schema is a valid JSON Schema",
        config_schema_verdict(&parsed_schema),
    );
    let config_schema: Option<Value> = parsed_schema.ok();
    let config_ok = report.result(
        "config matches the config schema",
        pipeline::check_config_json(&req.config)
            .and_then(|()| pipeline::check_config_schema(&spec, &req.config))
            .map(|()| "valid".to_string())
            .map_err(|e| e.to_string()),
    );

    // check: the connector itself, past the host's schema validation.
    let loaded = runtime.load(&req.component).map_err(PipelineError::from)?;
    let sandbox = || fresh_sandbox(runtime, &loaded, &spec.name, req);
    if config_ok {
        let r = match sandbox().await {
            Ok(mut sb) => sb
                .check(&req.config)
                .await
                .map(|()| "accepted".to_string())
                .map_err(|e| guest_text(&e)),
            Err(e) => Err(guest_text(&e)),
        };
        report.result("check accepts the config", r);
    } else {
        report.row(
            "check accepts the config",
            Outcome::Skip,
            "the config is invalid",
        );
    }
    match (&config_schema, serde_json::from_str::<Value>(&req.config)) {
        (Some(schema), Ok(valid)) if schema_ok => {
            let (broken, how) = invalid_config(schema, &valid);
            let text = broken.to_string();
            let r = match sandbox().await {
                Ok(mut sb) => match sb.check(&text).await {
                    Ok(()) => Err(format!("accepted a config with {how}")),
                    Err(GuestError::Connector(ConnectorError::Config(m)))
                        if !m.trim().is_empty() =>
                    {
                        Ok(format!("{how}: {m}"))
                    }
                    Err(GuestError::Connector(ConnectorError::Config(_))) => {
                        Err(format!("{how}: rejected without a message"))
                    }
                    Err(GuestError::Connector(e)) => Err(format!(
                        "{how}: rejected, but not as a config error: {}",
                        sluice_wasm::sandbox::connector_error_text(&e)
                    )),
                    Err(e) => Err(format!("{how}: {}", guest_text(&e))),
                },
                Err(e) => Err(guest_text(&e)),
            };
            report.result("check rejects an invalid config with a message", r);
        }
        _ => report.row(
            "check rejects an invalid config with a message",
            Outcome::Skip,
            "no valid config schema or config to derive one from",
        ),
    }

    // discover.
    let discovered = if config_ok {
        let r = pipeline::discover(
            runtime,
            &req.component,
            &req.config,
            &req.grants,
            &req.secrets,
            &req.limits,
        )
        .await;
        match r {
            Ok(streams) => {
                let got: BTreeSet<&str> = streams.iter().map(|s| s.name.as_str()).collect();
                let want: BTreeSet<&str> = spec.streams.iter().map(|s| s.name.as_str()).collect();
                let problems: Vec<String> = streams.iter().flat_map(stream_problems).collect();
                let r = if got != want {
                    Err(format!(
                        "discover offers {got:?}, the spec declares {want:?}"
                    ))
                } else if !problems.is_empty() {
                    Err(problems.join("; "))
                } else {
                    Ok(format!("{} stream(s), as the spec", got.len()))
                };
                report.result("discover returns the spec's streams", r);
                Some(streams)
            }
            Err(e) => {
                report.row(
                    "discover returns the spec's streams",
                    Outcome::Fail,
                    e.to_string(),
                );
                None
            }
        }
    } else {
        report.row(
            "discover returns the spec's streams",
            Outcome::Skip,
            "the config is invalid",
        );
        None
    };
    let Some(streams) = discovered else {
        for check in READ_CHECKS {
            report.row(check, Outcome::Skip, "no streams to read");
        }
        return Ok(report);
    };

    // Reads into a scratch database.
    let scratch = tempfile::tempdir().map_err(ConformanceError::Scratch)?;
    let db = scratch.path().join("conformance.db");
    let run_req = |full_refresh: bool| RunRequest {
        component: req.component.clone(),
        config: req.config.clone(),
        db: DbLocation::sqlite(&db),
        db_password: None,
        grants: req.grants.clone(),
        secrets: req.secrets.clone(),
        limits: req.limits.clone(),
        full_refresh,
        instance: KIT_INSTANCE.to_string(),
        tables: BTreeMap::new(),
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
        cancel: Default::default(),
        progress: None,
    };
    let first = pipeline::run(runtime, &run_req(false)).await?;
    let r1 = &first.record;
    let read_ok = report.result(
        "read succeeds",
        if first.succeeded() {
            Ok(format!(
                "{} records, {} commits, {} HTTP requests, {:.2} s",
                r1.records_emitted,
                r1.commits,
                r1.http_requests,
                r1.duration_ms.unwrap_or(0) as f64 / 1000.0
            ))
        } else {
            Err(format!(
                "{}: {}",
                r1.status,
                r1.error.as_deref().unwrap_or("(no message)")
            ))
        },
    );
    if !read_ok {
        for check in &READ_CHECKS[1..] {
            report.row(check, Outcome::Skip, "the first read failed");
        }
        return Ok(report);
    }
    let declared: BTreeSet<&str> = streams.iter().map(|s| s.name.as_str()).collect();
    let undeclared: Vec<&String> = r1
        .streams
        .iter()
        .filter(|(name, c)| c.emitted > 0 && !declared.contains(name.as_str()))
        .map(|(name, _)| name)
        .collect();
    report.result(
        "read emits records of declared streams only",
        if r1.records_emitted == 0 {
            Err("no records at all (give a config that reads some)".into())
        } else if !undeclared.is_empty() {
            Err(format!("records of undeclared streams {undeclared:?}"))
        } else {
            let per: Vec<String> = r1
                .streams
                .iter()
                .map(|(n, c)| format!("{n}: {}", c.emitted))
                .collect();
            Ok(per.join(", "))
        },
    );
    report.result(
        "every record is valid under its stream's schema",
        if r1.records_quarantined == 0 {
            Ok(if r1.drift.is_empty() {
                format!("{} valid", r1.records_valid)
            } else {
                format!("{} valid; drift: {}", r1.records_valid, r1.drift.join("; "))
            })
        } else {
            Err(format!(
                "{} of {} records quarantined (see `sluice quarantine list`): {}",
                r1.records_quarantined,
                r1.records_emitted,
                quarantine_sample(&db)
            ))
        },
    );

    // A second read from the saved state.
    let incremental: Vec<&connector::Stream> = streams
        .iter()
        .filter(|s| s.sync_modes.contains(&SyncMode::Incremental) && s.cursor_field.is_some())
        .collect();
    // The cursor each stream resumes from: read from its saved state where
    // the kit can (see `state_cursor`), else the largest cursor value stored.
    let tables = |db: &Path| -> BTreeMap<String, Vec<Vec<String>>> {
        streams
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    snapshot(db, &kit_table(&s.name)).unwrap_or_default(),
                )
            })
            .collect()
    };
    let after_first = tables(&db);
    let state = saved_state(&db, KIT_INSTANCE, streams.iter().map(|s| s.name.as_str()));
    let mut before: BTreeMap<String, (Option<CellValue>, &'static str)> = BTreeMap::new();
    for s in &incremental {
        let c = s.cursor_field.as_deref().unwrap_or_default();
        let from_state = state.get(&s.name).and_then(|v| state_cursor(v, c));
        let cursor = match from_state {
            Some(v) => (Some(v), "the saved cursor"),
            None => (
                cursor_range(&db, &kit_table(&s.name), c, None)
                    .ok()
                    .and_then(|r| r.1),
                "the largest stored",
            ),
        };
        before.insert(s.name.clone(), cursor);
    }
    let second = pipeline::run(runtime, &run_req(false)).await?;
    let after_second = tables(&db);
    if incremental.is_empty() {
        report.row(
            "a second read resumes from the cursor",
            Outcome::Skip,
            "no incremental stream",
        );
    } else if !second.succeeded() {
        report.row(
            "a second read resumes from the cursor",
            Outcome::Fail,
            format!(
                "the second read ended {}: {}",
                second.record.status,
                second.record.error.as_deref().unwrap_or("")
            ),
        );
    } else {
        let mut problems = Vec::new();
        let mut details = Vec::new();
        for s in &incremental {
            let c = s.cursor_field.as_deref().unwrap_or_default();
            if !state.contains_key(&s.name) {
                problems.push(format!("stream {} saved no state", s.name));
                continue;
            }
            let emitted = second.record.streams.get(&s.name).map_or(0, |c| c.emitted);
            let (cursor, source) = before.get(&s.name).cloned().unwrap_or((None, ""));
            match (
                cursor,
                cursor_range(&db, &kit_table(&s.name), c, Some(&second.record.id)),
            ) {
                (Some(cursor), Ok((min_now, _, n))) if n > 0 => {
                    if min_now.as_ref().is_some_and(|m| sql_lt(m, &cursor)) {
                        problems.push(format!(
                            "stream {}: the second read wrote {} = {}, older than {source} {}",
                            s.name,
                            c,
                            show(&min_now),
                            show(&Some(cursor))
                        ));
                    } else {
                        details.push(format!(
                            "{}: {emitted} record(s) again, none before {source} {c} {}",
                            s.name,
                            show(&Some(cursor))
                        ));
                    }
                }
                (_, Err(e)) => problems.push(format!("stream {}: {e}", s.name)),
                _ => details.push(format!("{}: {emitted} record(s) again", s.name)),
            }
        }
        report.result(
            "a second read resumes from the cursor",
            if problems.is_empty() {
                Ok(details.join("; "))
            } else {
                Err(problems.join("; "))
            },
        );
    }

    // Idempotence: the second read and a third change nothing; a full
    // refresh leaves the same rows.
    let third = pipeline::run(runtime, &run_req(false)).await?;
    let after_third = tables(&db);
    let refresh = pipeline::run(runtime, &run_req(true)).await?;
    let after_refresh = tables(&db);
    let mut problems = Vec::new();
    for (label, rep, after) in [
        ("second", &second, &after_second),
        ("third", &third, &after_third),
        ("full-refresh", &refresh, &after_refresh),
    ] {
        if !rep.succeeded() {
            problems.push(format!(
                "the {label} read ended {}: {}",
                rep.record.status,
                rep.record.error.as_deref().unwrap_or("")
            ));
            continue;
        }
        for s in &streams {
            let now = after.get(&s.name).cloned().unwrap_or_default();
            let then = after_first.get(&s.name).cloned().unwrap_or_default();
            if now != then {
                let changed = now.iter().filter(|r| !then.contains(r)).count();
                problems.push(format!(
                    "after the {label} read, stream {} has {} rows (first read: {}), {changed} of them new or changed",
                    s.name,
                    now.len(),
                    then.len()
                ));
            }
        }
    }
    let rows: usize = after_first.values().map(Vec::len).sum();
    report.result(
        "re-running is idempotent",
        if problems.is_empty() {
            Ok(format!(
                "{rows} rows unchanged after two more incremental reads and a full refresh"
            ))
        } else {
            Err(problems.join("; "))
        },
    );

    // Usage against the default limits, the most any of the runs used.
    let all = [&first, &second, &third, &refresh];
    let fuel = all.iter().map(|r| r.record.fuel_used).max().unwrap_or(0);
    let memory = all
        .iter()
        .map(|r| r.record.peak_memory_bytes)
        .max()
        .unwrap_or(0);
    let ms = all
        .iter()
        .filter_map(|r| r.record.duration_ms)
        .max()
        .unwrap_or(0);
    let requests = all
        .iter()
        .map(|r| r.record.http_requests)
        .max()
        .unwrap_or(0);
    let mut over = Vec::new();
    if fuel > defaults.fuel {
        over.push(format!("fuel {fuel} > {}", defaults.fuel));
    }
    if memory > defaults.memory_bytes {
        over.push(format!("memory {memory} > {}", defaults.memory_bytes));
    }
    if u128::from(ms) > defaults.timeout.as_millis() {
        over.push(format!(
            "duration {ms} ms > {} ms",
            defaults.timeout.as_millis()
        ));
    }
    if requests > defaults.max_http_requests {
        over.push(format!(
            "{requests} HTTP requests > {}",
            defaults.max_http_requests
        ));
    }
    let limited = all
        .iter()
        .find(|r| !r.succeeded() && r.record.status.is_limit());
    report.result(
        "stays within the default limits",
        match (over.is_empty(), limited) {
            (_, Some(r)) => Err(format!(
                "a run ended {}: {}",
                r.record.status,
                r.record.error.as_deref().unwrap_or("")
            )),
            (true, None) => Ok(format!(
                "at most {:.1} M fuel ({:.2} % of the default), {:.1} MiB memory, {:.2} s, {requests} requests",
                fuel as f64 / 1e6,
                fuel as f64 * 100.0 / defaults.fuel as f64,
                memory as f64 / 1_048_576.0,
                ms as f64 / 1000.0
            )),
            (false, None) => Err(over.join("; ")),
        },
    );
    Ok(report)
}

/// The instance the kit's reads run as (in its scratch database).
pub const KIT_INSTANCE: &str = "conformance";

/// The kit's table of `stream`.
fn kit_table(stream: &str) -> String {
    sluice_core::instance::default_table(KIT_INSTANCE, stream)
}

/// The checks that need a read, in report order.
const READ_CHECKS: [&str; 6] = [
    "read succeeds",
    "read emits records of declared streams only",
    "every record is valid under its stream's schema",
    "a second read resumes from the cursor",
    "re-running is idempotent",
    "stays within the default limits",
];

/// The saved state of `connector`'s `streams`, by stream.
fn saved_state<'a>(
    db: &Path,
    connector: &str,
    streams: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let Ok(mut store) = open_db(db) else {
        return BTreeMap::new();
    };
    streams
        .into_iter()
        .filter_map(|s| {
            let value = store.get_state(connector, s).ok().flatten()?;
            Some((s.to_string(), value))
        })
        .collect()
}

/// The cursor a stream's state resumes from, as far as the kit can read
/// the (opaque) state: the state itself if it is a scalar, else the
/// smallest value under a key named `cursor_field`, else the smallest
/// scalar in it (a state of per-partition cursors resumes each partition
/// at or after its own, so at or after the smallest).
pub fn state_cursor(state: &str, cursor_field: &str) -> Option<CellValue> {
    fn scalars<'a>(v: &'a Value, under: Option<&str>, key: &str, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    scalars(v, Some(k), key, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| scalars(v, under, key, out)),
            Value::String(_) | Value::Number(_) if key.is_empty() || under == Some(key) => {
                out.push(v)
            }
            _ => {}
        }
    }
    let value: Value =
        serde_json::from_str(state).unwrap_or_else(|_| Value::String(state.to_string()));
    let mut found = Vec::new();
    scalars(&value, None, cursor_field, &mut found);
    if found.is_empty() {
        scalars(&value, None, "", &mut found);
    }
    let as_sql = |v: &Value| -> Option<CellValue> {
        use CellValue as V;
        match v {
            Value::String(s) => Some(V::Text(s.clone())),
            Value::Number(n) => n.as_i64().map(V::Integer).or(n.as_f64().map(V::Real)),
            _ => None,
        }
    };
    let mut values = found.into_iter().filter_map(as_sql);
    let first = values.next()?;
    // Mixed kinds (a number beside a string) cannot be ordered: no cursor.
    values.try_fold(first, |min, v| {
        if std::mem::discriminant(&min) != std::mem::discriminant(&v) {
            None
        } else if sql_lt(&v, &min) {
            Some(v)
        } else {
            Some(min)
        }
    })
}

/// The first quarantined record's errors, for the report.
fn quarantine_sample(db: &Path) -> String {
    let filter = QuarantineFilter {
        all: true,
        limit: Some(1),
        ..QuarantineFilter::default()
    };
    open_db(db)
        .ok()
        .and_then(|mut s| s.list_quarantine(&filter).ok())
        .and_then(|q| q.into_iter().next())
        .map(|e| {
            let errors = serde_json::to_string(&e.errors).unwrap_or_default();
            format!("{}: {errors}", e.stream)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// (Connector names are spec_check's, tested there.)
    #[test]
    fn stream_names() {
        assert!(valid_stream_name("hourly_weather"));
        assert!(!valid_stream_name("hourly-weather"));
    }

    #[test]
    fn derives_an_invalid_config() {
        let schema = json!({"type": "object", "required": ["owner"], "properties": {"owner": {"type": "string"}}});
        let (bad, how) = invalid_config(&schema, &json!({"owner": "a", "x": 1}));
        assert_eq!(bad, json!({"x": 1}));
        assert!(how.contains("owner"));
        let schema = json!({"type": "object", "properties": {"count": {"type": "integer"}}});
        let (bad, _) = invalid_config(&schema, &json!({}));
        assert_eq!(bad, json!({"count": "not a number"}));
        let (bad, _) = invalid_config(&json!({"type": "object"}), &json!({}));
        assert!(bad.is_string());
    }

    fn stream(schema: Value, pk: &[&str], cursor: Option<&str>) -> connector::Stream {
        connector::Stream {
            name: "items".into(),
            json_schema: schema.to_string(),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            cursor_field: cursor.map(str::to_string),
            sync_modes: if cursor.is_some() {
                vec![SyncMode::FullRefresh, SyncMode::Incremental]
            } else {
                vec![SyncMode::FullRefresh]
            },
        }
    }

    #[test]
    fn stream_problems_name_keys_and_cursors_outside_the_schema() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "integer"}, "at": {"type": "string"}}});
        assert!(stream_problems(&stream(schema.clone(), &["id"], Some("at"))).is_empty());
        let p = stream_problems(&stream(schema.clone(), &["uuid"], Some("at")));
        assert!(p[0].contains("primary key field \"uuid\""), "{p:?}");
        let p = stream_problems(&stream(schema, &["id"], Some("updated")));
        assert!(p[0].contains("cursor field"), "{p:?}");
    }

    #[test]
    fn config_schemas_must_compile_and_describe_an_object() {
        let verdict = |text: &str| config_schema_verdict(&parse_config_schema(text));
        assert!(verdict(r#"{"type":"object","properties":{"a":{"type":"string"}}}"#).is_ok());
        assert!(verdict("{").unwrap_err().contains("not JSON"));
        // Not a JSON Schema: `type` must name a type.
        assert!(verdict(r#"{"type":"objekt"}"#).is_err());
        assert!(verdict(r#"{"type":"object","minProperties":"x"}"#).is_err());
        assert!(verdict(r#"{"type":"array"}"#)
            .unwrap_err()
            .contains("object"));
    }

    #[test]
    fn spec_problems_name_the_connector_version_and_streams() {
        let schema = json!({"type": "object", "properties": {"id": {"type": "integer"}}});
        let good = connector::ConnectorSpec {
            name: "items".into(),
            version: "0.1.0".into(),
            description: "test".into(),
            config_schema: "{}".into(),
            streams: vec![stream(schema.clone(), &["id"], None)],
        };
        assert!(
            spec_problems(&good).is_empty(),
            "{:?}",
            spec_problems(&good)
        );
        let bad = connector::ConnectorSpec {
            name: "Items".into(),
            version: "1.0".into(),
            streams: vec![
                stream(schema.clone(), &["id"], None),
                stream(schema, &[], None),
            ],
            ..good.clone()
        };
        let p = spec_problems(&bad).join("; ");
        for want in [
            "name \"Items\"",
            "version \"1.0\" is not semver",
            "declared twice",
            "no primary key",
        ] {
            assert!(p.contains(want), "{want:?} in {p}");
        }
        let empty = connector::ConnectorSpec {
            streams: vec![],
            ..good
        };
        assert_eq!(spec_problems(&empty), ["no streams"]);
    }

    #[test]
    fn reads_the_cursor_out_of_a_state() {
        use CellValue as V;
        let t = |s: &str| Some(V::Text(s.into()));
        assert_eq!(
            state_cursor(r#"{"updated_at":"2026-01-02"}"#, "updated_at"),
            t("2026-01-02")
        );
        assert_eq!(
            state_cursor(
                r#"{"cursors":{"berlin":"2026-11-23T00:00","lisbon":"2026-11-22T00:00"}}"#,
                "time"
            ),
            t("2026-11-22T00:00")
        );
        assert_eq!(
            state_cursor(r#"{"id": 41, "page": "x"}"#, "id"),
            Some(V::Integer(41))
        );
        assert_eq!(state_cursor("2026-01-01", "x"), t("2026-01-01"));
        assert_eq!(state_cursor(r#"{"a": 1, "b": "x"}"#, "x"), None);
        assert_eq!(state_cursor(r#"{"done": true}"#, "x"), None);
    }

    #[test]
    fn sqlite_values_order() {
        use CellValue as V;
        assert!(sql_lt(&V::Integer(1), &V::Integer(2)));
        assert!(sql_lt(
            &V::Text("2026-01-01".into()),
            &V::Text("2026-01-02".into())
        ));
        assert!(!sql_lt(&V::Integer(3), &V::Real(2.5)));
    }
}
