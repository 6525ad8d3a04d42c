//! `sluice run --output singer|airbyte`: a sandboxed connector as a Singer
//! tap or an Airbyte source. Its stdout goes into the real `target-jsonl`,
//! or through the Airbyte protocol's pydantic models (both from the venv
//! `scripts/setup-protocol-tools.sh` makes), and is compared with what the
//! same connector writes into SQLite.

use crate::common;

use std::process::{Command, Stdio};

use common::{db, guest, sluice, Scratch};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::peers::{airbyte_validate, jsonl_records, target_jsonl, venv};
use sluice_fixture::Running;

/// Ids 9, 19, …, 99 are quarantined (amount a string).
fn fixture() -> Running {
    let (router, _state) = items::router(ItemsConfig {
        total: 100,
        wrong_type_every: Some(10),
        ..Default::default()
    });
    Running::start(router, 0).unwrap()
}

/// `sluice run items` with `extra`: (stdout, stderr, success).
fn run(s: &Scratch, fx: &Running, extra: &[&str]) -> (String, String, bool) {
    let cfg = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 30}}"#, fx.base_url()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(guest("items"))
        .arg("--config")
        .arg(cfg)
        .args(["--allow-host", &format!("127.0.0.1:{}", fx.addr.port())])
        .args(extra)
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

fn messages(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect()
}

/// The records of the SQLite table, by id, as parsed JSON.
fn sqlite_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    db(path)
        .prepare("SELECT _record FROM items__items ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect()
}

fn by_id(mut records: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    records.sort_by_key(|r| r["id"].as_i64());
    records
}

#[test]
fn singer_output_feeds_target_jsonl_the_rows_sqlite_gets_and_resumes_from_its_state() {
    let Some(venv) = venv() else { return };
    let fx = fixture();
    let s = Scratch::new();
    let lite = s.path("sluice.db");
    let (_, _, ok) = run(&s, &fx, &["--db", lite.to_str().unwrap()]);
    assert!(ok);

    let log = s.path("log.db");
    let (stdout, stderr, ok) = run(
        &s,
        &fx,
        &["--output", "singer", "--db", log.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    // The summary is on stderr; stdout is protocol only.
    assert!(stderr.contains("succeeded"), "{stderr}");
    assert!(stderr.contains("tables:   none"), "{stderr}");
    let msgs = messages(&stdout);
    let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "SCHEMA");
    assert_eq!(
        *kinds.last().unwrap(),
        "STATE",
        "the last line is a resume point"
    );
    assert_eq!(kinds.iter().filter(|k| **k == "RECORD").count(), 90);
    // The invalid ones are in the local run log's quarantine, not on
    // stdout; no table is made there.
    let q = sluice([
        "quarantine",
        "list",
        "--db",
        log.to_str().unwrap(),
        "--json",
    ]);
    assert!(q.ok, "{q:?}");
    let q: serde_json::Value = serde_json::from_str(&q.stdout).unwrap();
    assert_eq!(q.as_array().unwrap().len(), 10);
    assert_eq!(
        common::count(
            &db(&log),
            "SELECT count(*) FROM sqlite_master WHERE name = 'items__items'"
        ),
        0
    );

    // target-jsonl's files hold what SQLite holds.
    let out1 = s.dir.path().join("target-1");
    std::fs::create_dir_all(&out1).unwrap();
    let echoed = target_jsonl(&venv, &stdout, &out1);
    assert_eq!(
        by_id(jsonl_records(&out1, "items")),
        sqlite_records(&lite),
        "target-jsonl's records differ from the SQLite rows"
    );

    // Meltano-style resume: the state the target echoed, fed back, on a
    // fresh run log. Nothing already delivered is read again beyond what
    // the SQLite run's resume re-reads.
    let state = s.write("state.json", echoed.trim().lines().last().unwrap_or(""));
    let (again, stderr, ok) = run(
        &s,
        &fx,
        &[
            "--output",
            "singer",
            "--state-file",
            state.to_str().unwrap(),
            "--db",
            s.path("log2.db").to_str().unwrap(),
            "--json",
        ],
    );
    assert!(ok, "{stderr}");
    let lite_again = sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        s.path("items.json").to_str().unwrap(),
        "--allow-host",
        &format!("127.0.0.1:{}", fx.addr.port()),
        "--db",
        lite.to_str().unwrap(),
        "--json",
    ]);
    assert!(lite_again.ok, "{lite_again:?}");
    let lite_again: serde_json::Value = serde_json::from_str(&lite_again.stdout).unwrap();
    let singer_again: serde_json::Value = serde_json::from_str(&stderr).unwrap();
    assert_eq!(
        singer_again["records_emitted"], lite_again["records_emitted"],
        "the resumed Singer run read more than the resumed SQLite run"
    );
    assert!(singer_again["records_emitted"].as_u64().unwrap() < 30);
    let re_sent = messages(&again)
        .iter()
        .filter(|m| m["type"] == "RECORD")
        .count() as u64;
    assert_eq!(re_sent, lite_again["records_valid"].as_u64().unwrap());
}

#[test]
fn airbyte_output_is_valid_airbyte_protocol_and_a_failure_ends_in_a_trace() {
    let Some(venv) = venv() else { return };
    let fx = fixture();
    let s = Scratch::new();
    let log = s.path("log.db");
    let (stdout, stderr, ok) = run(
        &s,
        &fx,
        &["--output", "airbyte", "--db", log.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let checked = airbyte_validate(&venv, &stdout);
    let records = checked.iter().filter(|m| m["type"] == "RECORD").count();
    let states = checked.iter().filter(|m| m["type"] == "STATE").count();
    assert_eq!(records, 90);
    assert!(states >= 1);
    assert_eq!(checked.last().unwrap()["type"], "STATE");

    // A run that fails (its upstream is gone) ends with an ERROR trace.
    drop(fx);
    let gone = fixture();
    let port = gone.addr.port();
    drop(gone);
    let cfg = s.write(
        "gone.json",
        format!(r#"{{"base_url": "http://127.0.0.1:{port}", "page_size": 30}}"#),
    );
    let out = sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--allow-host",
        &format!("127.0.0.1:{port}"),
        "--retries",
        "0",
        "--output",
        "airbyte",
        "--db",
        s.path("log-gone.db").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let checked = airbyte_validate(&venv, &out.stdout);
    let last = checked.last().unwrap();
    assert_eq!(last["type"], "TRACE", "{checked:?}");
    assert_eq!(last["trace"]["type"], "ERROR");

    // The output needs a local run log: a server is refused.
    let out = sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--output",
        "singer",
        "--db",
        "postgres://sluice@127.0.0.1:1/x",
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("local SQLite file"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}
