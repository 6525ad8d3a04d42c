//! One destination test suite, run against every backend through the
//! `Destination` and `RunLog` traits only: SQLite (a temp file) and
//! Postgres (a throwaway cluster that `scripts/pg-cluster.sh` starts on
//! 127.0.0.1 and stops). Each case gets a fresh store: a new SQLite file,
//! or a new Postgres schema in the one cluster.

use sluice_fixture::postgres::Cluster;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::destination::{
    CommitRequest, CommitStats, Pending, QuarantineFilter, QuarantinedRecord, ReplayPlan, Store,
    StoreError,
};
use sluice_core::row::{Row, StreamTable};
use sluice_core::run::{RunRecord, RunStatus};
use sluice_core::schema::{DriftKind, DriftObservation, RecordError};
use sluice_core::value::Value;
use sluice_store::{PostgresStore, SqliteStore};

/// A lease that lasts the whole test.
const LONG_TTL: Duration = Duration::from_secs(3600);
/// A lease that has expired as soon as it is taken (no sleeping, no timed
/// assertions: `expires = now + 0` is never after any later `now`).
const EXPIRED_TTL: Duration = Duration::ZERO;

/// The instance (connector) and run every case commits as.
const INSTANCE: &str = "c";
const RUN: &str = "r";

type Case = fn(&mut dyn Store);

/// Every case, by name.
const CASES: &[(&str, Case)] = &[
    (
        "tables_are_made_claimed_and_widened",
        tables_are_made_claimed_and_widened,
    ),
    (
        "records_and_state_commit_together_or_not_at_all",
        records_and_state_commit_together_or_not_at_all,
    ),
    (
        "upserts_by_key_keep_the_last_record",
        upserts_by_key_keep_the_last_record,
    ),
    (
        "values_of_every_kind_round_trip",
        values_of_every_kind_round_trip,
    ),
    ("quarantine_drift_and_replay", quarantine_drift_and_replay),
    (
        "leases_are_claimed_renewed_and_fence_commits",
        leases_are_claimed_renewed_and_fence_commits,
    ),
    (
        "runs_are_inserted_updated_listed_and_crashed",
        runs_are_inserted_updated_listed_and_crashed,
    ),
    (
        "full_refresh_sweeps_and_scans",
        full_refresh_sweeps_and_scans,
    ),
    (
        "full_refresh_never_sweeps_a_key_the_run_quarantined",
        full_refresh_never_sweeps_a_key_the_run_quarantined,
    ),
    (
        "a_replay_never_overwrites_a_newer_row_unless_forced",
        a_replay_never_overwrites_a_newer_row_unless_forced,
    ),
    (
        "the_same_open_record_is_quarantined_once",
        the_same_open_record_is_quarantined_once,
    ),
    (
        "hostile_identifiers_are_quoted_and_kept_apart",
        hostile_identifiers_are_quoted_and_kept_apart,
    ),
    (
        "schedules_are_kept_per_instance_and_replaced",
        schedules_are_kept_per_instance_and_replaced,
    ),
    (
        "run_log_lines_are_kept_per_run_in_order",
        run_log_lines_are_kept_per_run_in_order,
    ),
    (
        "runs_are_filtered_and_paged_by_the_store",
        runs_are_filtered_and_paged_by_the_store,
    ),
    (
        "alert_states_are_replaced_and_their_events_kept_in_order",
        alert_states_are_replaced_and_their_events_kept_in_order,
    ),
];

/// Run every case, each on a store from `fresh` (given the case's name).
fn run_suite(mut fresh: impl FnMut(&str) -> Box<dyn Store>) {
    for (name, case) in CASES {
        eprintln!("case {name}");
        let mut store = fresh(name);
        case(store.as_mut());
    }
}

#[test]
fn sqlite_passes_the_destination_suite() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(|name| Box::new(SqliteStore::open(&dir.path().join(format!("{name}.db"))).unwrap()));
}

/// Every Postgres test, on one cluster: `initdb` is most of their time
/// (about 1 s on an idle machine), so it happens once.
#[test]
fn postgres_passes_the_destination_suite() {
    let cluster = Cluster::start();
    eprintln!("errors name the backend and never the password");
    errors_name_the_backend_and_never_the_password(&cluster);
    eprintln!("the store serves runs from the writer thread");
    serves_runs_from_the_writer_thread(&cluster);
    eprintln!("a schema of an older Sluice is migrated");
    a_schema_of_an_older_sluice_is_migrated(&cluster);
    let mut first = true;
    run_suite(|name| {
        // The first case in the default schema, the others each in their
        // own (a name that needs quoting).
        let schema = if std::mem::take(&mut first) {
            sluice_store::postgres::DEFAULT_SCHEMA.to_string()
        } else {
            format!("Case \"{name}\"")
        };
        Box::new(PostgresStore::connect(&cluster.url, &schema).unwrap())
    });
}

