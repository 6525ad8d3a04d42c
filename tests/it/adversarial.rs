//! Hostile guests against one in-process host (a shared `Runtime`): every
//! limit trips with its own run status and a one-line reason, nothing
//! emitted after the last commit reaches the store, and the host keeps
//! serving good runs afterwards. Most attacks are behaviours of the
//! `misbehave` Rust guest; those Rust cannot express are inline WAT
//! components. Ends with 16 concurrent runs, 4 of them hostile.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{guest, Scratch};
use sluice_core::egress::HostGrant;
use sluice_core::{Limits, RunStatus};
use sluice_runner::pipeline::{self, RunRequest};
use sluice_runner::{PipelineError, RunReport};
use sluice_wasm::sandbox::GuestError;
use sluice_wasm::{EngineSettings, Runtime, RuntimeError, RuntimeOptions};

/// One runtime (engine, linker, caches) shared by every test, as one host
/// process shares it among all its runs.
fn runtime() -> Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Arc::new(
                Runtime::new(RuntimeOptions {
                    cache_dir: Some(common::cache_dir()),
                })
                .unwrap(),
            )
        })
        .clone()
}

/// Records every misbehaviour commits first, and emits uncommitted after.
const COMMITTED: u64 = 5;
const UNCOMMITTED: u64 = 7;

fn request(component: PathBuf, db: PathBuf, config: String, limits: Limits) -> RunRequest {
    RunRequest {
        instance: sluice_core::instance::default_instance(&component).unwrap(),
        tables: Default::default(),
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
        cancel: Default::default(),
        component,
        config,
        db: db.into(),
        db_password: None,
        grants: Vec::new(),
        secrets: Default::default(),
        limits,
        full_refresh: false,
        progress: None,
    }
}

/// The misbehave guest's config: `behaviour` plus `extra` fields, after
/// committing COMMITTED records and emitting UNCOMMITTED more.
fn config(behaviour: &str, extra: serde_json::Value) -> String {
    let mut c = serde_json::json!({
        "behaviour": behaviour,
        "committed": COMMITTED,
        "uncommitted": UNCOMMITTED,
    });
    if let serde_json::Value::Object(more) = extra {
        c.as_object_mut().unwrap().extend(more);
    }
    c.to_string()
}

/// Run the misbehave guest with `config` and `limits` into a fresh
/// database.
async fn hostile(s: &Scratch, config: String, limits: Limits) -> RunReport {
    hostile_with(s, config, limits, Vec::new()).await
}

async fn hostile_with(
    s: &Scratch,
    config: String,
    limits: Limits,
    grants: Vec<HostGrant>,
) -> RunReport {
    let mut req = request(guest("misbehave"), s.path("sluice.db"), config, limits);
    req.grants = grants;
    pipeline::run(&runtime(), &req).await.unwrap()
}

/// The run ended with `status` and a one-line reason containing `reason`;
/// the store holds exactly the `committed` records (ids 0..committed) and
/// nothing emitted after the last commit; the host still runs a good guest.
async fn assert_tripped(s: &Scratch, report: &RunReport, status: RunStatus, reason: &str) {
    assert_eq!(
        report.record.status, status,
        "wrong status; error: {:?}",
        report.record.error
    );
    let error = report.record.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(reason),
        "error {error:?} does not mention {reason:?}"
    );
    assert!(!error.contains('\n'), "reason is not one line: {error:?}");
    assert_store_as_of_last_commit(s);
    assert_host_serves().await;
}

/// Rows of `items` are exactly ids 0..n where n is the committed state's
/// `last` (0 rows and no state if nothing was committed).
fn assert_store_as_of_last_commit(s: &Scratch) {
    let conn = common::db(&s.path("sluice.db"));
    let state: Option<String> = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'misbehave' AND stream = 'items'",
            [],
            |r| r.get(0),
        )
        .ok();
    let last = state
        .map(|v| serde_json::from_str::<serde_json::Value>(&v).unwrap()["last"].as_i64())
        .unwrap_or(Some(0))
        .expect("state.last is a number");
    let (rows, max): (i64, Option<i64>) = conn
        .query_row("SELECT count(*), max(id) FROM misbehave__items", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap_or((0, None));
    assert_eq!(rows, last, "rows past the last commit were written");
    assert_eq!(max, if last > 0 { Some(last - 1) } else { None });
}

/// The shared host still runs a good guest to success.
async fn assert_host_serves() {
    let s = Scratch::new();
    let report = hostile(&s, config("ok", serde_json::json!({})), Limits::default()).await;
    assert_eq!(report.record.status, RunStatus::Succeeded);
    assert_eq!(report.record.records_upserted, COMMITTED + UNCOMMITTED);
}

fn tight_fuel() -> Limits {
    Limits {
        fuel: 300_000_000,
        ..Limits::default()
    }
}

// ------------------------------------------- terminal text, batches, specs

/// Control text a hostile connector puts in its error and log lines: a
/// forged line, a carriage return, an OSC retitle, a screen clear and BEL.
const HOSTILE_TEXT: &str =
    "boom\nrun 0000 misbehave 0.1.0  succeeded\r\x1b]0;pwned\x07\x1b[2J\x07end";

/// The raw bytes that must never reach a terminal from connector text.
const RAW_CONTROLS: [char; 3] = ['\r', '\x1b', '\x07'];

/// `out` (stdout or stderr of a command) holds no raw control bytes and no
/// forged line; it does show the escaped text.
fn assert_escaped(what: &str, out: &str) {
    for c in RAW_CONTROLS {
        assert!(!out.contains(c), "{what} carries raw {c:?}: {out:?}");
    }
    assert!(
        !out.lines().any(|l| l.starts_with("run 0000")),
        "{what} has a forged line: {out:?}"
    );
    assert!(
        out.contains(r"boom\nrun 0000 misbehave 0.1.0  succeeded\r\x1b]0;pwned\x07\x1b[2J\x07end"),
        "{what} does not show the text escaped: {out:?}"
    );
}

/// A loopback HTTP server answering every request with `body` (then
/// closing). Only ever binds 127.0.0.1; runs until the test process ends.
fn serve_body(body: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn connector_text_reaches_the_terminal_escaped_and_json_exact() {
    // The misbehave guest's `echo` logs the upstream's body at error level
    // and fails the run with it: connector text in a log line, the run's
    // error, `sluice run`, `runs`, `runs show` and the `error:` line.
    let addr = serve_body(HOSTILE_TEXT);
    let s = Scratch::new();
    let cfg = s.write(
        "c.json",
        serde_json::json!({"behaviour": "echo", "url": format!("http://{addr}/")}).to_string(),
    );
    let db = s.path("sluice.db");
    let component = guest("misbehave");
    let run = |json: bool| {
        let mut args = vec![
            "run".into(),
            component.clone().into_os_string(),
            "--config".into(),
            cfg.clone().into_os_string(),
            "--db".into(),
            db.clone().into_os_string(),
            "--allow-host".into(),
            addr.to_string().into(),
        ];
        if json {
            args.push("--json".into());
        }
        common::sluice(args)
    };
    let out = run(false);
    assert!(!out.ok, "{out:?}");
    assert_escaped("sluice run stdout", &out.stdout);
    assert_escaped("sluice run stderr", &out.stderr);
    let error_lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(error_lines.len(), 1, "{}", out.stderr);
    assert!(error_lines[0].contains("ended failed"), "{}", out.stderr);
    // The guest's error log line is in the log, on one line.
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("upstream said: boom\\nrun 0000")),
        "{}",
        out.stderr
    );

    let runs = common::sluice(["runs".as_ref(), "--db".as_ref(), db.as_os_str()]);
    assert!(runs.ok, "{runs:?}");
    assert_escaped("sluice runs", &runs.stdout);
    let listed = common::sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "--json".as_ref(),
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let want = format!("upstream error: upstream said: {HOSTILE_TEXT}");
    assert_eq!(
        listed[0]["error"],
        want.as_str(),
        "JSON keeps the exact text"
    );
    let show = common::sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        db.as_os_str(),
        "show".as_ref(),
        id.as_ref(),
    ]);
    assert!(show.ok, "{show:?}");
    assert_escaped("sluice runs show", &show.stdout);

    let out = run(true);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["error"], want.as_str(), "JSON keeps the exact text");
    assert_escaped("sluice run --json stderr", &out.stderr);
}

