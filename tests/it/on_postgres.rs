//! The CLI on the Postgres destination, against a real throwaway server
//! (`scripts/pg-cluster.sh`): `--db postgres://…` runs, resumes, lists
//! runs, quarantine and drift, and replays as on SQLite; passwords come
//! from references, `PGPASSWORD` or the passfile and never show.

use crate::common;

use common::{guest, sluice, sluice_env, Scratch};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::postgres::Cluster;
use sluice_fixture::Running;

fn json(out: &common::Out) -> serde_json::Value {
    assert!(out.ok, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Ids 9, 19, …, 99 are quarantined (amount a string); 90.. drift.
fn fixture() -> Running {
    let (router, _state) = items::router(ItemsConfig {
        total: 100,
        wrong_type_every: Some(10),
        drift_from: Some(90),
        ..Default::default()
    });
    Running::start(router, 0).unwrap()
}

fn run_args(s: &Scratch, fx: &Running, db: &str) -> Vec<String> {
    let cfg = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 30}}"#, fx.base_url()),
    );
    vec![
        "run".into(),
        guest("items").display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--db".into(),
        db.into(),
        "--allow-host".into(),
        format!("127.0.0.1:{}", fx.addr.port()),
        "--json".into(),
    ]
}

fn ids_pg(cluster: &Cluster, schema: &str) -> Vec<i64> {
    ids_pg_table(cluster, schema, "items__items")
}

