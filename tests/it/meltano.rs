//! A Sluice connector as a Meltano tap: the README's recipe (its
//! `meltano.yml` and wrapper script, read from README.md so the two cannot
//! drift apart) in a throwaway Meltano project, run by the real `meltano`
//! (`.tools/meltano-venv`) into the real `target-jsonl`
//! (`.tools/protocol-venv`), against the items fixture on 127.0.0.1. Both
//! venvs come from `scripts/setup-protocol-tools.sh`; Meltano installs no
//! plugin (they have an `executable` and no `pip_url`) and, as configured,
//! reports no usage and checks for no update: the only connections are to
//! the fixture.
//!
//! What Meltano's runs deliver is compared, run by run, with a plain
//! `sluice run … --db` sequence into SQLite against the same upstream.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{db, guest, Scratch};
use serde_json::Value as Json;
use sluice_fixture::items::{self, ItemsConfig};
use sluice_fixture::peers::{meltano_venv, venv};
use sluice_fixture::Running;

/// Meltano's state id of `meltano run tap-items target-jsonl` in the
/// recipe's environment.
const STATE_ID: &str = "dev:tap-items-to-target-jsonl";

/// The README's fenced code block whose first line is `first_line`.
fn readme_block(first_line: &str) -> String {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let mut blocks = readme.split("\n```").skip(1).step_by(2).filter_map(|b| {
        let (_lang, body) = b.split_once('\n')?;
        body.starts_with(first_line).then(|| format!("{body}\n"))
    });
    let block = blocks
        .next()
        .unwrap_or_else(|| panic!("README.md has no code block starting `{first_line}`"));
    assert!(
        blocks.next().is_none(),
        "README.md has two blocks starting `{first_line}`"
    );
    block
}

/// `text` with `from` replaced by `to`; `from` must be there.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the README's recipe no longer has `{from}`:\n{text}"
    );
    text.replace(from, to)
}

/// The README's Meltano project in `dir`, pointed at `fx`: `meltano.yml`,
/// `tap-items.sh`, `connectors/items.wasm`, and `bin/` (for `PATH`) with
/// `sluice` and the installed `target-jsonl`.
fn write_project(dir: &Path, fx: &Running, protocol_venv: &Path) {
    let host = format!("127.0.0.1:{}", fx.addr.port());
    let yml = replace(
        &readme_block("# meltano.yml"),
        "https://api.example.com",
        &fx.base_url(),
    );
    std::fs::write(dir.join("meltano.yml"), yml).unwrap();
    let wrapper = replace(
        &readme_block("#!/usr/bin/env bash\n# tap-items.sh"),
        "api.example.com",
        &host,
    );
    let tap = dir.join("tap-items.sh");
    std::fs::write(&tap, wrapper).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tap, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("connectors")).unwrap();
    std::fs::copy(guest("items"), dir.join("connectors/items.wasm")).unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), bin.join("sluice")).unwrap();
    std::os::unix::fs::symlink(
        protocol_venv.join("bin/target-jsonl"),
        bin.join("target-jsonl"),
    )
    .unwrap();
}

