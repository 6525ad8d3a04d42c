//! Egress control and secrets, end to end through the `sluice` binary and
//! the `misbehave` test guest: SSRF spellings and forbidden addresses never
//! reach a loopback listener, redirects are re-checked, wildcard grants,
//! and secrets substituted by the host, bound to hosts and redacted from
//! everything the run leaves behind. Every server here is one the test
//! starts on 127.0.0.1.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{db, guest, sluice, sluice_env, Scratch};

/// A loopback listener that must never see a connection.
struct Untouched {
    listener: TcpListener,
    port: u16,
}

impl Untouched {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        Untouched { listener, port }
    }

    fn assert_untouched(&self, what: &str) {
        assert!(
            self.listener.accept().is_err(),
            "{what}: the forbidden listener saw a connection"
        );
    }
}

/// A loopback HTTP/1.1 upstream on its own thread: answers every request
/// with `respond(request head)` (a whole response) and keeps the heads.
struct Upstream {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start(respond: impl Fn(&str) -> String + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let response = respond(&head);
                seen.lock().unwrap().push(head);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Upstream { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn http_response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{extra_headers}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The value of header `name` in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Run the misbehave guest with `config`; returns the output and the JSON
/// report (the run's summary).
fn run_guest(
    s: &Scratch,
    config: serde_json::Value,
    extra: &[String],
    env: &[(&str, &str)],
) -> (common::Out, serde_json::Value) {
    let cfg = s.write("misbehave.json", config.to_string());
    let db = s.path("sluice.db");
    let mut args = vec![
        "run".to_string(),
        guest("misbehave").display().to_string(),
        "--config".into(),
        cfg.display().to_string(),
        "--db".into(),
        db.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().cloned());
    let out = sluice_env(args, env);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {out:?}"));
    (out, report)
}

fn http_config(url: &str) -> serde_json::Value {
    serde_json::json!({"behaviour": "http", "url": url})
}

fn error_of(r: &serde_json::Value) -> String {
    r["error"].as_str().unwrap_or_default().to_string()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

#[test]
fn odd_ipv4_spellings_are_invalid_requests_and_never_connect() {
    let never = Untouched::new();
    let p = never.port;
    // Granting the canonical address makes the test bite: a spelling that
    // were normalised to 127.0.0.1 would be granted and would connect.
    let grant = format!("127.0.0.1:{p}");
    for spelling in [
        "2130706433",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "0x7f000001",
        "127.1",
        "127.0.1",
        "017700000001",
        "127.0.0.1.",
        "%31%32%37.0.0.1",
    ] {
        let s = Scratch::new();
        let url = format!("http://{spelling}:{p}/");
        let (out, r) = run_guest(&s, http_config(&url), &args(&["--allow-host", &grant]), &[]);
        assert!(!out.ok, "{spelling}: {out:?}");
        let err = error_of(&r);
        assert!(
            err.contains("invalid request") && err.contains("refused"),
            "{spelling}: {err}"
        );
        assert_eq!(r["http_requests"], 0, "{spelling}");
        never.assert_untouched(spelling);
    }
}

#[test]
fn forbidden_addresses_are_denied_without_a_connection() {
    let never = Untouched::new();
    let p = never.port;
    let loopback_grant = format!("127.0.0.1:{p}");
    let cases: Vec<(String, Vec<String>, &str)> = vec![
        // IPv4-mapped IPv6 of a granted IPv4 address: a different, forbidden address.
        (
            format!("http://[::ffff:127.0.0.1]:{p}/"),
            vec![loopback_grant.clone()],
            "embedding a forbidden IPv4",
        ),
        (
            format!("http://[::1]:{p}/"),
            vec![loopback_grant.clone()],
            "loopback",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            vec![],
            "metadata",
        ),
        (
            format!("http://10.0.0.1:{p}/"),
            vec![loopback_grant.clone()],
            "private",
        ),
        // 0.0.0.0 reaches the local host on Linux.
        (
            format!("http://0.0.0.0:{p}/"),
            vec![loopback_grant.clone()],
            "unspecified",
        ),
        // Granted by name: the resolved address (127.0.0.1) is checked.
        (
            format!("http://localhost:{p}/"),
            vec![format!("localhost:{p}"), "localhost".into()],
            "resolves only to forbidden addresses",
        ),
        (
            format!("http://LOCALHOST:{p}/"),
            vec![format!("http://localhost:{p}")],
            "resolves only to forbidden addresses",
        ),
    ];
    for (url, grants, why) in cases {
        let s = Scratch::new();
        let mut extra = Vec::new();
        for g in &grants {
            extra.extend(args(&["--allow-host", g]));
        }
        let (out, r) = run_guest(&s, http_config(&url), &extra, &[]);
        assert!(!out.ok, "{url}: {out:?}");
        let err = error_of(&r);
        assert!(err.contains("denied") && err.contains(why), "{url}: {err}");
        assert_eq!(r["http_denied"], 1, "{url}: counted as denied");
        let history = common::runs(&db(&s.path("sluice.db")));
        assert_eq!(history.last().unwrap().4, 1, "{url}: denial in the record");
        never.assert_untouched(&url);
    }
}

#[test]
fn a_redirect_to_a_denied_host_is_not_followed() {
    let never = Untouched::new();
    let p = never.port;
    for (target, extra_grant, why) in [
        (
            format!("http://127.0.0.1:{p}/internal"),
            None,
            "not granted",
        ),
        // The redirect's host is granted by name; the hop's resolved
        // address (loopback) is refused at connect time.
        (
            format!("http://localhost:{p}/internal"),
            Some(format!("localhost:{p}")),
            "resolves only to forbidden addresses",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            None,
            "metadata",
        ),
    ] {
        let location = target.clone();
        let up = Upstream::start(move |_| {
            http_response("302 Found", &format!("location: {location}\r\n"), "")
        });
        let s = Scratch::new();
        let mut extra = args(&["--allow-host", &format!("127.0.0.1:{}", up.port)]);
        if let Some(g) = extra_grant {
            extra.extend(args(&["--allow-host", &g]));
        }
        let url = format!("http://127.0.0.1:{}/start", up.port);
        let (out, r) = run_guest(&s, http_config(&url), &extra, &[]);
        assert!(!out.ok, "{target}: {out:?}");
        let err = error_of(&r);
        assert!(
            err.contains("denied") && err.contains(why),
            "{target}: {err}"
        );
        assert_eq!(up.requests().len(), 1, "{target}: the first hop was sent");
        assert_eq!(r["http_denied"], 1, "{target}");
        never.assert_untouched(&target);
    }
}

#[test]
fn a_redirect_between_granted_hosts_is_followed() {
    let end = Upstream::start(|_| http_response("200 OK", "", "done"));
    let location = format!("http://127.0.0.1:{}/end", end.port);
    let start = Upstream::start(move |_| {
        http_response("302 Found", &format!("location: {location}\r\n"), "")
    });
    let s = Scratch::new();
    let (out, r) = run_guest(
        &s,
        http_config(&format!("http://127.0.0.1:{}/start", start.port)),
        &args(&[
            "--allow-host",
            &format!("127.0.0.1:{}", start.port),
            "--allow-host",
            &format!("127.0.0.1:{}", end.port),
        ]),
        &[],
    );
    assert!(out.ok, "{out:?}");
    assert_eq!(r["http_denied"], 0);
    assert_eq!(end.requests().len(), 1);
}

#[test]
fn wildcard_grants_cover_subdomains_only_and_bad_grants_are_refused() {
    let never = Untouched::new();
    let p = never.port;
    // The apex and look-alikes are not granted by *.example.com (and are
    // refused before any name lookup).
    for url in [
        format!("http://example.com:{p}/"),
        format!("http://example.com.evil.net:{p}/"),
        format!("http://notexample.com:{p}/"),
    ] {
        let s = Scratch::new();
        let (out, r) = run_guest(
            &s,
            http_config(&url),
            &args(&["--allow-host", "*.example.com"]),
            &[],
        );
        assert!(!out.ok);
        let err = error_of(&r);
        assert!(err.contains("not granted"), "{url}: {err}");
    }
    // A scheme-limited grant refuses the other scheme.
    let s = Scratch::new();
    let (_, r) = run_guest(
        &s,
        http_config(&format!("http://127.0.0.1:{p}/")),
        &args(&["--allow-host", &format!("https://127.0.0.1:{p}")]),
        &[],
    );
    assert!(error_of(&r).contains("not granted"), "{r}");
    never.assert_untouched("wildcard and scheme grants");

    let cfg = s.write("c.json", r#"{"behaviour": "ok"}"#);
    for bad in [
        "*.com",
        "a.*.example.com",
        "ftp://example.com",
        "http://example.com/path",
        "2130706433",
        "user@example.com",
    ] {
        let out = sluice([
            "check".as_ref(),
            guest("misbehave").as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--allow-host".as_ref(),
            bad.as_ref(),
        ]);
        assert!(!out.ok, "{bad} should be refused");
        assert_eq!(out.code, Some(2), "{bad}");
        assert!(
            out.stderr.contains("invalid host grant"),
            "{bad}: {}",
            out.stderr
        );
    }
}

const SECRET: &str = "sk_test_Zq9/x+Y=7&pQ";

/// The secret as a URL query encodes it.
fn secret_in_query() -> String {
    SECRET
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('=', "%3D")
        .replace('&', "%26")
}

/// `sluice runs --json` of the scratch database.
fn runs_json(s: &Scratch) -> String {
    let db_path = s.path("sluice.db");
    let out = sluice([
        "runs".as_ref(),
        "--db".as_ref(),
        db_path.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(out.ok, "{out:?}");
    out.stdout
}

#[test]
fn a_secret_is_substituted_for_its_host_and_the_guest_sees_only_the_placeholder() {
    // The upstream serves only a request carrying the real key, in the
    // header and the query; it never repeats the key.
    let up = Upstream::start(|head| {
        let key_ok = header(head, "x-api-key") == Some(SECRET);
        let query_ok = head
            .lines()
            .next()
            .is_some_and(|l| l.contains(&format!("token={}", secret_in_query())));
        if key_ok && query_ok {
            http_response("200 OK", "", "authorized")
        } else {
            http_response("401 Unauthorized", "", "wrong key")
        }
    });
    let s = Scratch::new();
    let host = format!("127.0.0.1:{}", up.port);
    let config = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{host}/data?token={{{{secret:API_KEY}}}}&page=1"),
        "headers": [["x-api-key", "{{secret:API_KEY}}"]],
        "must_not_see": SECRET,
    });
    let (out, r) = run_guest(
        &s,
        config,
        &args(&[
            "--allow-host",
            &host,
            "--secret",
            "API_KEY=env:SLUICE_TEST_API_KEY",
            "--secret-host",
            &format!("API_KEY={host}"),
        ]),
        &[("SLUICE_TEST_API_KEY", SECRET)],
    );
    assert!(out.ok, "{out:?}");
    assert_eq!(r["status"], "succeeded");
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(header(&seen[0], "x-api-key"), Some(SECRET), "{}", seen[0]);
    assert!(seen[0].contains("&page=1"), "{}", seen[0]);
    assert!(
        !seen[0].contains("{{secret"),
        "placeholder left: {}",
        seen[0]
    );
    for text in [&out.stdout, &out.stderr, &runs_json(&s)] {
        assert!(!text.contains(SECRET) && !text.contains(&secret_in_query()));
    }
}

#[test]
fn a_secret_echoed_upstream_is_redacted_from_logs_record_and_report() {
    // An upstream that echoes the key back: the honest limit (the guest
    // gets it) — but nothing Sluice keeps or prints may show it.
    let up = Upstream::start(|head| {
        let got = header(head, "authorization").unwrap_or("nothing");
        http_response("200 OK", "", &format!("you sent {got}"))
    });
    let s = Scratch::new();
    let key_file = s.write("api_key", format!("{SECRET}\n"));
    let host = format!("127.0.0.1:{}", up.port);
    let config = serde_json::json!({
        "behaviour": "echo",
        "url": format!("http://{host}/echo"),
        "headers": [["authorization", "Bearer {{secret:API_KEY}}"]],
    });
    let (out, r) = run_guest(
        &s,
        config,
        &args(&[
            "--allow-host",
            &host,
            "--secret",
            &format!("API_KEY=file:{}", key_file.display()),
            "--secret-host",
            &format!("API_KEY=http://{host}"),
        ]),
        &[],
    );
    assert!(!out.ok);
    assert_eq!(r["status"], "failed");
    // The upstream really got the key (file value, trailing newline dropped).
    assert_eq!(
        header(&up.requests()[0], "authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let err = error_of(&r);
    assert!(
        err.contains("you sent Bearer [secret API_KEY redacted]"),
        "{err}"
    );
    assert!(
        out.stderr.contains("[secret API_KEY redacted]"),
        "{}",
        out.stderr
    );
    let runs = runs_json(&s);
    assert!(runs.contains("[secret API_KEY redacted]"), "{runs}");
    let conn = db(&s.path("sluice.db"));
    let stored: String = conn
        .query_row("SELECT error FROM _sluice_runs", [], |r| r.get(0))
        .unwrap();
    for text in [&out.stdout, &out.stderr, &runs, &stored] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }
}

#[test]
fn transport_errors_handed_to_the_guest_carry_no_secret() {
    // A granted port nobody listens on: the connect error quotes the URL,
    // with the substituted query.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = Scratch::new();
    let host = format!("127.0.0.1:{port}");
    let config = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{host}/?key={{{{secret:K}}}}"),
        "must_not_see": secret_in_query(),
    });
    let (out, r) = run_guest(
        &s,
        config,
        &args(&[
            "--allow-host",
            &host,
            "--secret",
            "K=env:SLUICE_TEST_K",
            "--secret-host",
            &format!("K={host}"),
        ]),
        &[("SLUICE_TEST_K", SECRET)],
    );
    assert!(!out.ok);
    let err = error_of(&r);
    assert!(err.contains("cannot connect"), "{err}");
    assert!(
        !err.contains("forbidden text"),
        "the host handed the guest the secret: {err}"
    );
    assert!(!out.stderr.contains(&secret_in_query()), "{}", out.stderr);
}

#[test]
fn a_secret_is_refused_for_a_host_not_bound_to_it() {
    let never = Untouched::new();
    let bound = Untouched::new();
    let s = Scratch::new();
    let host = format!("127.0.0.1:{}", never.port);
    let secret_args = |extra: &[&str]| {
        let mut a = args(&["--allow-host", &host, "--secret", "K=env:SLUICE_TEST_K"]);
        a.extend(args(extra));
        a
    };
    let config = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{host}/"),
        "headers": [["x-api-key", "{{secret:K}}"]],
    });
    let env = [("SLUICE_TEST_K", SECRET)];
    // Bound to another port of the same address, and bound to no host.
    for extra in [
        vec!["--secret-host", &*format!("K=127.0.0.1:{}", bound.port)],
        vec![],
    ] {
        let (out, r) = run_guest(&s, config.clone(), &secret_args(&extra), &env);
        assert!(!out.ok);
        let err = error_of(&r);
        assert!(
            err.contains("denied") && err.contains("secret K may not be sent"),
            "{err}"
        );
        assert_eq!(r["http_denied"], 1);
    }
    // An unknown secret name is an invalid request.
    let unknown = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{host}/"),
        "headers": [["x-api-key", "{{secret:NOPE}}"]],
    });
    let (_, r) = run_guest(&s, unknown, &secret_args(&[]), &env);
    let err = error_of(&r);
    assert!(
        err.contains("invalid request") && err.contains("unknown secret \"NOPE\""),
        "{err}"
    );
    // A placeholder outside the query and header values is refused.
    let in_path = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{host}/{{{{secret:K}}}}/x"),
    });
    let (_, r) = run_guest(&s, in_path, &secret_args(&[]), &env);
    assert!(error_of(&r).contains("only in the URL query"), "{r}");
    never.assert_untouched("secret for an unbound host");
    bound.assert_untouched("secret for an unbound host");
}

