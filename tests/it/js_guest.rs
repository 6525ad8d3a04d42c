//! JavaScript guests (componentize-qjs + the JS SDK, `sdk/js`): what is
//! particular to the JS build of `github-issues` (its config errors, a
//! denied host, a thrown exception, pages that are not JSON or not UTF-8).
//! What every build must do (every issue lands, resume, full refresh, the
//! token secret, a 401) is in tests/it/github.rs. The `templates/js` skeleton
//! that `sluice new --lang js` writes is tested in tests/it/scaffold.rs.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use common::{db, guest, sluice, sluice_env, Out, Scratch};
use serde_json::Value;
use sluice_fixture::github::{self, GithubConfig};
use sluice_fixture::Running;

const COMPONENT: &str = "github_issues_js";
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
    let conn = db(&dbp);
    let table = common::stream_table(&conn, "issues");
    assert_eq!(
        common::count(&conn, &format!("SELECT count(*) FROM {table}")),
        0
    );
}