fn ids_pg_table(cluster: &Cluster, schema: &str, table: &str) -> Vec<i64> {
    let mut c = postgres::Client::connect(&cluster.url, postgres::NoTls).unwrap();
    c.query(&format!("SELECT id FROM {schema}.{table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn ids_sqlite(path: &std::path::Path) -> Vec<i64> {
    common::db(path)
        .prepare("SELECT id FROM items__items ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The counts a run report has, which both backends must agree on.
fn counts(report: &serde_json::Value) -> Vec<serde_json::Value> {
    [
        "status",
        "records_emitted",
        "records_valid",
        "records_quarantined",
        "records_upserted",
    ]
    .iter()
    .map(|k| report[k].clone())
    .collect()
}

#[test]
fn the_cli_runs_resumes_and_reads_back_on_postgres_as_on_sqlite() {
    let cluster = Cluster::start();
    let fx = fixture();
    let s = Scratch::new();
    let pg = cluster.url_in("raw");
    let lite = s.path("sluice.db");
    let lite_arg = lite.display().to_string();

    let first_pg = json(&sluice(run_args(&s, &fx, &pg)));
    let first_lite = json(&sluice(run_args(&s, &fx, &lite_arg)));
    assert_eq!(first_pg["status"], "succeeded", "{first_pg}");
    assert_eq!(counts(&first_pg), counts(&first_lite));
    assert_eq!(first_pg["records_quarantined"], 10, "{first_pg}");
    assert_eq!(ids_pg(&cluster, "raw"), ids_sqlite(&lite));
    assert_eq!(ids_pg(&cluster, "raw").len(), 90);

    // The second run resumes from the state committed in Postgres.
    let second_pg = json(&sluice(run_args(&s, &fx, &pg)));
    let second_lite = json(&sluice(run_args(&s, &fx, &lite_arg)));
    assert_eq!(counts(&second_pg), counts(&second_lite));
    assert!(
        second_pg["records_emitted"].as_u64().unwrap() < 100,
        "the second run re-read everything: {second_pg}"
    );
    assert_eq!(ids_pg(&cluster, "raw"), ids_sqlite(&lite));

    // The reading commands, on both.
    let read = |db: &str, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--db", db, "--json"]);
        json(&sluice(&all))
    };
    let runs = read(&pg, &["runs"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    assert!(runs
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "succeeded"));
    let id = first_pg["id"].as_str().unwrap();
    assert_eq!(read(&pg, &["runs", "show", id])["id"], id);
    let q_pg = read(&pg, &["quarantine", "list"]);
    let q_lite = read(&lite_arg, &["quarantine", "list"]);
    assert_eq!(
        q_pg.as_array().unwrap().len(),
        q_lite.as_array().unwrap().len()
    );
    assert!(!q_pg.as_array().unwrap().is_empty());
    let first_q = q_pg[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(
        read(&pg, &["quarantine", "show", &first_q])["id"].as_i64(),
        q_pg[0]["id"].as_i64()
    );
    let d_pg = read(&pg, &["drift"]);
    let d_lite = read(&lite_arg, &["drift"]);
    assert!(!d_pg.as_array().unwrap().is_empty(), "{d_pg}");
    assert_eq!(
        d_pg.as_array().unwrap().len(),
        d_lite.as_array().unwrap().len()
    );
    // A replay against the same schema replays nothing and says so alike.
    let r_pg = read(&pg, &["quarantine", "replay"]);
    let r_lite = read(&lite_arg, &["quarantine", "replay"]);
    assert_eq!(r_pg["replayed"], r_lite["replayed"], "{r_pg} vs {r_lite}");
    assert_eq!(r_pg["still_invalid"], r_lite["still_invalid"]);

    // State, on Postgres: shown, and a reset makes the next run read all.
    let state = read(&pg, &["state", "show", "items"]);
    assert_eq!(state[0]["stream"], "items", "{state}");
    let reset = read(&pg, &["state", "reset", "items", "--yes"]);
    assert_eq!(reset[0]["action"], "reset", "{reset}");
    assert_eq!(
        read(&pg, &["state", "history", "items"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let third = json(&sluice(run_args(&s, &fx, &pg)));
    assert_eq!(third["records_emitted"], 100, "{third}");

    // sluice.toml's `db` names the server; `sync` runs into it.
    let toml = s.write(
        "sluice.toml",
        format!(
            "db = \"{}\"\n[instances.again]\ncomponent = \"{}\"\nconfig_file = \"items.json\"\nallow_hosts = [\"127.0.0.1:{}\"]\n",
            cluster.url_in("synced"),
            guest("items").display(),
            fx.addr.port()
        ),
    );
    let out = sluice(["sync", "--config-file", toml.to_str().unwrap(), "--json"]);
    assert!(out.ok, "{out:?}");
    assert_eq!(ids_pg_table(&cluster, "synced", "again__items").len(), 90);

    // An appended stream on Postgres: every record a row; the second
    // run appends what it re-read.
    let mut valid = 0;
    for _ in 0..2 {
        let mut args = run_args(&s, &fx, &pg);
        args.extend(
            [
                "--instance",
                "applog",
                "--mode",
                "items=append",
                "--full-refresh",
            ]
            .map(String::from),
        );
        let out = sluice(&args);
        assert_eq!(out.code, Some(1), "append and --full-refresh: {out:?}");
        args.pop();
        let report = json(&sluice(&args));
        assert_eq!(report["status"], "succeeded", "{report}");
        valid += report["records_valid"].as_u64().unwrap();
    }
    let appended = ids_pg_table(&cluster, "raw", "applog__items");
    assert_eq!(appended.len() as u64, valid);
    assert!(valid >= 90, "{valid}");

    // PostgreSQL text cannot hold NUL: such a record is quarantined (with
    // its path), the others land, the run succeeds.
    let cfg = s.write(
        "nul.json",
        serde_json::json!({"behaviour": "raw", "records": [
            r#"{"id": 1, "label": "a\u0000b"}"#, r#"{"id": 2, "label": "ok"}"#
        ]})
        .to_string(),
    );
    let nul = json(&sluice([
        "run",
        guest("misbehave").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--db",
        &pg,
        "--stream",
        "items",
        "--json",
    ]));
    assert_eq!(nul["status"], "succeeded", "{nul}");
    assert_eq!(
        (
            nul["records_valid"].as_u64(),
            nul["records_quarantined"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(ids_pg_table(&cluster, "raw", "misbehave__items"), [2]);
    let q = read(&pg, &["quarantine", "list", "--connector", "misbehave"]);
    assert_eq!(q[0]["errors"][0]["path"], "/label", "{q}");

    // A schema nothing ran into: the reading commands say so and make
    // nothing.
    let out = sluice(["runs", "--db", &cluster.url_in("nothing_here")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("holds no Sluice tables"),
        "{}",
        out.stderr
    );
    let mut c = postgres::Client::connect(&cluster.url, postgres::NoTls).unwrap();
    let made: bool = c
        .query_one("SELECT to_regnamespace('nothing_here') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(!made, "a reading command created the schema");
}

#[test]
fn postgres_passwords_come_from_references_or_libpq_and_never_show() {
    const PASSWORD: &str = "s3cret-Pw-7f1c";
    let cluster = Cluster::start_with_password(PASSWORD);
    let fx = fixture();
    let s = Scratch::new();
    let pg = cluster.url_in("app");
    let never_shown = |out: &common::Out| {
        assert!(
            !out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD),
            "the password shows: {out:?}"
        );
    };

    // In the URL: refused before anything connects.
    let with_pw = pg.replace("sluice@", &format!("sluice:{PASSWORD}@"));
    let out = sluice(run_args(&s, &fx, &with_pw));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("holds a password"), "{}", out.stderr);
    never_shown(&out);

    // None given: the server refuses, and the error names the server.
    let out = sluice(run_args(&s, &fx, &pg));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("password"), "{}", out.stderr);

    // A wrong one from a reference: refused, and not shown either.
    let mut args = run_args(&s, &fx, &pg);
    args.extend(["--db-password".into(), "env:SLUICE_TEST_PG_PW".into()]);
    let out = sluice_env(&args, &[("SLUICE_TEST_PG_PW", "wrong-Pw-0000")]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(!out.stderr.contains("wrong-Pw-0000"), "{}", out.stderr);

    // The right one, from an environment reference.
    let out = sluice_env(&args, &[("SLUICE_TEST_PG_PW", PASSWORD)]);
    never_shown(&out);
    assert_eq!(json(&out)["status"], "succeeded");

    // From a file reference.
    let file = s.write("pg-password", format!("{PASSWORD}\n"));
    let out = sluice([
        "runs",
        "--db",
        &pg,
        "--db-password",
        &format!("file:{}", file.display()),
        "--json",
    ]);
    never_shown(&out);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);

    // From PGPASSWORD.
    let out = sluice_env(["runs", "--db", &pg, "--json"], &[("PGPASSWORD", PASSWORD)]);
    never_shown(&out);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);

    // From a passfile (0600, as libpq requires).
    let url: url::Url = cluster.url.parse().unwrap();
    let passfile = s.write(
        "pgpass",
        format!(
            "# host:port:database:user:password\n{}:{}:*:sluice:{PASSWORD}\n",
            url.host_str().unwrap(),
            url.port().unwrap()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passfile_env = passfile.display().to_string();
    let out = sluice_env(
        ["runs", "--db", &pg, "--json"],
        &[("PGPASSFILE", &passfile_env)],
    );
    never_shown(&out);
    assert_eq!(json(&out).as_array().unwrap().len(), 1);

    // Nothing the runs recorded holds it.
    let mut c = postgres::Client::connect(
        &cluster
            .url
            .replace("sluice@", &format!("sluice:{PASSWORD}@")),
        postgres::NoTls,
    )
    .unwrap();
    let leaked: i64 = c
        .query_one(
            "SELECT count(*) FROM app._sluice_runs WHERE row_to_json(_sluice_runs)::text LIKE $1",
            &[&format!("%{PASSWORD}%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);
}