#[test]
fn a_redirect_does_not_carry_a_header_secret_to_an_unbound_host() {
    let other = Upstream::start(|_| http_response("200 OK", "", "other"));
    let location = format!("http://127.0.0.1:{}/", other.port);
    let start = Upstream::start(move |_| {
        http_response("302 Found", &format!("location: {location}\r\n"), "")
    });
    let s = Scratch::new();
    let start_host = format!("127.0.0.1:{}", start.port);
    let config = serde_json::json!({
        "behaviour": "http",
        "url": format!("http://{start_host}/"),
        "headers": [["x-api-key", "{{secret:K}}"]],
    });
    let (out, r) = run_guest(
        &s,
        config,
        &args(&[
            "--allow-host",
            &start_host,
            "--allow-host",
            &format!("127.0.0.1:{}", other.port),
            "--secret",
            "K=env:SLUICE_TEST_K",
            "--secret-host",
            &format!("K={start_host}"),
        ]),
        &[("SLUICE_TEST_K", SECRET)],
    );
    assert!(!out.ok);
    let err = error_of(&r);
    assert!(
        err.contains("redirect") && err.contains("secret K may not be sent"),
        "{err}"
    );
    assert_eq!(header(&start.requests()[0], "x-api-key"), Some(SECRET));
    assert!(
        other.requests().is_empty(),
        "the secret followed the redirect"
    );
}

