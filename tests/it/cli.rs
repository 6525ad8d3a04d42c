//! End-to-end tests through the `sluice` binary: the open-meteo connector
//! against the loopback fixture, limits that trip, denials, bad components.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{count, db, guest, runs, sluice, Scratch};
use sluice_fixture::open_meteo::{self, parse_hour, DEFAULT_NOW};
use sluice_fixture::Running;

fn start_open_meteo() -> (Running, open_meteo::Shared) {
    let (router, state) = open_meteo::router(DEFAULT_NOW);
    (Running::start(router, 0).unwrap(), state)
}

fn open_meteo_config(s: &Scratch, fx: &Running) -> std::path::PathBuf {
    s.write(
        "config.json",
        format!(
            r#"{{"base_url": "{}", "locations": [
                {{"name": "berlin", "latitude": 52.52, "longitude": 13.41}},
                {{"name": "lisbon", "latitude": 38.72, "longitude": -9.14}}],
              "past_days": 1, "forecast_days": 7}}"#,
            fx.base_url()
        ),
    )
}

fn run_open_meteo(s: &Scratch, fx: &Running, config: &std::path::Path) -> common::Out {
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let db = s.path("sluice.db");
    let out = sluice([
        "run".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--db".as_ref(),
        db.as_os_str(),
        "--allow-host".as_ref(),
        grant.as_ref(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "run failed: {out:?}");
    out
}

fn report(out: &common::Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// Every row's values equal what the fixture serves for its (location, hour).
fn assert_values_match_fixture(conn: &rusqlite::Connection) {
    let mut stmt = conn
        .prepare(
            "SELECT location, latitude, longitude, time, temperature_2m, relative_humidity_2m, \
             precipitation, wind_speed_10m, _record, _run_id FROM open_meteo__hourly_weather",
        )
        .unwrap();
    let mut n = 0;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, f64>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, String>(3)?,
                [
                    r.get::<_, f64>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, f64>(6)?,
                    r.get::<_, f64>(7)?,
                ],
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (loc, lat, lon, time, vals, record, run_id) = row.unwrap();
        let expected_lat = if loc == "berlin" { 52.52 } else { 38.72 };
        assert_eq!(lat, expected_lat, "{loc}");
        let h = parse_hour(&time).unwrap_or_else(|| panic!("bad time {time}"));
        for (var, got) in [
            "temperature_2m",
            "relative_humidity_2m",
            "precipitation",
            "wind_speed_10m",
        ]
        .iter()
        .zip(vals)
        {
            assert_eq!(
                got,
                open_meteo::value(var, lat, lon, h).unwrap(),
                "{var} at {loc} {time}"
            );
        }
        let rec: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert_eq!(rec["time"], time.as_str());
        assert!(!run_id.is_empty());
        n += 1;
    }
    assert!(n > 0);
}

#[test]
fn open_meteo_lands_in_sqlite_and_a_second_run_is_idempotent() {
    let s = Scratch::new();
    let (fx, state) = start_open_meteo();
    let config = open_meteo_config(&s, &fx);

    let first = report(&run_open_meteo(&s, &fx, &config));
    assert_eq!(first["status"], "succeeded");
    // 1 past day + 7 forecast days, 24 hours each, 2 locations.
    assert_eq!(first["records_upserted"], 2 * 8 * 24);
    assert_eq!(first["http_requests"], 2);
    assert!(first["fuel_used"].as_u64().unwrap() > 0);

    let conn = db(&s.path("sluice.db"));
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('open_meteo__hourly_weather') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        cols,
        [
            "_record",
            "_run_id",
            "_synced_at",
            "latitude",
            "location",
            "longitude",
            "precipitation",
            "relative_humidity_2m",
            "temperature_2m",
            "time",
            "wind_speed_10m"
        ]
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM open_meteo__hourly_weather"),
        384
    );
    assert_values_match_fixture(&conn);

    // Second run, upstream unchanged: it resumes from the committed cursor
    // (emits only the not-yet-final hours) and the table is unchanged in size.
    let second = report(&run_open_meteo(&s, &fx, &config));
    assert_eq!(second["status"], "succeeded");
    assert_eq!(second["records_emitted"], 2 * 7 * 24, "resumed from state");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM open_meteo__hourly_weather"),
        384
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM (SELECT DISTINCT location, time FROM open_meteo__hourly_weather)"
        ),
        384
    );
    let cursor: String = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'open_meteo' AND stream = 'hourly_weather'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        cursor,
        r#"{"cursors":{"berlin":"2026-11-22T00:00","lisbon":"2026-11-22T00:00"}}"#
    );
    assert_values_match_fixture(&conn);
    assert_eq!(state.lock().unwrap().requests.len(), 4);

    let history = runs(&conn);
    assert_eq!(history.len(), 2);
    assert!(history
        .iter()
        .all(|r| r.0 == "succeeded" && r.3 == 2 && r.4 == 0));
}

