//! Many connectors at once, through the `sluice` binary: the connector
//! registry (`sluice connectors`, `sluice run NAME`), the operator config
//! file (`sluice.toml`) and `sluice sync` of many instances in one process.
//! Every upstream is a loopback fixture the test starts.

use crate::common;

use std::path::{Path, PathBuf};

use common::{count, db, guest, sluice, Scratch};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;

fn start_items(total: u64) -> Running {
    let (router, _) = items::router(ItemsConfig {
        total,
        ..Default::default()
    });
    Running::start(router, 0).unwrap()
}

/// A registry directory with the items and open-meteo connectors.
fn registry(s: &Scratch) -> PathBuf {
    let dir = s.path("registry");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["items", "open_meteo"] {
        std::fs::copy(guest(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    // Not components: ignored (no .wasm extension) or listed as unusable.
    std::fs::write(dir.join("README.txt"), "not a connector").unwrap();
    dir
}

fn json(out: &common::Out) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// Every row of `instance`'s `items` table in `path` is what the fixture
/// serves for its id, and there are exactly `total` of them.
fn assert_items(path: &Path, instance: &str, total: u64) {
    let conn = db(path);
    let table = sluice_core::instance::default_table(instance, "items");
    assert_eq!(
        count(&conn, &format!("SELECT count(*) FROM {table}")) as u64,
        total,
        "{}",
        path.display()
    );
    let config = ItemsConfig {
        total,
        ..Default::default()
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, name, email, updated_at, _record FROM {table}"
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (id, name, email, updated_at, record) = row.unwrap();
        let expected = items::item(&config, id as u64);
        assert_eq!(name, expected["name"], "{}", path.display());
        assert_eq!(email, expected["email"]);
        assert_eq!(updated_at, expected["updated_at"]);
        let record: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert_eq!(record, expected);
    }
}

/// (connector key, records_upserted, status) of every run in `path`.
fn run_rows(path: &Path) -> Vec<(String, i64, String)> {
    let conn = db(path);
    let mut stmt = conn
        .prepare(
            "SELECT connector, records_upserted, status FROM _sluice_runs ORDER BY started_at, id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn sync_runs_twenty_instances_four_at_a_time_and_a_failure_stays_alone() {
    let s = Scratch::new();
    registry(&s);
    std::fs::create_dir_all(s.path("db")).unwrap();
    let sizes = [120u64, 700, 1_500];
    let fixtures: Vec<Running> = sizes.iter().map(|&n| start_items(n)).collect();
    let page_sizes = [50, 100, 250, 1_000];

    let mut toml = String::from("db = \"shared.db\"\nconnectors_dir = \"registry\"\n");
    let mut expected = Vec::new();
    for i in 0..20 {
        let fx = &fixtures[i % 3];
        let name = format!("item-{i:02}");
        // Half by registry name, half by path (relative to sluice.toml).
        let component = if i % 2 == 0 {
            "items"
        } else {
            "registry/items.wasm"
        };
        toml.push_str(&format!(
            "\n[instances.{name}]\ncomponent = \"{component}\"\nallow_hosts = [\"127.0.0.1:{}\"]\n\
             config = {{ base_url = \"{}\", page_size = {} }}\n",
            fx.addr.port(),
            fx.base_url(),
            page_sizes[i % 4]
        ));
        // The last two share the default database (each with its own
        // `items` table).
        if i < 18 {
            toml.push_str(&format!("db = \"db/{name}.db\"\n"));
        }
        expected.push((name, sizes[i % 3]));
    }
    // Two that must fail, each alone: a guest that panics after committing
    // 30 records, and an items instance granted no host.
    toml.push_str(&format!(
        "\n[instances.broken-panic]\ncomponent = \"{}\"\ndb = \"db/broken-panic.db\"\n\
         config = {{ behaviour = \"panic\", committed = 30, uncommitted = 5 }}\n",
        guest("misbehave").display()
    ));
    toml.push_str(&format!(
        "\n[instances.broken-nogrant]\ncomponent = \"items\"\ndb = \"db/broken-nogrant.db\"\n\
         config = {{ base_url = \"{}\" }}\n",
        fixtures[0].base_url()
    ));
    // And one that cannot even start: its secret's variable is unset.
    toml.push_str(&format!(
        "\n[instances.broken-secret]\ncomponent = \"items\"\ndb = \"db/broken-secret.db\"\n\
         allow_hosts = [\"127.0.0.1:{}\"]\nconfig = {{ base_url = \"{}\" }}\n\
         secrets = {{ TOKEN = \"env:SLUICE_TEST_SURELY_UNSET\" }}\n",
        fixtures[0].addr.port(),
        fixtures[0].base_url()
    ));
    let config_file = s.write("sluice.toml", &toml);

    let out = sluice([
        "sync".as_ref(),
        "--config-file".as_ref(),
        config_file.as_os_str(),
        "--concurrency".as_ref(),
        "4".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let outcomes = json(&out);
    let outcomes = outcomes.as_array().unwrap();
    assert_eq!(outcomes.len(), 23, "{out:?}");
    let by_name = |n: &str| {
        outcomes
            .iter()
            .find(|o| o["instance"] == n)
            .unwrap_or_else(|| panic!("no outcome for {n}: {out:?}"))
    };
    assert_eq!(by_name("broken-panic")["status"], "trapped", "{out:?}");
    assert_eq!(by_name("broken-nogrant")["status"], "failed", "{out:?}");
    assert!(
        by_name("broken-nogrant")["error"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{out:?}"
    );
    let o = by_name("broken-secret");
    assert_eq!(o["status"], "error", "{o}");
    assert!(
        o["error"]
            .as_str()
            .unwrap()
            .contains("SLUICE_TEST_SURELY_UNSET"),
        "{o}"
    );
    assert!(o["run_id"].is_null(), "{o}");
    for (name, total) in &expected {
        let o = by_name(name);
        assert_eq!(o["status"], "succeeded", "{name}: {o}");
        assert_eq!(o["records_upserted"], *total, "{name}: {o}");
    }

    // Every instance with its own database has exactly its rows, its run
    // keyed by its instance name, and its state under that name.
    for (name, total) in &expected[..18] {
        let path = s.path(&format!("db/{name}.db"));
        assert_items(&path, name, *total);
        assert_eq!(
            run_rows(&path),
            [(name.clone(), *total as i64, "succeeded".to_string())]
        );
        let conn = db(&path);
        assert_eq!(
            count(
                &conn,
                &format!("SELECT count(*) FROM _sluice_state WHERE connector = '{name}' AND stream = 'items'")
            ),
            1
        );
    }
    // At most four ran at once, and they did overlap: each run's recorded
    // span lies inside the time it held a slot.
    let mut spans: Vec<(String, String)> = Vec::new();
    let mut dbs: Vec<PathBuf> = expected[..18]
        .iter()
        .map(|(n, _)| s.path(&format!("db/{n}.db")))
        .collect();
    dbs.push(s.path("shared.db"));
    dbs.push(s.path("db/broken-panic.db"));
    dbs.push(s.path("db/broken-nogrant.db"));
    for path in &dbs {
        let conn = db(path);
        let mut stmt = conn
            .prepare("SELECT started_at, ended_at FROM _sluice_runs")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<(String, String)>, _>>()
            .unwrap();
        spans.extend(rows);
    }
    assert_eq!(spans.len(), 22);
    let most_at_once = spans
        .iter()
        .map(|(start, _)| {
            // RFC 3339 UTC with milliseconds compares as text.
            spans
                .iter()
                .filter(|(s2, e2)| s2.as_str() <= start.as_str() && start.as_str() < e2.as_str())
                .count()
        })
        .max()
        .unwrap();
    assert!((2..=4).contains(&most_at_once), "{most_at_once} at once");

    // The failing guest's committed records are there, and only those.
    let panic_db = db(&s.path("db/broken-panic.db"));
    assert_eq!(
        count(&panic_db, "SELECT count(*) FROM broken_panic__items"),
        30
    );

    // Two instances of one connector in one database: a table, a run and
    // a state each.
    let shared = s.path("shared.db");
    assert_items(&shared, "item-18", 120);
    assert_items(&shared, "item-19", 700);
    let mut runs = run_rows(&shared);
    runs.sort();
    assert_eq!(
        runs,
        [
            ("item-18".to_string(), 120, "succeeded".to_string()),
            ("item-19".to_string(), 700, "succeeded".to_string())
        ]
    );
    let conn = db(&shared);
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM _sluice_state WHERE connector IN ('item-18', 'item-19')"
        ),
        2
    );
    drop(conn);

    // Named instances only, plain progress lines (stdout is not a
    // terminal): each resumes from its own state and reads nothing new.
    let out = sluice([
        "sync".as_ref(),
        "item-19".as_ref(),
        "item-18".as_ref(),
        "--config-file".as_ref(),
        config_file.as_os_str(),
    ]);
    assert!(out.ok, "{out:?}");
    for name in ["item-18", "item-19"] {
        assert!(out.stdout.contains(&format!("start {name}")), "{out:?}");
        assert!(
            out.stdout
                .contains(&format!("done  {name} succeeded, 0 records")),
            "{out:?}"
        );
    }
    assert!(out.stdout.contains("2 of 2 instances succeeded"), "{out:?}");
    assert!(!out.stdout.contains("item-00"), "{out:?}");
    let mut runs = run_rows(&shared);
    runs.sort();
    assert_eq!(runs.len(), 4);
    assert!(
        runs.iter()
            .filter(|r| r.2 == "succeeded" && r.1 == 0)
            .count()
            == 2
    );
}

#[test]
fn registry_lists_connectors_and_refuses_two_with_one_name() {
    let s = Scratch::new();
    let dir = registry(&s);
    let out = sluice([
        "connectors".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let v = json(&out);
    let items = &v["entries"]["items"];
    assert_eq!(items["version"], "0.1.0");
    assert_eq!(items["streams"], serde_json::json!(["items"]));
    assert_eq!(items["hosts"], serde_json::json!([]));
    assert_eq!(items["path"], dir.join("items.wasm").to_str().unwrap());
    let om = &v["entries"]["open-meteo"];
    assert_eq!(om["streams"], serde_json::json!(["hourly_weather"]));
    assert_eq!(om["hosts"], serde_json::json!(["api.open-meteo.com"]));

    let out = sluice([
        "connectors".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert!(out.ok, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("open-meteo"))
        .unwrap();
    assert!(line.contains("hourly_weather") && line.contains("api.open-meteo.com"));
    let line = out.stdout.lines().find(|l| l.starts_with("items")).unwrap();
    assert!(
        line.contains(" - ") && line.contains("items.wasm"),
        "{line}"
    );

    // A second component claiming `items`: a one-line error naming both.
    std::fs::copy(guest("items"), dir.join("zz-items-copy.wasm")).unwrap();
    let out = sluice([
        "connectors".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("\"items\""), "{out:?}");
    assert!(out.stderr.contains("items.wasm"), "{out:?}");
    assert!(out.stderr.contains("zz-items-copy.wasm"), "{out:?}");

    // A missing directory is a clear error too.
    let out = sluice([
        "connectors".as_ref(),
        "--connectors-dir".as_ref(),
        s.path("nope").as_os_str(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("nope"), "{out:?}");
}

#[test]
fn run_accepts_a_registered_name() {
    let s = Scratch::new();
    let dir = registry(&s);
    let fx = start_items(250);
    let config = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 100}}"#, fx.base_url()),
    );
    let db_path = s.path("run.db");
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let out = sluice([
        "run".as_ref(),
        "items".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--db".as_ref(),
        db_path.as_os_str(),
        "--allow-host".as_ref(),
        grant.as_ref(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    let report = json(&out);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["connector"], "items");
    assert_eq!(report["records_upserted"], 250);
    assert_items(&db_path, "items", 250);

    // An unknown name says which names there are.
    let out = sluice([
        "run".as_ref(),
        "itemz".as_ref(),
        "--connectors-dir".as_ref(),
        dir.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--db".as_ref(),
        db_path.as_os_str(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("itemz") && out.stderr.contains("items, open-meteo"),
        "{out:?}"
    );
}

#[test]
fn bad_sluice_toml_is_refused_naming_the_file_and_key() {
    let s = Scratch::new();
    let sync = |file: &Path, extra: &[&str]| {
        let mut args: Vec<std::ffi::OsString> =
            vec!["sync".into(), "--config-file".into(), file.into()];
        args.extend(extra.iter().map(|a| a.into()));
        sluice(args)
    };
    let cases = [
        (
            "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\ncolour = \"red\"\n",
            ":4:",
            "colour",
        ),
        ("db = \"x.db\"\nconcurency = 3\n", ":2:", "concurency"),
        (
            "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\nlimits = { fuel = 1, memroy = \"1MiB\" }\n",
            ":4:",
            "memroy",
        ),
        (
            "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\nallow_hosts = [\"http://a/b\"]\n",
            ":4:",
            "allow_hosts",
        ),
        ("db = \"x.db\"\n[instances.a]\n", ":2:", "component"),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let file = s.write(&format!("bad-{i}.toml"), text);
        let out = sync(&file, &[]);
        assert_eq!(out.code, Some(1), "{text}: {out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{text}: {out:?}");
        assert!(
            err.contains(&format!("bad-{i}.toml{line}")),
            "{text}: {err}"
        );
        assert!(err.contains(key), "{text}: {err}");
    }

    // An instance the file does not define, and a missing file.
    let file = s.write(
        "ok.toml",
        "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\n",
    );
    let out = sync(&file, &["b"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no instance named \"b\"") && out.stderr.contains("ok.toml"),
        "{out:?}"
    );
    let out = sync(&s.path("missing.toml"), &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("missing.toml"), "{out:?}");
}

#[test]
fn sixteen_instances_into_one_database_eight_at_a_time_share_its_writer() {
    // Every run of the process that writes one database shares its one
    // write connection, so concurrent runs never meet SQLite's lock.
    let s = Scratch::new();
    let fixtures = [start_items(150), start_items(40)];
    let mut toml = String::from("db = \"shared.db\"\n");
    for i in 0..16 {
        let fx = &fixtures[i % 2];
        toml.push_str(&format!(
            "\n[instances.inst-{i:02}]\ncomponent = \"{}\"\nallow_hosts = [\"127.0.0.1:{}\"]\n\
             config = {{ base_url = \"{}\", page_size = 25 }}\n",
            guest("items").display(),
            fx.addr.port(),
            fx.base_url(),
        ));
    }
    let config_file = s.write("sluice.toml", &toml);
    for round in 0..20 {
        for f in ["shared.db", "shared.db-wal", "shared.db-shm"] {
            let _ = std::fs::remove_file(s.path(f));
        }
        let out = sluice([
            "sync".as_ref(),
            "--concurrency".as_ref(),
            "8".as_ref(),
            "--config-file".as_ref(),
            config_file.as_os_str(),
        ]);
        assert!(out.ok, "round {round}: {out:?}");
        assert!(
            out.stdout.contains("16 of 16 instances succeeded"),
            "round {round}: {}",
            out.stdout
        );
    }
    for i in 0..16 {
        assert_items(
            &s.path("shared.db"),
            &format!("inst-{i:02}"),
            [150, 40][i % 2],
        );
    }
}

/// Extreme values of every key of an instance's `limits` and `http`
/// tables: one `error:` line naming the file, line and key, exit 1, no
/// panic, nothing run. The same bounds as the flags (tests/it/cli.rs).
#[test]
fn every_limit_key_refuses_extreme_values() {
    let s = Scratch::new();
    let counts = ["-1", "18446744073709551616", "1e20", "nan", "1.5", "\"x\""];
    let sizes = [
        "0",
        "-1",
        "18446744073709551616",
        "\"16EiB\"",
        "1e30",
        "nan",
        "\"0MiB\"",
        "\"12 parsecs\"",
    ];
    let durations = [
        "0",
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e20",
        "1e-9",
        "31536001",
        "\"1000000y\"",
        "\"0s\"",
        "\"soon\"",
    ];
    let small_counts = ["-1", "4294967296", "nan", "1.5"];
    let mut cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("limits", "fuel", [&counts[..], &["0"]].concat()),
        ("limits", "memory", [&sizes[..], &["65535"]].concat()),
        ("limits", "timeout", durations.to_vec()),
        ("limits", "max_http_requests", counts.to_vec()),
        ("limits", "max_http_denied", counts.to_vec()),
        ("http", "timeout", durations.to_vec()),
        ("http", "retries", [&small_counts[..], &["21"]].concat()),
        ("http", "breaker_threshold", small_counts.to_vec()),
        ("http", "breaker_cooldown", durations.to_vec()),
        (
            "http",
            "max_in_flight",
            [&small_counts[..], &["0", "257"]].concat(),
        ),
        (
            "http",
            "rate_limits",
            vec!["[\"x=0\"]", "[\"x=inf\"]", "[\"x=1/0\"]", "\"x=1\"", "[1]"],
        ),
    ];
    for key in [
        "max_http_bytes",
        "max_emit_bytes",
        "max_record_bytes",
        "max_state_bytes",
    ] {
        cases.push(("limits", key, sizes.to_vec()));
    }
    let mut n = 0;
    for (table, key, values) in cases {
        for value in values {
            n += 1;
            // Both spellings: an inline table, and a [header] table.
            for (i, text) in [
                format!(
                    "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\n{table} = {{ {key} = {value} }}\n"
                ),
                format!(
                    "db = \"x.db\"\n[instances.a]\ncomponent = \"items\"\n[instances.a.{table}]\n{key} = {value}\n"
                ),
            ]
            .iter()
            .enumerate()
            {
                let name = format!("bad-{n}-{i}.toml");
                let file = s.write(&name, text);
                let out = sluice(["sync".as_ref(), "--config-file".as_ref(), file.as_os_str()]);
                assert_eq!(out.code, Some(1), "{text}: {out:?}");
                let err = out.stderr.trim();
                assert_eq!(err.lines().count(), 1, "{text}: {out:?}");
                assert!(err.starts_with("error: "), "{text}: {err}");
                let line = if i == 0 { 4 } else { 5 };
                assert!(err.contains(&format!("{name}:{line}:")), "{text}: {err}");
                assert!(err.contains(key), "{text}: {err}");
                assert!(!s.path("x.db").exists(), "{text}: something ran");
            }
        }
    }
}

/// A sluice.toml without instances is an error, not "0 of 0 succeeded".
#[test]
fn a_sluice_toml_without_instances_is_an_error() {
    let s = Scratch::new();
    for (i, text) in ["", "db = \"x.db\"\n", "db = \"x.db\"\n[instances]\n"]
        .iter()
        .enumerate()
    {
        let file = s.write(&format!("empty-{i}.toml"), text);
        let out = sluice(["sync".as_ref(), "--config-file".as_ref(), file.as_os_str()]);
        assert_eq!(out.code, Some(1), "{text:?}: {out:?}");
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{text:?}: {out:?}");
        assert!(
            err.starts_with("error: ") && err.contains("no instances"),
            "{text:?}: {err}"
        );
        assert!(!out.stdout.contains("0 of 0"), "{out:?}");
    }
}
