//! JavaScript guests (componentize-qjs + the JS SDK, `sdk/js`): the
//! `github-issues-js` connector against the GitHub fixture through the
//! `sluice` binary (every issue lands, resume from state, the token secret,
//! a 401, a thrown exception, a denied host). The `templates/js` skeleton
//! that `sluice new --lang js` writes is tested in tests/scaffold.rs.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{db, guest, sluice, sluice_env, Out, Scratch};
use serde_json::Value;
use sluice_fixture::github::{self, GithubConfig};
use sluice_fixture::Running;

const COMPONENT: &str = "github_issues_js";
const NAME: &str = "github-issues-js";
const TOKEN: &str = "ghp_js_fixture_token_42";

fn start(issues: u64, token: Option<&str>) -> (Running, github::Shared) {
    let (router, state) = github::router(GithubConfig {
        issues,
        token: token.map(str::to_string),
        ..Default::default()
    });
    (Running::start(router, 0).unwrap(), state)
}

fn config(s: &Scratch, base_url: &str, per_page: u32, extra: &str) -> PathBuf {
    s.write(
        "config.json",
        format!(
            r#"{{"base_url": "{base_url}", "owner": "acme", "repo": "widgets", "per_page": {per_page}{extra}}}"#
        ),
    )
}

/// `sluice run --json` of `component`, granted `grant`; with the token bound
/// to `grant` as secret `github_token` when `secret`.
fn run(component: &Path, grant: &str, config: &Path, db: &Path, secret: bool) -> Out {
    let mut args: Vec<String> = vec![
        "run".into(),
        component.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--db".into(),
        db.display().to_string(),
        "--allow-host".into(),
        grant.into(),
        "--json".into(),
    ];
    if secret {
        args.extend([
            "--secret".into(),
            "github_token=env:JS_GUEST_GH_TOKEN".into(),
            "--secret-host".into(),
            format!("github_token={grant}"),
        ]);
    }
    sluice_env(args, &[("JS_GUEST_GH_TOKEN", TOKEN)])
}

fn report(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", out.stdout, out.stderr))
}

fn grant(fx: &Running) -> String {
    format!("127.0.0.1:{}", fx.addr.port())
}

/// Every row is the fixture's issue: `_record` as a whole and each column.
fn assert_rows_match_fixture(path: &Path, cfg: &GithubConfig) {
    let conn = db(path);
    let mut stmt = conn
        .prepare(
            "SELECT number, _record, id, title, state, user_login, labels, comments, created_at, \
             updated_at, closed_at, body, is_pull_request, html_url FROM issues ORDER BY number",
        )
        .unwrap();
    let rows: Vec<(u64, String, Vec<Value>)> = stmt
        .query_map([], |r| {
            let mut cols = Vec::new();
            for i in 2..14 {
                cols.push(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => n.into(),
                    rusqlite::types::ValueRef::Text(t) => {
                        String::from_utf8_lossy(t).into_owned().into()
                    }
                    other => panic!("unexpected column type {other:?}"),
                });
            }
            Ok((r.get(0)?, r.get(1)?, cols))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len() as u64, cfg.issues);
    let keys = [
        "id",
        "title",
        "state",
        "user_login",
        "labels",
        "comments",
        "created_at",
        "updated_at",
        "closed_at",
        "body",
        "is_pull_request",
        "html_url",
    ];
    for (i, (n, record, cols)) in rows.into_iter().enumerate() {
        assert_eq!(n, i as u64 + 1);
        let want = github::expected_record(cfg, n);
        let got: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(got, want, "issue {n}");
        assert_eq!(got.as_object().unwrap().len(), 13, "issue {n}: 13 keys");
        for (k, col) in keys.iter().zip(cols) {
            let expected = match (*k, &want[*k]) {
                ("labels", v) => Value::String(v.to_string()),
                (_, Value::Bool(b)) => Value::from(*b as i64),
                (_, v) => v.clone(),
            };
            let col = if *k == "labels" {
                // JSON text; compare parsed.
                Value::String(
                    serde_json::from_str::<Value>(col.as_str().unwrap())
                        .unwrap()
                        .to_string(),
                )
            } else {
                col
            };
            assert_eq!(col, expected, "issue {n}, column {k}");
        }
    }
}

