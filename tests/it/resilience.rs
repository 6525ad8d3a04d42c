//! Resilient host HTTP: retries against a fault-injecting upstream, a
//! per-host rate limit shared by concurrent runs in one process, and the
//! per-upstream circuit breaker; plus the CLI flags that tune them. Every
//! upstream is a loopback fixture the test starts.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{guest, Scratch};
use sluice_core::{HttpPolicy, Limits, RunStatus};
use sluice_fixture::faulty::{self, Fault, Faults, SharedFaults};
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::Running;
use sluice_runner::pipeline::{self, RunRequest};
use sluice_wasm::{Runtime, RuntimeOptions};

fn runtime() -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeOptions {
            cache_dir: Some(common::cache_dir()),
        })
        .unwrap(),
    )
}

/// The items API with `total` records behind the fault injector.
fn upstream(total: u64, faults: Faults) -> (Running, SharedFaults) {
    let (router, _) = items::router(ItemsConfig {
        total,
        ..Default::default()
    });
    let (router, state) = faulty::wrap(router, faults);
    (Running::start(router, 0).unwrap(), state)
}

/// Short timeouts and delays so faults cost milliseconds, no breaker.
fn quick_policy() -> HttpPolicy {
    HttpPolicy {
        timeout: Duration::from_millis(1_000),
        connect_timeout: Duration::from_millis(1_000),
        retries: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        rate_limits: Vec::new(),
        breaker_threshold: 0,
        breaker_cooldown: Duration::from_secs(1),
        max_in_flight: 8,
    }
}

fn request(s: &Scratch, db: &str, fx: &Running, page_size: u32, http: HttpPolicy) -> RunRequest {
    RunRequest {
        component: guest("items"),
        config: format!(
            r#"{{"base_url": "{}", "page_size": {page_size}}}"#,
            fx.base_url()
        ),
        db: s.path(db).into(),
        db_password: None,
        grants: vec![format!("127.0.0.1:{}", fx.addr.port()).parse().unwrap()],
        secrets: Default::default(),
        limits: Limits {
            http,
            ..Limits::default()
        },
        full_refresh: false,
        instance: "items".into(),
        tables: Default::default(),
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
        cancel: Default::default(),
        progress: None,
    }
}