#[test]
fn bad_secret_flags_get_a_clear_error_and_a_non_zero_exit() {
    let s = Scratch::new();
    let cfg = s.write("c.json", r#"{"behaviour": "ok"}"#);
    for (flags, expected) in [
        (vec!["--secret", "K=hunter2"], "never the secret itself"),
        (vec!["--secret", "K"], "NAME=env:VAR"),
        (
            vec!["--secret-host", "K=a.example.com"],
            "no --secret defines",
        ),
        (
            vec!["--secret", "K=env:SLUICE_TEST_SURELY_UNSET"],
            "SLUICE_TEST_SURELY_UNSET is not set",
        ),
        (
            vec!["--secret", "K=file:/no/such/secret/file"],
            "cannot read /no/such/secret/file",
        ),
        (
            vec![
                "--secret",
                "K=env:SLUICE_TEST_K",
                "--secret",
                "K=env:SLUICE_TEST_K",
            ],
            "defined twice",
        ),
        (
            vec!["--secret-host", "K=http://x.example.com/path"],
            "invalid --secret-host",
        ),
    ] {
        let mut a = vec![
            "check".to_string(),
            guest("misbehave").display().to_string(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        a.extend(args(&flags));
        let out = sluice_env(a, &[("SLUICE_TEST_K", SECRET)]);
        assert!(!out.ok, "{flags:?} should fail");
        assert!(out.stderr.contains(expected), "{flags:?}: {}", out.stderr);
        assert!(
            out.stderr
                .lines()
                .next()
                .unwrap_or("")
                .starts_with("error:"),
            "{flags:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(SECRET));
    }
}

/// The request line's target (`/path?query`) of a request head.
fn target(head: &str) -> &str {
    head.lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
}

/// Flags granting hosts `a` and `c` (`127.0.0.1:PORT` each, the way these
/// tests model two hosts) with secret `K` bound to `a` only.
fn two_hosts_secret_on_a(a: u16, c: u16) -> Vec<String> {
    args(&[
        "--allow-host",
        &format!("127.0.0.1:{a}"),
        "--allow-host",
        &format!("127.0.0.1:{c}"),
        "--secret",
        "K=env:SLUICE_TEST_K",
        "--secret-host",
        &format!("K=127.0.0.1:{a}"),
    ])
}

/// Host A (bound to `K`) answers `/r` with `status` and the `Location`
/// `location(C's port, A's request target)`; host C answers 200. The guest
/// sends `config` (its `url` is given A's port by `url_of`). Returns the
/// report and the request heads A and C saw.
fn redirect_from_a_to_c(
    status: &'static str,
    location: impl Fn(u16, &str) -> String + Send + 'static,
    config: impl Fn(u16) -> serde_json::Value,
) -> (common::Out, serde_json::Value, Vec<String>, Vec<String>) {
    let c = Upstream::start(|_| http_response("200 OK", "", "landed"));
    let c_port = c.port;
    let a = Upstream::start(move |head| {
        let to = location(c_port, target(head));
        http_response(status, &format!("location: {to}\r\n"), "")
    });
    let s = Scratch::new();
    let (out, r) = run_guest(
        &s,
        config(a.port),
        &two_hosts_secret_on_a(a.port, c.port),
        &[("SLUICE_TEST_K", SECRET)],
    );
    (out, r, a.requests(), c.requests())
}

/// What a refused hop must look like: the run fails with the redirect's
/// denial, A got the key, C got nothing at all (so neither a Referer, nor
/// headers, nor a body, nor a URL carrying the key).
fn assert_hop_refused(
    case: &str,
    (out, r, a, c): &(common::Out, serde_json::Value, Vec<String>, Vec<String>),
) {
    assert!(!out.ok, "{case}: {out:?}");
    let err = error_of(r);
    assert!(
        err.contains("redirect") && err.contains("secret K may not be sent"),
        "{case}: {err}"
    );
    assert_eq!(r["http_denied"], 1, "{case}");
    assert_eq!(a.len(), 1, "{case}: A saw {a:?}");
    assert!(
        a[0].contains(&secret_in_query()) || a[0].contains(SECRET),
        "{case}: A got no key: {}",
        a[0]
    );
    assert!(c.is_empty(), "{case}: C saw {c:?}");
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(SECRET) && !text.contains(&secret_in_query()));
    }
}

#[test]
fn a_redirect_does_not_carry_a_query_secret_to_an_unbound_host_in_the_referer() {
    // The issue's case: K is bound to A, the connector may reach A and C,
    // A redirects to C and says nothing else. Without the fix C gets
    // `referer: http://A/r?key=<the value>`.
    let case = redirect_from_a_to_c(
        "302 Found",
        |c, _| format!("http://127.0.0.1:{c}/landing"),
        |a| http_config(&format!("http://127.0.0.1:{a}/r?key={{{{secret:K}}}}")),
    );
    assert_hop_refused("302 after a query secret", &case);
}

#[test]
fn a_redirect_whose_location_echoes_the_query_is_refused() {
    // A repeats its query (the key) in the Location: the hop's URL itself
    // would carry the key to C.
    let case = redirect_from_a_to_c(
        "302 Found",
        |c, target| {
            let query = target.split_once('?').map_or("", |(_, q)| q);
            format!("http://127.0.0.1:{c}/landing?{query}")
        },
        |a| http_config(&format!("http://127.0.0.1:{a}/r?key={{{{secret:K}}}}")),
    );
    assert_hop_refused("Location echoing the query", &case);
}

#[test]
fn a_307_or_308_does_not_resend_a_request_carrying_a_secret_to_an_unbound_host() {
    // 307 and 308 send the method and body again (and the headers, and
    // the Referer): a POST carrying a query secret must not go on to C.
    for status in ["307 Temporary Redirect", "308 Permanent Redirect"] {
        let case = redirect_from_a_to_c(
            status,
            |c, _| format!("http://127.0.0.1:{c}/landing"),
            |a| {
                serde_json::json!({
                    "behaviour": "post",
                    "url": format!("http://127.0.0.1:{a}/r?key={{{{secret:K}}}}"),
                    "body": "the request body",
                })
            },
        );
        assert!(
            case.2[0].starts_with("POST "),
            "{status}: A saw {}",
            case.2[0]
        );
        assert_hop_refused(status, &case);
    }
}

#[test]
fn a_redirect_does_not_carry_a_query_secret_next_to_a_header_secret_bound_to_both_hosts() {
    // The header's secret H may go to A and C, so the old header-only
    // re-check let the hop through; the query's K may not go to C.
    let c = Upstream::start(|_| http_response("200 OK", "", "landed"));
    let to = format!("http://127.0.0.1:{}/landing", c.port);
    for status in ["302 Found", "307 Temporary Redirect"] {
        let to = to.clone();
        let a = Upstream::start(move |_| http_response(status, &format!("location: {to}\r\n"), ""));
        let s = Scratch::new();
        let mut flags = two_hosts_secret_on_a(a.port, c.port);
        flags.extend(args(&[
            "--secret",
            "H=env:SLUICE_TEST_H",
            "--secret-host",
            &format!("H=127.0.0.1:{}", a.port),
            "--secret-host",
            &format!("H=127.0.0.1:{}", c.port),
        ]));
        let config = serde_json::json!({
            "behaviour": "http",
            "url": format!("http://127.0.0.1:{}/r?key={{{{secret:K}}}}", a.port),
            "headers": [["x-api-key", "{{secret:H}}"], ["authorization", "Bearer {{secret:H}}"]],
        });
        let (out, r) = run_guest(
            &s,
            config,
            &flags,
            &[("SLUICE_TEST_K", SECRET), ("SLUICE_TEST_H", "header-token")],
        );
        assert_hop_refused(status, &(out, r, a.requests(), c.requests()));
    }
}

#[test]
fn a_followed_redirect_sends_no_referer() {
    // A redirect the secrets allow (A to itself, K bound to A; A to C
    // without a secret) is followed, and the next hop learns nothing of
    // the last URL: no Referer.
    let c = Upstream::start(|_| http_response("200 OK", "", "landed"));
    let c_port = c.port;
    let a = Upstream::start(move |head| {
        let t = target(head);
        if t.starts_with("/to-a") {
            http_response("302 Found", "location: /landing\r\n", "")
        } else if t.starts_with("/to-c") {
            let to = format!("http://127.0.0.1:{c_port}/landing");
            http_response("302 Found", &format!("location: {to}\r\n"), "")
        } else {
            http_response("200 OK", "", "landed")
        }
    });
    let flags = two_hosts_secret_on_a(a.port, c.port);
    let env = [("SLUICE_TEST_K", SECRET)];
    for (url, hop) in [
        (
            format!(
                "http://127.0.0.1:{}/to-a?key={{{{secret:K}}}}&page=1",
                a.port
            ),
            "A",
        ),
        (format!("http://127.0.0.1:{}/to-c?page=1", a.port), "C"),
    ] {
        let s = Scratch::new();
        let (out, r) = run_guest(&s, http_config(&url), &flags, &env);
        assert!(out.ok, "redirect to {hop}: {out:?}");
        assert_eq!(r["status"], "succeeded", "redirect to {hop}");
    }
    let (a_seen, c_seen) = (a.requests(), c.requests());
    assert_eq!(a_seen.len(), 3, "{a_seen:?}");
    assert_eq!(c_seen.len(), 1, "{c_seen:?}");
    assert!(target(&a_seen[1]).starts_with("/landing"), "{}", a_seen[1]);
    for head in [&a_seen[1], &c_seen[0]] {
        assert_eq!(header(head, "referer"), None, "a hop got a Referer: {head}");
    }
}

/// `sluice::http` lines in a run's stderr.
fn host_http_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("sluice::http"))
        .count()
}