/// Run `meltano ARGS` in the project `dir`; its stdout. Nothing of the
/// caller's Meltano settings leaks in; the system database is the
/// project's own SQLite file, and HOME is the project (nothing is written
/// outside it).
fn meltano(meltano_venv: &Path, dir: &Path, args: &[&str]) -> String {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(meltano_venv.join("bin/meltano"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MELTANO_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(args)
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env(
            "MELTANO_DATABASE_URI",
            format!("sqlite:///{}", dir.join(".meltano/meltano.db").display()),
        )
        // The recipe's meltano.yml says so already; said twice.
        .env("MELTANO_SEND_ANONYMOUS_USAGE_STATS", "false")
        .env("MELTANO_DISABLE_TRACKING", "true")
        .env("MELTANO_CLI_DISABLE_VERSION_CHECK", "true")
        .env("MELTANO_AUTO_INSTALL", "false")
        .env("SLUICE_CACHE_DIR", common::cache_dir())
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run meltano");
    assert!(
        out.status.success(),
        "meltano {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every record target-jsonl has written so far (it appends), in order.
fn delivered(dir: &Path) -> Vec<Json> {
    let file = dir.join("output/items.jsonl");
    if !file.exists() {
        return Vec::new();
    }
    std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One plain `sluice run` of the items connector into the SQLite `lite`
/// with the recipe's config: its `--json` summary.
fn sqlite_run(s: &Scratch, fx: &Running, lite: &Path) -> Json {
    let cfg = s.write(
        "items.json",
        format!(r#"{{"base_url": "{}", "page_size": 25}}"#, fx.base_url()),
    );
    let out = common::sluice([
        "run",
        guest("items").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--allow-host",
        &format!("127.0.0.1:{}", fx.addr.port()),
        "--db",
        lite.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The SQLite table's records by id.
fn sqlite_rows(lite: &Path) -> BTreeMap<i64, Json> {
    if !lite.exists() {
        return BTreeMap::new();
    }
    db(lite)
        .prepare("SELECT id, _record FROM items__items")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (id, rec) = r.unwrap();
            (id, serde_json::from_str(&rec).unwrap())
        })
        .collect()
}

/// The SQLite run log's state of the items stream, as JSON.
fn sqlite_state(lite: &Path) -> Json {
    let out = common::sluice([
        "state",
        "show",
        "items",
        "items",
        "--db",
        lite.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{out:?}");
    let shown: Json = serde_json::from_str(&out.stdout).unwrap();
    serde_json::from_str(shown[0]["value"].as_str().unwrap()).unwrap()
}

fn by_id(records: &[Json]) -> BTreeMap<i64, Json> {
    let mut map = BTreeMap::new();
    for r in records {
        let id = r["id"].as_i64().unwrap();
        assert!(
            map.insert(id, r.clone()).is_none(),
            "one run delivered id {id} twice"
        );
    }
    map
}

#[test]
fn the_readme_recipe_makes_a_meltano_tap_that_resumes_from_meltanos_state() {
    let Some(protocol_venv) = venv() else { return };
    let Some(meltano_venv) = meltano_venv() else {
        return;
    };
    // Ids 9, 19, … have `amount` as a string: quarantined, never delivered.
    let (router, upstream) = items::router(ItemsConfig {
        total: 60,
        wrong_type_every: Some(10),
        ..Default::default()
    });
    let fx = Running::start(router, 0).unwrap();
    let s = Scratch::new();
    let project = s.path("project");
    std::fs::create_dir_all(&project).unwrap();
    write_project(&project, &fx, &protocol_venv);
    let lite = s.path("sluice.db");

    // Three rounds on one upstream: 60 items; then 40 more and item 5
    // updated; then nothing new. Each round: the SQLite sequence's run,
    // then `meltano run`.
    let mut times_delivered: BTreeMap<i64, u32> = BTreeMap::new();
    for round in 1..=3 {
        if round == 2 {
            let mut up = upstream.lock().unwrap();
            up.config.total = 100;
            up.config.updated.insert(5);
        }
        let before = sqlite_rows(&lite);
        let summary = sqlite_run(&s, &fx, &lite);
        let after = sqlite_rows(&lite);
        // The rows the SQLite run wrote anew or changed.
        let written: BTreeMap<i64, Json> = after
            .into_iter()
            .filter(|(id, rec)| before.get(id) != Some(rec))
            .collect();

        let already = delivered(&project).len();
        meltano(
            &meltano_venv,
            &project,
            &["run", "tap-items", "target-jsonl"],
        );
        let all = delivered(&project);
        let this_run = &all[already..];
        assert_eq!(
            this_run.len() as u64,
            summary["records_upserted"].as_u64().unwrap(),
            "round {round}: meltano delivered a different number of records than the SQLite \
             run upserted"
        );
        assert_eq!(
            by_id(this_run),
            written,
            "round {round}: meltano's records are not the rows the SQLite run wrote"
        );
        for id in by_id(this_run).keys() {
            *times_delivered.entry(*id).or_default() += 1;
        }

        // Meltano stored the last state the target echoed: Sluice's
        // bookmark, the one the SQLite run log holds.
        let state: Json = serde_json::from_str(
            meltano(&meltano_venv, &project, &["state", "get", STATE_ID]).trim(),
        )
        .unwrap();
        assert_eq!(
            state,
            serde_json::json!({"singer_state": {"bookmarks": {"items": sqlite_state(&lite)}}}),
            "round {round}"
        );
    }

    // Every valid id once, item 5 twice (it changed upstream), nothing
    // else: no round read what an earlier one delivered.
    let expected: BTreeMap<i64, u32> = (0..100)
        .filter(|id| id % 10 != 9)
        .map(|id| (id, if id == 5 { 2 } else { 1 }))
        .collect();
    assert_eq!(times_delivered, expected);
    assert_eq!(
        sqlite_state(&lite),
        serde_json::json!({"updated_at": items::rfc3339(items::updated_secs(
            &upstream.lock().unwrap().config,
            5
        ))})
    );
}
