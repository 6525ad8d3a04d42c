//! `sluice new`: for each language the skeleton it writes builds with the
//! project's own route, passes the conformance kit unchanged, and runs,
//! resuming from its state. Bad names and a non-empty directory are refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{db, repo_root, sluice, Scratch};
use serde_json::Value;

/// `sluice new --lang LANG NAME --dir DIR`, then the build its README gives;
/// the component.
fn new_and_build(s: &Scratch, lang: &str, name: &str) -> PathBuf {
    let dir = s.path(name);
    let out = sluice(["new", "--lang", lang, name, "--dir", dir.to_str().unwrap()]);
    assert!(out.ok, "{lang}: {out:?}");
    assert!(out.stdout.contains("build:"), "{}", out.stdout);
    assert!(dir.join("README.md").exists());
    let snake = name.replace('-', "_");
    let (mut cmd, component) = match lang {
        "rust" => {
            // The connectors' target dir: the std it built is reused.
            let target = repo_root().join("connectors/target");
            let mut cmd = Command::new("/usr/bin/cargo");
            cmd.args(["build", "--release", "--quiet"])
                .current_dir(&dir)
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTDOC", "/usr/bin/rustdoc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_DIR", &target);
            let wasm = target.join(format!("wasm32-unknown-unknown/release/{snake}.wasm"));
            (cmd, wasm)
        }
        "python" | "js" => {
            let script = if lang == "python" {
                "scripts/build-python-connectors.sh"
            } else {
                "scripts/build-js-connectors.sh"
            };
            let mut cmd = Command::new(repo_root().join(script));
            cmd.arg("--out").arg(dir.join("target")).arg(&dir);
            (cmd, dir.join(format!("target/{snake}.wasm")))
        }
        other => panic!("no language {other}"),
    };
    let _ = std::fs::remove_file(&component);
    let built = cmd.output().unwrap();
    assert!(
        built.status.success(),
        "{lang} build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    assert!(component.exists(), "{}", component.display());
    component
}

fn kit_passes(component: &Path, config: &Path) {
    let out = sluice([
        "test-connector".as_ref(),
        component.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(out.ok, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("PASS: 12 checks"), "{}", out.stdout);
}

fn runs_and_resumes(s: &Scratch, component: &Path, name: &str) {
    let dbp = s.path(&format!("{name}.db"));
    let run_with = |count: Option<u64>| -> Value {
        let cfg = match count {
            Some(n) => s.write("c.json", format!(r#"{{"count": {n}}}"#)),
            None => s.write("c.json", "{}"),
        };
        let out = sluice([
            "run".as_ref(),
            component.as_os_str(),
            "--config".as_ref(),
            cfg.as_os_str(),
            "--db".as_ref(),
            dbp.as_os_str(),
            "--json".as_ref(),
        ]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let first = run_with(None);
    assert_eq!(first["status"], "succeeded", "{name}: {first}");
    assert_eq!(
        first["records_upserted"], 10,
        "{name}: count defaults to 10"
    );
    let second = run_with(Some(25));
    assert_eq!(second["records_emitted"], 15, "{name}: resumes after id 10");
    let third = run_with(Some(25));
    assert_eq!(third["records_emitted"], 0, "{name}");
    let conn = db(&dbp);
    let table = common::stream_table(&conn, "records");
    assert_eq!(
        common::count(&conn, &format!("SELECT count(*) FROM {table}")),
        25
    );
    assert_eq!(
        common::count(
            &conn,
            &format!("SELECT count(*) FROM {table} WHERE name = 'record ' || id")
        ),
        25
    );
    // The instance is the component file's name.
    let instance = sluice_core::instance::default_instance(component).unwrap();
    let state: String = conn
        .query_row(
            "SELECT value FROM _sluice_state WHERE connector = ?1",
            [instance],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&state).unwrap(),
        serde_json::json!({"id": 25}),
        "{name}"
    );
}

fn scaffold(lang: &str) {
    let s = Scratch::new();
    let name = format!("scaffold-{lang}-check");
    let component = new_and_build(&s, lang, &name);
    let spec = sluice(["spec", component.to_str().unwrap(), "--json"]);
    assert!(spec.ok, "{spec:?}");
    let spec: Value = serde_json::from_str(&spec.stdout).unwrap();
    assert_eq!(spec["name"], name.as_str());
    kit_passes(&component, &s.write("kit.json", r#"{"count": 40}"#));
    runs_and_resumes(&s, &component, &name);
}

#[test]
fn rust_skeleton_builds_passes_the_kit_and_resumes() {
    scaffold("rust");
}

#[test]
fn python_skeleton_builds_passes_the_kit_and_resumes() {
    scaffold("python");
}

#[test]
fn js_skeleton_builds_passes_the_kit_and_resumes() {
    scaffold("js");
}

#[test]
fn bad_names_and_non_empty_directories_are_refused() {
    let s = Scratch::new();
    for bad in ["Bad", "my_source", "-x", "x-", "../escape", ""] {
        let x = s.path("x");
        let out = sluice([
            "new",
            "--lang",
            "rust",
            "--dir",
            x.to_str().unwrap(),
            "--",
            bad,
        ]);
        assert!(!out.ok, "{bad:?} accepted");
        assert!(
            out.stderr.contains("invalid connector name"),
            "{bad:?}: {}",
            out.stderr
        );
        assert!(!s.path("x").exists(), "{bad:?}: nothing written");
    }
    let dir = s.path("taken");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let out = sluice([
        "new",
        "--lang",
        "python",
        "ok-name",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.ok);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing added");
    let out = sluice(["new", "--lang", "cobol", "ok-name"]);
    assert!(!out.ok);
}
