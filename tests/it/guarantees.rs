//! Data guarantees through the CLI: validation and quarantine, schema
//! drift, replay after a schema change, operator edits, full refresh vs
//! incremental.

use crate::common;

use common::{count, db, guest, sluice, Scratch};
use serde_json::{json, Value};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;

fn start(config: ItemsConfig) -> (Running, items::Shared) {
    let (router, state) = items::router(config);
    (Running::start(router, 0).unwrap(), state)
}

fn run_items(s: &Scratch, fx: &Running, config: &Value, extra: &[&str]) -> Value {
    let cfg = s.write("items.json", config.to_string());
    let db = s.path("sluice.db");
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let mut args = vec![
        "run".to_string(),
        guest("items").display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--db".into(),
        db.display().to_string(),
        "--allow-host".into(),
        grant,
        "--json".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = sluice(&args);
    assert!(out.ok, "run failed: {out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

fn cli_json(args: &[&str]) -> Value {
    let out = sluice(args);
    assert!(out.ok, "{args:?}: {out:?}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", out.stdout))
}

#[test]
fn invalid_records_are_quarantined_drift_is_recorded_and_replay_moves_them_after_a_schema_change() {
    let s = Scratch::new();
    let fixture = ItemsConfig {
        total: 1_000,
        wrong_type_every: Some(100), // ids 99, 199, …: amount is a string
        missing_name_every: Some(250), // ids 248, 498, 748, 998: no name
        drift_from: Some(900),       // ids 900..: extra `region`
        ..Default::default()
    };
    let (fx, _state) = start(fixture.clone());
    let config = json!({"base_url": fx.base_url(), "page_size": 300});
    let r = run_items(&s, &fx, &config, &[]);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["records_emitted"], 1_000);
    assert_eq!(
        r["records_quarantined"], 14,
        "10 wrong types + 4 missing names"
    );
    assert_eq!(r["records_valid"], 986);
    assert_eq!(r["records_upserted"], 986);
    assert_eq!(r["streams"]["items"]["quarantined"], 14);
    let drift: Vec<String> = serde_json::from_value(r["drift"].clone()).unwrap();
    assert!(
        drift.contains(&"1 new field in stream items (/region)".to_string()),
        "{drift:?}"
    );
    assert!(drift
        .iter()
        .any(|d| d.starts_with("1 field changed type in stream items (/amount)")));
    assert!(drift
        .iter()
        .any(|d| d.starts_with("1 required field missing in stream items (/name)")));

    let dbp = s.path("sluice.db");
    let dbs = dbp.to_str().unwrap();
    let conn = db(&dbp);
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 986);
    // The drifting field is kept in the record JSON.
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items__items WHERE json_extract(_record, '$.region') IS NOT NULL"
        ),
        100 - 2 // 900..999 less 998 (no name) and 999 (wrong type), quarantined
    );

    // Quarantine: raw input, every error with its path, run, connector.
    let q = cli_json(&["quarantine", "list", "--db", dbs, "--json"]);
    let q = q.as_array().unwrap();
    assert_eq!(q.len(), 14);
    let e99 = q
        .iter()
        .find(|e| e["record"].as_str().unwrap().contains("\"id\":99,"))
        .unwrap();
    assert_eq!(e99["stream"], "items");
    assert_eq!(e99["connector"], "items");
    assert_eq!(e99["connector_version"], "0.1.0");
    assert_eq!(e99["run_id"], r["id"]);
    assert_eq!(e99["errors"][0]["path"], "/amount");
    let raw: Value = serde_json::from_str(e99["record"].as_str().unwrap()).unwrap();
    assert_eq!(raw, items::item(&fixture, 99), "raw input kept exactly");
    let e248 = q
        .iter()
        .find(|e| e["record"].as_str().unwrap().contains("\"id\":248,"))
        .unwrap();
    assert!(
        e248["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("name"),
        "{e248}"
    );
    let shown = sluice(["quarantine", "show", &e99["id"].to_string(), "--db", dbs]);
    assert!(shown.ok && shown.stdout.contains("/amount"), "{shown:?}");

    // Drift events: stream, path, type, first-seen run, sample, count.
    let d = cli_json(&["drift", "--db", dbs, "--json"]);
    let region = d
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/region")
        .unwrap();
    assert_eq!(region["kind"], "new_field");
    assert_eq!(region["observed_type"], "string");
    assert_eq!(
        region["count"], 100,
        "seen on valid and quarantined records alike"
    );
    assert_eq!(region["first_seen_run"], r["id"]);
    assert!(["\"eu\"", "\"us\"", "\"ap\""].contains(&region["sample"].as_str().unwrap()));

    // Replay before any fix: nothing passes, nothing moves.
    let rep = cli_json(&["quarantine", "replay", "--db", dbs, "--json"]);
    assert_eq!(
        (rep["examined"].as_u64(), rep["replayed"].as_u64()),
        (Some(14), Some(0))
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 986);

    // The operator accepts string amounts: the connector now declares the
    // relaxed schema (a run records it), and replay moves those records in.
    let mut schema: Value = serde_json::from_str(
        &cli_json(&["spec", guest("items").to_str().unwrap(), "--json"])["streams"][0]
            ["json_schema"]
            .to_string(),
    )
    .unwrap();
    schema["properties"]["amount"] = json!({"type": ["number", "string"]});
    let relaxed = json!({"base_url": fx.base_url(), "page_size": 300, "schema": schema});
    let r2 = run_items(&s, &fx, &relaxed, &[]);
    assert_eq!(
        r2["records_emitted"], 0,
        "incremental: nothing new upstream"
    );
    let rep = cli_json(&["quarantine", "replay", "--db", dbs, "--json"]);
    assert_eq!(rep["replayed"], 10);
    assert_eq!(rep["still_invalid"], 4);
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 996);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items__items WHERE _run_id LIKE 'replay-%'"
        ),
        10,
        "replayed rows carry the replay id"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM _sluice_quarantine WHERE status = 'replayed'"
        ),
        10
    );
    assert_eq!(count(&conn, "SELECT count(*) FROM _sluice_replays"), 2);

    // The operator fixes one record by hand; replay takes it in.
    let e248_id = e248["id"].as_i64().unwrap();
    let mut fixed = items::item(&fixture, 248);
    fixed["name"] = json!("fixed by hand");
    let fixed_path = s.write("fixed.json", fixed.to_string());
    let out = sluice([
        "quarantine",
        "edit",
        &e248_id.to_string(),
        "--record",
        fixed_path.to_str().unwrap(),
        "--db",
        dbs,
    ]);
    assert!(out.ok, "{out:?}");
    let rep = cli_json(&[
        "quarantine",
        "replay",
        "--db",
        dbs,
        "--id",
        &e248_id.to_string(),
        "--json",
    ]);
    assert_eq!(
        (rep["examined"].as_u64(), rep["replayed"].as_u64()),
        (Some(1), Some(1))
    );
    let name: String = conn
        .query_row("SELECT name FROM items__items WHERE id = 248", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "fixed by hand");
    let audit: (String, String) = conn
        .query_row(
            "SELECT original_record, status FROM _sluice_quarantine WHERE id = ?1",
            [e248_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(!audit.0.contains("fixed by hand") && audit.1 == "replayed");
    // An edit must be a JSON object.
    let bad = s.write("bad.json", "[1,2]");
    let out = sluice([
        "quarantine",
        "edit",
        "1",
        "--record",
        bad.to_str().unwrap(),
        "--db",
        dbs,
    ]);
    assert!(!out.ok && out.stderr.contains("JSON object"), "{out:?}");
}

#[test]
fn full_refresh_removes_rows_that_vanished_upstream_and_incremental_keeps_them() {
    let s = Scratch::new();
    let (fx, state) = start(ItemsConfig {
        total: 500,
        ..Default::default()
    });
    let config = json!({"base_url": fx.base_url(), "page_size": 200});
    run_items(&s, &fx, &config, &[]);
    let conn = db(&s.path("sluice.db"));
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 500);

    // Upstream deletes 20 records and updates 5.
    {
        let mut st = state.lock().unwrap();
        st.config.deleted = (100..120).collect();
        st.config.updated = (300..305).collect();
    }
    let r = run_items(&s, &fx, &config, &[]);
    assert_eq!(
        r["records_emitted"], 5,
        "incremental reads only what changed"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items__items"),
        500,
        "incremental keeps vanished rows"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items__items WHERE version = 1"),
        5
    );

    let r = run_items(&s, &fx, &config, &["--full-refresh"]);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(
        r["records_emitted"], 480,
        "full refresh ignores saved state"
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items__items"),
        480,
        "vanished rows removed"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items__items WHERE id BETWEEN 100 AND 119"
        ),
        0
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items__items WHERE version = 1"),
        5
    );

    // A full refresh that fails removes nothing.
    let bad = json!({"base_url": "http://127.0.0.1:1", "page_size": 200});
    let cfg = s.write("bad.json", bad.to_string());
    let out = sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        s.path("sluice.db").to_str().unwrap(),
        "--full-refresh",
    ]);
    assert!(!out.ok);
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 480);
}