#[test]
fn denied_requests_end_the_run_with_http_denied_limit_and_a_capped_log() {
    // The issue's flood: a connector hammering a forbidden address. Each
    // denial used to write one WARN line, without end, and the run went on.
    // The defaults: the 1,001st refusal ends the run; 100 lines are
    // written (and one saying the rest are suppressed), the rest counted.
    let never = Untouched::new();
    let s = Scratch::new();
    let config = serde_json::json!({
        "behaviour": "http_forever",
        "url": format!("http://127.0.0.1:{}/", never.port),
    });
    let (out, r) = run_guest(&s, config, &[], &[]);
    assert!(!out.ok, "{out:?}");
    assert_eq!(r["status"], "http_denied_limit", "{}", error_of(&r));
    let err = error_of(&r);
    assert!(
        err.contains("refused more than 1000") && err.contains("loopback"),
        "{err}"
    );
    assert_eq!(r["http_denied"], 1001);
    assert_eq!(r["http_requests"], 0);
    assert_eq!(host_http_lines(&out.stderr), 101, "{}", out.stderr);
    assert_eq!(r["http_log_lines_suppressed"], 900);
    let history = common::runs(&db(&s.path("sluice.db")));
    let last = history.last().unwrap();
    assert_eq!((last.0.as_str(), last.4), ("http_denied_limit", 1001));
    never.assert_untouched("denied flood");
}