fn errors_name_the_backend_and_never_the_password(cluster: &Cluster) {
    // The trust cluster takes any password: a wrong database shows the
    // error path instead.
    let url = cluster
        .url
        .replace("sluice@", "sluice:hunter2-secret@")
        .replace("/postgres", "/no_such_db");
    let err = PostgresStore::connect(&url, "public").err().unwrap();
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{shown}");
    assert!(shown.contains("no_such_db"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");

    let mut store = PostgresStore::connect(&cluster.url, "public").unwrap();
    let long = "t".repeat(sluice_store::postgres::MAX_IDENTIFIER_LEN + 1);
    let table = StreamTable::from_spec("t", SCHEMA, &["id".into()])
        .unwrap()
        .in_table(long);
    let err = sluice_core::destination::Destination::ensure_table(&mut store, &table).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

fn serves_runs_from_the_writer_thread(cluster: &Cluster) {
    // The synchronous client blocks on a runtime of its own: it is
    // connected outside any tokio runtime and then called only from the
    // writer's std thread, while the runs are async tasks.
    let mut store = PostgresStore::connect(&cluster.url, "writer").unwrap();
    let t = table("t", SCHEMA, &["id"]);
    sluice_core::destination::Destination::ensure_table(&mut store, &t).unwrap();
    hold_lease(&mut store);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = sluice_store::WriterHandle::spawn(Box::new(store));
        let writer = handle.writer.clone();
        let run: Arc<str> = RUN.into();
        writer
            .append(
                run.clone(),
                batch(&t, vec![row(&t, r#"{"id":1,"text":"a"}"#)]),
            )
            .await
            .unwrap();
        let stats = writer
            .commit(sluice_store::Commit {
                run_id: run,
                connector: INSTANCE.into(),
                connector_version: "1".into(),
                state: Some(("t".into(), "s1".into())),
                sweep: vec![],
            })
            .await
            .unwrap();
        assert_eq!(stats.upserted, 1);
        let state = writer
            .call(|s| s.get_state(INSTANCE, "t"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.as_deref(), Some("s1"));
        drop(writer);
        handle.close().await;
    });
}

fn a_schema_of_an_older_sluice_is_migrated(cluster: &Cluster) {
    // The quarantine and replay tables as first released (no key, hash,
    // seen counts or stale count), with one open record.
    let mut client = postgres::Client::connect(&cluster.url, postgres::NoTls).unwrap();
    client
        .batch_execute(
            "CREATE SCHEMA old;
             CREATE TABLE old._sluice_quarantine (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             run_id TEXT NOT NULL, connector TEXT NOT NULL, connector_version TEXT NOT NULL, \
             stream TEXT NOT NULL, record TEXT NOT NULL, errors TEXT NOT NULL, \
             quarantined_at TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'quarantined', \
             replay_id TEXT, original_record TEXT);
             CREATE TABLE old._sluice_replays (id TEXT PRIMARY KEY, at TEXT NOT NULL, \
             examined BIGINT NOT NULL, replayed BIGINT NOT NULL, still_invalid BIGINT NOT NULL);
             INSERT INTO old._sluice_quarantine (run_id, connector, connector_version, stream, record, \
             errors, quarantined_at) VALUES ('old', 'c', '1', 't', '{\"id\":1,\"text\":1}', '[]', \
             '2026-01-01T00:00:00.000Z');",
        )
        .unwrap();
    let mut store = PostgresStore::connect(&cluster.url, "old").unwrap();
    let store: &mut dyn Store = &mut store;
    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].seen_count, q[0].last_seen_run.as_str()), (1, "old"));
    assert_eq!(q[0].last_seen_at, "2026-01-01T00:00:00.000Z");
    // The old open row is found again by the record.
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    commit(
        store,
        &quarantine(vec![bad(&t, r#"{"id":1,"text":1}"#)]),
        None,
        &[],
    )
    .unwrap();
    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].seen_count, q[0].last_seen_run.as_str()), (2, RUN));
    store
        .apply_replay(&ReplayPlan {
            replay_id: "rp".into(),
            ..ReplayPlan::default()
        })
        .unwrap();
    let stale: i64 = client
        .query_one("SELECT stale FROM old._sluice_replays WHERE id = 'rp'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stale, 0);
    // Connecting again changes nothing more.
    drop(PostgresStore::connect(&cluster.url, "old").unwrap());
    let cols: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'old' \
             AND table_name = '_sluice_quarantine'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cols, 16);
}

// ---- helpers (traits only) ----

const SCHEMA: &str = r#"{"properties":{"id":{"type":"integer"},"text":{"type":"string"}}}"#;

fn table(name: &str, schema: &str, pk: &[&str]) -> Arc<StreamTable> {
    let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
    Arc::new(StreamTable::from_spec(name, schema, &pk).unwrap())
}

fn row(t: &StreamTable, json: &str) -> Row {
    t.row(json.to_string()).unwrap()
}

/// Take the lease run `RUN` of `INSTANCE` commits under.
fn hold_lease(store: &mut dyn Store) {
    assert_eq!(
        store
            .claim_lease(INSTANCE, RUN, "here:1", LONG_TTL)
            .unwrap(),
        None
    );
}

fn commit(
    store: &mut dyn Store,
    pending: &Pending,
    state: Option<(&str, &str)>,
    sweep: &[Arc<StreamTable>],
) -> Result<CommitStats, StoreError> {
    commit_as(store, RUN, pending, state, sweep)
}

fn commit_as(
    store: &mut dyn Store,
    run_id: &str,
    pending: &Pending,
    state: Option<(&str, &str)>,
    sweep: &[Arc<StreamTable>],
) -> Result<CommitStats, StoreError> {
    store.commit(&CommitRequest {
        run_id,
        connector: INSTANCE,
        connector_version: "1",
        pending,
        state,
        sweep,
    })
}

fn batch(t: &Arc<StreamTable>, rows: Vec<Row>) -> Pending {
    Pending {
        batches: vec![(t.clone(), rows)],
        ..Pending::default()
    }
}

/// `table`'s rows as (column → value) maps, sorted, with the `_record`
/// column parsed (Postgres keeps it as jsonb, SQLite as the raw text).
fn rows_of(store: &mut dyn Store, table: &str) -> Vec<Vec<(String, Value)>> {
    let scan = store.scan(table).unwrap().expect("the table exists");
    let mut rows: Vec<Vec<(String, Value)>> = scan
        .rows
        .into_iter()
        .map(|r| {
            scan.columns
                .iter()
                .cloned()
                .zip(r)
                .filter(|(c, _)| c != "_synced_at")
                .map(|(c, v)| match (c.as_str(), v) {
                    ("_record", Value::Text(t)) => {
                        let j: serde_json::Value = serde_json::from_str(&t).unwrap();
                        (c, Value::Text(j.to_string()))
                    }
                    (_, v) => (c, v),
                })
                .collect()
        })
        .collect();
    rows.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    rows
}

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn kv(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(c, v)| (c.to_string(), v.clone()))
        .collect()
}

// ---- the cases ----

/// Table and column names come from untrusted connectors: SQL in them is
/// text, reserved words work, names that differ only in case are two
/// tables and two columns or refused (SQLite's names ignore case), never
/// merged, and a name the backend cannot keep whole is refused, never cut.
fn hostile_identifiers_are_quoted_and_kept_apart(store: &mut dyn Store) {
    const HOSTILE: &str = r#"{"properties":{"id":{"type":"integer"},"a\"; DROP TABLE x;--":{"type":"string"},"select":{"type":"string"}}}"#;
    hold_lease(store);
    let write = |store: &mut dyn Store, t: &Arc<StreamTable>, record: &str| {
        commit(store, &batch(t, vec![row(t, record)]), None, &[]).map(|s| s.upserted)
    };
    let names = ["a\"; DROP TABLE x;--", "select", "x"];
    for (i, name) in names.iter().enumerate() {
        let t = Arc::new(
            (*table("s", HOSTILE, &["id"]))
                .clone()
                .in_table(name.to_string()),
        );
        store.ensure_table(&t).unwrap();
        let record = serde_json::json!({"id": i, "a\"; DROP TABLE x;--": "drop", "select": "sel"});
        assert_eq!(write(store, &t, &record.to_string()).unwrap(), 1, "{name}");
    }
    for (i, name) in names.iter().enumerate() {
        let rows = rows_of(store, name);
        assert_eq!(rows.len(), 1, "{name}: one row, its own");
        let get = |col: &str| {
            rows[0]
                .iter()
                .find(|(c, _)| c == col)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("id"), Some(int(i as i64)), "{name}");
        assert_eq!(get("a\"; DROP TABLE x;--"), Some(text("drop")));
        assert_eq!(get("select"), Some(text("sel")));
    }

    // Tables whose names differ only in case: apart, or the second refused.
    let upper = Arc::new(
        (*table("s", SCHEMA, &["id"]))
            .clone()
            .in_table("Items".into()),
    );
    let lower = Arc::new(
        (*table("s", SCHEMA, &["id"]))
            .clone()
            .in_table("items".into()),
    );
    store.ensure_table(&upper).unwrap();
    write(store, &upper, r#"{"id":1,"text":"upper"}"#).unwrap();
    match store.ensure_table(&lower) {
        Ok(()) => {
            write(store, &lower, r#"{"id":2,"text":"lower"}"#).unwrap();
            assert_eq!(rows_of(store, "items").len(), 1, "items is not Items");
        }
        Err(e) => assert!(matches!(e, StoreError::Invalid(_)), "{e}"),
    }
    assert_eq!(
        rows_of(store, "Items").len(),
        1,
        "Items kept its own row only"
    );
    // Columns whose names differ only in case: both kept, or refused.
    const CASES: &str = r#"{"properties":{"id":{"type":"integer"},"Name":{"type":"string"},"name":{"type":"string"}}}"#;
    let cased = Arc::new(
        (*table("s", CASES, &["id"]))
            .clone()
            .in_table("cased".into()),
    );
    match store.ensure_table(&cased) {
        Ok(()) => {
            write(store, &cased, r#"{"id":1,"Name":"upper","name":"lower"}"#).unwrap();
            let rows = rows_of(store, "cased");
            let get = |col: &str| {
                rows[0]
                    .iter()
                    .find(|(c, _)| c == col)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(
                (get("Name"), get("name")),
                (Some(text("upper")), Some(text("lower")))
            );
        }
        Err(e) => assert!(matches!(e, StoreError::InvalidStream { .. }), "{e}"),
    }

    // 63 bytes (PostgreSQL's limit) is a name; 64 is refused by a backend
    // that would cut it, and kept whole by one that would not.
    let at_limit = "t".repeat(63);
    let t = Arc::new(
        (*table("s", SCHEMA, &["id"]))
            .clone()
            .in_table(at_limit.clone()),
    );
    store.ensure_table(&t).unwrap();
    write(store, &t, r#"{"id":1,"text":"a"}"#).unwrap();
    assert_eq!(rows_of(store, &at_limit).len(), 1);
    let over = "t".repeat(64);
    let t = Arc::new(
        (*table("s", SCHEMA, &["id"]))
            .clone()
            .in_table(over.clone()),
    );
    match store.ensure_table(&t) {
        Err(StoreError::Invalid(_)) => {}
        Err(e) => panic!("a 64-byte name: {e}"),
        Ok(()) => {
            write(store, &t, r#"{"id":2,"text":"b"}"#).unwrap();
            assert_eq!(rows_of(store, &over).len(), 1, "kept whole");
        }
    }
    assert_eq!(rows_of(store, &at_limit).len(), 1, "and apart");
}

fn tables_are_made_claimed_and_widened(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    assert!(store.scan("t").unwrap().is_none());
    store.ensure_table(&t).unwrap();
    store.ensure_table(&t).unwrap(); // idempotent
    assert_eq!(store.scan("t").unwrap().unwrap().rows.len(), 0);

    // A table nobody claimed that exists is foreign.
    let err = store.claim_table("a", &t).unwrap_err();
    assert!(matches!(err, StoreError::TableForeign { .. }), "{err}");

    let owned = Arc::new((*t).clone().in_table("a__t".into()));
    store.claim_table("a", &owned).unwrap();
    store.claim_table("a", &owned).unwrap(); // idempotent
    assert_eq!(store.table_of("a", "t").unwrap().as_deref(), Some("a__t"));
    assert_eq!(store.table_of("b", "t").unwrap(), None);
    let err = store.claim_table("b", &owned).unwrap_err();
    assert!(
        matches!(&err, StoreError::TableTaken { owner, .. } if owner == "a"),
        "{err}"
    );
    // The instance's stream moves to another table: the new claim wins.
    let moved = Arc::new((*t).clone().in_table("a__t2".into()));
    store.claim_table("a", &moved).unwrap();
    assert_eq!(store.table_of("a", "t").unwrap().as_deref(), Some("a__t2"));

    // Another key for an existing table is refused.
    let other_key = table("t", SCHEMA, &["text"]);
    let err = store.ensure_table(&other_key).unwrap_err();
    assert!(
        matches!(err, StoreError::PrimaryKeyMismatch { .. }),
        "{err}"
    );

    // A property the stream gained becomes a column.
    let wider = table(
        "t",
        r#"{"properties":{"id":{"type":"integer"},"text":{"type":"string"},"more":{"type":"number"}}}"#,
        &["id"],
    );
    store.ensure_table(&wider).unwrap();
    hold_lease(store);
    commit(
        store,
        &batch(
            &wider,
            vec![row(&wider, r#"{"id":1,"more":2.5,"text":"a"}"#)],
        ),
        None,
        &[],
    )
    .unwrap();
    let scan = store.scan("t").unwrap().unwrap();
    assert!(
        scan.columns.iter().any(|c| c == "more"),
        "{:?}",
        scan.columns
    );
    let got = rows_of(store, "t");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].contains(&("more".into(), Value::Real(2.5))),
        "{got:?}"
    );
}

fn records_and_state_commit_together_or_not_at_all(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    assert_eq!(store.get_state(INSTANCE, "t").unwrap(), None);
    let stats = commit(
        store,
        &batch(
            &t,
            vec![
                row(&t, r#"{"id":1,"text":"a"}"#),
                row(&t, r#"{"id":2,"text":"b"}"#),
            ],
        ),
        Some(("t", r#"{"cursor":2}"#)),
        &[],
    )
    .unwrap();
    assert_eq!(stats.upserted, 2);
    assert_eq!(stats.upserted_by_stream.get("t"), Some(&2));
    assert_eq!(
        store.get_state(INSTANCE, "t").unwrap().as_deref(),
        Some(r#"{"cursor":2}"#)
    );

    // A commit that fails part-way stores nothing of itself: neither the
    // good row before the bad one nor the state.
    let bad = Row {
        values: vec![int(4)],
        raw: "{}".into(),
    };
    let err = commit(
        store,
        &batch(&t, vec![row(&t, r#"{"id":3,"text":"c"}"#), bad]),
        Some(("t", r#"{"cursor":4}"#)),
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("1 values for 2 columns"), "{err}");
    assert_eq!(rows_of(store, "t").len(), 2);
    assert_eq!(
        store.get_state(INSTANCE, "t").unwrap().as_deref(),
        Some(r#"{"cursor":2}"#)
    );
}

fn upserts_by_key_keep_the_last_record(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    // One key three times in one commit (one batch), and a second batch of
    // the same table after another table's.
    let u = table("u", SCHEMA, &[]);
    store.ensure_table(&u).unwrap();
    let pending = Pending {
        batches: vec![
            (
                t.clone(),
                vec![
                    row(&t, r#"{"id":1,"text":"first"}"#),
                    row(&t, r#"{"id":2,"text":"other"}"#),
                    row(&t, r#"{"id":1,"text":"second"}"#),
                    row(&t, r#"{"id":1,"text":"third"}"#),
                ],
            ),
            (
                u.clone(),
                vec![row(&u, r#"{"id":9}"#), row(&u, r#"{"id":9}"#)],
            ),
            (t.clone(), vec![row(&t, r#"{"id":2,"text":"later"}"#)]),
        ],
        ..Pending::default()
    };
    let stats = commit(store, &pending, None, &[]).unwrap();
    assert_eq!(stats.upserted, 7);
    assert_eq!(stats.upserted_by_stream.get("t"), Some(&5));
    assert_eq!(
        rows_of(store, "t"),
        vec![
            kv(&[
                ("id", int(1)),
                ("text", text("third")),
                ("_record", text(r#"{"id":1,"text":"third"}"#)),
                ("_run_id", text(RUN)),
            ]),
            kv(&[
                ("id", int(2)),
                ("text", text("later")),
                ("_record", text(r#"{"id":2,"text":"later"}"#)),
                ("_run_id", text(RUN)),
            ]),
        ]
    );
    // A table without a key keeps every record.
    assert_eq!(rows_of(store, "u").len(), 2);
    // And across commits the later one wins.
    commit(
        store,
        &batch(&t, vec![row(&t, r#"{"id":1,"text":"fourth"}"#)]),
        None,
        &[],
    )
    .unwrap();
    let got = rows_of(store, "t");
    assert_eq!(got.len(), 2);
    assert!(got[0].contains(&("text".into(), text("fourth"))), "{got:?}");
}

fn values_of_every_kind_round_trip(store: &mut dyn Store) {
    let t = table(
        "kinds",
        r#"{"properties":{"b":{"type":"boolean"},"i":{"type":"integer"},"j":{"type":"object"},
            "k":{"type":"string"},"n":{"type":["number","null"]},"s":{"type":"string"},"x":{}}}"#,
        &["k", "i"],
    );
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    let rec = r#"{"b":true,"i":-9223372036854775808,"j":{"a":[1,"two",null]},"k":"key \"quoted\"","n":1.5,"s":"ünïcødé ☃","x":7}"#;
    let nulls = r#"{"i":1,"k":"k2"}"#;
    commit(
        store,
        &batch(&t, vec![row(&t, rec), row(&t, nulls)]),
        None,
        &[],
    )
    .unwrap();
    let got = rows_of(store, "kinds");
    let parse = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .unwrap()
            .to_string()
    };
    let json = |v: &Value| match v {
        Value::Text(t) => parse(t),
        other => panic!("not JSON text: {other:?}"),
    };
    let full = got
        .iter()
        .find(|r| r.contains(&("k".into(), text("key \"quoted\""))))
        .unwrap();
    let col = |r: &Vec<(String, Value)>, c: &str| r.iter().find(|(n, _)| n == c).unwrap().1.clone();
    assert_eq!(col(full, "b"), int(1), "booleans read back as 0/1");
    assert_eq!(col(full, "i"), int(i64::MIN));
    assert_eq!(json(&col(full, "j")), parse(r#"{"a":[1,"two",null]}"#));
    assert_eq!(col(full, "n"), Value::Real(1.5));
    assert_eq!(col(full, "s"), text("ünïcødé ☃"));
    assert_eq!(json(&col(full, "x")), "7");
    assert_eq!(json(&col(full, "_record")), parse(rec));
    let empty = got
        .iter()
        .find(|r| r.contains(&("k".into(), text("k2"))))
        .unwrap();
    for c in ["b", "j", "n", "s", "x"] {
        assert_eq!(col(empty, c), Value::Null, "{c}");
    }
}

fn quarantine_drift_and_replay(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    let drift = |count| DriftObservation {
        stream: "t".into(),
        path: "/extra".into(),
        kind: DriftKind::NewField,
        observed_type: "string".into(),
        sample: "\"s\"".into(),
        count,
    };
    let mut pending = batch(&t, vec![row(&t, r#"{"id":1,"text":"ok"}"#)]);
    pending.quarantine = vec![
        QuarantinedRecord {
            stream: "t".into(),
            record: r#"{"id":"x"}"#.into(),
            errors: vec![RecordError {
                path: "/id".into(),
                message: "not an integer".into(),
            }],
            key: None,
        },
        QuarantinedRecord {
            stream: "t".into(),
            record: r#"{"id":"y"}"#.into(),
            errors: vec![],
            key: None,
        },
    ];
    pending.drift.add(drift(2));
    let stats = commit(store, &pending, None, &[]).unwrap();
    assert_eq!((stats.upserted, stats.quarantined), (1, 2));
    // A second commit's drift of the same path adds to the count.
    let mut more = Pending::default();
    more.drift.add(drift(3));
    commit(store, &more, None, &[]).unwrap();

    let events = store.list_drift(Some(INSTANCE), Some("t")).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0].count,
            events[0].kind.as_str(),
            events[0].path.as_str()
        ),
        (5, "new_field", "/extra")
    );
    assert_eq!(events[0].first_seen_run, RUN);
    assert!(store.list_drift(Some("other"), None).unwrap().is_empty());

    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].record, r#"{"id":"x"}"#);
    assert_eq!(q[0].errors[0].path, "/id");
    assert_eq!(q[0].status, "quarantined");
    assert!(q[0].id < q[1].id);
    let only = store
        .list_quarantine(&QuarantineFilter {
            ids: vec![q[1].id],
            ..QuarantineFilter::default()
        })
        .unwrap();
    assert_eq!(only.len(), 1);

    // Edit one, replay it (accepted) and the other (still invalid).
    assert!(store.edit_quarantined(q[0].id, "[1]").is_err());
    store
        .edit_quarantined(q[0].id, r#"{"id":5,"text":"fixed"}"#)
        .unwrap();
    let err = store.edit_quarantined(i64::MAX, "{}").unwrap_err();
    assert!(matches!(err, StoreError::QuarantineNotFound(_)), "{err}");
    store
        .apply_replay(&ReplayPlan {
            replay_id: "rp".into(),
            accepted: vec![(q[0].id, t.clone(), row(&t, r#"{"id":5,"text":"fixed"}"#))],
            rejected: vec![(
                q[1].id,
                vec![RecordError {
                    path: "/id".into(),
                    message: "still not an integer".into(),
                }],
            )],
            force: false,
        })
        .unwrap();
    let all = store
        .list_quarantine(&QuarantineFilter {
            all: true,
            connector: Some(INSTANCE.into()),
            stream: Some("t".into()),
            ..QuarantineFilter::default()
        })
        .unwrap();
    assert_eq!(all[0].status, "replayed");
    assert_eq!(all[0].replay_id.as_deref(), Some("rp"));
    assert_eq!(all[0].original_record.as_deref(), Some(r#"{"id":"x"}"#));
    assert_eq!(all[1].status, "quarantined");
    assert_eq!(all[1].errors[0].message, "still not an integer");
    assert_eq!(
        store
            .list_quarantine(&QuarantineFilter::default())
            .unwrap()
            .len(),
        1
    );
    let got = rows_of(store, "t");
    assert!(
        got.contains(&kv(&[
            ("id", int(5)),
            ("text", text("fixed")),
            ("_record", text(r#"{"id":5,"text":"fixed"}"#)),
            ("_run_id", text("rp")),
        ])),
        "{got:?}"
    );
}

fn leases_are_claimed_renewed_and_fence_commits(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    // A live lease is refused, and its holder named.
    let held = store
        .claim_lease(INSTANCE, "r2", "elsewhere:7", LONG_TTL)
        .unwrap();
    assert_eq!(
        held.map(|h| (h.run_id, h.holder)),
        Some((RUN.into(), "here:1".into()))
    );
    // The holder may claim again (idempotent) and renew; others may not.
    assert_eq!(
        store
            .claim_lease(INSTANCE, RUN, "here:1", LONG_TTL)
            .unwrap(),
        None
    );
    assert!(store.renew_lease(INSTANCE, RUN, LONG_TTL).unwrap());
    assert!(!store.renew_lease(INSTANCE, "r2", LONG_TTL).unwrap());
    // Let it lapse: renewed with no time left, it is expired at once ...
    assert!(store.renew_lease(INSTANCE, RUN, EXPIRED_TTL).unwrap());
    // ... and taken over.
    assert_eq!(
        store
            .claim_lease(INSTANCE, "r2", "elsewhere:7", LONG_TTL)
            .unwrap(),
        None
    );
    // The old holder's commit is refused whole.
    let err = commit(
        store,
        &batch(&t, vec![row(&t, r#"{"id":1,"text":"late"}"#)]),
        Some(("t", "stale")),
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost { instance, run_id } if instance == INSTANCE && run_id == RUN),
        "{err}"
    );
    assert!(rows_of(store, "t").is_empty());
    assert_eq!(store.get_state(INSTANCE, "t").unwrap(), None);
    assert!(!store.renew_lease(INSTANCE, RUN, LONG_TTL).unwrap());
    // The new holder commits.
    commit_as(
        store,
        "r2",
        &batch(&t, vec![row(&t, r#"{"id":1,"text":"new"}"#)]),
        Some(("t", "fresh")),
        &[],
    )
    .unwrap();
    assert_eq!(
        store.get_state(INSTANCE, "t").unwrap().as_deref(),
        Some("fresh")
    );
    // Releasing by a run that does not hold it changes nothing; by the
    // holder, frees it.
    store.release_lease(INSTANCE, RUN).unwrap();
    assert!(store
        .claim_lease(INSTANCE, "r3", "x:1", LONG_TTL)
        .unwrap()
        .is_some());
    store.release_lease(INSTANCE, "r2").unwrap();
    assert_eq!(
        store.claim_lease(INSTANCE, "r3", "x:1", LONG_TTL).unwrap(),
        None
    );
    // Components: the one an instance ran before comes back.
    assert_eq!(
        store.note_component(INSTANCE, "h1", "conn", "1").unwrap(),
        None
    );
    let before = store
        .note_component(INSTANCE, "h2", "conn", "2")
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            before.component_hash.as_str(),
            before.connector_version.as_str()
        ),
        ("h1", "1")
    );
}

fn runs_are_inserted_updated_listed_and_crashed(store: &mut dyn Store) {
    let mut a = RunRecord::started("run-a", INSTANCE, "1", "hash");
    a.started_at = "2026-01-01T00:00:00.000Z".into();
    let mut b = RunRecord::started("run-b", INSTANCE, "1", "hash");
    b.started_at = "2026-01-02T00:00:00.000Z".into();
    store.insert_run(&a).unwrap();
    store.insert_run(&b).unwrap();
    a.status = RunStatus::Succeeded;
    a.ended_at = Some("2026-01-01T00:01:00.000Z".into());
    a.duration_ms = Some(60_000);
    a.records_emitted = 10;
    a.records_upserted = 9;
    a.records_quarantined = 1;
    a.http_bytes = u64::MAX; // saturates, never wraps negative
    a.drift.push("t: /extra new_field".into());
    a.streams.insert(
        "t".into(),
        sluice_core::run::StreamCounts {
            emitted: 10,
            valid: 9,
            quarantined: 1,
            upserted: 9,
            swept: Some(3),
        },
    );
    a.component_change = Some("h0 -> hash".into());
    store.update_run(&a).unwrap();
    let got = store.get_run("run-a").unwrap();
    assert_eq!(got.status, RunStatus::Succeeded);
    assert_eq!(got.duration_ms, Some(60_000));
    assert_eq!(
        (
            got.records_emitted,
            got.records_upserted,
            got.records_quarantined
        ),
        (10, 9, 1)
    );
    assert_eq!(got.http_bytes, i64::MAX as u64);
    assert_eq!(got.drift, a.drift);
    assert_eq!(got.streams.get("t").map(|s| s.upserted), Some(9));
    assert_eq!(got.streams.get("t").and_then(|s| s.swept), Some(3));
    assert_eq!(got.component_change.as_deref(), Some("h0 -> hash"));
    let ids: Vec<String> = store
        .list_runs(10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["run-b", "run-a"], "newest first");
    assert_eq!(store.list_runs(1).unwrap().len(), 1);
    let err = store.get_run("nope").unwrap_err();
    assert!(matches!(err, StoreError::RunNotFound(_)), "{err}");
    let err = store
        .update_run(&RunRecord::started("nope", INSTANCE, "1", "h"))
        .unwrap_err();
    assert!(matches!(err, StoreError::RunNotFound(_)), "{err}");

    // A running run is alive while it holds a live lease.
    assert_eq!(
        store
            .claim_lease(INSTANCE, "run-b", "elsewhere:1", LONG_TTL)
            .unwrap(),
        None
    );
    store
        .insert_run(&RunRecord::started("orphan", INSTANCE, "1", "h"))
        .unwrap();
    assert_eq!(
        store.mark_crashed().unwrap(),
        1,
        "only the run without a lease"
    );
    assert_eq!(store.get_run("run-b").unwrap().status, RunStatus::Running);
    assert_eq!(store.get_run("orphan").unwrap().status, RunStatus::Crashed);
    assert!(store.renew_lease(INSTANCE, "run-b", EXPIRED_TTL).unwrap());
    assert_eq!(store.mark_crashed().unwrap(), 1);
    let r = store.get_run("run-b").unwrap();
    assert_eq!(r.status, RunStatus::Crashed);
    assert!(r.error.unwrap().contains("lease expired"));
    // Streams declared are remembered.
    let def = sluice_core::destination::StreamDef {
        connector: INSTANCE.into(),
        stream: "t".into(),
        connector_version: "1".into(),
        json_schema: SCHEMA.into(),
        primary_key: vec!["id".into()],
    };
    store.record_streams(std::slice::from_ref(&def)).unwrap();
    let got = store.stream_def(INSTANCE, "t").unwrap().unwrap();
    assert_eq!(
        (got.json_schema, got.primary_key),
        (def.json_schema, def.primary_key)
    );
    assert!(store.stream_def(INSTANCE, "none").unwrap().is_none());
}

fn full_refresh_sweeps_and_scans(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    commit(
        store,
        &batch(
            &t,
            vec![
                row(&t, r#"{"id":1,"text":"a"}"#),
                row(&t, r#"{"id":2,"text":"b"}"#),
            ],
        ),
        None,
        &[],
    )
    .unwrap();
    // A later run (the first's lease lapsed) rewrites key 2 only and
    // sweeps the rest away.
    assert!(store.renew_lease(INSTANCE, RUN, EXPIRED_TTL).unwrap());
    assert_eq!(
        store
            .claim_lease(INSTANCE, "r2", "here:1", LONG_TTL)
            .unwrap(),
        None
    );
    let stats = commit_as(
        store,
        "r2",
        &batch(&t, vec![row(&t, r#"{"id":2,"text":"b2"}"#)]),
        None,
        std::slice::from_ref(&t),
    )
    .unwrap();
    assert_eq!(stats.swept, 1);
    assert_eq!(stats.swept_by_stream.get("t"), Some(&1));
    let scan = store.scan("t").unwrap().unwrap();
    assert_eq!(
        scan.columns,
        ["id", "text", "_record", "_run_id", "_synced_at"]
    );
    assert_eq!(scan.rows.len(), 1);
    assert_eq!(scan.rows[0][..2], [int(2), text("b2")]);
    assert_eq!(scan.rows[0][3], text("r2"));
    assert!(store.scan("missing").unwrap().is_none());
}

/// A record of `t` that failed its checks, with its key as the runner
/// finds it.
fn bad(t: &StreamTable, json: &str) -> QuarantinedRecord {
    QuarantinedRecord {
        stream: t.name.clone(),
        record: json.to_string(),
        errors: vec![RecordError {
            path: "/text".into(),
            message: "not a string".into(),
        }],
        key: t.record_key(json),
    }
}

fn quarantine(records: Vec<QuarantinedRecord>) -> Pending {
    Pending {
        quarantine: records,
        ..Pending::default()
    }
}

/// Hand instance `INSTANCE`'s lease from the run holding it to `next`
/// (the old one lapses, as between two runs).
fn next_run(store: &mut dyn Store, holder: &str, next: &str) {
    assert!(store.renew_lease(INSTANCE, holder, EXPIRED_TTL).unwrap());
    assert_eq!(
        store
            .claim_lease(INSTANCE, next, "here:1", LONG_TTL)
            .unwrap(),
        None
    );
}

/// Wait until the store's clock (RFC 3339, milliseconds) has moved past
/// now, so what is written next is later than what was written before.
/// A wait for a condition, not a timed assertion.
fn next_millisecond() {
    let now = sluice_core::run::now_rfc3339();
    while sluice_core::run::now_rfc3339() == now {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The values of column `col` of `table`, keyed by column `key` (an
/// integer), in key order.
fn column_by_id(store: &mut dyn Store, table: &str, col: &str) -> Vec<(i64, Value)> {
    let scan = store.scan(table).unwrap().unwrap();
    let id = scan.columns.iter().position(|c| c == "id").unwrap();
    let c = scan.columns.iter().position(|c| c == col).unwrap();
    let mut out: Vec<(i64, Value)> = scan
        .rows
        .iter()
        .map(|r| match &r[id] {
            Value::Integer(n) => (*n, r[c].clone()),
            other => panic!("id {other:?}"),
        })
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

fn full_refresh_never_sweeps_a_key_the_run_quarantined(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    // A composite key (a string and an integer), swept alongside.
    let k = table("k", SCHEMA, &["text", "id"]);
    store.ensure_table(&t).unwrap();
    store.ensure_table(&k).unwrap();
    hold_lease(store);
    let rows = |t: &Arc<StreamTable>| -> Vec<Row> {
        (1..=6)
            .map(|i| row(t, &format!(r#"{{"id":{i},"text":"v{i}"}}"#)))
            .collect()
    };
    let mut first = Pending {
        batches: vec![(t.clone(), rows(&t)), (k.clone(), rows(&k))],
        ..Pending::default()
    };
    // Run r1 also quarantined a bad revision of keys 4 and 5.
    first.quarantine = vec![
        bad(&t, r#"{"id":4,"text":4}"#),
        bad(&t, r#"{"id":5,"text":5}"#),
    ];
    commit(store, &first, None, &[]).unwrap();

    // Run r2 refreshes in full. Its first commit writes key 1, and
    // quarantines a new revision of key 2 (a good key, a bad field) and a
    // record without a usable key (a string id: it names no row).
    next_run(store, RUN, "r2");
    let mut p = Pending {
        batches: vec![
            (t.clone(), vec![row(&t, r#"{"id":1,"text":"new1"}"#)]),
            (k.clone(), vec![row(&k, r#"{"id":1,"text":"v1"}"#)]),
        ],
        ..Pending::default()
    };
    p.quarantine = vec![
        bad(&t, r#"{"id":2,"text":2}"#),
        bad(&t, r#"{"id":"3","text":"v3"}"#),
        bad(&k, r#"{"id":2,"text":"v2","extra":[]}"#),
        bad(&k, r#"{"id":3,"text":3}"#),
    ];
    assert_eq!(
        p.quarantine[1].key, None,
        "a string id names no integer key"
    );
    assert_eq!(p.quarantine[3].key, None, "nor a number a string key");
    commit_as(store, "r2", &p, Some(("t", "s")), &[]).unwrap();
    // Its last commit sees key 4's bad revision again (the one r1
    // quarantined: counted on the open row), then sweeps.
    let last = quarantine(vec![bad(&t, r#"{"id":4,"text":4}"#)]);
    let stats = commit_as(store, "r2", &last, None, &[t.clone(), k.clone()]).unwrap();

    // Kept: 1 (written), 2 (quarantined by r2, with r1's row), 4 (seen
    // again by r2). Swept: 3 (no usable key), 5 (quarantined by r1 only,
    // not seen by r2), 6.
    assert_eq!(
        column_by_id(store, "t", "text"),
        [(1, text("new1")), (2, text("v2")), (4, text("v4")),]
    );
    assert_eq!(
        column_by_id(store, "t", "_run_id"),
        [(1, text("r2")), (2, text(RUN)), (4, text(RUN))]
    );
    // The composite key: 1 written, 2 quarantined; 3's key unusable.
    assert_eq!(
        column_by_id(store, "k", "text"),
        [(1, text("v1")), (2, text("v2"))]
    );
    assert_eq!((stats.swept, stats.quarantined), (3 + 4, 1));
    assert_eq!(stats.swept_by_stream.get("t"), Some(&3));
    assert_eq!(stats.swept_by_stream.get("k"), Some(&4));

    // A later full refresh that quarantines nothing sweeps what it did not
    // write, the rows r2 kept included.
    next_run(store, "r2", "r3");
    let p = batch(&t, vec![row(&t, r#"{"id":4,"text":"new4"}"#)]);
    let stats = commit_as(store, "r3", &p, None, std::slice::from_ref(&t)).unwrap();
    assert_eq!(stats.swept, 2);
    assert_eq!(column_by_id(store, "t", "text"), [(4, text("new4"))]);
    // A sweep that removes nothing still reports the stream.
    let stats = commit_as(
        store,
        "r3",
        &Pending::default(),
        None,
        std::slice::from_ref(&t),
    )
    .unwrap();
    assert_eq!(stats.swept_by_stream.get("t"), Some(&0));

    // A run the run log knows (it started at a time): rows written since
    // it started are not swept either, such as a replay that lands while
    // it runs (of r1's record of key 5, swept by r2). A stream without a
    // key is swept by the run alone.
    let u = table("u", SCHEMA, &[]);
    store.ensure_table(&u).unwrap();
    let old_rows = vec![row(&u, r#"{"id":1}"#), row(&u, r#"{"id":2}"#)];
    commit_as(store, "r3", &batch(&u, old_rows), None, &[]).unwrap();
    next_millisecond();
    store
        .insert_run(&RunRecord::started("r4", INSTANCE, "1", "h"))
        .unwrap();
    next_run(store, "r3", "r4");
    let key5 = store
        .list_quarantine(&QuarantineFilter::default())
        .unwrap()
        .into_iter()
        .find(|e| e.record == r#"{"id":5,"text":5}"#)
        .unwrap();
    let applied = store
        .apply_replay(&ReplayPlan {
            replay_id: "rp".into(),
            accepted: vec![(key5.id, t.clone(), row(&t, r#"{"id":5,"text":"fixed5"}"#))],
            rejected: vec![],
            force: false,
        })
        .unwrap();
    assert_eq!(applied.replayed, [key5.id]);
    let p = batch(&u, vec![row(&u, r#"{"id":3}"#)]);
    let stats = commit_as(store, "r4", &p, None, &[t.clone(), u.clone()]).unwrap();
    assert_eq!(
        column_by_id(store, "t", "text"),
        [(5, text("fixed5"))],
        "r3's row of key 4 swept, the replayed row kept"
    );
    assert_eq!(column_by_id(store, "u", "_run_id"), [(3, text("r4"))]);
    assert_eq!(
        (
            stats.swept_by_stream.get("t"),
            stats.swept_by_stream.get("u")
        ),
        (Some(&1), Some(&2))
    );
}

fn a_replay_never_overwrites_a_newer_row_unless_forced(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    // Key 1: an older row, then a bad revision quarantined.
    commit(
        store,
        &batch(&t, vec![row(&t, r#"{"id":1,"text":"old1"}"#)]),
        None,
        &[],
    )
    .unwrap();
    next_millisecond();
    // Key 2: the bad revision first (2026-01-01 say), then a run writes a
    // newer revision (2026-01-11). Key 3: quarantined, no row at all.
    // Key 4: two bad revisions, both to be replayed together. Key 5: bad,
    // and a newer row, then the same bad record read again.
    commit(
        store,
        &quarantine(vec![
            bad(&t, r#"{"id":1,"text":1}"#),
            bad(&t, r#"{"id":2,"text":20260101}"#),
            bad(&t, r#"{"id":3,"text":3}"#),
            bad(&t, r#"{"id":4,"text":41}"#),
            bad(&t, r#"{"id":4,"text":42}"#),
            bad(&t, r#"{"id":5,"text":5}"#),
        ]),
        None,
        &[],
    )
    .unwrap();
    next_millisecond();
    next_run(store, RUN, "r2");
    commit_as(
        store,
        "r2",
        &batch(
            &t,
            vec![
                row(&t, r#"{"id":2,"text":"2026-01-11"}"#),
                row(&t, r#"{"id":5,"text":"newer5"}"#),
            ],
        ),
        None,
        &[],
    )
    .unwrap();
    next_millisecond();
    commit_as(
        store,
        "r2",
        &quarantine(vec![bad(&t, r#"{"id":5,"text":5}"#)]),
        None,
        &[],
    )
    .unwrap();

    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 6, "{q:?}");
    let id_of = |json: &str| q.iter().find(|e| e.record == json).unwrap().id;
    let fixed = |id: i64, json: &str| (id, t.clone(), row(&t, json));
    // The operator's fixes (as a replay makes them: the edited records).
    let accepted = vec![
        fixed(id_of(r#"{"id":1,"text":1}"#), r#"{"id":1,"text":"fixed1"}"#),
        fixed(
            id_of(r#"{"id":2,"text":20260101}"#),
            r#"{"id":2,"text":"2026-01-01"}"#,
        ),
        fixed(id_of(r#"{"id":3,"text":3}"#), r#"{"id":3,"text":"fixed3"}"#),
        fixed(id_of(r#"{"id":4,"text":41}"#), r#"{"id":4,"text":"41"}"#),
        fixed(id_of(r#"{"id":4,"text":42}"#), r#"{"id":4,"text":"42"}"#),
        fixed(id_of(r#"{"id":5,"text":5}"#), r#"{"id":5,"text":"fixed5"}"#),
    ];
    let stale_id = id_of(r#"{"id":2,"text":20260101}"#);
    let applied = store
        .apply_replay(&ReplayPlan {
            replay_id: "rp1".into(),
            accepted: accepted.clone(),
            rejected: vec![],
            force: false,
        })
        .unwrap();
    assert_eq!(applied.stale, [stale_id], "only key 2's row is newer");
    let mut replayed = applied.replayed.clone();
    replayed.sort();
    let mut want: Vec<i64> = accepted
        .iter()
        .map(|(id, ..)| *id)
        .filter(|id| *id != stale_id)
        .collect();
    want.sort();
    assert_eq!(replayed, want);
    assert_eq!(
        column_by_id(store, "t", "text"),
        [
            (1, text("fixed1")),
            (2, text("2026-01-11")),
            (3, text("fixed3")),
            (4, text("42")),
            (5, text("fixed5")),
        ],
        "key 2 keeps its newer revision; key 4 takes the later record; key 5 \
         was seen again after its newer row"
    );
    // The stale record stays open, as it was.
    let open = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].id, open[0].status.as_str()),
        (stale_id, "quarantined")
    );
    assert_eq!(open[0].replay_id, None);

    // Forced, it is written.
    let applied = store
        .apply_replay(&ReplayPlan {
            replay_id: "rp2".into(),
            accepted: vec![fixed(stale_id, r#"{"id":2,"text":"2026-01-01"}"#)],
            rejected: vec![],
            force: true,
        })
        .unwrap();
    assert_eq!((applied.replayed, applied.stale), (vec![stale_id], vec![]));
    assert_eq!(column_by_id(store, "t", "text")[1], (2, text("2026-01-01")));
    assert_eq!(column_by_id(store, "t", "_run_id")[1], (2, text("rp2")));
    assert!(store
        .list_quarantine(&QuarantineFilter::default())
        .unwrap()
        .is_empty());

    // A stream without a key has no row to be stale against.
    let u = table("u", SCHEMA, &[]);
    store.ensure_table(&u).unwrap();
    commit_as(
        store,
        "r2",
        &batch(&u, vec![row(&u, r#"{"id":1,"text":"a"}"#)]),
        None,
        &[],
    )
    .unwrap();
    commit_as(
        store,
        "r2",
        &quarantine(vec![bad(&u, r#"{"id":1,"text":1}"#)]),
        None,
        &[],
    )
    .unwrap();
    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    commit_as(
        store,
        "r2",
        &batch(&u, vec![row(&u, r#"{"id":1,"text":"b"}"#)]),
        None,
        &[],
    )
    .unwrap();
    let applied = store
        .apply_replay(&ReplayPlan {
            replay_id: "rp3".into(),
            accepted: vec![(q[0].id, u.clone(), row(&u, r#"{"id":1,"text":"c"}"#))],
            rejected: vec![],
            force: false,
        })
        .unwrap();
    assert_eq!(applied.replayed, [q[0].id]);
    assert_eq!(rows_of(store, "u").len(), 3);
}

fn the_same_open_record_is_quarantined_once(store: &mut dyn Store) {
    let t = table("t", SCHEMA, &["id"]);
    store.ensure_table(&t).unwrap();
    hold_lease(store);
    let same = r#"{"id":1,"text":1}"#;
    // Twice in one commit, beside another record and the same JSON with
    // other spacing (another raw record).
    let stats = commit(
        store,
        &quarantine(vec![
            bad(&t, same),
            bad(&t, r#"{"id":2,"text":2}"#),
            bad(&t, same),
            bad(&t, r#"{"id":1, "text":1}"#),
        ]),
        None,
        &[],
    )
    .unwrap();
    assert_eq!(
        stats.quarantined, 4,
        "the commit counts every record it saw"
    );
    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 3, "{q:?}");
    assert_eq!((q[0].record.as_str(), q[0].seen_count), (same, 2));
    assert_eq!(q[0].key.as_deref(), Some("[1]"));
    assert_eq!((q[1].seen_count, q[2].seen_count), (1, 1));
    assert_eq!(
        (q[0].run_id.as_str(), q[0].last_seen_run.as_str()),
        (RUN, RUN)
    );
    let first_at = q[0].quarantined_at.clone();

    // Two more runs read it again (an inclusive cursor, a restart).
    for run in ["r2", "r3"] {
        next_run(store, if run == "r2" { RUN } else { "r2" }, run);
        let stats = commit_as(store, run, &quarantine(vec![bad(&t, same)]), None, &[]).unwrap();
        assert_eq!(stats.quarantined, 1);
    }
    let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(q.len(), 3);
    assert_eq!(q[0].seen_count, 4);
    assert_eq!(
        (q[0].run_id.as_str(), q[0].last_seen_run.as_str()),
        (RUN, "r3")
    );
    assert_eq!(q[0].quarantined_at, first_at, "first seen stays");
    assert!(q[0].last_seen_at >= first_at);

    // The same record of another stream, or of another instance, is
    // another record.
    let u = table("u", SCHEMA, &["id"]);
    store.ensure_table(&u).unwrap();
    commit_as(store, "r3", &quarantine(vec![bad(&u, same)]), None, &[]).unwrap();
    assert_eq!(
        store
            .claim_lease("other", "o1", "here:1", LONG_TTL)
            .unwrap(),
        None
    );
    store
        .commit(&CommitRequest {
            run_id: "o1",
            connector: "other",
            connector_version: "1",
            pending: &quarantine(vec![bad(&t, same)]),
            state: None,
            sweep: &[],
        })
        .unwrap();
    let all = store.list_quarantine(&QuarantineFilter::default()).unwrap();
    assert_eq!(all.len(), 5);
    assert!(all[3..].iter().all(|e| e.seen_count == 1), "{all:?}");

    // An operator's edit: the record it was read as still finds the row.
    store
        .edit_quarantined(q[0].id, r#"{"id":1,"text":"one"}"#)
        .unwrap();
    commit_as(store, "r3", &quarantine(vec![bad(&t, same)]), None, &[]).unwrap();
    let edited = &store
        .list_quarantine(&QuarantineFilter {
            ids: vec![q[0].id],
            ..QuarantineFilter::default()
        })
        .unwrap()[0];
    assert_eq!(edited.seen_count, 5);
    assert_eq!(edited.record, r#"{"id":1,"text":"one"}"#);

    // Once replayed the row is closed: the record seen again is open anew.
    store
        .apply_replay(&ReplayPlan {
            replay_id: "rp".into(),
            accepted: vec![(q[0].id, t.clone(), row(&t, r#"{"id":1,"text":"one"}"#))],
            rejected: vec![],
            force: false,
        })
        .unwrap();
    commit_as(store, "r3", &quarantine(vec![bad(&t, same)]), None, &[]).unwrap();
    let open: Vec<_> = store
        .list_quarantine(&QuarantineFilter {
            connector: Some(INSTANCE.into()),
            stream: Some("t".into()),
            ..QuarantineFilter::default()
        })
        .unwrap();
    let again: Vec<_> = open.iter().filter(|e| e.record == same).collect();
    assert_eq!(again.len(), 1);
    assert!(again[0].id > q[0].id);
    assert_eq!((again[0].seen_count, again[0].run_id.as_str()), (1, "r3"));
}

/// `sluice serve`'s next run of each instance: none before the first
/// write, one row per instance after, replaced (not added to) by the next.
fn schedules_are_kept_per_instance_and_replaced(store: &mut dyn Store) {
    use sluice_core::destination::ScheduleEntry;
    assert_eq!(store.get_schedule("a").unwrap(), None);
    let a = ScheduleEntry {
        instance: "a".into(),
        schedule: "every:1h".into(),
        next_run_at_ms: 1_700_000_000_000,
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    };
    store.set_schedule(&a).unwrap();
    let b = ScheduleEntry {
        instance: "b'; DROP TABLE _sluice_schedule; --".into(),
        schedule: "cron:*/15 * * * *".into(),
        next_run_at_ms: i64::MAX,
        updated_at: "2026-01-01T00:00:01.000Z".into(),
    };
    store.set_schedule(&b).unwrap();
    let a2 = ScheduleEntry {
        next_run_at_ms: a.next_run_at_ms + 3_600_000,
        updated_at: "2026-01-01T01:00:00.000Z".into(),
        ..a.clone()
    };
    store.set_schedule(&a2).unwrap();
    assert_eq!(store.get_schedule("a").unwrap(), Some(a2));
    assert_eq!(store.get_schedule(&b.instance).unwrap(), Some(b));
    assert_eq!(store.get_schedule("c").unwrap(), None);
}

/// `sluice serve`'s alerts: one state row per (rule, instance), replaced
/// by the next, and every event appended, newest first when listed.
fn alert_states_are_replaced_and_their_events_kept_in_order(store: &mut dyn Store) {
    use sluice_core::destination::{AlertEvent, AlertState};
    assert!(store.list_alerts().unwrap().is_empty());
    assert!(store.list_alert_events(10).unwrap().is_empty());
    let firing = AlertState {
        rule: "failing".into(),
        instance: "a'; DROP TABLE _sluice_alerts; --".into(),
        firing: true,
        since: "2026-01-01T00:00:00.000Z".into(),
        last_sent_at: None,
        message: "2 of 3 runs failed".into(),
        value: Some(0.667),
        updated_at: "2026-01-01T00:00:00.000Z".into(),
    };
    let event = |at: &str, what: &str, delivered: bool| AlertEvent {
        at: at.into(),
        rule: firing.rule.clone(),
        instance: firing.instance.clone(),
        event: what.into(),
        message: "m".into(),
        delivered,
        error: (!delivered).then(|| "connection refused".to_string()),
    };
    store
        .record_alert(&firing, Some(&event("t1", "firing", false)))
        .unwrap();
    let sent = AlertState {
        last_sent_at: Some("t2".into()),
        ..firing.clone()
    };
    store
        .record_alert(&sent, Some(&event("t2", "firing", true)))
        .unwrap();
    let other = AlertState {
        rule: "stale".into(),
        firing: false,
        value: None,
        ..firing.clone()
    };
    store.record_alert(&other, None).unwrap();
    let resolved = AlertState {
        firing: false,
        since: "t3".into(),
        ..sent.clone()
    };
    store
        .record_alert(&resolved, Some(&event("t3", "resolved", true)))
        .unwrap();
    assert_eq!(store.list_alerts().unwrap(), vec![resolved, other]);
    let events = store.list_alert_events(10).unwrap();
    let seen: Vec<(&str, &str, bool)> = events
        .iter()
        .map(|e| (e.at.as_str(), e.event.as_str(), e.delivered))
        .collect();
    assert_eq!(
        seen,
        [
            ("t3", "resolved", true),
            ("t2", "firing", true),
            ("t1", "firing", false)
        ]
    );
    assert_eq!(events[2].error.as_deref(), Some("connection refused"));
    assert_eq!(store.list_alert_events(1).unwrap().len(), 1);
}

/// A run's kept guest log lines: in order, as written (hostile text
/// included), apart from another run's.
fn run_log_lines_are_kept_per_run_in_order(store: &mut dyn Store) {
    use sluice_core::run::LogLine;
    assert!(store.get_run_logs("r1").unwrap().is_empty());
    let line = |seq: u64, message: &str| LogLine {
        seq,
        at: format!("2026-01-01T00:00:0{seq}.000Z"),
        level: if seq == 0 { "info" } else { "error" }.into(),
        message: message.into(),
    };
    let lines = vec![
        line(0, "starting"),
        line(
            1,
            "<script>alert(1)</script>\"><img onerror=x>'; DROP TABLE _sluice_runs; --",
        ),
        line(2, "ünïcode \u{1F600} and a\nnewline"),
    ];
    store.insert_run_logs("r1", &lines).unwrap();
    store.insert_run_logs("r2", &[line(0, "other")]).unwrap();
    assert_eq!(store.get_run_logs("r1").unwrap(), lines);
    assert_eq!(store.get_run_logs("r2").unwrap(), vec![line(0, "other")]);
    assert!(store.get_run_logs("r3").unwrap().is_empty());
}

/// `query_runs`: by instance, by status and not a status, newest first,
/// paged, with the total of what the filter picks (however the page is).
fn runs_are_filtered_and_paged_by_the_store(store: &mut dyn Store) {
    use sluice_core::destination::RunQuery;
    // 25 runs of `a` (every 5th failed, every 7th skipped), 5 of `b`, one
    // per second, newest last.
    let mut expected_a = Vec::new();
    for i in 0..30u32 {
        let instance = if i < 25 { "a" } else { "b" };
        let status = match i {
            _ if i % 7 == 0 => RunStatus::Skipped,
            _ if i % 5 == 0 => RunStatus::Failed,
            _ => RunStatus::Succeeded,
        };
        let mut run = RunRecord::started(&format!("run-{i:02}"), instance, "1", "h");
        run.started_at = format!("2026-01-01T00:00:{i:02}.000Z");
        store.insert_run(&run).unwrap();
        run.status = status;
        run.ended_at = Some(run.started_at.clone());
        store.update_run(&run).unwrap();
        if instance == "a" {
            expected_a.push((run.id.clone(), status));
        }
    }
    expected_a.reverse();
    let ids = |page: &sluice_core::destination::RunPage| -> Vec<String> {
        page.runs.iter().map(|r| r.id.clone()).collect()
    };
    let q = |instance: Option<&str>, status, exclude, limit, offset| RunQuery {
        instance: instance.map(str::to_string),
        status,
        exclude,
        limit,
        offset,
        counted: true,
    };
    let page = store.query_runs(&q(Some("a"), None, None, 10, 0)).unwrap();
    assert_eq!(page.total, 25);
    let want: Vec<String> = expected_a
        .iter()
        .take(10)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids(&page), want);
    let page = store.query_runs(&q(Some("a"), None, None, 10, 20)).unwrap();
    assert_eq!((page.runs.len(), page.total), (5, 25), "the last page");
    let page = store.query_runs(&q(Some("a"), None, None, 10, 40)).unwrap();
    assert_eq!((page.runs.len(), page.total), (0, 25), "past the end");
    let failed: Vec<String> = expected_a
        .iter()
        .filter(|(_, s)| *s == RunStatus::Failed)
        .map(|(id, _)| id.clone())
        .collect();
    let page = store
        .query_runs(&q(Some("a"), Some(RunStatus::Failed), None, 2, 1))
        .unwrap();
    assert_eq!(page.total, failed.len() as u64);
    assert_eq!(ids(&page), failed[1..3].to_vec());
    let page = store.query_runs(&RunQuery::recent("a", 100)).unwrap();
    assert!(page.runs.iter().all(|r| r.status != RunStatus::Skipped));
    assert_eq!(page.total, 25 - 4, "runs 0, 7, 14, 21 were skipped");
    let page = store.query_runs(&RunQuery::recent("a", 3)).unwrap();
    assert_eq!((page.runs.len(), page.total), (3, 3), "not counted");
    let page = store.query_runs(&q(None, None, None, 3, 0)).unwrap();
    assert_eq!(page.total, 30);
    assert_eq!(ids(&page), ["run-29", "run-28", "run-27"]);
    let page = store
        .query_runs(&q(Some("nobody"), None, None, 3, 0))
        .unwrap();
    assert_eq!((page.runs.len(), page.total), (0, 0));
}
