//! The Singer and Airbyte outputs against real peers: the Singer target
//! `target-jsonl` and the Airbyte protocol's own pydantic models
//! (`airbyte_protocol.models.AirbyteMessage`), both from the venv that
//! `scripts/setup-protocol-tools.sh` makes (`just setup` runs it). A
//! [`ProtocolStore`] is driven through the `Destination`/`RunLog` calls the
//! pipeline makes, by a small deterministic "connector" that resumes from
//! its state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use sluice_core::destination::{
    CommitRequest, Pending, QuarantineFilter, QuarantinedRecord, RunStatus, Store, StoreError,
    StreamDef,
};
use sluice_core::row::StreamTable;
use sluice_core::run::RunRecord;
use sluice_core::schema::{DriftKind, DriftObservation, RecordError};
use sluice_fixture::peers::{airbyte_validate, jsonl_records, target_jsonl, venv};
use sluice_store::{ProtocolFormat, ProtocolStore, SqliteStore};

const INSTANCE: &str = "demo";
const LONG_TTL: Duration = Duration::from_secs(3600);
/// Records the connector reads per page (one commit each).
const PAGE: usize = 2;

/// The venv with the peers, or `None` if it is missing and [`SKIP_ENV`]
/// says to skip; else the test fails saying how to install it.
/// A `Write` whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    fn lines(&self) -> Vec<Json> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

// ---- the upstream and the connector ----

/// `items`: an incremental stream whose cursor is the index of the next
/// event (events update items: ids repeat). Pretty-printed schema, as a
/// connector may declare it.
const ITEMS_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "id": {"type": "integer"},
    "name": {"type": "string"},
    "price": {"type": ["number", "null"]},
    "tags": {"type": "array", "items": {"type": "string"}},
    "meta": {"type": "object"}
  }
}"#;
/// `users`: a composite key; its state is a bare JSON string.
const USERS_SCHEMA: &str = r#"{"type":"object","properties":{"org":{"type":"string"},"login":{"type":"string"},"n":{"type":"integer"}}}"#;