#[test]
fn open_meteo_picks_up_new_hours_and_backfills_gaps() {
    let s = Scratch::new();
    let (fx, state) = start_open_meteo();
    let config = open_meteo_config(&s, &fx);
    run_open_meteo(&s, &fx, &config);

    // A day later upstream: one new forecast day per location.
    state.lock().unwrap().now += 24;
    let r = report(&run_open_meteo(&s, &fx, &config));
    assert_eq!(r["http_requests"], 2);
    let conn = db(&s.path("sluice.db"));
    assert_eq!(
        count(&conn, "SELECT count(*) FROM open_meteo__hourly_weather"),
        384 + 48
    );

    // Four more days: the window has moved past the cursor, so the
    // connector backfills the gap with start_hour/end_hour.
    state.lock().unwrap().now += 4 * 24;
    let r = report(&run_open_meteo(&s, &fx, &config));
    assert_eq!(r["http_requests"], 4);
    let requests = state.lock().unwrap().requests.clone();
    assert_eq!(
        requests
            .iter()
            .filter(|q| q.contains("start_hour=2026-11-23T00:00"))
            .count(),
        2
    );
    // No hour is missing between the first and the last.
    let (first, last): (String, String) = conn
        .query_row(
            "SELECT min(time), max(time) FROM open_meteo__hourly_weather",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let hours = parse_hour(&last).unwrap() - parse_hour(&first).unwrap() + 1;
    assert_eq!(
        count(&conn, "SELECT count(*) FROM open_meteo__hourly_weather"),
        2 * hours
    );
    assert_values_match_fixture(&conn);
}

pub(crate) fn misbehave(s: &Scratch, config: &str, extra: &[&str]) -> common::Out {
    let cfg = s.write("misbehave.json", config);
    let db = s.path("sluice.db");
    let mut args = vec![
        "run".to_string(),
        guest("misbehave").display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--db".into(),
        db.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    sluice(args)
}

/// The run failed with `status`, and only the committed rows are stored.
fn assert_failed_with(
    s: &Scratch,
    out: &common::Out,
    status: &str,
    committed: i64,
) -> serde_json::Value {
    assert!(!out.ok, "run should fail: {out:?}");
    let r = report(out);
    assert_eq!(r["status"], status, "{out:?}");
    assert!(
        out.stderr.contains(&format!("ended {status}")),
        "{}",
        out.stderr
    );
    let conn = db(&s.path("sluice.db"));
    assert_eq!(
        count(&conn, "SELECT count(*) FROM misbehave__items"),
        committed,
        "rows past the last commit leaked"
    );
    assert_eq!(
        count(
            &conn,
            &format!("SELECT count(*) FROM misbehave__items WHERE id >= {committed}")
        ),
        0
    );
    let history = runs(&conn);
    assert_eq!(history.last().unwrap().0, status);
    assert_eq!(history.last().unwrap().2, committed);
    r
}

#[test]
fn a_guest_that_loops_forever_runs_out_of_fuel() {
    let s = Scratch::new();
    let start = Instant::now();
    let out = misbehave(
        &s,
        r#"{"behaviour": "loop", "committed": 50, "uncommitted": 7}"#,
        &["--fuel", "500000000"],
    );
    let r = assert_failed_with(&s, &out, "fuel_exhausted", 50);
    assert!(r["fuel_used"].as_u64().unwrap() >= 500_000_000);
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_guest_that_loops_forever_hits_the_deadline() {
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "loop", "committed": 20, "uncommitted": 3}"#,
        &["--timeout", "0.5"],
    );
    let r = assert_failed_with(&s, &out, "deadline", 20);
    assert!(r["duration_ms"].as_u64().unwrap() < 10_000);
}

#[test]
fn the_deadline_covers_time_spent_waiting_on_the_host() {
    // An upstream that accepts and then says nothing for 20 s.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            std::thread::sleep(Duration::from_secs(20));
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let s = Scratch::new();
    let start = Instant::now();
    let out = misbehave(
        &s,
        &format!(
            r#"{{"behaviour": "http", "committed": 5, "url": "http://127.0.0.1:{port}/slow"}}"#
        ),
        &[
            "--timeout",
            "1",
            "--allow-host",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_failed_with(&s, &out, "deadline", 5);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "deadline did not cut the host wait"
    );
}

#[test]
fn a_guest_that_grows_memory_without_bound_hits_the_memory_limit() {
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "grow", "committed": 10, "uncommitted": 10}"#,
        &["--memory", "32MiB"],
    );
    let r = assert_failed_with(&s, &out, "memory_limit", 10);
    assert!(r["error"].as_str().unwrap().contains("33554432"));
    assert!(r["peak_memory_bytes"].as_u64().unwrap() <= 32 << 20);
}