#[test]
fn js_github_issues_lands_every_issue_and_resumes_from_state() {
    let s = Scratch::new();
    let (fx, state) = start(250, Some(TOKEN));
    let cfg = config(
        &s,
        &fx.base_url(),
        100,
        r#", "token_secret": "github_token""#,
    );
    let dbp = s.path("gh.db");
    let component = guest(COMPONENT);

    let out = run(&component, &grant(&fx), &cfg, &dbp, true);
    assert!(out.ok, "{out:?}");
    let first = report(&out);
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["connector"], NAME);
    assert_eq!(first["records_upserted"], 250);
    assert_eq!(first["http_requests"], 3, "3 pages of 100");
    let fixture_cfg = state.lock().unwrap().config.clone();
    assert_rows_match_fixture(&dbp, &fixture_cfg);
    {
        let st = state.lock().unwrap();
        assert!(
            st.requests[0].contains("state=all")
                && st.requests[0].contains("sort=updated")
                && st.requests[0].contains("direction=asc")
                && st.requests[0].contains("per_page=100")
                && !st.requests[0].contains("since="),
            "{:?}",
            st.requests[0]
        );
        assert!(st.requests[2].contains("page=3"), "follows Link");
    }
    let cursor: String = db(&dbp)
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = ?1 AND stream = 'issues'",
            [NAME],
            |r| r.get(0),
        )
        .unwrap();
    let newest = (1..=250)
        .map(|n| github::updated_secs(&fixture_cfg, n))
        .max()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&cursor).unwrap(),
        serde_json::json!({"updated_at": sluice_fixture::items::rfc3339(newest)})
    );

    // Two issues are edited upstream: the second run asks only for what
    // changed since the cursor and stores the edits.
    {
        let mut st = state.lock().unwrap();
        st.config.updated.extend([5, 120]);
        st.requests.clear();
    }
    let out = run(&component, &grant(&fx), &cfg, &dbp, true);
    let second = report(&out);
    assert_eq!(second["status"], "succeeded", "{out:?}");
    let emitted = second["records_emitted"].as_u64().unwrap();
    assert!(
        (2..=3).contains(&emitted),
        "only the edited issues (and the one at the cursor) are read again, got {emitted}"
    );
    let st = state.lock().unwrap();
    assert_eq!(st.requests.len(), 1);
    assert!(
        st.requests[0].contains("since=2026-"),
        "{:?}",
        st.requests[0]
    );
    let cfg_now = st.config.clone();
    drop(st);
    assert_rows_match_fixture(&dbp, &cfg_now);

    // A full refresh ignores the state; start_date still applies.
    let out = sluice_env(
        [
            "run",
            component.to_str().unwrap(),
            "--config",
            config(
                &s,
                &fx.base_url(),
                100,
                r#", "token_secret": "github_token", "start_date": "2026-01-02T00:00:00Z""#,
            )
            .to_str()
            .unwrap(),
            "--db",
            s.path("full.db").to_str().unwrap(),
            "--allow-host",
            &grant(&fx),
            "--secret",
            "github_token=env:JS_GUEST_GH_TOKEN",
            "--secret-host",
            &format!("github_token={}", grant(&fx)),
            "--full-refresh",
            "--json",
        ],
        &[("JS_GUEST_GH_TOKEN", TOKEN)],
    );
    let full = report(&out);
    assert_eq!(full["status"], "succeeded", "{out:?}");
    let since_start = (1..=250)
        .filter(|n| {
            sluice_fixture::items::rfc3339(github::updated_secs(&cfg_now, *n)).as_str()
                >= "2026-01-02T00:00:00Z"
        })
        .count() as u64;
    assert_eq!(full["records_upserted"], since_start);
}

