//! In-process tests of the runtime library: one host survives runaway
//! guests (alone and side by side with a good run), and the compiled
//! component cache works across runtimes.

use crate::common;

use std::sync::Arc;

use common::{guest, Scratch};
use sluice_core::{Limits, RunStatus};
use sluice_runner::pipeline::{self, RunRequest};
use sluice_wasm::engine::CacheOutcome;
use sluice_wasm::{Runtime, RuntimeOptions};

fn request(s: &Scratch, config: &str, limits: Limits) -> RunRequest {
    RunRequest {
        component: guest("misbehave"),
        config: config.to_string(),
        db: s.path("sluice.db").into(),
        db_password: None,
        grants: Vec::new(),
        secrets: Default::default(),
        limits,
        full_refresh: false,
        instance: "misbehave".into(),
        tables: Default::default(),
        streams: Vec::new(),
        modes: Default::default(),
        output: None,
        cancel: Default::default(),
        progress: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_survives_runaway_guests_and_keeps_serving() {
    let runtime = Arc::new(
        Runtime::new(RuntimeOptions {
            cache_dir: Some(common::cache_dir()),
        })
        .unwrap(),
    );
    let s = Scratch::new();
    let tight = Limits {
        fuel: 300_000_000,
        memory_bytes: 16 << 20,
        ..Limits::default()
    };

    // Runaway guests and a good one, side by side in one process.
    let looping = request(
        &s,
        r#"{"behaviour": "loop", "committed": 5}"#,
        tight.clone(),
    );
    let mut growing = request(&s, r#"{"behaviour": "grow"}"#, tight.clone());
    // Three instances (one run of an instance at a time), one database.
    let mut looping = looping;
    looping.instance = "looping".into();
    growing.instance = "growing".into();
    let good = request(
        &s,
        r#"{"behaviour": "ok", "committed": 100}"#,
        Limits::default(),
    );
    let (a, b, c) = tokio::join!(
        pipeline::run(&runtime, &looping),
        pipeline::run(&runtime, &growing),
        pipeline::run(&runtime, &good),
    );
    assert_eq!(a.unwrap().record.status, RunStatus::FuelExhausted);
    assert_eq!(b.unwrap().record.status, RunStatus::MemoryLimit);
    let c = c.unwrap();
    assert_eq!(c.record.status, RunStatus::Succeeded);
    assert_eq!(c.record.records_upserted, 100);

    // And the host still runs good guests afterwards.
    let again = pipeline::run(&runtime, &good).await.unwrap();
    assert_eq!(again.record.status, RunStatus::Succeeded);
    let conn = common::db(&s.path("sluice.db"));
    assert_eq!(
        common::count(&conn, "SELECT count(*) FROM misbehave__items"),
        100
    );
    assert_eq!(common::count(&conn, "SELECT count(*) FROM _sluice_runs"), 4);
}

#[test]
fn compiled_components_are_cached_on_disk_and_in_memory() {
    let s = Scratch::new();
    let cache = s.path("cache");
    let options = RuntimeOptions {
        cache_dir: Some(cache.clone()),
    };
    let first = Runtime::new(options.clone()).unwrap();
    assert_eq!(
        first.load(&guest("misbehave")).unwrap().cache,
        CacheOutcome::Compiled
    );
    assert_eq!(
        first.load(&guest("misbehave")).unwrap().cache,
        CacheOutcome::Memory
    );
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1);

    // A new process (runtime) with the same engine settings reuses it.
    let second = Runtime::new(options).unwrap();
    assert_eq!(
        second.load(&guest("misbehave")).unwrap().cache,
        CacheOutcome::Disk
    );

    // A corrupt cache entry is ignored and replaced, never trusted.
    let entry = entries[0].as_ref().unwrap().path();
    std::fs::write(&entry, b"corrupt").unwrap();
    let third = Runtime::new(RuntimeOptions {
        cache_dir: Some(cache),
    })
    .unwrap();
    assert_eq!(
        third.load(&guest("misbehave")).unwrap().cache,
        CacheOutcome::Compiled
    );
    assert!(std::fs::read(&entry).unwrap().len() > 1000);
}