#[test]
fn a_panicking_guest_traps_and_keeps_what_it_committed() {
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "panic", "committed": 30, "uncommitted": 30}"#,
        &[],
    );
    let r = assert_failed_with(&s, &out, "trapped", 30);
    assert!(
        r["error"].as_str().unwrap().contains("deliberate panic"),
        "{r}"
    );
}

#[test]
fn a_connector_error_fails_the_run_cleanly() {
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "error", "committed": 4, "uncommitted": 4}"#,
        &[],
    );
    let r = assert_failed_with(&s, &out, "failed", 4);
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("deliberate connector error"));
}

#[test]
fn a_host_that_was_not_granted_is_denied_inside_the_guest_and_recorded() {
    let s = Scratch::new();
    // A listener that must never see a connection.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = misbehave(
        &s,
        &format!(r#"{{"behaviour": "http", "committed": 3, "url": "http://127.0.0.1:{port}/"}}"#),
        &["--allow-host", "127.0.0.1:1"],
    );
    let r = assert_failed_with(&s, &out, "failed", 3);
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("denied") && err.contains("not granted"),
        "{err}"
    );
    assert_eq!(r["http_denied"], 1);
    assert_eq!(r["http_requests"], 0);
    let history = runs(&db(&s.path("sluice.db")));
    assert_eq!(
        history.last().unwrap().4,
        1,
        "denial counted in the run record"
    );
    assert!(
        listener.accept().is_err(),
        "the denied host saw a connection"
    );
}