#[test]
fn refused_requests_spend_the_request_budget() {
    // Denied and invalid requests both count: a budget of 20 ends a run
    // that never sends one (which used to spin until its fuel ran out).
    let never = Untouched::new();
    for (url, counter) in [
        (format!("http://127.0.0.1:{}/", never.port), "http_denied"),
        (format!("http://2130706433:{}/", never.port), "http_invalid"),
    ] {
        let s = Scratch::new();
        let config = serde_json::json!({"behaviour": "http_forever", "url": url});
        let (out, r) = run_guest(
            &s,
            config,
            &args(&["--max-http-requests", "20", "--fuel", "4000000000"]),
            &[],
        );
        assert!(!out.ok, "{url}: {out:?}");
        assert_eq!(r["status"], "http_budget", "{url}: {}", error_of(&r));
        assert!(error_of(&r).contains("budget of 20 requests"), "{r}");
        assert_eq!(r["http_requests"], 0, "{url}");
        assert_eq!(r[counter], 20, "{url}");
        never.assert_untouched(&url);
    }
}

#[test]
fn the_denial_threshold_is_the_operators_and_counts_invalid_requests() {
    let never = Untouched::new();
    for (url, counter) in [
        (format!("http://127.0.0.1:{}/", never.port), "http_denied"),
        (format!("http://2130706433:{}/", never.port), "http_invalid"),
    ] {
        let s = Scratch::new();
        let config = serde_json::json!({"behaviour": "http_forever", "url": url});
        let (out, r) = run_guest(&s, config, &args(&["--max-http-denied", "5"]), &[]);
        assert!(!out.ok, "{url}: {out:?}");
        assert_eq!(r["status"], "http_denied_limit", "{url}: {}", error_of(&r));
        assert!(error_of(&r).contains("refused more than 5"), "{r}");
        assert_eq!(r[counter], 6, "{url}");
        assert_eq!(host_http_lines(&out.stderr), 5, "{}", out.stderr);
        assert_eq!(r["http_log_lines_suppressed"], 0);
    }
}
