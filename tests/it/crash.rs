//! Exactly-once under crashes: the CLI runs the `items` connector in a child
//! process against a fixture of 50,000 records (some invalid, some
//! drifting); the test SIGKILLs it at random moments, checks after every
//! kill that the committed state is never ahead of the data (and the data
//! never ahead of the state), reruns until a run completes, and compares the
//! final tables with a clean run's: identical rows, no duplicates, identical
//! quarantine. The same on Postgres, on a throwaway server.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, db, guest, Scratch};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;

/// Records served.
const RECORDS: u64 = 50_000;
/// Kills required across the test.
const MIN_KILLS: usize = 20;
/// Kills required on Postgres (each round's clean run is slower there).
const MIN_KILLS_POSTGRES: usize = 10;
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

fn spawn_run(config: &Path, db: &Target, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", guest("items").to_str().unwrap(), "--config"])
        .arg(config)
        .arg("--db")
        .arg(db.arg())
        .args(["--allow-host", &format!("127.0.0.1:{port}")])
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice")
}

/// A destination the test runs into and reads back.
enum Target {
    Sqlite(PathBuf),
    /// A schema of a throwaway server.
    Postgres {
        server: String,
        schema: String,
    },
}

/// The queries the test asks, in each backend's SQL (`{s}` is the
/// schema prefix: empty for SQLite).
const ROWS: &str = "SELECT {json}(id, updated_at, name, email, amount, active, tags, version, note, _record){text} \
     FROM {s}items__items ORDER BY id";
const QUARANTINE: &str =
    "SELECT {json}(stream, record, errors, status){text} FROM {s}_sluice_quarantine ORDER BY record";
const STATE: &str = "SELECT value FROM {s}_sluice_state WHERE connector = 'items'";

impl Target {
    fn arg(&self) -> String {
        match self {
            Target::Sqlite(p) => p.display().to_string(),
            Target::Postgres { server, schema } => format!("{server}?schema={schema}"),
        }
    }

    fn sql(&self, template: &str) -> String {
        let (json, text, s) = match self {
            Target::Sqlite(_) => ("json_array", "", String::new()),
            Target::Postgres { schema, .. } => ("json_build_array", "::text", format!("{schema}.")),
        };
        template
            .replace("{json}", json)
            .replace("{text}", text)
            .replace("{s}", &s)
    }

    /// Has a run made its tables?
    fn has(&self, table: &str) -> bool {
        match self {
            Target::Sqlite(p) => {
                p.exists()
                    && count(
                        &db(p),
                        &format!("SELECT count(*) FROM sqlite_master WHERE name = '{table}'"),
                    ) == 1
            }
            Target::Postgres { server, schema } => {
                let mut c = postgres::Client::connect(server, postgres::NoTls).unwrap();
                c.query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("{schema}.{table}")],
                )
                .unwrap()
                .get(0)
            }
        }
    }

    /// Every value of the one text column `template` selects.
    fn strings(&self, template: &str) -> Vec<String> {
        let sql = self.sql(template);
        match self {
            Target::Sqlite(p) => db(p)
                .prepare(&sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            Target::Postgres { server, .. } => {
                let mut c = postgres::Client::connect(server, postgres::NoTls).unwrap();
                c.query(&sql, &[])
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            }
        }
    }

    /// The one number `template` selects (an integer count).
    fn count(&self, template: &str) -> i64 {
        let sql = self.sql(template);
        match self {
            Target::Sqlite(p) => count(&db(p), &sql),
            Target::Postgres { server, .. } => {
                let mut c = postgres::Client::connect(server, postgres::NoTls).unwrap();
                c.query_one(&sql, &[]).unwrap().get(0)
            }
        }
    }
}

/// Everything a run leaves behind that must match a clean run's.
fn tables(t: &Target) -> (Vec<String>, Vec<String>, Option<String>) {
    (
        t.strings(ROWS),
        t.strings(QUARANTINE),
        t.strings(STATE).into_iter().next(),
    )
}

/// After a kill: rows and quarantine hold exactly the records up to the
/// committed cursor — state never ahead of the data, data never ahead of it.
fn assert_consistent(t: &Target, valid_upto: &dyn Fn(&str) -> (i64, i64)) {
    let state = if t.has("_sluice_state") {
        t.strings(STATE).into_iter().next()
    } else {
        None
    };
    let cursor = state.as_deref().map(|v| {
        serde_json::from_str::<serde_json::Value>(v).unwrap()["updated_at"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let (rows, quarantined) = if t.has("items__items") {
        (
            t.count("SELECT count(*) FROM {s}items__items"),
            t.count("SELECT count(*) FROM {s}_sluice_quarantine"),
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
            // The cursor is an RFC 3339 timestamp: no quote in it.
            let beyond = t.count(&format!(
                "SELECT count(*) FROM {{s}}items__items WHERE updated_at > '{c}'"
            ));
            assert_eq!(beyond, 0, "rows past the committed cursor");
        }
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let s = Scratch::new();
    crash_until(MIN_KILLS, |name| {
        Target::Sqlite(s.path(&format!("{name}.db")))
    });
}

/// The same on Postgres: a throwaway server, a schema per round.
#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing_on_postgres() {
    let cluster = sluice_fixture::postgres::Cluster::start();
    crash_until(MIN_KILLS_POSTGRES, |name| Target::Postgres {
        server: cluster.url.clone(),
        schema: name.replace('-', "_"),
    });
}

/// Kill runs into fresh targets (`target(name)`) at random moments until
/// `min_kills` kills, checking after each; then every round's final
/// tables against a clean run's.
fn crash_until(min_kills: usize, target: impl Fn(&str) -> Target) {
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
    let clean = target("clean");
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
    while kills < min_kills {
        round += 1;
        assert!(
            round <= 40,
            "could not land {min_kills} kills (clean run {clean_time:?})"
        );
        let crash = target(&format!("crash-{round}"));
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
                assert_consistent(&crash, &valid_upto);
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
        let crashed = crash.count("SELECT count(*) FROM {s}_sluice_runs WHERE status = 'crashed'");
        let running = crash.count("SELECT count(*) FROM {s}_sluice_runs WHERE status = 'running'");
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
