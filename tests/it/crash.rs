//! Exactly-once under crashes: the CLI runs the `items` connector in a child
//! process against a fixture of 50,000 records (some invalid, some
//! drifting); the test SIGKILLs it at random moments, checks after every
//! kill that the committed state is never ahead of the data (and the data
//! never ahead of the state), reruns until a run completes, and compares the
//! final tables with a clean run's: identical rows, no duplicates, identical
//! quarantine.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, db, guest, Scratch};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;

/// Records served.
const RECORDS: u64 = 50_000;
/// Kills required across the test.
const MIN_KILLS: usize = 20;
/// Fixed seed, so a failure can be replayed.
const SEED: u64 = 0x5EED_CAFE_F00D;

/// xorshift64*: a tiny deterministic generator for kill moments.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn spawn_run(config: &Path, db: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", guest("items").to_str().unwrap(), "--config"])
        .arg(config)
        .arg("--db")
        .arg(db)
        .args(["--allow-host", &format!("127.0.0.1:{port}")])
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice")
}

/// Everything a run leaves behind that must match a clean run's.
fn tables(path: &Path) -> (Vec<String>, Vec<String>, Option<String>) {
    let conn = db(path);
    let rows = conn
        .prepare(
            "SELECT json_array(id, updated_at, name, email, amount, active, tags, version, note, _record) \
             FROM items__items ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let quarantine = conn
        .prepare("SELECT json_array(stream, record, errors, status) FROM _sluice_quarantine ORDER BY record")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let state = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'items'",
            [],
            |r| r.get(0),
        )
        .ok();
    (rows, quarantine, state)
}

/// After a kill: rows and quarantine hold exactly the records up to the
/// committed cursor — state never ahead of the data, data never ahead of it.
fn assert_consistent(path: &Path, valid_upto: &dyn Fn(&str) -> (i64, i64)) {
    let conn = db(path);
    let tables_exist = count(
        &conn,
        "SELECT count(*) FROM sqlite_master WHERE name = 'items__items'",
    ) == 1;
    let state: Option<String> = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = 'items'",
            [],
            |r| r.get(0),
        )
        .ok();
    let cursor = state.as_deref().map(|v| {
        serde_json::from_str::<serde_json::Value>(v).unwrap()["updated_at"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let (rows, quarantined) = if tables_exist {
        (
            count(&conn, "SELECT count(*) FROM items__items"),
            count(&conn, "SELECT count(*) FROM _sluice_quarantine"),
        )
    } else {
        (0, 0)
    };
    match cursor {
        None => assert_eq!((rows, quarantined), (0, 0), "data without state"),
        Some(c) => {
            let (valid, invalid) = valid_upto(&c);
            assert_eq!(rows, valid, "rows vs committed cursor {c}");
            assert_eq!(quarantined, invalid, "quarantine vs committed cursor {c}");
            let beyond: i64 = conn
                .query_row(
                    "SELECT count(*) FROM items__items WHERE updated_at > ?1",
                    [&c],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(beyond, 0, "rows past the committed cursor");
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let fixture = ItemsConfig {
        total: RECORDS,
        wrong_type_every: Some(997),
        missing_name_every: Some(1999),
        drift_from: Some(45_000),
        ..Default::default()
    };
    let (router, _state) = items::router(fixture.clone());
    let fx = Running::start(router, 0).unwrap();
    let port = fx.addr.port();
    let s = Scratch::new();
    let config = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 1000}}"#, fx.base_url()),
    );

    // Expected counts per cursor, from the fixture's own definition.
    let ids = items::served_ids(&fixture);
    let invalid = |id: u64| id % 997 == 996 || id % 1999 == 1997;
    let valid_upto = |cursor: &str| -> (i64, i64) {
        let upto = ids
            .iter()
            .filter(|&&id| items::rfc3339(items::updated_secs(&fixture, id)).as_str() <= cursor);
        let (mut v, mut q) = (0, 0);
        for &id in upto {
            if invalid(id) {
                q += 1
            } else {
                v += 1
            }
        }
        (v, q)
    };

    // The clean run.
    let clean = s.path("clean.db");
    let start = Instant::now();
    let status = spawn_run(&config, &clean, port).wait().unwrap();
    let clean_time = start.elapsed();
    assert!(status.success(), "clean run failed");
    let expected = tables(&clean);
    assert_eq!(expected.0.len() as u64 + expected.1.len() as u64, RECORDS);
    assert!(!expected.1.is_empty());

    // Crashing runs, in rounds on fresh databases, until enough kills.
    let mut rng = Rng(SEED);
    let mut kills = 0;
    let mut total_crashed = 0;
    let mut round = 0;
    while kills < MIN_KILLS {
        round += 1;
        assert!(
            round <= 40,
            "could not land {MIN_KILLS} kills (clean run {clean_time:?})"
        );
        let crash = s.path(&format!("crash-{round}.db"));
        let mut round_kills = 0;
        loop {
            let mut child = spawn_run(&config, &crash, port);
            let wait_ms = rng.below(clean_time.as_millis() as u64 + 50);
            std::thread::sleep(Duration::from_millis(wait_ms));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                round_kills += 1;
                if crash.exists() {
                    assert_consistent(&crash, &valid_upto);
                }
                continue;
            }
            assert!(child.wait().unwrap().success(), "a rerun failed");
            break;
        }
        let got = tables(&crash);
        assert_eq!(got.0.len(), expected.0.len(), "round {round}: row count");
        assert!(
            got.0 == expected.0,
            "round {round}: rows differ from the clean run"
        );
        assert!(
            got.1 == expected.1,
            "round {round}: quarantine differs from the clean run"
        );
        assert_eq!(got.2, expected.2, "round {round}: final state");
        // Every killed run is in the history, marked crashed by a later run.
        let history = db(&crash);
        let crashed = count(
            &history,
            "SELECT count(*) FROM _sluice_runs WHERE status = 'crashed'",
        );
        let running = count(
            &history,
            "SELECT count(*) FROM _sluice_runs WHERE status = 'running'",
        );
        assert_eq!(running, 0, "round {round}: runs left 'running'");
        assert!(
            crashed <= round_kills as i64,
            "round {round}: more crashed runs than kills"
        );
        total_crashed += crashed;
        eprintln!("round {round}: identical to the clean run after {kills} kills so far");
    }
    assert!(
        total_crashed > 0,
        "killed runs must show up as crashed in the history"
    );
}