#[test]
fn run_history_has_per_stream_counts_and_show() {
    let s = Scratch::new();
    let (fx, _state) = start(ItemsConfig {
        total: 50,
        wrong_type_every: Some(10),
        ..Default::default()
    });
    let r = run_items(&s, &fx, &json!({"base_url": fx.base_url()}), &[]);
    let dbp = s.path("sluice.db");
    let shown = cli_json(&[
        "runs",
        "show",
        r["id"].as_str().unwrap(),
        "--db",
        dbp.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(shown["status"], "succeeded");
    assert_eq!(
        shown["streams"]["items"],
        json!({"emitted": 50, "valid": 45, "quarantined": 5, "upserted": 45})
    );
    assert_eq!(shown["component_hash"].as_str().unwrap().len(), 64);
    assert!(shown["ended_at"].is_string() && shown["duration_ms"].is_u64());
    let out = sluice(["runs", "show", "nope", "--db", dbp.to_str().unwrap()]);
    assert!(!out.ok && out.stderr.contains("not found"), "{out:?}");
}

#[test]
fn a_full_refresh_keeps_the_rows_of_keys_it_quarantined_and_says_what_it_removed() {
    let s = Scratch::new();
    let (fx, state) = start(ItemsConfig {
        total: 500,
        ..Default::default()
    });
    let config = json!({"base_url": fx.base_url(), "page_size": 200});
    run_items(&s, &fx, &config, &[]);
    let dbp = s.path("sluice.db");
    let conn = db(&dbp);
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 500);

    // Upstream deletes 10 records, and now serves ids 99, 199, … with a
    // string amount: the full refresh quarantines their new revisions.
    {
        let mut st = state.lock().unwrap();
        st.config.deleted = (100..110).collect();
        st.config.wrong_type_every = Some(100);
    }
    let r = run_items(&s, &fx, &config, &["--full-refresh"]);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(
        (
            r["records_emitted"].as_u64(),
            r["records_quarantined"].as_u64()
        ),
        (Some(490), Some(5))
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM items__items"),
        490,
        "the vanished rows are removed, the quarantined keys' rows kept"
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items__items WHERE id % 100 = 99 AND typeof(amount) = 'real'"
        ),
        5,
        "each quarantined key keeps its last good row"
    );
    assert_eq!(r["streams"]["items"]["swept"], 10, "{}", r["streams"]);
    let id = r["id"].as_str().unwrap();
    let shown = sluice(["runs", "show", id, "--db", dbp.to_str().unwrap()]);
    assert!(
        shown.ok
            && shown
                .stdout
                .contains("5 quarantined, 485 upserted, 10 removed by the full refresh"),
        "{shown:?}"
    );

    // The same full refresh again: the five records are seen again and
    // counted on their open quarantine rows, not stored twice; nothing
    // more to remove.
    let r = run_items(&s, &fx, &config, &["--full-refresh"]);
    assert_eq!(r["records_quarantined"], 5, "the run counts what it saw");
    assert_eq!(r["streams"]["items"]["swept"], 0);
    assert_eq!(count(&conn, "SELECT count(*) FROM items__items"), 490);
    let q = cli_json(&[
        "quarantine",
        "list",
        "--db",
        dbp.to_str().unwrap(),
        "--json",
    ]);
    let q = q.as_array().unwrap();
    assert_eq!(q.len(), 5, "{q:?}");
    for e in q {
        assert_eq!(e["seen_count"], 2, "{e}");
        assert_eq!(e["last_seen_run"], r["id"]);
        assert_ne!(e["run_id"], r["id"]);
    }
    // The text summary says what the sweep removed.
    let cfg = s.path("items.json");
    let out = sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        dbp.to_str().unwrap(),
        "--allow-host",
        &format!("127.0.0.1:{}", fx.addr.port()),
        "--full-refresh",
    ]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout
            .contains("removed:  0 rows by the full refresh (items: 0)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        count(
            &conn,
            "SELECT sum(seen_count) FROM _sluice_quarantine WHERE status = 'quarantined'"
        ),
        15
    );
}

