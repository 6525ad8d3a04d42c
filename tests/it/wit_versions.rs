//! WIT versions side by side: one engine runs the same connector sources
//! built against `sluice:connector@0.1.0` and `@0.2.0` with the same
//! results; `@0.2.0`'s `http.send-all` runs its requests concurrently
//! (counted on the upstream's side, never timed), at most `max_in_flight`
//! at once, answers in request order, and applies the egress checks to
//! each request; a component of another version gets one line naming the
//! versions the host supports.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{guest, guest_v0_1, sluice, Scratch};
use sluice_core::{Limits, RunStatus};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::latency;
use sluice_fixture::Running;
use sluice_runner::pipeline::{self, RunRequest};
use sluice_wasm::{Runtime, RuntimeError, RuntimeOptions, WitVersion};

fn runtime() -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeOptions {
            cache_dir: Some(common::cache_dir()),
        })
        .unwrap(),
    )
}

fn request(
    s: &Scratch,
    db: &str,
    component: std::path::PathBuf,
    config: String,
    fx: &Running,
    limits: Limits,
) -> RunRequest {
    RunRequest {
        component,
        config,
        db: s.path(db).into(),
        db_password: None,
        grants: vec![format!("127.0.0.1:{}", fx.addr.port()).parse().unwrap()],
        secrets: Default::default(),
        limits,
        full_refresh: false,
        instance: "wit".into(),
        tables: Default::default(),
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
        cancel: Default::default(),
        progress: None,
    }
}

