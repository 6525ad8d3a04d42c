//! One destination test suite, run against every backend through the
//! `Destination` and `RunLog` traits only: SQLite (a temp file) and
//! Postgres (a throwaway cluster that `scripts/pg-cluster.sh` starts on
//! 127.0.0.1 and stops). Each case gets a fresh store: a new SQLite file,
//! or a new Postgres schema in the one cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
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

/// A throwaway Postgres cluster: started by scripts/pg-cluster.sh in a
/// temp dir, stopped when dropped (a failing test too).
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

fn pg_cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster.sh")
}

/// pg-cluster.sh's exit status when PostgreSQL is not installed.
const NOT_INSTALLED: i32 = 3;

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(pg_cluster_script())
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .expect("run scripts/pg-cluster.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(NOT_INSTALLED) {
            panic!(
                "PostgreSQL is not installed, and the Postgres destination tests need a real \
                 server: run scripts/setup-postgres.sh (or `just setup`) first.\n{stderr}"
            );
        }
        assert!(
            out.status.success(),
            "pg-cluster.sh start failed:\n{stderr}"
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Cluster { dir, url }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(pg_cluster_script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
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
    sweep: &[String],
) -> Result<CommitStats, StoreError> {
    commit_as(store, RUN, pending, state, sweep)
}

fn commit_as(
    store: &mut dyn Store,
    run_id: &str,
    pending: &Pending,
    state: Option<(&str, &str)>,
    sweep: &[String],
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
        },
        QuarantinedRecord {
            stream: "t".into(),
            record: r#"{"id":"y"}"#.into(),
            errors: vec![],
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
        &["t".to_string()],
    )
    .unwrap();
    assert_eq!(stats.swept, 1);
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