/// A WAT component whose spec declares `name`, `version` and
/// `description` (any bytes) and the harness's one stream.
fn wat_with_spec(name: &str, version: &str, description: &str) -> String {
    let hex = |t: &str| -> String { t.bytes().map(|b| format!("\\{b:02x}")).collect() };
    let (n, v, d) = (2100u32, 2300u32, 2500u32);
    let record = wat_words(&[
        n,
        name.len() as u32,
        v,
        version.len() as u32,
        d,
        description.len() as u32,
        592,
        2,
        320,
        1,
    ]);
    let main = format!(
        r#"(data (i32.const 2048) "{record}")
    (data (i32.const {n}) "{}")
    (data (i32.const {v}) "{}")
    (data (i32.const {d}) "{}")"#,
        hex(name),
        hex(version),
        hex(description)
    );
    WatSource {
        main: &main,
        spec: "i32.const 2048",
        ..WatSource::default()
    }
    .text()
}

/// `sluice ARGS` refused the component: non-zero exit, one `error:` line
/// on stderr naming `why`, no raw control bytes.
fn assert_refused(what: &str, out: &common::Out, why: &str) {
    assert!(!out.ok, "{what}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {:?}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{what}: {}", out.stderr);
    assert!(
        lines[0].contains(why),
        "{what}: {why:?} not in {}",
        out.stderr
    );
    for c in RAW_CONTROLS {
        assert!(
            !out.stderr.contains(c),
            "{what}: raw {c:?} in {:?}",
            out.stderr
        );
    }
}