#[test]
fn js_github_issues_fails_cleanly_on_401_and_without_the_secret() {
    let s = Scratch::new();
    let (fx, state) = start(20, Some(TOKEN));
    let dbp = s.path("gh.db");
    let component = guest(COMPONENT);

    // No token: GitHub's 401 is an upstream connector-error.
    let cfg = config(&s, &fx.base_url(), 100, "");
    let out = run(&component, &grant(&fx), &cfg, &dbp, false);
    assert!(!out.ok);
    let rep = report(&out);
    assert_eq!(rep["status"], "failed", "{rep}");
    assert_eq!(
        rep["error"].as_str().unwrap(),
        "upstream error: GitHub answered 401: Bad credentials",
        "{rep}"
    );

    // The secret is named but not bound: the host refuses the placeholder.
    let cfg = config(
        &s,
        &fx.base_url(),
        100,
        r#", "token_secret": "github_token""#,
    );
    let out = run(&component, &grant(&fx), &cfg, &dbp, false);
    assert!(!out.ok);
    let rep = report(&out);
    assert_eq!(rep["status"], "failed", "{rep}");
    assert!(
        rep["error"].as_str().unwrap().contains("github_token"),
        "{rep}"
    );
    assert_eq!(
        common::count(&db(&dbp), "SELECT count(*) FROM issues"),
        0,
        "nothing stored"
    );
    // The token never reached the fixture without a binding.
    assert_eq!(
        state.lock().unwrap().requests.len(),
        1,
        "only the 401 request"
    );

    // Bound, the host substitutes it and the run succeeds.
    let out = run(&component, &grant(&fx), &cfg, &dbp, true);
    assert_eq!(report(&out)["status"], "succeeded", "{out:?}");
    assert_eq!(common::count(&db(&dbp), "SELECT count(*) FROM issues"), 20);
}

#[test]
fn js_github_issues_check_and_denied_host_are_connector_errors() {
    let s = Scratch::new();
    let component = guest(COMPONENT);
    let bad = s.write(
        "bad.json",
        r#"{"base_url": "ftp://example.com", "owner": "acme", "repo": "widgets"}"#,
    );
    let out = sluice([
        "check",
        component.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("`base_url` must be an http(s) URL"),
        "{out:?}"
    );
    let good = s.write("good.json", r#"{"owner": "acme", "repo": "widgets"}"#);
    let out = sluice([
        "check",
        component.to_str().unwrap(),
        "--config",
        good.to_str().unwrap(),
    ]);
    assert!(out.ok, "{out:?}");

    // Not granted: the host's denial is a `host` connector-error.
    let (fx, state) = start(5, None);
    let cfg = config(&s, &fx.base_url(), 100, "");
    let out = run(&component, "127.0.0.2:1", &cfg, &s.path("d.db"), false);
    let rep = report(&out);
    assert_eq!(rep["status"], "failed", "{rep}");
    let err = rep["error"].as_str().unwrap();
    assert!(
        err.starts_with("host refused: request to http://127.0.0.1:") && err.contains("denied"),
        "{err}"
    );
    assert!(state.lock().unwrap().requests.is_empty());
}

/// A one-connection-at-a-time HTTP server answering every request with
/// `body` (status 200, JSON), until the test ends.
fn serve_json(body: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .and_then(|()| conn.write_all(body));
        }
    });
    port
}

#[test]
fn js_thrown_exception_is_a_clean_failed_run() {
    // `null` where an issue object belongs: the connector's own code throws
    // a TypeError; the SDK turns it into an `internal` connector-error.
    let port = serve_json(b"[null]");
    let s = Scratch::new();
    let cfg = config(&s, &format!("http://127.0.0.1:{port}"), 10, "");
    let dbp = s.path("t.db");
    let out = run(
        &guest(COMPONENT),
        &format!("127.0.0.1:{port}"),
        &cfg,
        &dbp,
        false,
    );
    assert!(!out.ok);
    let rep = report(&out);
    assert_eq!(rep["status"], "failed", "not trapped: {rep}");
    let err = rep["error"].as_str().unwrap();
    assert!(err.starts_with("connector error: TypeError: "), "{err}");

    // A page that is not JSON, or JSON that is not UTF-8, is an upstream
    // error (as in the Rust build).
    let bodies: [&'static [u8]; 2] = [
        b"<html>oops</html>",
        b"[{\"id\": 1, \"title\": \"caf\xe9\"}]",
    ];
    for body in bodies {
        let port = serve_json(body);
        let cfg = config(&s, &format!("http://127.0.0.1:{port}"), 10, "");
        let out = run(
            &guest(COMPONENT),
            &format!("127.0.0.1:{port}"),
            &cfg,
            &dbp,
            false,
        );
        let rep = report(&out);
        assert_eq!(rep["status"], "failed", "{rep}");
        assert!(
            rep["error"]
                .as_str()
                .unwrap()
                .starts_with("upstream error: response is not the expected JSON"),
            "{rep}"
        );
    }
    assert_eq!(
        common::count(
            &db(&dbp),
            "SELECT count(*) FROM _sluice_runs WHERE status = 'failed'"
        ),
        3
    );
    assert_eq!(common::count(&db(&dbp), "SELECT count(*) FROM issues"), 0);
}