/// The upstream's item events, in order: the connector reads them from
/// its cursor on.
fn item_events() -> Vec<String> {
    let mut events: Vec<String> = (1..=7)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"item {i} é \"q\"","price":{}.5,"tags":["t{i}"],"meta":{{"n":{{"deep":[{i},null]}}}}}}"#,
                i * 10
            )
        })
        .collect();
    // Updates of earlier items (the last one wins in a keyed destination),
    // one of them pretty-printed over lines.
    events.push(r#"{"id":2,"name":"item 2 renamed","price":null,"tags":[],"meta":{}}"#.into());
    events.push(
        "{\n  \"id\": 5,\n  \"name\": \"item 5 again\",\n  \"tags\": [\"x\"],\n  \"meta\": {}\n}"
            .into(),
    );
    events.push(r#"{"id":10,"name":"ten","price":1e-3,"tags":[],"meta":{"big":123456789012345678901234567890}}"#.into());
    events
}

fn tables() -> (Arc<StreamTable>, Arc<StreamTable>) {
    let items = StreamTable::from_spec("items", ITEMS_SCHEMA, &["id".into()])
        .unwrap()
        .in_table(format!("{INSTANCE}__items"));
    let users = StreamTable::from_spec("users", USERS_SCHEMA, &["org".into(), "login".into()])
        .unwrap()
        .in_table(format!("{INSTANCE}__users"));
    (Arc::new(items), Arc::new(users))
}

/// What the pipeline does before reading: lease, run row, tables, streams.
fn start_run(store: &mut dyn Store, run_id: &str) {
    assert_eq!(
        store
            .claim_lease(INSTANCE, run_id, "here:1", LONG_TTL)
            .unwrap(),
        None
    );
    store
        .insert_run(&RunRecord::started(run_id, INSTANCE, "1.0", "hash"))
        .unwrap();
    let (items, users) = tables();
    for t in [&items, &users] {
        store.claim_table(INSTANCE, t).unwrap();
        store.ensure_table(t).unwrap();
    }
    let def = |stream: &str, schema: &str, pk: &[&str]| StreamDef {
        connector: INSTANCE.into(),
        stream: stream.into(),
        connector_version: "1.0".into(),
        json_schema: schema.into(),
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
    };
    store
        .record_streams(&[
            def("items", ITEMS_SCHEMA, &["id"]),
            def("users", USERS_SCHEMA, &["org", "login"]),
        ])
        .unwrap();
}

fn commit(
    store: &mut dyn Store,
    run_id: &str,
    pending: &Pending,
    state: Option<(&str, &str)>,
) -> Result<sluice_core::destination::CommitStats, StoreError> {
    store.commit(&CommitRequest {
        run_id,
        connector: INSTANCE,
        connector_version: "1.0",
        pending,
        state,
        sweep: &[],
    })
}

/// One run of the connector: read at most `max_events` item events from
/// the saved cursor, a page per commit (with its state), the users once;
/// then the pipeline's final commit (no state) and the run's end.
fn run_connector(store: &mut dyn Store, run_id: &str, max_events: usize) {
    start_run(store, run_id);
    let (items, users) = tables();
    let cursor: usize = match store.get_state(INSTANCE, "items").unwrap() {
        Some(s) => serde_json::from_str::<Json>(&s).unwrap()["cursor"]
            .as_u64()
            .unwrap() as usize,
        None => 0,
    };
    let events = item_events();
    let end = (cursor + max_events).min(events.len());
    let mut at = cursor;
    while at < end {
        let next = (at + PAGE).min(end);
        let rows = events[at..next]
            .iter()
            .map(|e| items.row(e.clone()).unwrap())
            .collect();
        let mut pending = Pending {
            batches: vec![(items.clone(), rows)],
            ..Pending::default()
        };
        if at == cursor {
            // The first page also has a record that fails validation, and
            // a drift observation: both belong in the local log.
            pending.quarantine.push(QuarantinedRecord {
                stream: "items".into(),
                record: r#"{"id":"not a number"}"#.into(),
                errors: vec![RecordError {
                    path: "/id".into(),
                    message: "not an integer".into(),
                }],
                key: None,
            });
            pending.drift.add(DriftObservation {
                stream: "items".into(),
                path: "/extra".into(),
                kind: DriftKind::NewField,
                observed_type: "string".into(),
                sample: "\"s\"".into(),
                count: 1,
            });
        }
        let state = format!(r#"{{"cursor":{next}}}"#);
        let stats = commit(store, run_id, &pending, Some(("items", &state))).unwrap();
        assert_eq!(stats.upserted, (next - at) as u64);
        at = next;
    }
    // Users: a full page each run, state a bare JSON string.
    let seen = store.get_state(INSTANCE, "users").unwrap();
    let n = if seen.is_some() { 2 } else { 1 };
    let rows = ["acme", "zeta"]
        .iter()
        .map(|org| {
            users
                .row(format!(r#"{{"org":"{org}","login":"ann","n":{n}}}"#))
                .unwrap()
        })
        .collect();
    let pending = Pending {
        batches: vec![(users.clone(), rows)],
        ..Pending::default()
    };
    let state = format!("\"run {n}\"");
    commit(store, run_id, &pending, Some(("users", &state))).unwrap();
    // The pipeline's last commit: nothing pending, no state.
    commit(store, run_id, &Pending::default(), None).unwrap();
    end_run(store, run_id, RunStatus::Succeeded, None);
}

fn end_run(store: &mut dyn Store, run_id: &str, status: RunStatus, error: Option<&str>) {
    let mut record = store.get_run(run_id).unwrap();
    record.status = status;
    record.error = error.map(str::to_string);
    store.update_run(&record).unwrap();
    store.release_lease(INSTANCE, run_id).unwrap();
}

// ---- the peers ----

fn protocol_store(
    format: ProtocolFormat,
    log: &Path,
    state_file: Option<&Path>,
) -> (ProtocolStore, Shared) {
    let out = Shared::default();
    let store = ProtocolStore::new(
        format,
        SqliteStore::open(log).unwrap(),
        Box::new(out.clone()),
        state_file,
    )
    .unwrap();
    (store, out)
}

/// `record` parsed (records compare as JSON values).
fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap()
}

/// The (flattened) rows the SQLite destination holds for `table`, by key,
/// and the same from records through the stream's table mapping.
fn sqlite_rows(store: &mut SqliteStore, table: &str) -> BTreeMap<String, Json> {
    use sluice_core::destination::Destination;
    let scan = store.scan(table).unwrap().unwrap();
    let record = scan.columns.iter().position(|c| c == "_record").unwrap();
    scan.rows
        .iter()
        .map(|r| match &r[record] {
            sluice_core::value::Value::Text(t) => {
                let v = json(t);
                (key_of(&v), v)
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A record's key: its `id`, or `org/login`.
fn key_of(record: &Json) -> String {
    match record.get("id") {
        Some(id) => id.to_string(),
        None => format!("{}/{}", record["org"], record["login"]),
    }
}

/// The last record of each key, as a keyed destination keeps them.
fn last_by_key(records: &[Json]) -> BTreeMap<String, Json> {
    records.iter().map(|r| (key_of(r), r.clone())).collect()
}

// ---- Singer ----

#[test]
fn singer_into_target_jsonl_resumes_meltano_style_and_matches_sqlite() {
    let Some(venv) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Json> = item_events().iter().map(|e| json(e)).collect();

    // Run 1: six of the ten events, in three commits.
    let (mut store, out) =
        protocol_store(ProtocolFormat::Singer, &dir.path().join("log1.db"), None);
    run_connector(&mut store, "run-1", 6);
    let first = out.lines();
    check_singer_order(&first, 0);
    // The local log has the run, its quarantine and drift, and the state.
    let log = store.log();
    let run = sluice_core::destination::RunLog::get_run(log, "run-1").unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    let q = sluice_core::destination::RunLog::list_quarantine(log, &QuarantineFilter::default())
        .unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].record, r#"{"id":"not a number"}"#);
    assert_eq!(
        sluice_core::destination::RunLog::list_drift(log, Some(INSTANCE), None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        sluice_core::destination::Destination::get_state(log, INSTANCE, "items")
            .unwrap()
            .as_deref(),
        Some(r#"{"cursor":6}"#)
    );
    // The local log holds no data tables: the records went to the output.
    assert!(
        sluice_core::destination::Destination::scan(log, "demo__items")
            .unwrap()
            .is_none()
    );
    drop(store);

    let echoed = target_jsonl(&venv, &out.text(), dir.path());
    let echoed_state = json(echoed.lines().last().expect("target-jsonl printed a state"));
    assert_eq!(
        echoed_state,
        json(r#"{"bookmarks":{"items":{"cursor":6},"users":{"sluice_state":"run 1"}}}"#)
    );
    assert_eq!(jsonl_records(dir.path(), "items"), events[..6]);

    // Run 2, Meltano-style: the state the target printed, in a file, on a
    // new log that knows no state (if the file were not read, run 2 would
    // read every event again).
    let state_file = dir.path().join("state.json");
    std::fs::write(&state_file, &echoed).unwrap();
    let (mut store, out) = protocol_store(
        ProtocolFormat::Singer,
        &dir.path().join("log2.db"),
        Some(&state_file),
    );
    run_connector(&mut store, "run-2", 100);
    let second = out.lines();
    check_singer_order(&second, 6);
    let last_state = second.iter().rev().find(|m| m["type"] == "STATE").unwrap();
    assert_eq!(
        last_state["value"],
        json(r#"{"bookmarks":{"items":{"cursor":10},"users":{"sluice_state":"run 2"}}}"#)
    );
    // The new log recorded run 2's state too.
    assert_eq!(
        sluice_core::destination::Destination::get_state(store.log(), INSTANCE, "items")
            .unwrap()
            .as_deref(),
        Some(r#"{"cursor":10}"#)
    );
    drop(store);
    let echoed = target_jsonl(&venv, &out.text(), dir.path());
    assert_eq!(json(echoed.lines().last().unwrap()), last_state["value"]);

    // Nothing read twice, nothing missed: every event once, in order.
    let items = jsonl_records(dir.path(), "items");
    assert_eq!(items, events);
    let users = jsonl_records(dir.path(), "users");
    assert_eq!(users.len(), 4);

    // The same two runs into the SQLite destination keep the same records
    // by key (the target appends; a keyed destination keeps the last).
    let mut sqlite = SqliteStore::open(&dir.path().join("sqlite.db")).unwrap();
    run_connector(&mut sqlite, "run-1", 6);
    run_connector(&mut sqlite, "run-2", 100);
    assert_eq!(sqlite_rows(&mut sqlite, "demo__items"), last_by_key(&items));
    assert_eq!(sqlite_rows(&mut sqlite, "demo__users"), last_by_key(&users));
    assert_eq!(last_by_key(&items).len(), 8);
}

/// Singer order: a SCHEMA (with the key) before a stream's first RECORD,
/// and each STATE after exactly the item records its cursor covers (the
/// run started at cursor `start`).
fn check_singer_order(lines: &[Json], start: u64) {
    let mut schemas = BTreeMap::new();
    let mut items_before = 0u64;
    let mut states = 0;
    for m in lines {
        match m["type"].as_str().unwrap() {
            "SCHEMA" => {
                let stream = m["stream"].as_str().unwrap().to_string();
                assert!(
                    schemas.insert(stream, m.clone()).is_none(),
                    "one SCHEMA per stream"
                );
            }
            "RECORD" => {
                let stream = m["stream"].as_str().unwrap();
                let schema = schemas.get(stream).expect("SCHEMA before RECORD");
                assert!(m["record"].is_object());
                if stream == "items" {
                    assert_eq!(schema["key_properties"], json(r#"["id"]"#));
                    assert_eq!(schema["schema"], json(ITEMS_SCHEMA));
                    items_before += 1;
                } else {
                    assert_eq!(schema["key_properties"], json(r#"["org","login"]"#));
                }
            }
            "STATE" => {
                states += 1;
                let cursor = m["value"]["bookmarks"]["items"]["cursor"].as_u64().unwrap();
                assert_eq!(cursor, start + items_before, "STATE after its records: {m}");
            }
            other => panic!("unexpected message type {other}"),
        }
    }
    assert!(states >= 2, "{lines:?}");
    assert_eq!(
        lines.last().unwrap()["type"],
        "STATE",
        "a run's output ends with its complete state"
    );
}

#[test]
fn singer_state_files_of_every_form_resume_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, out) = protocol_store(ProtocolFormat::Singer, &dir.path().join("log.db"), None);
    run_connector(&mut store, "run-1", 3);
    drop(store);
    let whole = out.text();
    let last = out
        .lines()
        .into_iter()
        .rev()
        .find(|m| m["type"] == "STATE")
        .unwrap();
    let forms = [
        ("the whole Singer stream", whole.clone()),
        ("a STATE message", last.to_string()),
        ("the bare value", last["value"].to_string()),
        (
            "Meltano's state get",
            serde_json::json!({ "singer_state": last["value"] }).to_string(),
        ),
        (
            "a pretty-printed value",
            serde_json::to_string_pretty(&last["value"]).unwrap(),
        ),
    ];
    for (form, text) in forms {
        let file = dir.path().join("state");
        std::fs::write(&file, text).unwrap();
        let (mut store, _) = protocol_store(
            ProtocolFormat::Singer,
            &dir.path().join("other.db"),
            Some(&file),
        );
        use sluice_core::destination::Destination;
        let items = store.get_state(INSTANCE, "items").unwrap().unwrap();
        let users = store.get_state(INSTANCE, "users").unwrap().unwrap();
        // The state's JSON text as the file holds it (a pretty-printed
        // file keeps its spaces).
        assert_eq!(json(&items), json(r#"{"cursor":3}"#), "{form}");
        assert_eq!(users, r#""run 1""#, "{form}");
        if !form.starts_with("a pretty") {
            assert_eq!(items, r#"{"cursor":3}"#, "{form}");
        }
    }
    // An empty file (or /dev/null) is no state, even where the log has one.
    for empty in [dir.path().join("empty"), PathBuf::from("/dev/null")] {
        if !empty.exists() {
            std::fs::write(&empty, "").unwrap();
        }
        let (mut store, _) = protocol_store(
            ProtocolFormat::Singer,
            &dir.path().join("log.db"),
            Some(&empty),
        );
        use sluice_core::destination::Destination;
        assert_eq!(store.get_state(INSTANCE, "items").unwrap(), None);
    }
    // Without a state file, the log's state.
    let (mut store, _) = protocol_store(ProtocolFormat::Singer, &dir.path().join("log.db"), None);
    use sluice_core::destination::Destination;
    assert_eq!(
        store.get_state(INSTANCE, "items").unwrap().as_deref(),
        Some(r#"{"cursor":3}"#)
    );
    // A missing file and a file of something else are typed errors.
    let err = ProtocolStore::new(
        ProtocolFormat::Singer,
        SqliteStore::open(&dir.path().join("log.db")).unwrap(),
        Box::new(Shared::default()),
        Some(&dir.path().join("missing")),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let err = ProtocolStore::new(
        ProtocolFormat::Singer,
        SqliteStore::open(&dir.path().join("log.db")).unwrap(),
        Box::new(Shared::default()),
        Some(&bad),
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("bad"), "{err}");
}

#[test]
fn a_commit_without_a_state_repeats_the_complete_state_after_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, out) = protocol_store(ProtocolFormat::Singer, &dir.path().join("log.db"), None);
    start_run(&mut store, "r");
    let (items, _) = tables();
    let page = |ids: &[i64]| Pending {
        batches: vec![(
            items.clone(),
            ids.iter()
                .map(|i| {
                    items
                        .row(format!(r#"{{"id":{i},"name":"n","tags":[],"meta":{{}}}}"#))
                        .unwrap()
                })
                .collect(),
        )],
        ..Pending::default()
    };
    // Before any state, records go out without a STATE line.
    commit(&mut store, "r", &page(&[1]), None).unwrap();
    commit(
        &mut store,
        "r",
        &page(&[2]),
        Some(("items", r#"{"cursor":2}"#)),
    )
    .unwrap();
    commit(&mut store, "r", &page(&[3]), None).unwrap();
    // A commit of nothing writes nothing.
    commit(&mut store, "r", &Pending::default(), None).unwrap();
    let kinds: Vec<String> = out
        .lines()
        .iter()
        .map(|m| format!("{} {}", m["type"].as_str().unwrap(), m["record"]["id"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "SCHEMA null",
            "RECORD 1",
            "RECORD 2",
            "STATE null",
            "RECORD 3",
            "STATE null"
        ]
    );
    let lines = out.lines();
    assert_eq!(lines[3]["value"], lines[5]["value"]);
}

// ---- Airbyte ----

#[test]
fn airbyte_messages_validate_against_the_protocol_models_and_resume() {
    let Some(venv) = venv() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut store, out) =
        protocol_store(ProtocolFormat::Airbyte, &dir.path().join("log.db"), None);
    run_connector(&mut store, "run-1", 5);
    // A second run that fails: its error ends the output as a TRACE.
    start_run(&mut store, "run-2");
    end_run(
        &mut store,
        "run-2",
        RunStatus::Failed,
        Some("connector demo: upstream said 500"),
    );
    drop(store);
    let text = out.text();
    let messages = airbyte_validate(&venv, &text);
    let raw = out.lines();
    assert_eq!(messages.len(), raw.len());

    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    // Pages of 2, 2, 1 items, each followed by its stream's STATE; the
    // users' page and its STATE; then the failed run's TRACE.
    assert_eq!(
        kinds,
        [
            "RECORD", "RECORD", "STATE", "RECORD", "RECORD", "STATE", "RECORD", "STATE", "RECORD",
            "RECORD", "STATE", "TRACE"
        ]
    );
    let events = item_events();
    let records: Vec<&Json> = messages
        .iter()
        .filter(|m| m["type"] == "RECORD" && m["record"]["stream"] == "items")
        .collect();
    for (m, e) in records.iter().zip(&events) {
        assert_eq!(m["record"]["data"], json(e));
        assert!(m["record"]["emitted_at"].as_i64().unwrap() > 0);
    }
    assert_eq!(records.len(), 5);
    let states: Vec<&Json> = messages.iter().filter(|m| m["type"] == "STATE").collect();
    assert_eq!(states[0]["state"]["type"], "STREAM");
    assert_eq!(
        states[0]["state"]["stream"],
        json(r#"{"stream_descriptor":{"name":"items"},"stream_state":{"cursor":2}}"#)
    );
    assert_eq!(
        states[3]["state"]["stream"],
        json(r#"{"stream_descriptor":{"name":"users"},"stream_state":{"sluice_state":"run 1"}}"#)
    );
    let trace = &messages.last().unwrap()["trace"];
    assert_eq!(trace["type"], "ERROR");
    assert_eq!(
        trace["error"]["message"],
        "connector demo: upstream said 500"
    );
    assert_eq!(trace["error"]["failure_type"], "system_error");

    // Resume from the output itself (AirbyteMessage lines), and from
    // Airbyte's `read --state` form (a list of state messages).
    let list: Vec<&Json> = raw
        .iter()
        .filter(|m| m["type"] == "STATE")
        .map(|m| &m["state"])
        .collect();
    for (n, (form, file_text)) in [
        ("the output", text.clone()),
        (
            "a list of state messages",
            serde_json::to_string(&list).unwrap(),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let file = dir.path().join("state.json");
        std::fs::write(&file, file_text).unwrap();
        let (mut store, out) = protocol_store(
            ProtocolFormat::Airbyte,
            &dir.path().join(format!("fresh-{n}.db")),
            Some(&file),
        );
        {
            use sluice_core::destination::Destination;
            assert_eq!(
                store.get_state(INSTANCE, "items").unwrap().as_deref(),
                Some(r#"{"cursor":5}"#),
                "{form}"
            );
            assert_eq!(
                store.get_state(INSTANCE, "users").unwrap().as_deref(),
                Some(r#""run 1""#),
                "{form}"
            );
        }
        run_connector(&mut store, "run-3", 100);
        drop(store);
        let resumed = airbyte_validate(&venv, &out.text());
        let items: Vec<Json> = resumed
            .iter()
            .filter(|m| m["type"] == "RECORD" && m["record"]["stream"] == "items")
            .map(|m| m["record"]["data"].clone())
            .collect();
        let rest: Vec<Json> = events[5..].iter().map(|e| json(e)).collect();
        assert_eq!(items, rest, "{form}: resumed after the 5 events read");
    }
}

// ---- failures ----

#[test]
fn a_closed_pipe_fails_the_commit_and_leaves_the_log_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    // A reader that exits at once: writes to its stdin fail (EPIPE).
    let mut child = Command::new("true")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run true");
    let stdin = child.stdin.take().unwrap();
    child.wait().unwrap();
    let mut store = ProtocolStore::new(
        ProtocolFormat::Singer,
        SqliteStore::open(&dir.path().join("log.db")).unwrap(),
        Box::new(stdin),
        None,
    )
    .unwrap();
    start_run(&mut store, "r");
    let (items, _) = tables();
    let pending = Pending {
        batches: vec![(
            items.clone(),
            vec![items
                .row(r#"{"id":1,"name":"a","tags":[],"meta":{}}"#.into())
                .unwrap()],
        )],
        quarantine: vec![QuarantinedRecord {
            stream: "items".into(),
            record: "{}".into(),
            errors: vec![],
            key: None,
        }],
        ..Pending::default()
    };
    let err = commit(
        &mut store,
        "r",
        &pending,
        Some(("items", r#"{"cursor":1}"#)),
    )
    .unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Backend { .. }), "{shown}");
    assert!(
        shown.contains("singer output") && shown.contains("broken pipe"),
        "{shown}"
    );
    // Nothing of the commit is in the log.
    use sluice_core::destination::{Destination, RunLog};
    assert_eq!(store.get_state(INSTANCE, "items").unwrap(), None);
    assert!(store
        .list_quarantine(&QuarantineFilter::default())
        .unwrap()
        .is_empty());
    // Later commits fail too (the output may end in half a line), and the
    // run's end is still recorded.
    let err = commit(&mut store, "r", &Pending::default(), Some(("items", "{}"))).unwrap_err();
    assert!(err.to_string().contains("earlier write"), "{err}");
    end_run(&mut store, "r", RunStatus::StoreError, Some(&shown));
    assert_eq!(store.get_run("r").unwrap().status, RunStatus::StoreError);
}

#[test]
fn a_fenced_commit_writes_nothing_and_replay_and_sweeps_are_refused_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, out) =
        protocol_store(ProtocolFormat::Airbyte, &dir.path().join("log.db"), None);
    start_run(&mut store, "old");
    // The lease expires and another run takes it over.
    use sluice_core::destination::{Destination, RunLog};
    store.release_lease(INSTANCE, "old").unwrap();
    assert_eq!(
        store
            .claim_lease(INSTANCE, "new", "here:2", LONG_TTL)
            .unwrap(),
        None
    );
    let (items, _) = tables();
    let pending = Pending {
        batches: vec![(
            items.clone(),
            vec![items
                .row(r#"{"id":1,"name":"a","tags":[],"meta":{}}"#.into())
                .unwrap()],
        )],
        ..Pending::default()
    };
    let err = commit(&mut store, "old", &pending, Some(("items", "{}"))).unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert_eq!(out.text(), "", "a fenced-off run delivers nothing");
    assert_eq!(store.get_state(INSTANCE, "items").unwrap(), None);

    // The new run commits; a full refresh's sweep deletes nothing anywhere.
    let stats = store
        .commit(&CommitRequest {
            run_id: "new",
            connector: INSTANCE,
            connector_version: "1.0",
            pending: &pending,
            state: None,
            sweep: std::slice::from_ref(&items),
        })
        .unwrap();
    assert_eq!((stats.upserted, stats.swept), (1, 0));
    assert_eq!(out.lines().len(), 1);
    let err = store
        .apply_replay(&sluice_core::destination::ReplayPlan::default())
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(store.scan(&format!("{INSTANCE}__items")).unwrap().is_none());
}

#[test]
fn the_writer_thread_holds_a_protocol_store_like_any_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, out) = protocol_store(ProtocolFormat::Singer, &dir.path().join("log.db"), None);
    start_run(&mut store, "r");
    let (items, _) = tables();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let handle = sluice_store::WriterHandle::spawn(Box::new(store));
        let writer = handle.writer.clone();
        let run: Arc<str> = "r".into();
        for id in [1, 2] {
            let row = items
                .row(format!(r#"{{"id":{id},"name":"n","tags":[],"meta":{{}}}}"#))
                .unwrap();
            let pending = Pending {
                batches: vec![(items.clone(), vec![row])],
                ..Pending::default()
            };
            writer.append(run.clone(), pending).await.unwrap();
        }
        let stats = writer
            .commit(sluice_store::Commit {
                run_id: run.clone(),
                connector: INSTANCE.into(),
                connector_version: "1.0".into(),
                state: Some(("items".into(), r#"{"cursor":2}"#.into())),
                sweep: vec![],
            })
            .await
            .unwrap();
        assert_eq!(stats.upserted, 2);
        assert_eq!(stats.upserted_by_stream["items"], 2);
        let state = writer
            .call(|s| s.get_state(INSTANCE, "items"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.as_deref(), Some(r#"{"cursor":2}"#));
        drop(writer);
        handle.close().await;
    });
    let kinds: Vec<String> = out
        .lines()
        .iter()
        .map(|m| m["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["SCHEMA", "RECORD", "RECORD", "STATE"]);
}