#[test]
fn a_failed_run_leaves_earlier_data_untouched() {
    let s = Scratch::new();
    let (fx, _state) = start_open_meteo();
    let config = open_meteo_config(&s, &fx);
    run_open_meteo(&s, &fx, &config);
    let conn = db(&s.path("sluice.db"));
    let snapshot = |c: &rusqlite::Connection| -> String {
        c.query_row(
            "SELECT group_concat(location || time || _record, '|') FROM (SELECT * FROM open_meteo__hourly_weather ORDER BY location, time)",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let before = snapshot(&conn);
    let out = misbehave(
        &s,
        r#"{"behaviour": "panic", "committed": 0, "uncommitted": 100}"#,
        &[],
    );
    assert!(!out.ok);
    assert_eq!(snapshot(&conn), before);
    assert_eq!(count(&conn, "SELECT count(*) FROM misbehave__items"), 0);
}

#[test]
fn bad_components_get_a_clear_error_and_a_non_zero_exit() {
    let s = Scratch::new();
    let real = std::fs::read(guest("open_meteo")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage.wasm",
            b"this is not wasm at all".to_vec(),
            "not a WebAssembly component",
        ),
        ("empty.wasm", Vec::new(), "not a WebAssembly component"),
        (
            "truncated.wasm",
            real[..real.len() / 2].to_vec(),
            "does not compile",
        ),
        (
            "core.wat",
            b"(module (func (export \"spec\")))".to_vec(),
            "core WebAssembly module",
        ),
        (
            "empty-component.wat",
            b"(component)".to_vec(),
            "does not implement the world",
        ),
        (
            "other-world.wat",
            b"(component (import \"wasi:cli/environment@0.2.0\" (instance)))".to_vec(),
            "does not implement the world",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = s.write(name, &bytes);
        let out = sluice(["spec".as_ref(), path.as_os_str()]);
        assert!(!out.ok, "{name}: should fail");
        assert_eq!(out.code, Some(1), "{name}");
        assert!(out.stderr.contains(expected), "{name}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{name}: one line: {}",
            out.stderr
        );
    }
    let out = sluice(["spec", "/no/such/component.wasm"]);
    assert!(!out.ok && out.stderr.contains("cannot read component"));
}

#[test]
fn bad_config_gets_a_clear_error_and_stores_nothing() {
    let s = Scratch::new();
    let cfg = s.write("bad.json", "{not json");
    let db_path = s.path("sluice.db");
    let out = sluice([
        "run".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--db".as_ref(),
        db_path.as_os_str(),
    ]);
    assert!(!out.ok);
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
    // A config without locations breaks the schema's minItems.
    let cfg = s.write("nolocations.json", r#"{"locations": []}"#);
    let out = sluice([
        "check".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("/locations: [] has less than 1 item"),
        "{}",
        out.stderr
    );
    // Past the schema, the connector's own check still has its say.
    let cfg = s.write(
        "badvar.json",
        r#"{"locations": [{"name": "x", "latitude": 1, "longitude": 2}], "hourly": ["no such var!"]}"#,
    );
    let out = sluice([
        "check".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(
        !out.ok && out.stderr.contains("is not a valid name"),
        "{}",
        out.stderr
    );
    // The host validates the config against the connector's config schema
    // before the connector sees it.
    let cfg = s.write("typo.json", r#"{"locatoins": []}"#);
    let out = sluice([
        "check".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("does not match connector open-meteo's config schema"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("'locatoins' was unexpected"),
        "{}",
        out.stderr
    );
    let cfg = s.write(
        "wrongtype.json",
        r#"{"locations": [{"name": "x", "latitude": "north", "longitude": 1}]}"#,
    );
    let out = sluice([
        "run".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--db".as_ref(),
        db_path.as_os_str(),
    ]);
    assert!(
        !out.ok && out.stderr.contains("/locations/0/latitude"),
        "{}",
        out.stderr
    );
    let history = runs(&db(&db_path));
    assert_eq!(
        history.last().unwrap().0,
        "failed",
        "the refused run is recorded"
    );
}

#[test]
fn spec_discover_and_runs_print_json() {
    let s = Scratch::new();
    let out = sluice([
        "spec".as_ref(),
        guest("open_meteo").as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let spec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(spec["name"], "open-meteo");
    assert_eq!(
        spec["streams"][0]["primary_key"],
        serde_json::json!(["location", "time"])
    );

    let cfg = s.write(
        "c.json",
        r#"{"locations": [{"name": "x", "latitude": 1, "longitude": 2}], "hourly": ["cloud_cover"]}"#,
    );
    let out = sluice([
        "discover".as_ref(),
        guest("open_meteo").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let streams: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let props = streams[0]["json_schema"]["properties"].as_object().unwrap();
    assert!(props.contains_key("cloud_cover") && !props.contains_key("temperature_2m"));

    let out = misbehave(&s, r#"{"behaviour": "ok", "committed": 2}"#, &[]);
    assert!(out.ok, "{out:?}");
    let db_path = s.path("sluice.db");
    let out = sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        db_path.as_os_str(),
        "--json".as_ref(),
    ]);
    let history: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[0]["records_upserted"], 2);
    let out = sluice(["runs".as_ref(), "--db".as_ref(), db_path.as_os_str()]);
    assert!(out.ok && out.stdout.contains("misbehave"), "{out:?}");
}

#[test]
fn limit_flags_trip_their_own_statuses() {
    // --max-record-bytes: one 100 kB record after 6 committed.
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "giant_record", "committed": 6, "size": 100000}"#,
        &["--max-record-bytes", "64KiB"],
    );
    let r = assert_failed_with(&s, &out, "record_too_large", 6);
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("65536-byte record limit"));

    // --max-state-bytes: a 10 kB state value.
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "giant_state", "committed": 3, "uncommitted": 2, "size": 10000}"#,
        &["--max-state-bytes", "4KiB"],
    );
    assert_failed_with(&s, &out, "state_too_large", 3);

    // --max-emit-bytes: endless committed batches.
    let s = Scratch::new();
    let out = misbehave(
        &s,
        r#"{"behaviour": "emit_forever", "size": 500, "commit_every": 100}"#,
        &["--max-emit-bytes", "256KiB"],
    );
    assert!(!out.ok);
    let r = report(&out);
    assert_eq!(r["status"], "emit_bytes_limit", "{out:?}");
    let committed = r["records_upserted"].as_i64().unwrap();
    assert!(committed >= 300 && committed % 100 == 0, "{committed}");
    let conn = db(&s.path("sluice.db"));
    assert_eq!(
        count(&conn, "SELECT count(*) FROM misbehave__items"),
        committed
    );
}

#[test]
fn max_http_requests_flag_ends_the_run_with_http_budget() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let (mut buf, mut seen) = ([0u8; 4096], Vec::new());
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // One answer per complete request head.
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let s = Scratch::new();
    let out = misbehave(
        &s,
        &format!(
            r#"{{"behaviour": "http_forever", "committed": 4, "uncommitted": 4, "url": "http://127.0.0.1:{port}/x"}}"#
        ),
        &[
            "--max-http-requests",
            "7",
            "--allow-host",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let r = assert_failed_with(&s, &out, "http_budget", 4);
    assert_eq!(r["http_requests"], 7);
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("budget of 7 requests"));
}

// --------------------------------------------------------- run lifecycle

/// `sluice run` of the misbehave guest with `config` into `s`'s database,
/// as a child process (stdout: the JSON report).
pub(crate) fn spawn_misbehave(s: &Scratch, config: &str, extra: &[&str]) -> std::process::Child {
    let cfg = s.write("spawned.json", config);
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(guest("misbehave"))
        .arg("--config")
        .arg(cfg)
        .arg("--db")
        .arg(s.path("sluice.db"))
        .arg("--json")
        .args(extra)
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait (up to a minute) until `sql` counts at least `n` in `s`'s database.
pub(crate) fn wait_for(s: &Scratch, sql: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = rusqlite::Connection::open(s.path("sluice.db"))
            .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if seen >= n {
            return;
        }
        assert!(Instant::now() < deadline, "waited in vain for {sql} >= {n}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// The last run of `s`'s database: (status, error, upserted).
fn last_run(s: &Scratch) -> (String, Option<String>, i64) {
    let r = runs(&db(&s.path("sluice.db")));
    let last = r.last().unwrap();
    (last.0.clone(), last.1.clone(), last.2)
}

pub(crate) const LEASED: &str = "SELECT count(*) FROM _sluice_leases";
const RUNNING: &str = "SELECT count(*) FROM _sluice_runs WHERE status = 'running'";

#[test]
fn a_second_run_of_a_running_instance_is_refused_and_a_killed_one_is_crashed() {
    let s = Scratch::new();
    let looping = r#"{"behaviour": "loop", "committed": 10}"#;
    let first = spawn_misbehave(&s, looping, &["--timeout", "4", "--fuel", "10000000000000"]);
    wait_for(&s, LEASED, 1);
    let second = misbehave(&s, r#"{"behaviour": "ok", "committed": 5}"#, &[]);
    assert_eq!(second.code, Some(75), "{second:?}");
    assert!(
        second
            .stderr
            .contains("instance misbehave is already running (run "),
        "{}",
        second.stderr
    );
    assert_eq!(second.stderr.lines().count(), 1, "{}", second.stderr);
    let out = first.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        last_run(&s).0,
        "deadline",
        "the first run went on undisturbed"
    );
    assert_eq!(
        runs(&db(&s.path("sluice.db"))).len(),
        1,
        "the refused run left no record"
    );

    // A run whose process is killed: the next run takes the lease over at
    // once (its holder is gone) and the killed run is `crashed`.
    let mut killed = spawn_misbehave(&s, looping, &["--timeout", "60"]);
    // The run holds the lease before it records itself: wait for its row
    // (killed before that, it would leave nothing to mark).
    wait_for(&s, RUNNING, 1);
    killed.kill().unwrap();
    killed.wait().unwrap();
    let next = misbehave(&s, r#"{"behaviour": "ok", "committed": 5}"#, &[]);
    assert!(next.ok, "{next:?}");
    let history = runs(&db(&s.path("sluice.db")));
    assert_eq!(history.len(), 3);
    let (status, error, ..) = &history[1];
    assert_eq!(status, "crashed");
    assert!(
        error.as_deref().unwrap().contains("lease expired"),
        "{error:?}"
    );
    assert_eq!(history[2].0, "succeeded");
}

#[test]
fn sigterm_stops_a_run_at_its_next_commit_with_accurate_counts() {
    let s = Scratch::new();
    let endless = r#"{"behaviour": "emit_forever", "size": 10, "commit_every": 100}"#;
    let child = spawn_misbehave(&s, endless, &["--max-emit-bytes", "10GiB"]);
    wait_for(&s, "SELECT count(*) FROM misbehave__items", 300);
    signal(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "cancelled", "{report}");
    let (status, error, upserted) = last_run(&s);
    assert_eq!(status, "cancelled");
    assert!(error
        .unwrap()
        .contains("stopped by the operator at a commit"));
    let conn = db(&s.path("sluice.db"));
    let rows = count(&conn, "SELECT count(*) FROM misbehave__items");
    assert!(rows >= 300 && rows % 100 == 0, "{rows}");
    assert_eq!(upserted, rows, "the record counts what was committed");
    let state: String = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'misbehave' AND stream = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, format!(r#"{{"last":{rows}}}"#));
    assert_eq!(count(&conn, LEASED), 0, "the lease was given back");
}

#[test]
fn a_second_signal_stops_a_run_that_never_commits_at_once() {
    let s = Scratch::new();
    let child = spawn_misbehave(
        &s,
        r#"{"behaviour": "loop", "committed": 10, "uncommitted": 5}"#,
        &["--timeout", "120"],
    );
    // Past its one commit, in its endless loop.
    wait_for(&s, "SELECT count(*) FROM misbehave__items", 10);
    signal(&child, "-TERM");
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopping now"), "{stderr}");
    let (status, error, upserted) = last_run(&s);
    assert_eq!(status, "cancelled");
    assert!(error.unwrap().contains("second stop request"));
    assert_eq!(upserted, 10, "only what was committed");
    assert_eq!(
        count(
            &db(&s.path("sluice.db")),
            "SELECT count(*) FROM misbehave__items"
        ),
        10
    );
}

#[test]
fn a_full_disk_ends_the_run_as_store_error_with_a_summary_and_loses_no_commit() {
    let s = Scratch::new();
    let first = misbehave(&s, r#"{"behaviour": "ok", "committed": 5}"#, &[]);
    assert!(first.ok, "{first:?}");
    // The next run's process may grow no file past a few MB (SIGXFSZ
    // ignored: writes past it fail with EFBIG, which SQLite reports as an
    // I/O error; a full disk, ENOSPC, as "database or disk is full").
    let cfg = s.write(
        "big.json",
        r#"{"behaviour": "emit_forever", "size": 2000, "commit_every": 100}"#,
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 8000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(guest("misbehave"))
        .arg("--config")
        .arg(&cfg)
        .arg("--db")
        .arg(s.path("sluice.db"))
        .args(["--json", "--max-emit-bytes", "1GiB"])
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} / {stderr}"));
    assert_eq!(report["status"], "store_error", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.starts_with("the store failed: "), "{error}");
    assert!(stderr.contains("ended store_error"), "{stderr}");
    // What was committed is whole, and the state says how far.
    let conn = db(&s.path("sluice.db"));
    let rows = count(&conn, "SELECT count(*) FROM misbehave__items");
    assert!(rows >= 100 && rows % 100 == 0, "{rows}");
    let state: String = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'misbehave' AND stream = 'items'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, format!(r#"{{"last":{rows}}}"#));
    // The run's row says it failed: recorded as store_error, or (when even
    // that write failed) `crashed` once a later command finds its lease gone.
    let later = sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        s.path("sluice.db").as_os_str(),
        "--json".as_ref(),
    ]);
    let runs: serde_json::Value = serde_json::from_str(&later.stdout).unwrap();
    let status = runs[0]["status"].as_str().unwrap();
    assert!(matches!(status, "store_error" | "crashed"), "{status}");
}
/// Extreme values of every limit and HTTP flag: each is one `error:` line
/// naming the flag and a non-zero exit, never a panic, before a run (or
/// its database) exists. The same bounds as sluice.toml (tests/it/sync.rs).
#[test]
fn every_limit_flag_refuses_extreme_values() {
    let s = Scratch::new();
    let cfg = s.write("config.json", "{}");
    let db_path = s.path("never.db");
    let counts = ["-1", "18446744073709551616", "1e20", "nan", "1.5"];
    let sizes = [
        "0",
        "-1",
        "18446744073709551616",
        "16EiB",
        "1e30",
        "nan",
        "12 parsecs",
    ];
    let durations = [
        "0", "-1", "nan", "inf", "-inf", "1e20", "1e-9", "31536001", "1000000y", "soon",
    ];
    let small_counts = ["-1", "4294967296", "nan", "1.5"];
    let mut cases: Vec<(&str, Vec<&str>)> = vec![
        ("--fuel", [&counts[..], &["0"]].concat()),
        ("--memory", [&sizes[..], &["65535", "64KiB - 1"]].concat()),
        ("--timeout", durations.to_vec()),
        ("--max-http-requests", counts.to_vec()),
        ("--max-http-denied", counts.to_vec()),
        ("--http-timeout", durations.to_vec()),
        ("--retries", [&small_counts[..], &["21", "1000"]].concat()),
        ("--breaker-threshold", small_counts.to_vec()),
        ("--breaker-cooldown", durations.to_vec()),
        (
            "--rate-limit",
            vec![
                "x=0",
                "x=-1",
                "x=inf",
                "x=nan",
                "x=1e20",
                "x=1/0",
                "x=1/4294967296",
            ],
        ),
    ];
    for flag in [
        "--max-http-bytes",
        "--max-emit-bytes",
        "--max-record-bytes",
        "--max-state-bytes",
    ] {
        cases.push((flag, sizes.to_vec()));
    }
    for (flag, values) in cases {
        for value in values {
            let out = sluice([
                "run".as_ref(),
                guest("items").as_os_str(),
                "--config".as_ref(),
                cfg.as_os_str(),
                "--db".as_ref(),
                db_path.as_os_str(),
                flag.as_ref(),
                value.as_ref(),
            ]);
            let what = format!("{flag} {value}");
            assert!(!out.ok, "{what} accepted: {out:?}");
            assert!(matches!(out.code, Some(1 | 2)), "{what}: {out:?}");
            assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
            let errors: Vec<&str> = out
                .stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect();
            assert_eq!(errors.len(), 1, "{what}: {}", out.stderr);
            assert!(errors[0].contains(flag), "{what}: {}", out.stderr);
            assert!(!db_path.exists(), "{what}: a database was created");
        }
    }
    // The bounds themselves are accepted, and sizes and durations take
    // units: the run starts (and fails only for want of an upstream).
    let out = sluice([
        "check".as_ref(),
        guest("items").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--fuel".as_ref(),
        "18446744073709551615".as_ref(),
        "--memory".as_ref(),
        "64MB".as_ref(),
        "--timeout".as_ref(),
        "31536000".as_ref(),
        "--http-timeout".as_ref(),
        "1ms".as_ref(),
        "--breaker-cooldown".as_ref(),
        "15m".as_ref(),
        "--retries".as_ref(),
        "20".as_ref(),
        "--max-http-requests".as_ref(),
        "0".as_ref(),
        "--max-state-bytes".as_ref(),
        "1".as_ref(),
    ]);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("must be"),
        "in-range values refused: {}",
        out.stderr
    );
}

/// An error whose message quotes its cause prints that cause once.
#[test]
fn errors_print_each_cause_once() {
    let s = Scratch::new();
    let dir = s.path("adir");
    std::fs::create_dir(&dir).unwrap();
    let file = s.write("afile", "x");
    let cfg = s.write("config.json", "{}");
    let db_path = s.path("x.db");
    let items = guest("items");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec!["spec".as_ref(), dir.as_os_str()], "Is a directory"),
        (
            vec!["sync".as_ref(), "--config-file".as_ref(), dir.as_os_str()],
            "Is a directory",
        ),
        (
            vec![
                "connectors".as_ref(),
                "--connectors-dir".as_ref(),
                file.as_os_str(),
            ],
            "Not a directory",
        ),
        (
            vec![
                "check".as_ref(),
                items.as_os_str(),
                "--config".as_ref(),
                dir.as_os_str(),
            ],
            "Is a directory",
        ),
        (
            vec![
                "run".as_ref(),
                items.as_os_str(),
                "--config".as_ref(),
                cfg.as_os_str(),
                "--db".as_ref(),
                db_path.as_os_str(),
                "--secret".as_ref(),
                "K=file:/".as_ref(),
            ],
            "Is a directory",
        ),
        (
            vec!["runs".as_ref(), "--db".as_ref(), dir.as_os_str()],
            "it is not a file",
        ),
    ];
    for (args, cause) in cases {
        let out = sluice(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
    }
}

// ------------------------------------------------- read-only commands

/// Skip (saying why) where no read-only mount can be made.
macro_rules! require_read_only_mount {
    () => {
        if let Some(why) = common::read_only_mount_unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// The read-only commands' JSON, run with `dir` mounted read-only.
fn read_only_json(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = common::sluice_read_only(dir, args);
    assert!(out.ok, "{args:?} on a read-only filesystem: {out:?}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", out.stdout))
}

#[test]
fn read_only_commands_work_on_a_read_only_filesystem_and_change_nothing() {
    require_read_only_mount!();
    let s = Scratch::new();
    // Ids 9, 19, …, 99 are quarantined (amount a string); 90.. drift.
    let fixture = sluice_fixture::items::ItemsConfig {
        total: 100,
        wrong_type_every: Some(10),
        drift_from: Some(90),
        ..Default::default()
    };
    let (router, _state) = sluice_fixture::items::router(fixture);
    let fx = Running::start(router, 0).unwrap();
    let cfg = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 30}}"#, fx.base_url()),
    );
    let db_path = s.path("sluice.db");
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let out = sluice([
        "run".as_ref(),
        guest("items").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--db".as_ref(),
        db_path.as_os_str(),
        "--allow-host".as_ref(),
        grant.as_ref(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let run_id = report(&out)["id"].as_str().unwrap().to_string();
    // A run whose process died before recording its end (it holds no
    // lease): the next `sluice run` on the database marks it crashed.
    db(&db_path)
        .execute(
            "INSERT INTO _sluice_runs (id, connector, connector_version, component_hash, started_at, status) \
             VALUES ('orphan', 'items', '0.1.0', 'h', '2000-01-01T00:00:00Z', 'running')",
            [],
        )
        .unwrap();
    // Every connection closed: the database file alone.
    let before = common::listing(s.dir.path());
    assert!(
        !before
            .iter()
            .any(|(name, ..)| name.starts_with("sluice.db-")),
        "{before:?}"
    );
    let bytes = std::fs::read(&db_path).unwrap();

    let dir = s.dir.path();
    let dbs = db_path.as_os_str();
    let runs = read_only_json(
        dir,
        &["runs".as_ref(), "--db".as_ref(), dbs, "--json".as_ref()],
    );
    let status = |id: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no run {id}: {runs}"))["status"]
            .clone()
    };
    assert_eq!(status(&run_id), "succeeded");
    assert_eq!(status("orphan"), "crashed", "shown as it would be marked");
    let orphan = read_only_json(
        dir,
        &[
            "runs".as_ref(),
            "show".as_ref(),
            "orphan".as_ref(),
            "--db".as_ref(),
            dbs,
            "--json".as_ref(),
        ],
    );
    assert_eq!(orphan["status"], "crashed");
    assert!(
        orphan["error"].as_str().unwrap().contains("lease expired"),
        "{orphan}"
    );
    let quarantined = read_only_json(
        dir,
        &[
            "quarantine".as_ref(),
            "list".as_ref(),
            "--db".as_ref(),
            dbs,
            "--json".as_ref(),
        ],
    );
    assert_eq!(quarantined.as_array().unwrap().len(), 10, "{quarantined}");
    let id = quarantined[0]["id"].to_string();
    let shown = read_only_json(
        dir,
        &[
            "quarantine".as_ref(),
            "show".as_ref(),
            id.as_ref(),
            "--db".as_ref(),
            dbs,
            "--json".as_ref(),
        ],
    );
    assert_eq!(shown["errors"][0]["path"], "/amount", "{shown}");
    let drift = read_only_json(
        dir,
        &["drift".as_ref(), "--db".as_ref(), dbs, "--json".as_ref()],
    );
    assert!(
        drift
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/region"),
        "{drift}"
    );
    // A command that writes is refused by the filesystem, in one line.
    let replay = common::sluice_read_only(
        dir,
        [
            "quarantine".as_ref(),
            "replay".as_ref(),
            "--db".as_ref(),
            dbs,
        ] as [&std::ffi::OsStr; 4],
    );
    assert!(
        !replay.ok && replay.stderr.trim().lines().count() == 1,
        "{replay:?}"
    );
    assert!(
        replay.stderr.contains("cannot be written there"),
        "{}",
        replay.stderr
    );

    assert_eq!(common::listing(dir), before, "no file created or touched");
    assert_eq!(std::fs::read(&db_path).unwrap(), bytes);
    let still: String = db(&db_path)
        .query_row(
            "SELECT status FROM _sluice_runs WHERE id = 'orphan'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(still, "running", "nothing was marked");
}

#[test]
fn a_database_a_writer_has_open_reads_on_a_read_only_filesystem_but_a_wal_without_its_index_does_not(
) {
    require_read_only_mount!();
    let s = Scratch::new();
    let out = misbehave(&s, r#"{"behaviour": "ok", "committed": 2}"#, &[]);
    assert!(out.ok, "{out:?}");
    let db_path = s.path("sluice.db");
    // A writer holds the database open with a commit in its -wal only.
    let writer = db(&db_path);
    writer
        .execute_batch(
            "PRAGMA wal_autocheckpoint = 0; \
             INSERT INTO _sluice_runs (id, connector, connector_version, component_hash, started_at, status) \
             VALUES ('late', 'misbehave', '0.1.0', 'h', '2100-01-01T00:00:00Z', 'succeeded');",
        )
        .unwrap();
    let runs = read_only_json(
        s.dir.path(),
        &[
            "runs".as_ref(),
            "--db".as_ref(),
            db_path.as_os_str(),
            "--json".as_ref(),
        ],
    );
    assert_eq!(
        runs[0]["id"], "late",
        "the commit in the -wal is read: {runs}"
    );
    assert_eq!(runs.as_array().unwrap().len(), 2);

    // A copy of the database and its -wal without the -shm index: the
    // commit cannot be read on a read-only filesystem (reading the file
    // alone would silently miss it).
    let copy = Scratch::new();
    let copied = copy.path("sluice.db");
    std::fs::copy(&db_path, &copied).unwrap();
    std::fs::copy(s.path("sluice.db-wal"), copy.path("sluice.db-wal")).unwrap();
    drop(writer);
    let out = common::sluice_read_only(
        copy.dir.path(),
        ["runs".as_ref(), "--db".as_ref(), copied.as_os_str()] as [&std::ffi::OsStr; 3],
    );
    assert!(!out.ok, "{out:?}");
    let err = out.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}-wal holds changes not yet in the database file",
            copied.display()
        )),
        "{err}"
    );
}

#[test]
fn read_only_commands_of_a_missing_database_say_so_in_one_line_and_create_nothing() {
    let s = Scratch::new();
    let missing = s.path("missing.db");
    let m = missing.as_os_str();
    let commands: [Vec<&std::ffi::OsStr>; 5] = [
        vec!["runs".as_ref(), "--db".as_ref(), m],
        vec![
            "runs".as_ref(),
            "show".as_ref(),
            "x".as_ref(),
            "--db".as_ref(),
            m,
        ],
        vec!["quarantine".as_ref(), "list".as_ref(), "--db".as_ref(), m],
        vec![
            "quarantine".as_ref(),
            "show".as_ref(),
            "1".as_ref(),
            "--db".as_ref(),
            m,
        ],
        vec!["drift".as_ref(), "--db".as_ref(), m],
    ];
    for args in commands {
        let out = sluice(&args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert_eq!(
            out.stderr.trim(),
            format!(
                "error: cannot open database {}: it does not exist",
                missing.display()
            ),
            "{args:?}"
        );
        assert!(
            common::listing(s.dir.path()).is_empty(),
            "{args:?} created a file"
        );
    }
}
