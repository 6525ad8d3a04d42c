//! `github-issues`, the same connector written in Rust, Python and
//! JavaScript, against the GitHub-shaped fixture: every field lands, the
//! token is substituted by the host, incremental runs resume from the
//! cursor, errors are clean, and the three store identical tables.

use crate::common;

use std::path::{Path, PathBuf};

use common::{db, guest, sluice_env, Scratch};
use serde_json::Value;
use sluice_fixture::github::{self, GithubConfig};
use sluice_fixture::Running;

/// The builds of `github-issues`: component file stem and spec name.
const BUILDS: [(&str, &str); 3] = [
    ("github_issues", "github-issues"),
    ("github_issues_py", "github-issues-py"),
    ("github_issues_js", "github-issues-js"),
];

const TOKEN: &str = "ghp_fixture_token_0123456789";

fn start(issues: u64) -> (Running, github::Shared) {
    let (router, state) = github::router(GithubConfig {
        issues,
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    (Running::start(router, 0).unwrap(), state)
}

fn config(s: &Scratch, fx: &Running, per_page: u32, extra: &str) -> PathBuf {
    s.write(
        "config.json",
        format!(
            r#"{{"base_url": "{}", "owner": "acme", "repo": "widgets", "per_page": {per_page}{extra}}}"#,
            fx.base_url()
        ),
    )
}

/// `sluice run` of one build with the token bound to the fixture; the JSON
/// report (or the failure's stderr) and whether it succeeded.
fn run(component: &Path, fx: &Running, config: &Path, db: &Path, secret: bool) -> common::Out {
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let mut args: Vec<String> = vec![
        "run".into(),
        component.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--db".into(),
        db.display().to_string(),
        "--allow-host".into(),
        grant.clone(),
        "--json".into(),
    ];
    if secret {
        args.extend([
            "--secret".into(),
            "github_token=env:FIXTURE_GH_TOKEN".into(),
            "--secret-host".into(),
            format!("github_token={grant}"),
        ]);
    }
    sluice_env(args, &[("FIXTURE_GH_TOKEN", TOKEN)])
}

fn report(out: &common::Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", out.stdout, out.stderr))
}

/// The `issues` table, ordered by id: every column but `_run_id` and
/// `_synced_at`, with `_record` parsed (key order may differ by language).
fn table(path: &Path) -> Vec<Vec<Value>> {
    let conn = db(path);
    let sql = format!(
        "SELECT * FROM {} ORDER BY id",
        common::stream_table(&conn, "issues")
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    stmt.query_map([], |r| {
        let mut row = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if name == "_run_id" || name == "_synced_at" {
                continue;
            }
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(n) => n.into(),
                rusqlite::types::ValueRef::Real(f) => f.into(),
                rusqlite::types::ValueRef::Text(t) => {
                    let t = String::from_utf8_lossy(t).into_owned();
                    if name == "_record" {
                        serde_json::from_str(&t).unwrap()
                    } else {
                        t.into()
                    }
                }
                rusqlite::types::ValueRef::Blob(_) => panic!("blob in {name}"),
            };
            row.push(serde_json::json!([name, v]));
        }
        Ok(row)
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every row of `path` is the fixture's issue, field by field.
fn assert_rows_match_fixture(path: &Path, cfg: &GithubConfig) {
    let conn = db(path);
    let sql = format!(
        "SELECT number, _record, title, user_login, labels, is_pull_request, closed_at FROM {} ORDER BY number",
        common::stream_table(&conn, "issues")
    );
    let mut stmt = conn.prepare(&sql).unwrap();
    // number, _record, title, user_login, labels, is_pull_request, closed_at
    type Row = (
        u64,
        String,
        String,
        Option<String>,
        String,
        i64,
        Option<String>,
    );
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len() as u64, cfg.issues);
    for (i, (n, record, title, login, labels, is_pr, closed_at)) in rows.into_iter().enumerate() {
        assert_eq!(n, i as u64 + 1);
        let want = github::expected_record(cfg, n);
        let got: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(got, want, "issue {n}");
        assert_eq!(title, want["title"].as_str().unwrap());
        assert_eq!(login.as_deref(), want["user_login"].as_str());
        assert_eq!(
            serde_json::from_str::<Value>(&labels).unwrap(),
            want["labels"]
        );
        assert_eq!(is_pr == 1, want["is_pull_request"].as_bool().unwrap());
        assert_eq!(closed_at.as_deref(), want["closed_at"].as_str());
    }
}

#[test]
fn every_build_stores_every_issue_and_resumes_from_its_cursor() {
    for (stem, name) in BUILDS {
        let s = Scratch::new();
        let (fx, state) = start(250);
        let cfg = config(&s, &fx, 100, r#", "token_secret": "github_token""#);
        let dbp = s.path("gh.db");

        let out = run(&guest(stem), &fx, &cfg, &dbp, true);
        assert!(out.ok, "{name}: {out:?}");
        let first = report(&out);
        assert_eq!(first["status"], "succeeded", "{name}");
        assert_eq!(first["records_upserted"], 250, "{name}");
        assert_eq!(first["http_requests"], 3, "{name}: 3 pages of 100");
        let fixture_cfg = state.lock().unwrap().config.clone();
        assert_rows_match_fixture(&dbp, &fixture_cfg);
        {
            let st = state.lock().unwrap();
            assert_eq!(st.requests.len(), 3, "{name}");
            assert!(
                st.requests[0].contains("direction=asc")
                    && st.requests[0].contains("sort=updated")
                    && st.requests[0].contains("state=all")
                    && !st.requests[0].contains("since="),
                "{name}: {:?}",
                st.requests[0]
            );
            assert!(st.requests[2].contains("page=3"), "{name}: follows Link");
        }
        let cursor: String = db(&dbp)
            .query_row(
                "SELECT value FROM _sluice_state WHERE connector = ?1 AND stream = 'issues'",
                [stem],
                |r| r.get(0),
            )
            .unwrap();
        let newest = (1..=250)
            .map(|n| github::updated_secs(&fixture_cfg, n))
            .max()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&cursor).unwrap(),
            serde_json::json!({"updated_at": sluice_fixture::items::rfc3339(newest)}),
            "{name}"
        );

        // Two issues are edited upstream; the next run asks only for what
        // changed since the cursor (inclusive, as GitHub's `since` is).
        {
            let mut st = state.lock().unwrap();
            st.config.updated.extend([3, 77]);
            st.requests.clear();
        }
        let second = report(&run(&guest(stem), &fx, &cfg, &dbp, true));
        assert_eq!(second["status"], "succeeded", "{name}");
        let emitted = second["records_emitted"].as_u64().unwrap();
        assert!(
            (2..=3).contains(&emitted),
            "{name}: only the edited issues (and the one at the cursor) are read again, got {emitted}"
        );
        let st = state.lock().unwrap();
        assert_eq!(st.requests.len(), 1, "{name}");
        assert!(
            st.requests[0].contains("since=2026-"),
            "{name}: {:?}",
            st.requests[0]
        );
        let cfg_now = st.config.clone();
        drop(st);
        assert_rows_match_fixture(&dbp, &cfg_now);

        // A full refresh ignores the state; `start_date` still applies.
        let cfg = config(
            &s,
            &fx,
            100,
            r#", "token_secret": "github_token", "start_date": "2026-01-02T00:00:00Z""#,
        );
        let out = run_full_refresh(&guest(stem), &fx, &cfg, &dbp);
        let full = report(&out);
        assert_eq!(full["status"], "succeeded", "{name}: {out:?}");
        let since_start = (1..=250)
            .filter(|n| {
                sluice_fixture::items::rfc3339(github::updated_secs(&cfg_now, *n)).as_str()
                    >= "2026-01-02T00:00:00Z"
            })
            .count() as u64;
        assert_eq!(full["records_upserted"], since_start, "{name}");
        assert!(since_start < 250);
        // The rows the refresh did not write (older than start_date) are gone.
        assert_eq!(
            common::count(&db(&dbp), &format!("SELECT count(*) FROM {stem}__issues")) as usize,
            since_start as usize,
            "{name}"
        );
    }
}

/// `run` with `--full-refresh`.
fn run_full_refresh(component: &Path, fx: &Running, config: &Path, db: &Path) -> common::Out {
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    sluice_env(
        [
            "run",
            component.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--allow-host",
            &grant,
            "--secret",
            "github_token=env:FIXTURE_GH_TOKEN",
            "--secret-host",
            &format!("github_token={grant}"),
            "--full-refresh",
            "--json",
        ],
        &[("FIXTURE_GH_TOKEN", TOKEN)],
    )
}

#[test]
fn without_the_token_every_build_fails_cleanly_and_stores_nothing() {
    for (stem, name) in BUILDS {
        let s = Scratch::new();
        let (fx, state) = start(20);
        // The token secret is named, but not bound by the operator: the host
        // refuses to send the placeholder.
        let cfg = config(&s, &fx, 100, r#", "token_secret": "github_token""#);
        let dbp = s.path("gh.db");
        let out = run(&guest(stem), &fx, &cfg, &dbp, false);
        assert!(!out.ok, "{name}");
        assert!(
            out.stderr.contains("github_token") || out.stdout.contains("github_token"),
            "{name}: {out:?}"
        );

        // No token at all: GitHub's 401 comes back as an upstream error.
        let cfg = config(&s, &fx, 100, "");
        let out = run(&guest(stem), &fx, &cfg, &dbp, false);
        assert!(!out.ok, "{name}");
        let rep = report(&out);
        assert_eq!(rep["status"], "failed", "{name}");
        assert_eq!(
            rep["error"].as_str().unwrap(),
            "upstream error: GitHub answered 401: Bad credentials",
            "{name}: {rep}"
        );
        assert_eq!(
            common::count(
                &db(&dbp),
                "SELECT count(*) FROM _sluice_runs WHERE status = 'succeeded'"
            ),
            0
        );
        // The unbound placeholder was never sent: only the 401 request came.
        assert_eq!(state.lock().unwrap().requests.len(), 1, "{name}");
    }
}

#[test]
fn check_rejects_a_bad_config_in_every_build() {
    for (stem, name) in BUILDS {
        let s = Scratch::new();
        let cfg = s.write(
            "bad.json",
            r#"{"base_url": "ftp://example.com", "owner": "acme", "repo": "widgets"}"#,
        );
        let out = common::sluice([
            "check".as_ref(),
            guest(stem).as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ]);
        assert!(!out.ok, "{name}");
        assert!(out.stderr.contains("base_url"), "{name}: {out:?}");
        let cfg = s.write(
            "bad2.json",
            r#"{"owner": "acme", "repo": "widgets", "per_page": 500}"#,
        );
        let out = common::sluice([
            "check".as_ref(),
            guest(stem).as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ]);
        assert!(!out.ok, "{name}: per_page over the maximum");
    }
}

#[test]
fn the_builds_store_identical_tables() {
    let (fx, _state) = start(420);
    let s = Scratch::new();
    let cfg = config(&s, &fx, 37, r#", "token_secret": "github_token""#);
    let mut tables = Vec::new();
    for (stem, name) in BUILDS {
        let dbp = s.path(&format!("{stem}.db"));
        let out = run(&guest(stem), &fx, &cfg, &dbp, true);
        assert!(out.ok, "{name}: {out:?}");
        tables.push((name, table(&dbp)));
    }
    let (first, reference) = &tables[0];
    assert_eq!(reference.len(), 420);
    for (name, t) in &tables[1..] {
        assert_eq!(t.len(), reference.len(), "{name} vs {first}");
        for (a, b) in reference.iter().zip(t) {
            assert_eq!(a, b, "{name} vs {first}");
        }
    }
}
