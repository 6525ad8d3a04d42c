//! The conformance kit (`sluice test-connector`): every example connector
//! passes it, in all three languages; a connector with one deliberate flaw
//! (the `flawed` test guest) fails it on exactly the check for that flaw.

use crate::common;

use std::path::{Path, PathBuf};

use common::{guest, sluice, Out, Scratch};
use serde_json::Value;
use sluice_fixture::Running;

/// The fixture server binary, built beside `sluice`.
fn fixture_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_sluice")).with_file_name("sluice-fixture");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

fn kit(component: &Path, config: &Path, extra: &[String]) -> Out {
    let mut args: Vec<String> = vec![
        "test-connector".into(),
        component.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().cloned());
    sluice(args)
}

fn report(out: &Out) -> Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} / {}", out.stdout, out.stderr))
}

/// The checks that failed.
fn failed(rep: &Value) -> Vec<String> {
    rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "fail")
        .map(|r| {
            format!(
                "{}: {}",
                r["check"].as_str().unwrap(),
                r["detail"].as_str().unwrap()
            )
        })
        .collect()
}

fn assert_passes(out: &Out, what: &str) {
    let rep = report(out);
    assert!(out.ok, "{what}: {:?}\n{rep:#}", failed(&rep));
    assert_eq!(rep["passed"], true, "{what}");
    let rows = rep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "{what}: every check ran");
    for r in rows {
        assert_eq!(r["outcome"], "pass", "{what}: {r}");
    }
}

#[test]
fn the_items_connector_passes_with_a_fixture_the_kit_starts() {
    let s = Scratch::new();
    let cfg = s.write(
        "items.json",
        r#"{"base_url": "{{fixture_url}}", "page_size": 400}"#,
    );
    let cmd = format!("{} items --records 2500", fixture_bin().display());
    let out = kit(&guest("items"), &cfg, &["--fixture".into(), cmd]);
    assert_passes(&out, "items");
    let rep = report(&out);
    let read = rep["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "read succeeds")
        .unwrap();
    assert!(
        read["detail"].as_str().unwrap().starts_with("2500 records"),
        "{read}"
    );
}

#[test]
fn open_meteo_passes() {
    let s = Scratch::new();
    let (router, _) = sluice_fixture::open_meteo::router(sluice_fixture::open_meteo::DEFAULT_NOW);
    let fx = Running::start(router, 0).unwrap();
    let cfg = s.write(
        "om.json",
        format!(
            r#"{{"base_url": "{}", "locations": [{{"name": "berlin", "latitude": 52.52, "longitude": 13.41}},
                {{"name": "lisbon", "latitude": 38.72, "longitude": -9.14}}]}}"#,
            fx.base_url()
        ),
    );
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let out = kit(&guest("open_meteo"), &cfg, &["--allow-host".into(), grant]);
    assert_passes(&out, "open-meteo");
}

#[test]
fn every_github_issues_build_passes() {
    for stem in ["github_issues", "github_issues_py", "github_issues_js"] {
        let s = Scratch::new();
        let (router, _) = sluice_fixture::github::router(sluice_fixture::github::GithubConfig {
            issues: 230,
            token: Some("kit-token".into()),
            ..Default::default()
        });
        let fx = Running::start(router, 0).unwrap();
        let grant = format!("127.0.0.1:{}", fx.addr.port());
        let cfg = s.write(
            "gh.json",
            format!(
                r#"{{"base_url": "{}", "owner": "acme", "repo": "widgets", "per_page": 50, "token_secret": "github_token"}}"#,
                fx.base_url()
            ),
        );
        let out = common::sluice_env(
            [
                "test-connector",
                guest(stem).to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
                "--json",
                "--allow-host",
                &grant,
                "--secret",
                "github_token=env:KIT_TOKEN",
                "--secret-host",
                &format!("github_token={grant}"),
            ],
            &[("KIT_TOKEN", "kit-token")],
        );
        assert_passes(&out, stem);
    }
}

/// The kit on the `flawed` guest with `flaw`: the failed checks.
fn flawed(flaw: &str) -> (Out, Vec<String>) {
    let s = Scratch::new();
    let cfg = s.write("f.json", format!(r#"{{"count": 6, "flaw": "{flaw}"}}"#));
    let out = kit(&guest("flawed"), &cfg, &[]);
    let rep = report(&out);
    assert_eq!(
        rep["passed"], out.ok,
        "{flaw}: the exit code follows the verdict"
    );
    (out, failed(&rep))
}

#[test]
fn the_control_passes() {
    let (out, failures) = flawed("none");
    assert!(out.ok && failures.is_empty(), "{failures:?}");
}

#[test]
fn each_flaw_fails_its_own_check() {
    let cases = [
        (
            "invalid_record",
            "every record is valid under its stream's schema",
            "quarantined",
        ),
        (
            "rewind",
            "a second read resumes from the cursor",
            "older than the saved cursor",
        ),
        (
            "lenient_check",
            "check rejects an invalid config with a message",
            "accepted a config",
        ),
        (
            "wrong_error",
            "check rejects an invalid config with a message",
            "not as a config error",
        ),
        (
            "bad_key",
            "discover returns the spec's streams",
            "primary key field \"uuid\"",
        ),
        ("churn", "re-running is idempotent", "changed"),
    ];
    for (flaw, check, why) in cases {
        let (out, failures) = flawed(flaw);
        assert!(!out.ok, "{flaw}: the kit must exit non-zero");
        assert_eq!(out.code, Some(1), "{flaw}");
        assert!(
            failures
                .iter()
                .any(|f| f.starts_with(check) && f.contains(why)),
            "{flaw}: expected `{check}` to fail with {why:?}, got {failures:?}"
        );
        if flaw != "bad_key" {
            // bad_key also breaks the read: its stream cannot be stored.
            assert_eq!(
                failures.len(),
                1,
                "{flaw}: only its own check fails: {failures:?}"
            );
        }
    }
}

#[test]
fn the_human_table_names_the_failing_check() {
    let s = Scratch::new();
    let cfg = s.write("f.json", r#"{"count": 3, "flaw": "rewind"}"#);
    let out = sluice([
        "test-connector".as_ref(),
        guest("flawed").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(!out.ok);
    assert!(
        out.stdout.contains("conformance of flawed 0.1.0"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("a second read resumes from the cursor") && l.contains("FAIL")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("FAIL: 1 of 12 checks failed"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_fixture_that_never_gets_ready_is_a_clear_error() {
    let s = Scratch::new();
    let cfg = s.write("f.json", r#"{"count": 3}"#);
    let out = sluice([
        "test-connector".as_ref(),
        guest("flawed").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--fixture".as_ref(),
        "echo not ready; exit 3".as_ref(),
    ]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("cannot start the fixture") && out.stderr.contains("exited"),
        "{}",
        out.stderr
    );
}