#[test]
fn a_replay_never_overwrites_a_row_refreshed_after_the_record_was_quarantined_unless_forced() {
    let s = Scratch::new();
    let fixture = ItemsConfig {
        total: 300,
        wrong_type_every: Some(100), // ids 99, 199, 299: amount is a string
        ..Default::default()
    };
    let (fx, state) = start(fixture.clone());
    let config = json!({"base_url": fx.base_url(), "page_size": 100});
    let r1 = run_items(&s, &fx, &config, &[]);
    assert_eq!(r1["records_quarantined"], 3);
    let dbp = s.path("sluice.db");
    let dbs = dbp.to_str().unwrap();
    let conn = db(&dbp);

    // Upstream fixes item 99 in a newer revision (version 1, a later
    // updated_at); the next incremental run writes it.
    {
        let mut st = state.lock().unwrap();
        st.config.wrong_type_every = None;
        st.config.updated = [99].into();
    }
    let r2 = run_items(&s, &fx, &config, &[]);
    assert_eq!(
        (r2["records_emitted"].as_u64(), r2["records_valid"].as_u64()),
        (Some(1), Some(1))
    );
    let version_of_99 = || -> i64 {
        conn.query_row("SELECT version FROM items__items WHERE id = 99", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(version_of_99(), 1);

    // The operator accepts string amounts (the connector declares the
    // relaxed schema in a run) and replays: the quarantined revision of 99
    // is older than its row, so it is stale and stays in quarantine.
    let mut schema: Value = serde_json::from_str(
        &cli_json(&["spec", guest("items").to_str().unwrap(), "--json"])["streams"][0]
            ["json_schema"]
            .to_string(),
    )
    .unwrap();
    schema["properties"]["amount"] = json!({"type": ["number", "string"]});
    let relaxed = json!({"base_url": fx.base_url(), "page_size": 100, "schema": schema});
    run_items(&s, &fx, &relaxed, &[]);
    let q = cli_json(&["quarantine", "list", "--db", dbs, "--json"]);
    let id99 = q
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["record"].as_str().unwrap().contains("\"id\":99,"))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let rep = cli_json(&["quarantine", "replay", "--db", dbs, "--json"]);
    assert_eq!(
        (
            rep["examined"].as_u64(),
            rep["replayed"].as_u64(),
            rep["stale"].as_u64()
        ),
        (Some(3), Some(2), Some(1)),
        "{rep}"
    );
    assert_eq!(rep["stale_ids"], json!([id99]));
    assert_eq!(version_of_99(), 1, "the newer revision stays");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM items__items WHERE id IN (199, 299) AND _run_id LIKE 'replay-%'"
        ),
        2
    );
    let status: String = conn
        .query_row(
            "SELECT status FROM _sluice_quarantine WHERE id = ?1",
            [id99],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "quarantined");
    assert_eq!(
        count(&conn, "SELECT sum(stale) FROM _sluice_replays"),
        1,
        "the audit counts it"
    );

    // Replayed again without --force: still stale, said in plain text.
    let out = sluice(["quarantine", "replay", "--db", dbs]);
    assert!(out.ok, "{out:?}");
    assert!(
        out.stdout
            .contains("1 examined, 0 replayed into their tables, 0 still invalid, 1 stale"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("--force") && out.stdout.trim_end().ends_with(&format!(": {id99}")),
        "{}",
        out.stdout
    );
    assert_eq!(version_of_99(), 1);

    // --force writes it over the newer row.
    let rep = cli_json(&["quarantine", "replay", "--db", dbs, "--force", "--json"]);
    assert_eq!(
        (
            rep["replayed"].as_u64(),
            rep["stale"].as_u64(),
            rep["forced"].as_bool()
        ),
        (Some(1), Some(0), Some(true)),
        "{rep}"
    );
    assert_eq!(version_of_99(), 0, "forced: the quarantined revision");
    let status: String = conn
        .query_row(
            "SELECT status FROM _sluice_quarantine WHERE id = ?1",
            [id99],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "replayed");
}
