//! The executor seam, in process: a run given as a serialised `RunSpec`,
//! its component found by registry name, its secret references resolved
//! where it executes, a pinned digest enforced, its events in order, and
//! a stop request obeyed.

use crate::common;

use std::sync::Arc;

use common::{count, db, guest, Scratch};
use sluice_core::cancel::Cancel;
use sluice_core::run_spec::{ComponentSource, RunSpec};
use sluice_core::RunStatus;
use sluice_runner::executor::{Executor, ExecutorError, LocalExecutor, RunEvent};
use sluice_wasm::{Runtime, RuntimeOptions};

/// An executor whose registry holds the misbehave guest only.
fn executor(s: &Scratch) -> LocalExecutor {
    let dir = s.path("connectors");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(guest("misbehave"), dir.join("misbehave.wasm")).unwrap();
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: Some(common::cache_dir()),
    })
    .unwrap();
    LocalExecutor::new(Arc::new(runtime), dir)
}

fn spec(s: &Scratch, config: &str) -> RunSpec {
    RunSpec {
        component: ComponentSource::Registry("misbehave".into()),
        component_digest: None,
        config: config.into(),
        destination: s.path("sluice.db").into(),
        db_password: None,
        instance: "m".into(),
        tables: Default::default(),
        grants: Vec::new(),
        secrets: Vec::new(),
        secret_hosts: Vec::new(),
        limits: Default::default(),
        http: Default::default(),
        full_refresh: false,
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
    }
}

/// Every event of a run, in order.
async fn events(exec: &LocalExecutor, spec: RunSpec, cancel: Cancel) -> Vec<RunEvent> {
    let mut handle = exec.submit(spec, cancel);
    let mut out = Vec::new();
    while let Some(e) = handle.next_event().await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_from_json_runs_by_registry_name_and_ends_with_one_report() {
    let s = Scratch::new();
    let exec = executor(&s);
    let json = spec(&s, r#"{"behaviour": "ok", "committed": 40}"#).to_json();
    let spec = RunSpec::from_json(&json).unwrap();
    let all = events(&exec, spec, Cancel::default()).await;
    let (last, before) = all.split_last().unwrap();
    assert!(
        before
            .iter()
            .all(|e| matches!(e, RunEvent::Progress { .. })),
        "{all:?}"
    );
    let RunEvent::Finished(result) = last else {
        panic!("{last:?}")
    };
    let report = result.as_ref().as_ref().unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded, "{report:?}");
    assert_eq!(report.record.records_upserted, 40);
    let conn = db(&s.path("sluice.db"));
    assert_eq!(count(&conn, "SELECT count(*) FROM m__items"), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_digest_or_an_unresolvable_secret_stops_the_run_before_it_starts() {
    let s = Scratch::new();
    let exec = executor(&s);
    let mut pinned = spec(&s, r#"{"behaviour": "ok", "committed": 3}"#);
    pinned.component_digest = Some("00".repeat(32));
    let err = exec
        .submit(pinned, Cancel::default())
        .finish()
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutorError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&"00".repeat(32)), "{err}");

    let mut secret = spec(&s, r#"{"behaviour": "ok", "committed": 3}"#);
    secret.secrets = vec!["TOKEN=env:SLUICE_EXECUTOR_TEST_UNSET_VAR".parse().unwrap()];
    let err = exec
        .submit(secret, Cancel::default())
        .finish()
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutorError::Secrets(_)), "{err}");
    assert!(
        err.to_string().contains("SLUICE_EXECUTOR_TEST_UNSET_VAR"),
        "{err}"
    );
    // Neither run began: no run was recorded.
    assert!(
        !s.path("sluice.db").exists()
            || count(
                &db(&s.path("sluice.db")),
                "SELECT count(*) FROM _sluice_runs"
            ) == 0
    );

    // The right digest runs.
    let mut right = spec(&s, r#"{"behaviour": "ok", "committed": 3}"#);
    let bytes = std::fs::read(guest("misbehave")).unwrap();
    right.component_digest = Some(sha256_hex(&bytes));
    let report = exec
        .submit(right, Cancel::default())
        .finish()
        .await
        .unwrap();
    assert_eq!(report.record.status, RunStatus::Succeeded);
    assert_eq!(report.record.component_hash, sha256_hex(&bytes));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_reports_what_it_committed() {
    let s = Scratch::new();
    let exec = executor(&s);
    let mut looping = spec(&s, r#"{"behaviour": "loop", "committed": 7}"#);
    // Enough fuel to loop until stopped.
    looping.limits.fuel = Some(10_000_000_000_000);
    let mut handle = exec.submit(looping, Cancel::default());
    // Wait until the records before the loop are emitted (their commit is
    // queued before the loop starts), then stop at once.
    loop {
        match handle.next_event().await {
            Some(RunEvent::Progress { emitted: 7, .. }) => break,
            Some(RunEvent::Progress { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    handle.cancel().abort();
    let report = handle.finish().await.unwrap();
    assert_eq!(report.record.status, RunStatus::Cancelled, "{report:?}");
    assert_eq!(report.record.records_upserted, 7);
}