/// The items table as (id, full record JSON), by id.
fn items_table(s: &Scratch, db: &str) -> Vec<(i64, String)> {
    let conn = common::db(&s.path(db));
    let mut stmt = conn
        .prepare("SELECT id, _record FROM items__items ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_make_a_faulty_upstream_look_clean() {
    let rt = runtime();
    let s = Scratch::new();
    let (clean, _) = upstream(600, Faults::none());
    let report = pipeline::run(&rt, &request(&s, "clean.db", &clean, 50, quick_policy()))
        .await
        .unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.record.http_retries, 0);

    let (flaky, faults) = upstream(
        600,
        Faults {
            seed: 7,
            rate: 0.3,
            // Longer than the 1 s request timeout.
            slow: Duration::from_millis(2_000),
            max_in_a_row: 3,
        },
    );
    let report = pipeline::run(&rt, &request(&s, "flaky.db", &flaky, 20, quick_policy()))
        .await
        .unwrap();
    let r = &report.record;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    let tally = faults.lock().unwrap().tally();
    let faulty: usize = tally
        .iter()
        .filter(|(k, _)| k.as_str() != "clean")
        .map(|(_, n)| n)
        .sum();
    assert!(faulty > 0, "the seed injects faults: {tally:?}");
    for kind in [
        "Status(500)",
        "Status(503)",
        "TooManyRequests",
        "Reset",
        "Slow",
    ] {
        assert!(tally.contains_key(kind), "no {kind} injected: {tally:?}");
    }
    // Every faulty answer cost a retry (a clean answer slower than the
    // timeout on a busy machine may cost one more); every attempt was sent.
    assert!(
        r.http_retries >= faulty as u64,
        "{} retries: {tally:?}",
        r.http_retries
    );
    assert_eq!(
        r.http_requests as usize,
        faults.lock().unwrap().log.len(),
        "{tally:?}"
    );
    assert_eq!(r.http_breaker_trips, 0);
    assert_eq!(items_table(&s, "flaky.db"), items_table(&s, "clean.db"));
    assert_eq!(items_table(&s, "clean.db").len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_share_one_rate_limit_per_host() {
    const RPS: f64 = 10.0;
    const BURST: usize = 3;
    let rt = runtime();
    let s = Scratch::new();
    let (fx, faults) = upstream(200, Faults::none());
    let policy = HttpPolicy {
        rate_limits: vec![format!("127.0.0.1={RPS}/{BURST}").parse().unwrap()],
        ..quick_policy()
    };
    // 200 records in pages of 20: 10 requests per run, 30 in all.
    let reqs: Vec<RunRequest> = (0..3)
        .map(|i| request(&s, &format!("run{i}.db"), &fx, 20, policy.clone()))
        .collect();
    let (a, b, c) = tokio::join!(
        pipeline::run(&rt, &reqs[0]),
        pipeline::run(&rt, &reqs[1]),
        pipeline::run(&rt, &reqs[2]),
    );
    let reports = [a.unwrap(), b.unwrap(), c.unwrap()];
    for r in &reports {
        assert_eq!(
            r.record.status,
            RunStatus::Succeeded,
            "{:?}",
            r.record.error
        );
        assert_eq!(r.record.records_upserted, 200);
    }
    let throttled: u64 = reports.iter().map(|r| r.record.http_throttled_ms).sum();
    assert!(throttled > 0, "the runs waited for tokens");

    let times: Vec<Instant> = faults.lock().unwrap().log.iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 30);
    // In any stretch of the log, no more requests arrived than the bucket
    // allows: BURST at once plus RPS per second, with a little slack for
    // scheduling between the token and the arrival.
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let span = times[j].duration_since(times[i]).as_secs_f64();
            let allowed = BURST as f64 + RPS * (span + 0.2) + 1.0;
            let seen = (j - i + 1) as f64;
            assert!(
                seen <= allowed,
                "{seen} requests within {span:.3} s exceed {RPS}/s with burst {BURST}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_down_upstream_fails_fast_and_closes_on_recovery() {
    let rt = runtime();
    let s = Scratch::new();
    let (fx, faults) = upstream(100, Faults::none());
    faults.lock().unwrap().down = Some(500);
    let cooldown = Duration::from_millis(1_500);
    let policy = HttpPolicy {
        retries: 2,
        breaker_threshold: 3,
        breaker_cooldown: cooldown,
        ..quick_policy()
    };
    let req = request(&s, "sluice.db", &fx, 50, policy);
    let seen = || faults.lock().unwrap().log.len();

    // Each run's first page fails after 1 + 2 attempts; the third run's
    // failure is the third in a row and opens the breaker.
    for n in 1..=3u64 {
        let r = pipeline::run(&rt, &req).await.unwrap().record;
        assert_eq!(r.status, RunStatus::Failed);
        assert!(r.error.as_deref().unwrap().contains("HTTP 500"), "{r:?}");
        assert_eq!((r.http_requests, r.http_retries), (3, 2));
        assert_eq!(r.http_breaker_trips, u64::from(n == 3));
        assert_eq!(seen() as u64, 3 * n);
    }
    let tripped = Instant::now();

    // Open: the next run fails fast without reaching the upstream.
    let report = pipeline::run(&rt, &req).await.unwrap();
    let r = &report.record;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.as_deref().unwrap();
    assert!(error.contains("circuit open"), "{error}");
    assert_eq!((r.http_requests, r.http_retries), (0, 0));
    assert_eq!(report.http_circuit_open, 1);
    assert_eq!(seen(), 9, "nothing was sent while the breaker was open");

    // The upstream recovers; after the cool-down one probe goes through,
    // succeeds and closes the breaker.
    faults.lock().unwrap().down = None;
    if let Some(rest) =
        (tripped + cooldown + Duration::from_millis(100)).checked_duration_since(Instant::now())
    {
        tokio::time::sleep(rest).await;
    }
    let r = pipeline::run(&rt, &req).await.unwrap().record;
    assert_eq!(r.status, RunStatus::Succeeded, "{:?}", r.error);
    assert_eq!(r.records_upserted, 100);
    let r = pipeline::run(&rt, &req).await.unwrap().record;
    assert_eq!(r.status, RunStatus::Succeeded, "closed: {:?}", r.error);
    assert!(faults.lock().unwrap().log[9..]
        .iter()
        .all(|(_, f)| f.is_none() || *f == Some(Fault::Slow)));
}

/// An always-503 upstream: after the cool-down exactly one probe reaches
/// it (one attempt: a probe is never retried, whatever `--retries`), and
/// its failure opens the breaker for the next, long, cool-down, during
/// which nothing reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_gets_exactly_one_probe_per_cool_down() {
    let rt = runtime();
    let s = Scratch::new();
    let (fx, faults) = upstream(100, Faults::none());
    faults.lock().unwrap().down = Some(503);
    let seen = || faults.lock().unwrap().log.len();
    let short = Duration::from_millis(300);
    let trip = HttpPolicy {
        retries: 0,
        breaker_threshold: 1,
        breaker_cooldown: short,
        ..quick_policy()
    };
    let r = pipeline::run(&rt, &request(&s, "sluice.db", &fx, 50, trip))
        .await
        .unwrap()
        .record;
    assert_eq!((r.status, r.http_breaker_trips), (RunStatus::Failed, 1));
    assert_eq!(seen(), 1);
    let tripped = Instant::now();
    if let Some(rest) =
        (tripped + short + Duration::from_millis(100)).checked_duration_since(Instant::now())
    {
        tokio::time::sleep(rest).await;
    }
    let long = HttpPolicy {
        retries: 3,
        breaker_threshold: 1,
        breaker_cooldown: Duration::from_secs(60),
        ..quick_policy()
    };
    let req = request(&s, "sluice.db", &fx, 50, long);
    let r = pipeline::run(&rt, &req).await.unwrap().record;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.error.as_deref().unwrap().contains("HTTP 503"), "{r:?}");
    assert_eq!(
        (r.http_requests, r.http_retries),
        (1, 0),
        "the probe was retried"
    );
    assert_eq!(r.http_breaker_trips, 1, "the failed probe re-opened it");
    assert_eq!(seen(), 2, "exactly one probe");
    for _ in 0..3 {
        let report = pipeline::run(&rt, &req).await.unwrap();
        assert_eq!(report.http_circuit_open, 1);
        assert_eq!(report.record.http_requests, 0);
    }
    assert_eq!(
        seen(),
        2,
        "nothing reached the upstream during the cool-down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_wait_is_started_that_would_end_after_the_deadline() {
    let rt = runtime();
    let s = Scratch::new();
    let (fx, faults) = upstream(100, Faults::none());
    // Every answer is a 429 asking for a 1 s wait; the run has 600 ms.
    faults.lock().unwrap().down = Some(429);
    let mut req = request(
        &s,
        "sluice.db",
        &fx,
        50,
        HttpPolicy {
            retries: 10,
            max_delay: Duration::from_secs(10),
            ..quick_policy()
        },
    );
    req.limits.timeout = Duration::from_millis(600);
    let started = Instant::now();
    let r = pipeline::run(&rt, &req).await.unwrap().record;
    // The connector got the 429 at once instead of the run dying in a
    // wait it could not finish.
    assert_eq!(r.status, RunStatus::Failed, "{:?}", r.error);
    assert!(r.error.as_deref().unwrap().contains("HTTP 429"), "{r:?}");
    assert_eq!((r.http_requests, r.http_retries), (1, 0));
    assert!(started.elapsed() < Duration::from_millis(600));
    assert_eq!(faults.lock().unwrap().log.len(), 1);
}

#[test]
fn an_older_runs_table_gains_the_new_columns() {
    let s = Scratch::new();
    let path = s.path("old.db");
    let conn = common::db(&path);
    conn.execute_batch(
        "CREATE TABLE _sluice_runs (id TEXT PRIMARY KEY, connector TEXT NOT NULL, \
         connector_version TEXT NOT NULL, component_hash TEXT NOT NULL, started_at TEXT NOT NULL, \
         ended_at TEXT, duration_ms INTEGER, status TEXT NOT NULL, \
         records_emitted INTEGER NOT NULL DEFAULT 0, records_valid INTEGER NOT NULL DEFAULT 0, \
         records_quarantined INTEGER NOT NULL DEFAULT 0, records_upserted INTEGER NOT NULL DEFAULT 0, \
         stream_counts TEXT NOT NULL DEFAULT '{}', drift TEXT NOT NULL DEFAULT '[]', \
         commits INTEGER NOT NULL DEFAULT 0, http_requests INTEGER NOT NULL DEFAULT 0, \
         http_denied INTEGER NOT NULL DEFAULT 0, http_bytes INTEGER NOT NULL DEFAULT 0, \
         fuel_used INTEGER NOT NULL DEFAULT 0, peak_memory_bytes INTEGER NOT NULL DEFAULT 0, \
         error TEXT, pid INTEGER);
         INSERT INTO _sluice_runs (id, connector, connector_version, component_hash, started_at, status) \
         VALUES ('old', 'c', '1', 'h', '2026-01-01T00:00:00Z', 'succeeded');",
    )
    .unwrap();
    drop(conn);
    use sluice_core::destination::RunLog;
    let mut store = sluice_store::SqliteStore::open(&path).unwrap();
    let old = store.get_run("old").unwrap();
    assert_eq!(
        (
            old.http_retries,
            old.http_throttled_ms,
            old.http_breaker_trips
        ),
        (0, 0, 0)
    );
    // Opening again (columns present) is a no-op.
    drop(store);
    sluice_store::SqliteStore::open(&path).unwrap();
}

#[test]
fn resilience_flags_tune_the_cli_and_bad_ones_are_refused() {
    let s = Scratch::new();
    let (fx, faults) = upstream(120, Faults::none());
    let config = s.write(
        "config.json",
        format!(r#"{{"base_url": "{}", "page_size": 40}}"#, fx.base_url()),
    );
    let grant = format!("127.0.0.1:{}", fx.addr.port());
    let db = s.path("sluice.db");
    let base = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "run".into(),
            guest("items").display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--db".into(),
            db.display().to_string(),
            "--allow-host".into(),
            grant.clone(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let out = common::sluice(base(&[
        "--retries",
        "2",
        "--rate-limit",
        "127.0.0.1=50/5",
        "--http-timeout",
        "5",
        "--breaker-threshold",
        "4",
        "--breaker-cooldown",
        "2.5",
        "--max-in-flight",
        "4",
    ]));
    assert!(out.ok, "{out:?}");
    assert!(out.stdout.contains("upstream: 0 retries"), "{}", out.stdout);
    assert_eq!(faults.lock().unwrap().log.len(), 3);
    let conn = common::db(&db);
    assert_eq!(
        common::count(
            &conn,
            "SELECT http_retries + http_breaker_trips FROM _sluice_runs"
        ),
        0
    );

    // A down upstream: the retry and the breaker trip are logged with their
    // reasons and counted in the summary.
    faults.lock().unwrap().down = Some(503);
    let out = common::sluice_env(
        base(&["--retries", "1", "--breaker-threshold", "1"]),
        &[("SLUICE_LOG", "warn,sluice::http=info")],
    );
    assert!(!out.ok, "{out:?}");
    assert!(
        out.stdout
            .contains("upstream: 1 retries, 0 ms throttled, 1 breaker trips"),
        "{}",
        out.stdout
    );
    for line in ["retrying request", "HTTP 503", "circuit breaker opened"] {
        assert!(out.stderr.contains(line), "no {line:?} in {}", out.stderr);
    }
    faults.lock().unwrap().down = None;

    for (flags, says) in [
        (&["--rate-limit", "127.0.0.1"][..], "HOST=RPS"),
        (&["--rate-limit", "127.0.0.1=0"][..], "RPS must be above 0"),
        (&["--rate-limit", "127.0.0.1:80=5"][..], "no port"),
        (&["--http-timeout", "0"][..], "--http-timeout"),
        (&["--breaker-cooldown", "-1"][..], "--breaker-cooldown"),
        (&["--retries", "1000"][..], "--retries"),
        (&["--retries", "many"][..], "--retries"),
        (&["--max-in-flight", "0"][..], "--max-in-flight"),
        (&["--max-in-flight", "257"][..], "--max-in-flight"),
    ] {
        let out = common::sluice(base(flags));
        assert!(!out.ok, "{flags:?} accepted");
        assert!(out.stderr.contains(says), "{flags:?}: {}", out.stderr);
        assert!(
            out.stderr.trim().lines().count() <= 3,
            "{flags:?}: {}",
            out.stderr
        );
    }
}

/// A transport failure that outlasts the retries reaches the run as the
/// upstream's error, saying what happened; "refused" and "denied" are kept
/// for the egress checks.
#[test]
fn a_transport_failure_after_retries_is_an_upstream_error_not_a_refusal() {
    // An upstream that reads each request and drops the connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            drop(conn);
        }
    });
    let s = Scratch::new();
    let config = s.write(
        "config.json",
        format!(r#"{{"base_url": "http://127.0.0.1:{port}", "page_size": 10}}"#),
    );
    let db = s.path("sluice.db");
    let out = common::sluice([
        "run".as_ref(),
        guest("items").as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--db".as_ref(),
        db.as_os_str(),
        "--allow-host".as_ref(),
        format!("127.0.0.1:{port}").as_ref(),
        "--retries".as_ref(),
        "1".as_ref(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let runs = common::runs(&common::db(&db));
    let error = runs[0].1.clone().unwrap();
    assert_eq!(runs[0].0, "failed", "{error}");
    assert!(
        error.starts_with(&format!(
            "upstream error: request to http://127.0.0.1:{port}/"
        )),
        "{error}"
    );
    assert!(
        !error.contains("refused") && !error.contains("denied"),
        "{error}"
    );
    let conn = common::db(&db);
    assert_eq!(
        common::count(&conn, "SELECT http_retries FROM _sluice_runs"),
        1
    );
}