#[test]
fn bad_connector_names_and_versions_are_refused_by_every_command() {
    let s = Scratch::new();
    let cfg = s.write("c.json", "{}");
    let hostile_name = format!("x{HOSTILE_TEXT}");
    let cases = [
        (
            "dotdot",
            wat_with_spec("../../x", "0.1.0", ""),
            r#"name "../../x""#,
        ),
        (
            "version",
            wat_with_spec("fine", "1.x", ""),
            r#"version "1.x" is not semver"#,
        ),
        (
            "controls",
            wat_with_spec(&hostile_name, "0.1.0", ""),
            "is not [a-z]",
        ),
    ];
    for (stem, wat, why) in &cases {
        let path = s.write(&format!("{stem}.wat"), wat);
        let db = s.path(&format!("{stem}.db"));
        let spec = common::sluice(["spec".as_ref(), path.as_os_str()]);
        assert_refused(&format!("{stem}: spec"), &spec, why);
        let check = common::sluice([
            "check".as_ref(),
            path.as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ]);
        assert_refused(&format!("{stem}: check"), &check, why);
        let run = common::sluice([
            "run".as_ref(),
            path.as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--db".as_ref(),
            db.as_os_str(),
        ]);
        assert_refused(&format!("{stem}: run"), &run, why);
        // Refused before a run is recorded.
        let conn = common::db(&db);
        assert_eq!(common::count(&conn, "SELECT count(*) FROM _sluice_runs"), 0);
    }
    // The kit fails the spec row and stops.
    let path = s.path("dotdot.wat");
    let kit = common::sluice([
        "test-connector".as_ref(),
        path.as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert_eq!(kit.code, Some(1), "{kit:?}");
    assert!(
        kit.stdout
            .lines()
            .any(|l| l.contains("spec is well formed") && l.contains("FAIL")),
        "{}",
        kit.stdout
    );
    // The registry lists such components as unusable, never by name, and
    // shows their text escaped.
    let dir = s.path("registry");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hostile.wasm"), &cases[2].1).unwrap();
    std::fs::write(dir.join("dotdot.wasm"), &cases[0].1).unwrap();
    let listed = common::sluice([
        "connectors".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert!(listed.ok, "{listed:?}");
    assert_eq!(
        listed
            .stdout
            .lines()
            .filter(|l| l.starts_with("(unusable)"))
            .count(),
        2,
        "{}",
        listed.stdout
    );
    for c in RAW_CONTROLS {
        assert!(!listed.stdout.contains(c), "{:?}", listed.stdout);
        assert!(!listed.stderr.contains(c), "{:?}", listed.stderr);
    }
    assert!(!listed.stdout.lines().any(|l| l.starts_with("run 0000")));
}

#[test]
fn a_spec_description_with_controls_prints_escaped_and_json_exact() {
    let s = Scratch::new();
    let path = s.write("desc.wat", wat_with_spec("fine", "0.1.0", HOSTILE_TEXT));
    let out = common::sluice(["spec".as_ref(), path.as_os_str()]);
    assert!(out.ok, "{out:?}");
    assert_escaped("sluice spec", &out.stdout);
    let out = common::sluice(["spec".as_ref(), path.as_os_str(), "--json".as_ref()]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["description"], HOSTILE_TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_over_the_batch_limit_ends_batch_too_large() {
    // 500 records of 40 kB in one sink.emit: 20 MB, over the batch limit of
    // a 64 MiB run (16 MiB) but under every other limit.
    let s = Scratch::new();
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    assert_eq!(limits.max_batch_bytes(), 16 << 20);
    let extra = serde_json::json!({"size": 40_000, "commit_every": 0});
    let r = hostile(&s, config("emit_forever", extra), limits).await;
    assert_tripped(
        &s,
        &r,
        RunStatus::BatchTooLarge,
        "batch limit of 16777216 bytes",
    )
    .await;
    let error = r.record.error.as_deref().unwrap();
    assert!(!error.contains("wasm backtrace"), "{error}");
}

// ---------------------------------------------------------------- CPU, time

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_runs_out_of_fuel() {
    let s = Scratch::new();
    let r = hostile(&s, config("loop", serde_json::json!({})), tight_fuel()).await;
    assert_tripped(&s, &r, RunStatus::FuelExhausted, "fuel").await;
    assert!(r.record.fuel_used >= 290_000_000, "{}", r.record.fuel_used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline_when_fuel_is_plenty() {
    let s = Scratch::new();
    let limits = Limits {
        timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    let started = Instant::now();
    let r = hostile(&s, config("loop", serde_json::json!({})), limits).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_tripped(&s, &r, RunStatus::Deadline, "deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_host_call_loop_hits_the_deadline() {
    // state.get in a loop: most time is spent in the host, where fuel does
    // not burn; the wall-clock deadline must still end it.
    let s = Scratch::new();
    let limits = Limits {
        timeout: Duration::from_millis(700),
        ..Limits::default()
    };
    let r = hostile(&s, config("state_spam", serde_json::json!({})), limits).await;
    assert_tripped(&s, &r, RunStatus::Deadline, "deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_spam_is_capped_then_runs_out_of_fuel() {
    let s = Scratch::new();
    let limits = Limits {
        max_log_lines: 50,
        ..tight_fuel()
    };
    let r = hostile(&s, config("log_spam", serde_json::json!({})), limits).await;
    assert_tripped(&s, &r, RunStatus::FuelExhausted, "fuel").await;
    assert!(r.log_lines_suppressed > 1000, "{}", r.log_lines_suppressed);
}

// ---------------------------------------------------------- memory, stack

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_bomb_hits_the_memory_limit() {
    let s = Scratch::new();
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let r = hostile(&s, config("grow", serde_json::json!({})), limits).await;
    assert_tripped(&s, &r, RunStatus::MemoryLimit, "linear memory limit").await;
    assert!(r.record.peak_memory_bytes <= 16 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grow_loop_ignoring_failure_hits_the_memory_limit() {
    let s = Scratch::new();
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::default()
    };
    let r = hostile(&s, config("memgrow", serde_json::json!({})), limits).await;
    assert_tripped(&s, &r, RunStatus::MemoryLimit, "linear memory limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_stack() {
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("recurse", serde_json::json!({})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::StackOverflow, "stack").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_on_the_shadow_stack_traps() {
    // Rust keeps big frames on its own stack in linear memory; overflowing
    // that is the guest's bug (an out-of-bounds access), not a host limit.
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("recurse_shadow", serde_json::json!({})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::Trapped, "out of bounds memory access").await;
}

// ------------------------------------------------------------------- traps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_after_emit_before_commit_keeps_only_committed_records() {
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("panic", serde_json::json!({})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::Trapped, "deliberate panic").await;
    assert_eq!(r.record.records_upserted, COMMITTED);
    assert_eq!(r.record.records_emitted, COMMITTED + UNCOMMITTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_right_after_commit_keeps_the_commit() {
    let s = Scratch::new();
    let c = serde_json::json!({"behaviour": "panic", "committed": 9}).to_string();
    let r = hostile(&s, c, Limits::default()).await;
    assert_tripped(&s, &r, RunStatus::Trapped, "deliberate panic").await;
    assert_eq!(r.record.records_upserted, 9);
}

// ------------------------------------------------------------------- sink

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_committed_emits_hit_the_emit_bytes_limit() {
    let s = Scratch::new();
    let limits = Limits {
        max_emit_bytes: 1 << 20,
        ..Limits::default()
    };
    let extra = serde_json::json!({"size": 1000, "commit_every": 100});
    let r = hostile(&s, config("emit_forever", extra), limits).await;
    assert_tripped(&s, &r, RunStatus::EmitBytesLimit, "1048576 bytes in all").await;
    assert!(
        r.record.records_upserted >= 500,
        "{}",
        r.record.records_upserted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_emits_without_commit_hit_the_uncommitted_limit() {
    let s = Scratch::new();
    let limits = Limits {
        max_uncommitted_bytes: 1 << 20,
        ..Limits::default()
    };
    let extra = serde_json::json!({"size": 1000, "commit_every": 0});
    let r = hostile(&s, config("emit_forever", extra), limits).await;
    assert_tripped(
        &s,
        &r,
        RunStatus::UncommittedLimit,
        "commit state more often",
    )
    .await;
    assert_eq!(r.record.records_upserted, COMMITTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_tiny_emits_hit_the_emit_bytes_limit() {
    // One host call per tiny record.
    let s = Scratch::new();
    let limits = Limits {
        max_emit_bytes: 256 << 10,
        ..Limits::default()
    };
    let extra = serde_json::json!({"commit_every": 1000});
    let r = hostile(&s, config("tiny_emits", extra), limits).await;
    assert_tripped(&s, &r, RunStatus::EmitBytesLimit, "in all").await;
    assert!(
        r.record.records_emitted > 10_000,
        "{}",
        r.record.records_emitted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_record_is_refused_and_ends_the_run() {
    let s = Scratch::new();
    let limits = Limits {
        max_record_bytes: 64 << 10,
        ..Limits::default()
    };
    let r = hostile(
        &s,
        config("giant_record", serde_json::json!({"size": 100_000})),
        limits,
    )
    .await;
    assert_tripped(&s, &r, RunStatus::RecordTooLarge, "65536-byte record limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giant_state_value_ends_the_run() {
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("giant_state", serde_json::json!({"size": 2 << 20})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::StateTooLarge, "1048576-byte state limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitting_to_an_undeclared_stream_fails_the_run() {
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("undeclared_stream", serde_json::json!({})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::Failed, "unknown stream nope").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitting_a_json_array_fails_the_run() {
    let s = Scratch::new();
    let r = hostile(
        &s,
        config("not_object", serde_json::json!({})),
        Limits::default(),
    )
    .await;
    assert_tripped(&s, &r, RunStatus::Failed, "not a JSON object").await;
}

// ------------------------------------------------------------------- http

/// A loopback HTTP server answering every request with `body_bytes` bytes.
/// Only ever binds 127.0.0.1; runs until the test process ends.
fn serve_bytes(body_bytes: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let body = vec![b'z'; body_bytes];
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
                            body.len()
                        );
                        if conn.write_all(head.as_bytes()).is_err()
                            || conn.write_all(&body).is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn grant(addr: std::net::SocketAddr) -> Vec<HostGrant> {
    vec![addr.to_string().parse().unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_requests_spend_the_http_budget() {
    let addr = serve_bytes(10);
    let s = Scratch::new();
    let limits = Limits {
        max_http_requests: 20,
        ..Limits::default()
    };
    let extra = serde_json::json!({"url": format!("http://{addr}/page")});
    let r = hostile_with(&s, config("http_forever", extra), limits, grant(addr)).await;
    assert_tripped(&s, &r, RunStatus::HttpBudget, "budget of 20 requests").await;
    assert_eq!(r.record.http_requests, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_downloads_hit_the_http_bytes_limit() {
    let addr = serve_bytes(64 << 10);
    let s = Scratch::new();
    let limits = Limits {
        max_http_bytes: 1 << 20,
        ..Limits::default()
    };
    let extra = serde_json::json!({"url": format!("http://{addr}/big")});
    let r = hostile_with(&s, config("http_forever", extra), limits, grant(addr)).await;
    assert_tripped(&s, &r, RunStatus::HttpBytesLimit, "1048576 bytes in all").await;
    assert!(r.record.http_bytes <= 1 << 20, "{}", r.record.http_bytes);
    assert!(
        r.record.http_bytes >= 15 * (64 << 10),
        "{}",
        r.record.http_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_is_an_error_the_guest_sees() {
    // Per response the limit stays an error handed to the connector (it may
    // ask for less); here the connector gives up with it.
    let addr = serve_bytes(64 << 10);
    let s = Scratch::new();
    let limits = Limits {
        max_response_bytes: 1 << 10,
        ..Limits::default()
    };
    let extra = serde_json::json!({"url": format!("http://{addr}/big")});
    let r = hostile_with(&s, config("http", extra), limits, grant(addr)).await;
    assert_tripped(&s, &r, RunStatus::Failed, "1024").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_request_loop_is_denied_not_sent() {
    // Hammering a host that is not granted: every request is denied, none
    // is sent, and past the denial threshold the run ends.
    let addr = serve_bytes(10);
    let s = Scratch::new();
    let extra = serde_json::json!({"url": format!("http://{addr}/page")});
    let limits = Limits {
        max_http_denied: 50,
        ..tight_fuel()
    };
    let r = hostile(&s, config("http_forever", extra), limits).await;
    assert_tripped(&s, &r, RunStatus::HttpDeniedLimit, "refused more than 50").await;
    assert_eq!(r.record.http_requests, 0);
    assert_eq!(r.record.http_denied, 51);
}

// ------------------------------------------------------- WAT adversaries

/// Little-endian bytes of `words` as a WAT data string.
fn wat_words(words: &[u32]) -> String {
    words
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .map(|b| format!("\\{b:02x}"))
        .collect()
}

/// Address of the `connector-spec` a WAT component's `spec` returns when
/// its probe found nothing ("wat-clean"), and when it found something
/// ("wat-dirty").
const SPEC_CLEAN: u32 = 64;
const SPEC_DIRTY: u32 = 128;

/// A component implementing the `source` world in WAT. `imports` are
/// component-level imports, `lowered` core funcs lowered from them
/// (`(core func $NAME (canon lower ...))`, reachable in the main module
/// as imports from "host"), `main_imports` their declarations in the main
/// module, `main` extra main-module fields and `spec` the body of the core
/// `spec` (returning the address of a connector-spec record). `check`,
/// `discover` and `read` trap. `core_instances` extra copies of the main
/// module are instantiated (for the instance-count limit).
struct WatSource<'a> {
    imports: &'a str,
    lowered: &'a str,
    host_exports: &'a str,
    main_imports: &'a str,
    main: &'a str,
    spec: &'a str,
    extra_instances: usize,
}

impl Default for WatSource<'_> {
    fn default() -> Self {
        WatSource {
            imports: "",
            lowered: "",
            host_exports: "",
            main_imports: "",
            main: "",
            spec: "i32.const 64",
            extra_instances: 0,
        }
    }
}

impl WatSource<'_> {
    fn text(&self) -> String {
        // connector-spec: name, version, description, config-schema
        // (string = ptr, len) and streams (list = ptr, len): one stream.
        let record = |name_ptr: u32| wat_words(&[name_ptr, 9, 576, 5, 600, 0, 592, 2, 320, 1]);
        // stream: name, json-schema, primary-key (empty), cursor-field
        // (none: tag, pad, ptr, len) and sync-modes ([full-refresh]).
        let schema = r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#;
        let stream = wat_words(&[368, 5, 384, schema.len() as u32, 0, 0, 0, 0, 0, 448, 1]);
        let schema: String = schema.bytes().map(|b| format!("\\{b:02x}")).collect();
        let extra: String = (0..self.extra_instances)
            .map(|i| {
                format!(
                    "(core instance $extra{i} (instantiate $Main (with \"mem\" (instance $mem)) (with \"host\" (instance $host))))\n"
                )
            })
            .collect();
        format!(
            r#"(component $C
  {imports}
  (core module $Mem
    (memory (export "memory") 2)
    (global $bump (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (data (i32.const {clean}) "{rec_clean}")
    (data (i32.const {dirty}) "{rec_dirty}")
    (data (i32.const 320) "{stream}")
    (data (i32.const 368) "items")
    (data (i32.const 384) "{schema}")
    (data (i32.const 512) "wat-clean")
    (data (i32.const 544) "wat-dirty")
    (data (i32.const 576) "0.1.0")
    (data (i32.const 592) "{{}}"))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))
  (alias core export $mem "realloc" (core func $realloc))
  {lowered}
  (core instance $host {host_exports})
  (core module $Main
    (import "mem" "memory" (memory 2))
    {main_imports}
    {main}
    (func (export "spec") (result i32) {spec})
    (func (export "check") (param i32 i32) (result i32) unreachable)
    (func (export "discover") (param i32 i32) (result i32) unreachable)
    (func (export "read") (param i32 i32 i32 i32) (result i32) unreachable))
  (core instance $main (instantiate $Main (with "mem" (instance $mem)) (with "host" (instance $host))))
  {extra}
  (type $sync-mode' (enum "full-refresh" "incremental"))
  (export $sync-mode "sync-mode" (type $sync-mode'))
  (type $stream' (record (field "name" string) (field "json-schema" string)
    (field "primary-key" (list string)) (field "cursor-field" (option string))
    (field "sync-modes" (list $sync-mode))))
  (export $stream "stream" (type $stream'))
  (type $spec' (record (field "name" string) (field "version" string)
    (field "description" string) (field "config-schema" string)
    (field "streams" (list $stream))))
  (export $spec "connector-spec" (type $spec'))
  (type $configured' (record (field "name" string) (field "sync-mode" $sync-mode)))
  (export $configured "configured-stream" (type $configured'))
  (type $summary' (record (field "records" u64)))
  (export $summary "read-summary" (type $summary'))
  (type $error' (variant (case "config" string) (case "upstream" string)
    (case "host" string) (case "internal" string)))
  (export $error "connector-error" (type $error'))
  (alias core export $main "spec" (core func $spec-core))
  (alias core export $main "check" (core func $check-core))
  (alias core export $main "discover" (core func $discover-core))
  (alias core export $main "read" (core func $read-core))
  (func $spec-f (result $spec)
    (canon lift (core func $spec-core) (memory $memory) (realloc $realloc)))
  (export "spec" (func $spec-f))
  (func $check-f (param "config" string) (result (result (error $error)))
    (canon lift (core func $check-core) (memory $memory) (realloc $realloc)))
  (export "check" (func $check-f))
  (func $discover-f (param "config" string) (result (result (list $stream) (error $error)))
    (canon lift (core func $discover-core) (memory $memory) (realloc $realloc)))
  (export "discover" (func $discover-f))
  (func $read-f (param "config" string) (param "streams" (list $configured))
    (result (result $summary (error $error)))
    (canon lift (core func $read-core) (memory $memory) (realloc $realloc)))
  (export "read" (func $read-f))
)"#,
            imports = self.imports,
            lowered = self.lowered,
            host_exports = self.host_exports,
            main_imports = self.main_imports,
            main = self.main,
            spec = self.spec,
            extra = extra,
            clean = SPEC_CLEAN,
            dirty = SPEC_DIRTY,
            rec_clean = record(512),
            rec_dirty = record(544),
        )
    }
}

/// `sluice_runner::pipeline::spec` of a WAT component written to a scratch file.
async fn wat_spec(
    s: &Scratch,
    name: &str,
    wat: &str,
    limits: Limits,
) -> Result<String, PipelineError> {
    let path = s.write(&format!("{name}.wat"), wat);
    pipeline::spec(&runtime(), &path, &limits)
        .await
        .map(|(_, spec)| spec.name)
}

fn stopped(r: Result<String, PipelineError>) -> (RunStatus, String) {
    match r {
        Err(PipelineError::Guest(GuestError::Stopped { status, message })) => (status, message),
        other => panic!("expected the sandbox to stop the guest, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_harness_component_loads_and_answers() {
    // The harness itself is a valid source-world component: without an
    // attack its spec answers (so the attacks below fail for their own
    // reason).
    let s = Scratch::new();
    let name = wat_spec(&s, "plain", &WatSource::default().text(), Limits::default()).await;
    assert_eq!(name.unwrap(), "wat-clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_table_grow_bomb_hits_the_table_limit() {
    let s = Scratch::new();
    let wat = WatSource {
        main: "(table $t 1 funcref)",
        spec:
            "(loop $l (drop (table.grow $t (ref.null func) (i32.const 1000))) (br $l)) unreachable",
        ..WatSource::default()
    }
    .text();
    let (status, message) = stopped(wat_spec(&s, "table", &wat, Limits::default()).await);
    assert_eq!(status, RunStatus::TableLimit, "{message}");
    assert!(
        message.contains("table limit of 100000 elements"),
        "{message}"
    );
    assert_host_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_memory_grow_loop_ignoring_minus_one_hits_the_memory_limit() {
    let s = Scratch::new();
    let wat = WatSource {
        spec: "(loop $l (drop (memory.grow (i32.const 1))) (br $l)) unreachable",
        ..WatSource::default()
    }
    .text();
    let limits = Limits {
        memory_bytes: 8 << 20,
        ..Limits::default()
    };
    let (status, message) = stopped(wat_spec(&s, "memory", &wat, limits).await);
    assert_eq!(status, RunStatus::MemoryLimit, "{message}");
    assert_host_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_unbounded_recursion_overflows_the_stack() {
    let s = Scratch::new();
    let wat = WatSource {
        main: "(func $r (param i64) (result i64)
                 (i64.xor (call $r (i64.add (local.get 0) (i64.const 1))) (local.get 0)))",
        spec: "(drop (call $r (i64.const 0))) i32.const 64",
        ..WatSource::default()
    }
    .text();
    let (status, message) = stopped(wat_spec(&s, "stack", &wat, Limits::default()).await);
    assert_eq!(status, RunStatus::StackOverflow, "{message}");
    assert_host_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_too_many_core_instances_hit_the_instance_limit() {
    let s = Scratch::new();
    let wat = WatSource {
        extra_instances: 4,
        ..WatSource::default()
    }
    .text();
    // 2 core instances are the harness's own; 6 with the extras.
    let limits = Limits {
        max_instances: 3,
        ..Limits::default()
    };
    let (status, message) = stopped(wat_spec(&s, "instances", &wat, limits).await);
    assert_eq!(status, RunStatus::InstanceLimit, "{message}");
    assert!(message.contains("instance count"), "{message}");
    // Under the limit the same component runs.
    let fine = wat_spec(&s, "instances", &wat, Limits::default()).await;
    assert_eq!(fine.unwrap(), "wat-clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_importing_an_unknown_interface_is_a_clear_load_error() {
    let s = Scratch::new();
    let wat = WatSource {
        imports: r#"(import "sluice:connector/filesystem@0.1.0" (instance $fs
            (export "read-file" (func (param "path" string) (result string)))))"#,
        ..WatSource::default()
    }
    .text();
    match wat_spec(&s, "unknown", &wat, Limits::default()).await {
        Err(PipelineError::Runtime(e @ RuntimeError::WrongWorld { .. })) => {
            let text = e.to_string();
            assert!(text.contains("sluice:connector/filesystem@0.1.0"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_wasi_guest_sees_no_environment_arguments_cwd_or_directories() {
    // A guest importing WASI 0.2 (as componentize-py/-js guests do) finds
    // an empty environment, no arguments, no working directory and no
    // preopened directories, even though this test process has all four.
    let s = Scratch::new();
    let wat = WatSource {
        imports: r#"
  (import "wasi:cli/environment@0.2.0" (instance $env
    (export "get-environment" (func (result (list (tuple string string)))))
    (export "get-arguments" (func (result (list string))))
    (export "initial-cwd" (func (result (option string))))))
  (import "wasi:filesystem/types@0.2.0" (instance $fs-types
    (export "descriptor" (type (sub resource)))))
  (alias export $fs-types "descriptor" (type $descriptor))
  (import "wasi:filesystem/preopens@0.2.0" (instance $preopens
    (alias outer $C $descriptor (type $d))
    (export "get-directories" (func (result (list (tuple (own $d) string)))))))"#,
        lowered: r#"
  (core func $getenv (canon lower (func $env "get-environment") (memory $memory) (realloc $realloc)))
  (core func $getargs (canon lower (func $env "get-arguments") (memory $memory) (realloc $realloc)))
  (core func $getcwd (canon lower (func $env "initial-cwd") (memory $memory) (realloc $realloc)))
  (core func $getdirs (canon lower (func $preopens "get-directories") (memory $memory) (realloc $realloc)))"#,
        host_exports: r#"(export "getenv" (func $getenv)) (export "getargs" (func $getargs))
            (export "getcwd" (func $getcwd)) (export "getdirs" (func $getdirs))"#,
        main_imports: r#"
    (import "host" "getenv" (func $getenv (param i32)))
    (import "host" "getargs" (func $getargs (param i32)))
    (import "host" "getcwd" (func $getcwd (param i32)))
    (import "host" "getdirs" (func $getdirs (param i32)))"#,
        spec: r#"
      (call $getenv (i32.const 1024))
      (call $getargs (i32.const 1032))
      (call $getcwd (i32.const 1040))
      (call $getdirs (i32.const 1056))
      (if (result i32)
        (i32.or
          (i32.or (i32.load (i32.const 1028)) (i32.load (i32.const 1036)))
          (i32.or (i32.load8_u (i32.const 1040)) (i32.load (i32.const 1060))))
        (then (i32.const 128))
        (else (i32.const 64)))"#,
        ..WatSource::default()
    }
    .text();
    assert!(
        std::env::var_os("PATH").is_some(),
        "the host has an environment"
    );
    let name = wat_spec(&s, "wasi", &wat, Limits::default()).await.unwrap();
    assert_eq!(
        name, "wat-clean",
        "the guest found host environment or files"
    );
}

// -------------------------------------------------------------- neighbours

/// `items` rows of a database, ordered by id.
fn items(db: &std::path::Path) -> Vec<(i64, i64, String)> {
    let conn = common::db(db);
    let mut stmt = conn
        .prepare("SELECT id, n, label FROM misbehave__items ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_runs_four_hostile_good_ones_match_a_clean_run() {
    let rt = runtime();
    let s = Scratch::new();
    let good =
        serde_json::json!({"behaviour": "ok", "committed": 300, "uncommitted": 200}).to_string();
    // The reference: a clean run alone.
    let clean = request(
        guest("misbehave"),
        s.path("clean.db"),
        good.clone(),
        Limits::default(),
    );
    let report = pipeline::run(&rt, &clean).await.unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded);
    let expected = items(&s.path("clean.db"));
    assert_eq!(expected.len(), 500);

    let addr = serve_bytes(10);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        let db = s.path(&format!("run{i}.db"));
        let mut req = request(guest("misbehave"), db, good.clone(), Limits::default());
        let expect = match i {
            3 => {
                req.config = config("loop", serde_json::json!({}));
                req.limits = tight_fuel();
                RunStatus::FuelExhausted
            }
            7 => {
                req.config = config("grow", serde_json::json!({}));
                req.limits.memory_bytes = 16 << 20;
                RunStatus::MemoryLimit
            }
            11 => {
                req.config = config("panic", serde_json::json!({}));
                RunStatus::Trapped
            }
            15 => {
                let url = format!("http://{addr}/page");
                req.config = config("http_forever", serde_json::json!({"url": url}));
                req.grants = grant(addr);
                req.limits.max_http_requests = 20;
                RunStatus::HttpBudget
            }
            _ => RunStatus::Succeeded,
        };
        let rt = rt.clone();
        set.spawn(async move {
            let report = pipeline::run(&rt, &req).await.unwrap();
            (i, req.db, expect, report)
        });
    }
    let mut seen = 0;
    while let Some(done) = set.join_next().await {
        let (i, db, expect, report) = done.unwrap();
        let db = db.as_sqlite().unwrap().to_path_buf();
        assert_eq!(
            report.record.status, expect,
            "run {i}: {:?}",
            report.record.error
        );
        if expect == RunStatus::Succeeded {
            assert_eq!(items(&db), expected, "run {i} differs from the clean run");
        } else {
            let rows = items(&db);
            assert_eq!(
                rows.len() as u64,
                COMMITTED,
                "run {i} kept uncommitted rows"
            );
            assert_eq!(rows[..], expected[..COMMITTED as usize], "run {i}");
        }
        seen += 1;
    }
    assert_eq!(seen, 16);
}

// ---------------------------------------------------------- measurement

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (ns).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

/// What fuel metering and epoch interruption cost a CPU-bound guest: the
/// guest runs on this thread (a current-thread tokio runtime), so its CPU
/// time is measured, not wall time (the machine is shared). Not a pass/fail
/// test: run with
/// `cargo test --test adversarial -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_fuel_and_epoch_cost() {
    let rounds: u64 = std::env::var("SLUICE_SPIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000_000);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = Scratch::new();
    for (behaviour, rounds) in [
        ("spin", rounds),
        ("spin_alu", rounds),
        ("spin_wide", rounds / 2),
        ("json_churn", rounds / 10_000),
    ] {
        let spin = serde_json::json!({"behaviour": behaviour, "size": rounds}).to_string();
        for (fuel, epoch) in [(true, true), (false, true), (true, false), (false, false)] {
            let rt = Runtime::with_settings(
                RuntimeOptions { cache_dir: None },
                EngineSettings {
                    fuel_metering: fuel,
                    epoch_interruption: epoch,
                },
            )
            .unwrap();
            let (mut best_cpu, mut best_wall) = (Duration::MAX, Duration::MAX);
            let mut fuel_used = 0;
            for i in 0..5 {
                let req = request(
                    guest("misbehave"),
                    s.path(&format!("m-{behaviour}-{fuel}-{epoch}-{i}.db")),
                    spin.clone(),
                    // Fuel is metered (when on) but never runs out.
                    Limits {
                        fuel: u64::MAX,
                        ..Limits::default()
                    },
                );
                let (cpu, wall) = (thread_cpu(), Instant::now());
                let report = tokio.block_on(pipeline::run(&rt, &req)).unwrap();
                best_cpu = best_cpu.min(thread_cpu() - cpu);
                best_wall = best_wall.min(wall.elapsed());
                assert_eq!(
                    report.record.status,
                    RunStatus::Succeeded,
                    "{:?}",
                    report.record.error
                );
                fuel_used = report.record.fuel_used;
            }
            println!(
                "{behaviour:<10} fuel={fuel:<5} epoch={epoch:<5} {rounds} rounds, best of 5: cpu {:.3} s ({:.2} ns/round), wall {:.3} s, fuel used {fuel_used}",
                best_cpu.as_secs_f64(),
                best_cpu.as_nanos() as f64 / rounds as f64,
                best_wall.as_secs_f64(),
            );
        }
    }
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn wat_wasi_stdout_is_captured_into_the_run_log() {
    let wat = WatSource {
        imports: r#"
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $io-err))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer $C $io-err (type $e))
    (export "output-stream" (type $os (sub resource)))
    (type $se (variant (case "last-operation-failed" (own $e)) (case "closed")))
    (export "stream-error" (type $se2 (eq $se)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se2)))))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer $C $output-stream (type $os))
    (export "get-stdout" (func (result (own $os))))))"#,
        lowered: r#"
  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))"#,
        host_exports: r#"(export "get-stdout" (func $get-stdout)) (export "write" (func $write))"#,
        main_imports: r#"
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))"#,
        main: r#"(data (i32.const 700) "hello from wasi stdout\n")"#,
        spec: r#"
      (call $write (call $get-stdout) (i32.const 700) (i32.const 23) (i32.const 1072))
      (if (result i32) (i32.load8_u (i32.const 1072))
        (then (i32.const 128))
        (else (i32.const 64)))"#,
        ..WatSource::default()
    }
    .text();
    let s = Scratch::new();
    let path = s.write("stdout.wat", &wat);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("guest=info")
        .finish();
    let name = tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(pipeline::spec(&runtime(), &path, &Limits::default()))
            .map(|(_, spec)| spec.name)
    })
    .unwrap();
    assert_eq!(name, "wat-clean", "the write to stdout failed");
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("hello from wasi stdout"))
        .unwrap_or_else(|| panic!("guest stdout not in the log: {log:?}"));
    assert!(line.contains("run_id="), "{line}");
    assert!(line.contains("stream=\"stdout\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_wasi_guest_cannot_resolve_names_or_open_sockets() {
    // Name lookup must fail with `permanent-resolver-failure` (error-code
    // case 20: wasmtime's answer when lookup is disabled) and creating a
    // TCP socket with `access-denied` (case 1).
    let errors = r#""unknown" "access-denied" "not-supported" "invalid-argument" "out-of-memory"
        "timeout" "concurrency-conflict" "not-in-progress" "would-block" "invalid-state"
        "new-socket-limit" "address-not-bindable" "address-in-use" "remote-unreachable"
        "connection-refused" "connection-reset" "connection-aborted" "datagram-too-large"
        "name-unresolvable" "temporary-resolver-failure" "permanent-resolver-failure""#;
    let imports = format!(
        r#"
  (import "wasi:sockets/network@0.2.0" (instance $net
    (export "network" (type (sub resource)))
    (type $ec (enum {errors}))
    (export "error-code" (type (eq $ec)))
    (type $fam (enum "ipv4" "ipv6"))
    (export "ip-address-family" (type (eq $fam)))))
  (alias export $net "network" (type $network))
  (alias export $net "error-code" (type $error-code))
  (alias export $net "ip-address-family" (type $family))
  (import "wasi:sockets/instance-network@0.2.0" (instance $inet
    (alias outer $C $network (type $n))
    (export "instance-network" (func (result (own $n))))))
  (import "wasi:sockets/ip-name-lookup@0.2.0" (instance $lookup
    (alias outer $C $network (type $n))
    (alias outer $C $error-code (type $ec))
    (export "resolve-address-stream" (type $ras (sub resource)))
    (export "resolve-addresses" (func (param "network" (borrow $n)) (param "name" string)
      (result (result (own $ras) (error $ec)))))))
  (import "wasi:sockets/tcp@0.2.0" (instance $tcp
    (export "tcp-socket" (type (sub resource)))))
  (alias export $tcp "tcp-socket" (type $tcp-socket))
  (import "wasi:sockets/tcp-create-socket@0.2.0" (instance $tcp-create
    (alias outer $C $tcp-socket (type $t))
    (alias outer $C $error-code (type $ec))
    (alias outer $C $family (type $f))
    (export "create-tcp-socket" (func (param "address-family" $f)
      (result (result (own $t) (error $ec)))))))"#
    );
    let wat = WatSource {
        imports: &imports,
        lowered: r#"
  (core func $instance-network (canon lower (func $inet "instance-network")))
  (core func $resolve (canon lower (func $lookup "resolve-addresses") (memory $memory) (realloc $realloc)))
  (core func $create-tcp (canon lower (func $tcp-create "create-tcp-socket") (memory $memory)))"#,
        host_exports: r#"(export "instance-network" (func $instance-network))
            (export "resolve" (func $resolve)) (export "create-tcp" (func $create-tcp))"#,
        main_imports: r#"
    (import "host" "instance-network" (func $instance-network (result i32)))
    (import "host" "resolve" (func $resolve (param i32 i32 i32 i32)))
    (import "host" "create-tcp" (func $create-tcp (param i32 i32)))"#,
        main: r#"(data (i32.const 740) "localhost")"#,
        spec: r#"
      (call $resolve (call $instance-network) (i32.const 740) (i32.const 9) (i32.const 1088))
      (call $create-tcp (i32.const 0) (i32.const 1096))
      (if (result i32)
        (i32.and
          (i32.and (i32.eq (i32.load8_u (i32.const 1088)) (i32.const 1))
                   (i32.eq (i32.load8_u (i32.const 1092)) (i32.const 20)))
          (i32.and (i32.eq (i32.load8_u (i32.const 1096)) (i32.const 1))
                   (i32.eq (i32.load8_u (i32.const 1100)) (i32.const 1))))
        (then (i32.const 64))
        (else (i32.const 128)))"#,
        ..WatSource::default()
    }
    .text();
    let s = Scratch::new();
    let name = wat_spec(&s, "sockets", &wat, Limits::default())
        .await
        .unwrap();
    assert_eq!(
        name, "wat-clean",
        "the guest resolved a name or opened a socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wat_wasi_sleep_loop_hits_the_deadline() {
    // A guest blocking on WASI clocks burns no fuel; the wall-clock
    // deadline must still end it, and promptly.
    let wat = WatSource {
        imports: r#"
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow $p))))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $C $pollable (type $p))
    (export "subscribe-duration" (func (param "when" u64) (result (own $p))))))"#,
        lowered: r#"
  (core func $subscribe (canon lower (func $clock "subscribe-duration")))
  (core func $block (canon lower (func $poll "[method]pollable.block")))"#,
        host_exports: r#"(export "subscribe" (func $subscribe)) (export "block" (func $block))"#,
        main_imports: r#"
    (import "host" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "host" "block" (func $block (param i32)))"#,
        spec: r#"
      (loop $l (call $block (call $subscribe (i64.const 10000000000))) (br $l))
      unreachable"#,
        ..WatSource::default()
    }
    .text();
    let s = Scratch::new();
    let limits = Limits {
        timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let started = Instant::now();
    let (status, message) = stopped(wat_spec(&s, "sleep", &wat, limits).await);
    assert_eq!(status, RunStatus::Deadline, "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_host_serves().await;
}

// ------------------------------------------------- host work for the guest

/// A run of the misbehave guest as `instance` into `db`.
fn misbehave_as(instance: &str, db: PathBuf, config: String, limits: Limits) -> RunRequest {
    let mut req = request(guest("misbehave"), db, config, limits);
    req.instance = instance.to_string();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_bombs_end_at_their_deadline_and_do_not_starve_a_neighbour() {
    // Three guests emit batch after batch of 100 records with 500 fields
    // no other record has (~0.7 MB a batch, 50,000 new drift paths), on a
    // runtime with two worker threads. The host checks a batch in slices
    // and yields between them, so a neighbour gets its turn and finishes
    // while the bombs still run, and each bomb ends at its own deadline.
    let rt = runtime();
    let s = Scratch::new();
    let bomb = serde_json::json!({"behaviour": "drift_bomb", "commit_every": 1}).to_string();
    let bomb_limits = Limits {
        timeout: Duration::from_secs(6),
        ..Limits::default()
    };
    let mut bombs = tokio::task::JoinSet::new();
    for i in 0..3 {
        let req = misbehave_as(
            "bomb",
            s.path(&format!("bomb{i}.db")),
            bomb.clone(),
            bomb_limits.clone(),
        );
        let rt = rt.clone();
        bombs.spawn(async move { (pipeline::run(&rt, &req).await.unwrap(), Instant::now()) });
    }
    // Let the bombs get going first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = serde_json::json!({"behaviour": "ok", "committed": 300}).to_string();
    let neighbour = misbehave_as("good", s.path("good.db"), good, Limits::default());
    let started = Instant::now();
    let report = pipeline::run(&rt, &neighbour).await.unwrap();
    let neighbour_done = Instant::now();
    assert_eq!(
        report.record.status,
        RunStatus::Succeeded,
        "{:?}",
        report.record.error
    );
    assert_eq!(report.record.records_upserted, 300);
    eprintln!(
        "neighbour took {:?} while 3 drift bombs ran",
        neighbour_done - started
    );
    while let Some(done) = bombs.join_next().await {
        let (report, ended) = done.unwrap();
        assert!(
            ended > neighbour_done,
            "a bomb ended before its neighbour did: the neighbour waited for it"
        );
        assert_eq!(
            report.record.status,
            RunStatus::Deadline,
            "{:?}",
            report.record.error
        );
        assert!(report.record.commits > 0, "the bomb made progress");
        let error = report.record.error.unwrap_or_default();
        assert!(!error.contains('\n'), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_records_at_most_the_drift_path_cap_and_counts_the_rest() {
    let s = Scratch::new();
    let bomb =
        serde_json::json!({"behaviour": "drift_bomb", "size": 2, "fields": 600, "commit_every": 1})
            .to_string();
    let report = hostile(&s, bomb, Limits::default()).await;
    assert_eq!(
        report.record.status,
        RunStatus::Succeeded,
        "{:?}",
        report.record.error
    );
    let conn = common::db(&s.path("sluice.db"));
    let stored = common::count(&conn, "SELECT count(*) FROM _sluice_drift");
    assert_eq!(
        stored as usize,
        sluice_core::schema::MAX_DRIFT_PATHS_PER_RUN
    );
    let distinct_seen = 2 * 100 * 600;
    let unrecorded = distinct_seen - sluice_core::schema::MAX_DRIFT_PATHS_PER_RUN;
    assert!(
        report
            .record
            .drift
            .iter()
            .any(|l| l.starts_with(&format!("{unrecorded} more drift observations"))),
        "{:?}",
        report.record.drift
    );
    assert_eq!(report.record.records_upserted, 200);
}

// ----------------------------------------------------------- poison records

/// The misbehave guest's `raw` behaviour: `records` (JSON text) to
/// `stream`, then a commit.
fn raw(stream: &str, records: &[&str]) -> String {
    serde_json::json!({"behaviour": "raw", "stream": stream, "records": records}).to_string()
}

/// Quarantined records of a database: (record, error messages).
fn quarantined(db: &std::path::Path) -> Vec<(String, String)> {
    let conn = common::db(db);
    let mut stmt = conn
        .prepare("SELECT record, errors FROM _sluice_quarantine ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_keys_past_i64_are_quarantined_and_the_cursor_moves_on() {
    let s = Scratch::new();
    let poison = [
        r#"{"id":9223372036854775808,"label":"2^63"}"#,
        r#"{"id":18446744073709551615,"label":"2^64-1"}"#,
        r#"{"id":-9223372036854775809,"label":"-2^63-1"}"#,
        r#"{"id":1180591620717411303424,"label":"2^70"}"#,
        r#"{"id":1,"n":9223372036854775808,"label":"big n"}"#,
    ];
    let mut records = poison.to_vec();
    records.push(r#"{"id":9223372036854775807,"label":"i64::MAX"}"#);
    for round in 0..2 {
        let report = hostile(&s, raw("items", &records), Limits::default()).await;
        assert_eq!(
            report.record.status,
            RunStatus::Succeeded,
            "round {round}: {:?}",
            report.record.error
        );
        assert_eq!(report.record.records_quarantined, 5, "round {round}");
        assert_eq!(report.record.records_upserted, 1, "round {round}");
    }
    let conn = common::db(&s.path("sluice.db"));
    let max: i64 = conn
        .query_row("SELECT max(id) FROM misbehave__items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(max, i64::MAX);
    // Each poison record is stored once, and counted again by the second
    // round (it is still open in quarantine).
    let q = quarantined(&s.path("sluice.db"));
    assert_eq!(q.len(), 5);
    assert_eq!(
        common::count(
            &conn,
            "SELECT count(*) FROM _sluice_quarantine WHERE seen_count = 2"
        ),
        5
    );
    for (record, errors) in &q {
        assert!(
            errors.contains("64-bit range") || errors.contains("stored exactly"),
            "{record}: {errors}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_different_types_in_an_untyped_key_stay_different_rows() {
    let s = Scratch::new();
    let records = [
        r#"{"k":true,"v":"bool"}"#,
        r#"{"k":1,"v":"number"}"#,
        r#"{"k":"1","v":"string"}"#,
        r#"{"k":1.5,"v":"float"}"#,
        r#"{"k":[1],"v":"array"}"#,
    ];
    let report = hostile(&s, raw("loose", &records), Limits::default()).await;
    assert_eq!(
        report.record.status,
        RunStatus::Succeeded,
        "{:?}",
        report.record.error
    );
    assert_eq!(report.record.records_upserted, 5);
    let conn = common::db(&s.path("sluice.db"));
    let mut stmt = conn
        .prepare("SELECT k, v FROM misbehave__loose ORDER BY v")
        .unwrap();
    let rows: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            ("[1]", "\"array\""),
            ("true", "\"bool\""),
            ("1.5", "\"float\""),
            ("1", "\"number\""),
            ("\"1\"", "\"string\""),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_repeated_keys_are_quarantined_not_half_stored() {
    let s = Scratch::new();
    let records = [
        r#"{"id":1,"n":1,"n":2,"label":"top"}"#,
        r#"{"id":2,"label":"nested","meta":{"a":[{"b":1,"b":2}]}}"#,
        r#"{"id":3,"label":"escaped","l\u0061bel":"twice"}"#,
        r#"{"id":4,"n":4,"label":"fine"}"#,
    ];
    let report = hostile(&s, raw("items", &records), Limits::default()).await;
    assert_eq!(
        report.record.status,
        RunStatus::Succeeded,
        "{:?}",
        report.record.error
    );
    assert_eq!(report.record.records_upserted, 1);
    assert_eq!(report.record.records_quarantined, 3);
    let q = quarantined(&s.path("sluice.db"));
    let paths: Vec<&str> = ["/n", "/meta/a/0/b", "/label"].to_vec();
    for ((record, errors), path) in q.iter().zip(paths) {
        assert!(
            errors.contains(&format!("\"path\":\"{path}\"")) && errors.contains("more than once"),
            "{record}: {errors}"
        );
    }
    // The record is kept exactly as emitted.
    assert_eq!(q[0].0, records[0]);
}

// ------------------------------------------------------ instance namespaces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_with_the_same_names_cannot_touch_another_instances_rows_or_state() {
    let rt = runtime();
    let s = Scratch::new();
    let db = s.path("shared.db");
    let real = misbehave_as(
        "real",
        db.clone(),
        serde_json::json!({"behaviour": "ok", "committed": 500}).to_string(),
        Limits::default(),
    );
    let report = pipeline::run(&rt, &real).await.unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded);
    assert_eq!(report.tables["items"], "real__items");

    // The same component (same spec name, same stream), another instance,
    // with a full refresh that would sweep every row it did not write.
    let mut impostor = misbehave_as(
        "impostor",
        db.clone(),
        serde_json::json!({"behaviour": "ok", "committed": 1}).to_string(),
        Limits::default(),
    );
    impostor.full_refresh = true;
    let report = pipeline::run(&rt, &impostor).await.unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded);
    let conn = common::db(&db);
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM real__items"),
        500
    );
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM impostor__items"),
        1
    );
    let state = |instance: &str| -> String {
        conn.query_row(
            "SELECT value FROM _sluice_state WHERE connector = ?1 AND stream = 'items'",
            [instance],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(state("real"), r#"{"last":500}"#);

    // Naming the other instance's table outright is refused, and nothing
    // of the real instance changes.
    let mut hijack = impostor.clone();
    hijack.tables = [("items".to_string(), "real__items".to_string())].into();
    let report = pipeline::run(&rt, &hijack).await.unwrap();
    assert_eq!(report.record.status, RunStatus::StoreError);
    let error = report.record.error.unwrap();
    assert!(error.contains("belongs to instance \"real\""), "{error}");
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM real__items"),
        500
    );
    assert_eq!(state("real"), r#"{"last":500}"#);

    // A table nobody owns (the operator's own) is not written either.
    conn.execute_batch("CREATE TABLE mine (id INTEGER PRIMARY KEY, x TEXT)")
        .unwrap();
    hijack.tables = [("items".to_string(), "mine".to_string())].into();
    let report = pipeline::run(&rt, &hijack).await.unwrap();
    assert_eq!(report.record.status, RunStatus::StoreError);
    assert!(
        report
            .record
            .error
            .as_deref()
            .unwrap()
            .contains("no Sluice instance owns it"),
        "{:?}",
        report.record.error
    );

    // An operator-chosen table of its own is fine.
    hijack.tables = [("items".to_string(), "impostor_items".to_string())].into();
    let report = pipeline::run(&rt, &hijack).await.unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded);
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM impostor_items"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_component_for_an_instance_is_recorded_as_a_change() {
    let rt = runtime();
    let s = Scratch::new();
    let db = s.path("sluice.db");
    let first = misbehave_as(
        "x",
        db.clone(),
        config("ok", serde_json::json!({})),
        Limits::default(),
    );
    let report = pipeline::run(&rt, &first).await.unwrap();
    assert_eq!(report.record.component_change, None);
    let report = pipeline::run(&rt, &first).await.unwrap();
    assert_eq!(report.record.component_change, None, "same component");
    // Another component under the same instance name (its config is wrong
    // for it, so the run fails; the change is recorded all the same).
    let mut other = request(
        guest("open_meteo"),
        db.clone(),
        "{}".into(),
        Limits::default(),
    );
    other.instance = "x".into();
    let report = pipeline::run(&rt, &other).await.unwrap();
    let change = report.record.component_change.expect("a change");
    assert!(
        change.starts_with("misbehave 0.1.0 (") && change.contains(" -> open-meteo "),
        "{change}"
    );
    let conn = common::db(&db);
    let stored: String = conn
        .query_row(
            "SELECT component_change FROM _sluice_runs WHERE id = ?1",
            [&report.record.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored, change);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_instances_owned_tables_is_migrated() {
    let s = Scratch::new();
    let db = s.path("old.db");
    {
        // The layout of the last release: tables named by stream, shared.
        let conn = common::db(&db);
        conn.execute_batch(
            r#"
            CREATE TABLE _sluice_streams (connector TEXT NOT NULL, stream TEXT NOT NULL,
                connector_version TEXT NOT NULL, json_schema TEXT NOT NULL,
                primary_key TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (connector, stream));
            CREATE TABLE _sluice_state (connector TEXT NOT NULL, stream TEXT NOT NULL,
                value TEXT NOT NULL, run_id TEXT NOT NULL, updated_at TEXT NOT NULL,
                PRIMARY KEY (connector, stream));
            CREATE TABLE "items" ("id" INTEGER, "label" TEXT, "n" INTEGER, "_record" TEXT NOT NULL,
                "_run_id" TEXT NOT NULL, "_synced_at" TEXT NOT NULL, PRIMARY KEY ("id"));
            INSERT INTO _sluice_streams VALUES
                ('legacy', 'items', '0.1.0', '{}', '["id"]', '2026-01-02T00:00:00Z'),
                ('older', 'items', '0.1.0', '{}', '["id"]', '2026-01-01T00:00:00Z');
            INSERT INTO _sluice_state VALUES ('legacy', 'items', '{"last":100}', 'r0', '2026-01-02T00:00:00Z');
            "#,
        )
        .unwrap();
        for id in 0..100 {
            conn.execute(
                "INSERT INTO items VALUES (?1, 'old', 0, '{}', 'r0', '2026-01-02T00:00:00Z')",
                [id],
            )
            .unwrap();
        }
    }
    let req = misbehave_as(
        "legacy",
        db.clone(),
        serde_json::json!({"behaviour": "ok", "committed": 0, "uncommitted": 0}).to_string(),
        Limits::default(),
    );
    let report = pipeline::run(&runtime(), &req).await.unwrap();
    assert_eq!(
        report.record.status,
        RunStatus::Succeeded,
        "{:?}",
        report.record.error
    );
    let conn = common::db(&db);
    // The table moved into the instance that declared the stream last,
    // with its rows and the instance's state.
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM legacy__items"),
        100
    );
    assert_eq!(
        common::count(
            &conn,
            "SELECT count(*) FROM sqlite_master WHERE name IN ('items', 'older__items')"
        ),
        0
    );
    assert_eq!(
        common::stream_table(&conn, "items"),
        "legacy__items",
        "owned by the instance"
    );
    let state: String = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'legacy'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, r#"{"last":100}"#);
}
