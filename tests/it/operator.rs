//! What an operator chooses per run and per instance: the streams read
//! (`--stream`), each stream's write mode (`--mode`), and the instance's
//! checkpoint state (`sluice state show|set|reset|history`).

use crate::cli::{misbehave, spawn_misbehave, wait_for, LEASED};
use crate::common;

use common::{count, db, sluice, Scratch};

fn raw(stream: &str, records: &[&str]) -> String {
    serde_json::json!({"behaviour": "raw", "stream": stream, "records": records}).to_string()
}

fn has_table(s: &Scratch, name: &str) -> bool {
    count(
        &db(&s.path("sluice.db")),
        &format!("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"),
    ) == 1
}

fn ids(s: &Scratch) -> Vec<i64> {
    db(&s.path("sluice.db"))
        .prepare("SELECT id FROM misbehave__items ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn only_the_selected_streams_are_read_and_unknown_names_are_refused() {
    let s = Scratch::new();
    let out = misbehave(
        &s,
        &raw("loose", &[r#"{"k": 1, "v": "a"}"#]),
        &["--stream", "loose"],
    );
    assert!(out.ok, "{out:?}");
    assert!(has_table(&s, "misbehave__loose"));
    assert!(
        !has_table(&s, "misbehave__items"),
        "a stream the run did not select got a table"
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["selected_streams"], serde_json::json!(["loose"]));

    // A connector that emits to a stream the run did not select fails
    // the run, naming it; nothing of it is stored.
    let out = misbehave(&s, &raw("items", &[r#"{"id": 1}"#]), &["--stream", "loose"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!has_table(&s, "misbehave__items"));

    for (flag, value, what) in [
        ("--stream", "nope", "the run selects stream \"nope\""),
        (
            "--mode",
            "nope=merge",
            "a write mode is set for stream \"nope\"",
        ),
        ("--table", "nope=t", "a table is named for stream \"nope\""),
    ] {
        let out = misbehave(&s, &raw("items", &[]), &[flag, value]);
        assert_eq!(out.code, Some(1), "{flag} {value}: {out:?}");
        assert!(
            out.stderr.contains(what) && out.stderr.contains("\"items\", \"loose\""),
            "{flag} {value}: {}",
            out.stderr
        );
    }
    let out = misbehave(&s, &raw("items", &[]), &["--mode", "items=upsert"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("unknown write mode"), "{}", out.stderr);
}

#[test]
fn a_full_refresh_mode_replaces_one_streams_table_and_merge_keeps_rows() {
    let s = Scratch::new();
    let first = raw("items", &[r#"{"id": 1}"#, r#"{"id": 2}"#, r#"{"id": 3}"#]);
    assert!(misbehave(&s, &first, &[]).ok);
    // Merge (the default, and said explicitly): rows the run did not see
    // stay.
    let second = raw("items", &[r#"{"id": 2, "n": 20}"#]);
    let out = misbehave(&s, &second, &["--mode", "items=merge"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(ids(&s), [1, 2, 3]);
    // Full refresh of `items` only: the rows it did not write go.
    let out = misbehave(&s, &second, &["--mode", "items=full_refresh"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(ids(&s), [2]);
    // The merged table has a key: appending into it is refused, naming
    // the way out; nothing changes.
    let out = misbehave(&s, &second, &["--mode", "items=append"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("appended stream has no key"),
        "{}",
        out.stderr
    );
    assert_eq!(ids(&s), [2]);
}

#[test]
fn an_append_stream_keeps_every_record_as_a_row_and_never_sweeps() {
    let s = Scratch::new();
    let page = raw("items", &[r#"{"id": 1, "n": 1}"#, r#"{"id": 1, "n": 2}"#]);
    let append = ["--mode", "items=append", "--table", "items=log"];
    let out = misbehave(&s, &page, &append);
    assert!(out.ok, "{out:?}");
    let out = misbehave(&s, &page, &append);
    assert!(out.ok, "{out:?}");
    let rows: Vec<(i64, i64)> = db(&s.path("sluice.db"))
        .prepare("SELECT id, n FROM log ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, [(1, 1), (1, 2), (1, 1), (1, 2)], "every record a row");
    // A stream read in full (`loose` has no incremental mode) appends
    // too, and sweeps nothing.
    let loose = raw("loose", &[r#"{"k": 1, "v": "a"}"#]);
    for _ in 0..2 {
        let out = misbehave(
            &s,
            &loose,
            &[
                "--mode",
                "loose=append",
                "--stream",
                "loose",
                "--table",
                "loose=loose_log",
            ],
        );
        assert!(out.ok, "{out:?}");
    }
    assert_eq!(
        count(&db(&s.path("sluice.db")), "SELECT count(*) FROM loose_log"),
        2
    );
    // Appending and replacing at once is a contradiction.
    let out = misbehave(
        &s,
        &page,
        &[
            "--mode",
            "items=append",
            "--table",
            "items=log",
            "--full-refresh",
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("choose one"), "{}", out.stderr);
    // Merge into the appended (keyless) table is refused the same way.
    let out = misbehave(&s, &page, &["--table", "items=log", "--stream", "items"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("exists with primary key ()"),
        "{}",
        out.stderr
    );
}

/// `sluice state …` on `s`'s database.
fn state(s: &Scratch, args: &[&str]) -> common::Out {
    let db = s.path("sluice.db");
    let mut all = vec!["state"];
    all.extend(args);
    all.extend(["--db", db.to_str().unwrap()]);
    sluice(all)
}

fn state_json(s: &Scratch, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = state(s, &all);
    assert!(out.ok, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn state_is_shown_set_and_reset_under_the_lease_and_every_change_is_audited() {
    let s = Scratch::new();
    let run = |records: &[&str]| {
        let out = misbehave(&s, &raw("items", records), &[]);
        assert!(out.ok, "{out:?}");
    };
    run(&[r#"{"id": 1}"#, r#"{"id": 2}"#]);
    let shown = state_json(&s, &["show", "misbehave"]);
    assert_eq!(shown[0]["stream"], "items", "{shown}");
    assert_eq!(shown[0]["value"], r#"{"raw":2}"#);
    let before = shown[0]["value"].clone();
    let human = state(&s, &["show", "misbehave"]);
    assert!(
        human.ok && human.stdout.contains(r#"{"raw":2}"#),
        "{human:?}"
    );

    // Bad input changes nothing.
    for (args, why) in [
        (
            vec!["set", "misbehave", "items", "not json"],
            "must be JSON",
        ),
        (vec!["set", "bad name", "items", "{}"], "instance"),
        (vec!["show", "misbehave", "nope"], "no state for stream"),
    ] {
        let out = state(&s, &args);
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
    }
    assert_eq!(state_json(&s, &["show", "misbehave"])[0]["value"], before);

    // Set: the connector reads it on its next run.
    let set = state_json(&s, &["set", "misbehave", "items", r#"{"cursor": 7}"#]);
    assert_eq!(set[0]["action"], "set");
    assert_eq!(set[0]["old_value"], before);
    let shown = state_json(&s, &["show", "misbehave", "items"]);
    assert_eq!(shown[0]["value"], r#"{"cursor": 7}"#);
    assert!(
        shown[0]["run_id"]
            .as_str()
            .unwrap()
            .starts_with("operator:"),
        "{shown}"
    );

    // Reset asks first; with nobody at a terminal to say yes it does
    // nothing.
    let out = state(&s, &["reset", "misbehave"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(
        state_json(&s, &["show", "misbehave"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let reset = state_json(&s, &["reset", "misbehave", "--yes"]);
    assert_eq!(reset[0]["action"], "reset");
    assert_eq!(reset[0]["new_value"], serde_json::Value::Null);
    assert!(state_json(&s, &["show", "misbehave"])
        .as_array()
        .unwrap()
        .is_empty());
    let again = state(&s, &["reset", "misbehave", "--yes"]);
    assert!(
        again.ok && again.stderr.contains("nothing to reset"),
        "{again:?}"
    );

    // The audit, newest first, names who changed what.
    let history = state_json(&s, &["history", "misbehave"]);
    let actions: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["reset", "set"], "{history}");
    assert!(
        history[0]["by"].as_str().unwrap().contains('@'),
        "{history}"
    );
    assert_eq!(history[1]["new_value"], r#"{"cursor": 7}"#);

    // While a run holds the instance, its state is not changed.
    let looping = r#"{"behaviour": "loop", "committed": 3}"#;
    let child = spawn_misbehave(&s, looping, &["--timeout", "4", "--fuel", "10000000000000"]);
    wait_for(&s, LEASED, 1);
    let busy = state(&s, &["set", "misbehave", "items", "{}"]);
    assert_eq!(busy.code, Some(75), "{busy:?}");
    assert!(busy.stderr.contains("is busy"), "{}", busy.stderr);
    let _ = child.wait_with_output().unwrap();
    assert_eq!(
        state_json(&s, &["history", "misbehave"])
            .as_array()
            .unwrap()
            .len(),
        2,
        "the refused change was audited"
    );
}