/// Every row of `table` as its record JSON, by its integer key.
fn rows(s: &Scratch, db: &str, table: &str, key: &str) -> Vec<String> {
    let conn = common::db(&s.path(db));
    let mut stmt = conn
        .prepare(&format!(
            "SELECT _record FROM {table} ORDER BY CAST({key} AS INTEGER)"
        ))
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn each_build_is_of_its_version() {
    let rt = runtime();
    for name in ["items", "misbehave", "open_meteo", "github_issues"] {
        let old = rt.load(&guest_v0_1(name)).unwrap();
        assert_eq!(old.pre.wit_version(), WitVersion::V0_1, "{name}");
        let new = rt.load(&guest(name)).unwrap();
        assert_eq!(new.pre.wit_version(), WitVersion::V0_2, "{name}");
        assert_ne!(old.hash, new.hash, "{name}: two different components");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engine_runs_both_versions_of_items_with_the_same_results() {
    let rt = runtime();
    let s = Scratch::new();
    let (router, _) = items::router(ItemsConfig {
        total: 250,
        ..Default::default()
    });
    let fx = Running::start(router, 0).unwrap();
    let config = format!(r#"{{"base_url": "{}", "page_size": 40}}"#, fx.base_url());
    let mut seen = Vec::new();
    for (db, component) in [("v1.db", guest_v0_1("items")), ("v2.db", guest("items"))] {
        let req = request(&s, db, component, config.clone(), &fx, Limits::default());
        let report = pipeline::run(&rt, &req).await.unwrap();
        let r = &report.record;
        assert_eq!(r.status, RunStatus::Succeeded, "{db}: {:?}", r.error);
        assert_eq!(r.records_upserted, 250, "{db}");
        let table = report.tables["items"].clone();
        seen.push((
            r.records_emitted,
            r.http_requests,
            rows(&s, db, &table, "id"),
        ));
        // The run resumes from its committed cursor whatever the version.
        let again = pipeline::run(&rt, &req).await.unwrap().record;
        assert_eq!(
            again.status,
            RunStatus::Succeeded,
            "{db}: {:?}",
            again.error
        );
        assert_eq!(rows(&s, db, &table, "id").len(), 250, "{db}");
    }
    assert_eq!(seen[0].2.len(), 250);
    assert_eq!(seen[0], seen[1], "@0.1.0 and @0.2.0 builds differ");
}

/// The misbehave guest's `send_all` behaviour against the latency
/// upstream: `n` pages, then the answers as (index, body) by index.
async fn send_all_run(
    rt: &Runtime,
    s: &Scratch,
    db: &str,
    component: std::path::PathBuf,
    fx: &Running,
    urls: &[String],
    limits: Limits,
) -> (pipeline::RunReport, Vec<serde_json::Value>) {
    let config = serde_json::json!({"behaviour": "send_all", "urls": urls}).to_string();
    let req = request(s, db, component, config, fx, limits);
    let report = pipeline::run(rt, &req).await.unwrap();
    let answers = if report.record.status == RunStatus::Succeeded {
        let table = report.tables["loose"].clone();
        rows(s, db, &table, "k")
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    (report, answers)
}

fn pages(fx: &Running, n: usize) -> Vec<String> {
    // Out of numeric order, so "in order" means request order.
    (0..n)
        .map(|i| format!("{}/pages/{}", fx.base_url(), (i * 7) % n))
        .collect()
}

fn with_max_in_flight(n: u32) -> Limits {
    let mut limits = Limits::default();
    limits.http.max_in_flight = n;
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_is_concurrent_bounded_and_in_request_order() {
    let rt = runtime();
    let s = Scratch::new();
    // Each answer waits, so requests sent together overlap at the server.
    let (router, in_flight) = latency::router(Duration::from_millis(200));
    let fx = Running::start(router, 0).unwrap();
    let urls = pages(&fx, 12);
    let (report, answers) = send_all_run(
        &rt,
        &s,
        "bounded.db",
        guest("misbehave"),
        &fx,
        &urls,
        with_max_in_flight(3),
    )
    .await;
    let r = &report.record;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!(r.http_requests, 12);
    assert_eq!(in_flight.total(), 12);
    assert!(
        in_flight.most() >= 2,
        "send-all sent one request at a time (at most {} in flight)",
        in_flight.most()
    );
    assert!(
        in_flight.most() <= 3,
        "{} requests in flight, over max_in_flight = 3",
        in_flight.most()
    );
    let expected: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            serde_json::json!({"k": i, "v": {"status": 200, "body": format!("page-{}", (i * 7) % 12)}})
        })
        .collect();
    assert_eq!(answers, expected, "answers out of request order");

    // The default bound is DEFAULT_HTTP_MAX_IN_FLIGHT.
    let (router, in_flight) = latency::router(Duration::from_millis(200));
    let fx = Running::start(router, 0).unwrap();
    let urls = pages(&fx, 20);
    let (report, answers) = send_all_run(
        &rt,
        &s,
        "default.db",
        guest("misbehave"),
        &fx,
        &urls,
        Limits::default(),
    )
    .await;
    assert_eq!(report.record.status, RunStatus::Succeeded);
    assert_eq!(answers.len(), 20);
    let default = sluice_core::limits::DEFAULT_HTTP_MAX_IN_FLIGHT as usize;
    assert!(in_flight.most() >= 2, "{}", in_flight.most());
    assert!(in_flight.most() <= default, "{}", in_flight.most());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_gives_both_versions_the_same_answers() {
    let rt = runtime();
    let s = Scratch::new();
    let (router, in_flight) = latency::router(Duration::from_millis(20));
    let fx = Running::start(router, 0).unwrap();
    let mut urls = pages(&fx, 5);
    urls.push(format!("{}/status/404", fx.base_url()));
    let (old, old_answers) = send_all_run(
        &rt,
        &s,
        "v1.db",
        guest_v0_1("misbehave"),
        &fx,
        &urls,
        Limits::default(),
    )
    .await;
    assert_eq!(
        old.record.status,
        RunStatus::Succeeded,
        "{:?}",
        old.record.error
    );
    // @0.1.0 has no send-all: the SDK sends one request after the other.
    assert_eq!(in_flight.most(), 1);
    let (new, new_answers) = send_all_run(
        &rt,
        &s,
        "v2.db",
        guest("misbehave"),
        &fx,
        &urls,
        Limits::default(),
    )
    .await;
    assert_eq!(
        new.record.status,
        RunStatus::Succeeded,
        "{:?}",
        new.record.error
    );
    assert_eq!(old_answers.len(), 6);
    assert_eq!(old_answers, new_answers);
    assert_eq!(old_answers[5]["v"]["status"], 404);
    assert_eq!(in_flight.total(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_checked_for_each_request_of_a_send_all() {
    let rt = runtime();
    let s = Scratch::new();
    let (router, in_flight) = latency::router(Duration::from_millis(10));
    let fx = Running::start(router, 0).unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ungranted_port = other.local_addr().unwrap().port();
    let urls = vec![
        format!("{}/pages/0", fx.base_url()),
        // Loopback on a port the operator did not grant.
        format!("http://127.0.0.1:{ungranted_port}/pages/1"),
        // The metadata address: refused whatever the grants.
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("{}/pages/3", fx.base_url()),
    ];
    let (report, answers) = send_all_run(
        &rt,
        &s,
        "egress.db",
        guest("misbehave"),
        &fx,
        &urls,
        Limits::default(),
    )
    .await;
    let r = &report.record;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!(r.http_denied, 2);
    assert_eq!(r.http_requests, 2, "only the granted requests were sent");
    assert_eq!(in_flight.total(), 2);
    assert_eq!(answers[0]["v"]["body"], "page-0");
    assert_eq!(answers[3]["v"]["body"], "page-3");
    for i in [1, 2] {
        let error = answers[i]["v"]["error"].as_str().unwrap();
        assert!(error.contains("denied"), "request {i}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_budget_holds_across_the_requests_of_a_send_all() {
    let rt = runtime();
    let s = Scratch::new();
    let (router, in_flight) = latency::router(Duration::from_millis(50));
    let fx = Running::start(router, 0).unwrap();
    let limits = Limits {
        max_http_requests: 3,
        ..Limits::default()
    };
    let (report, _) = send_all_run(
        &rt,
        &s,
        "budget.db",
        guest("misbehave"),
        &fx,
        &pages(&fx, 8),
        limits,
    )
    .await;
    let r = &report.record;
    assert_eq!(r.status, RunStatus::HttpBudget, "{:?}", r.error);
    assert_eq!(r.http_requests, 3);
    assert!(
        in_flight.total() <= 3,
        "{} requests sent",
        in_flight.total()
    );
}

/// The breaker sees every request of a send-all: with one in flight at a
/// time (deterministic), two 503s trip it and the rest fail fast unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_applies_to_each_request_of_a_send_all() {
    let rt = runtime();
    let s = Scratch::new();
    let (router, in_flight) = latency::router(Duration::ZERO);
    let fx = Running::start(router, 0).unwrap();
    let mut limits = with_max_in_flight(1);
    limits.http.retries = 0;
    limits.http.breaker_threshold = 2;
    let urls: Vec<String> = (0..6)
        .map(|_| format!("{}/status/503", fx.base_url()))
        .collect();
    let (report, answers) = send_all_run(
        &rt,
        &s,
        "breaker.db",
        guest("misbehave"),
        &fx,
        &urls,
        limits,
    )
    .await;
    let r = &report.record;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!((r.http_requests, r.http_breaker_trips), (2, 1));
    assert_eq!(report.http_circuit_open, 4);
    assert_eq!(in_flight.total(), 2);
    for (i, a) in answers.iter().enumerate() {
        if i < 2 {
            assert_eq!(a["v"]["status"], 503, "{a}");
        } else {
            let error = a["v"]["error"].as_str().unwrap();
            assert!(error.contains("circuit open"), "{i}: {error}");
        }
    }
}

/// `partitions` (`@0.2.0`): what the connector answers, as JSON texts; a
/// `@0.1.0` component has none (its streams are read whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_the_connectors_in_0_2_and_none_in_0_1() {
    use sluice_core::secrets::Secrets;
    use sluice_wasm::sandbox::Sandbox;
    let rt = runtime();
    let config = serde_json::json!({
        "behaviour": "ok",
        "partitions": [{"from": 1, "to": 100}, {"from": 101, "to": 200}, "shard-3"],
    })
    .to_string();
    let mut answers = Vec::new();
    for component in [guest("misbehave"), guest_v0_1("misbehave")] {
        let loaded = rt.load(&component).unwrap();
        let mut sandbox = Sandbox::new(
            &rt,
            &loaded,
            "run",
            "misbehave",
            &[],
            &Secrets::default(),
            &Limits::default(),
        )
        .await
        .unwrap();
        let partitions = sandbox.partitions(&config, "items").await.unwrap();
        answers.push((sandbox.wit_version(), partitions));
    }
    let parsed: Vec<serde_json::Value> = answers[0]
        .1
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(answers[0].0, WitVersion::V0_2);
    assert_eq!(
        parsed,
        vec![
            serde_json::json!({"from": 1, "to": 100}),
            serde_json::json!({"from": 101, "to": 200}),
            serde_json::json!("shard-3"),
        ]
    );
    assert_eq!(answers[1], (WitVersion::V0_1, Vec::new()));
}

/// A component exporting a `connector` interface of a version the host
/// does not know.
const V0_3_WAT: &str = r#"(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (instance $c (export "spec" (func $f)))
  (export "sluice:connector/connector@0.3.0" (instance $c)))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_an_unknown_version_gets_one_line_naming_the_supported_ones() {
    let rt = runtime();
    let s = Scratch::new();
    let path = s.write("future.wat", V0_3_WAT);
    match rt.load(&path) {
        Err(e @ RuntimeError::UnsupportedVersion { .. }) => {
            let text = e.to_string();
            assert!(text.contains("sluice:connector/connector@0.3.0"), "{text}");
            assert!(
                text.contains("this host supports sluice:connector@0.1.0 and @0.2.0"),
                "{text}"
            );
            assert!(!text.contains('\n'), "{text}");
        }
        Err(other) => panic!("expected an unsupported-version error, got {other}"),
        Ok(_) => panic!("a @0.3.0 component loaded"),
    }
    let out = sluice(["spec".as_ref(), path.as_os_str()]);
    assert!(!out.ok);
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("sluice:connector@0.1.0 and @0.2.0"),
        "{}",
        out.stderr
    );
}
