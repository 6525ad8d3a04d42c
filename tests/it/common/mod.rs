//! Shared harness of the integration tests: a scratch directory per test,
//! the built guest components, the `sluice` binary, and SQLite queries.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root (the tests belong to the CLI crate, `runtime/cli`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Where `just build-connectors` writes guest components: Rust guests
/// (cargo's output) and the Python and JavaScript ones.
pub const GUEST_DIRS: [&str; 2] = [
    "connectors/target/wasm32-unknown-unknown/release",
    "connectors/target/components",
];

/// A guest component built by `just build-connectors`.
pub fn guest(name: &str) -> PathBuf {
    let file = format!("{name}.wasm");
    let found = GUEST_DIRS
        .iter()
        .map(|d| repo_root().join(d).join(&file))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{file} is missing from {GUEST_DIRS:?}: build the guest components first (`just build-connectors`)")
    })
}

/// Compiled-component cache shared by the tests (under target/).
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/test-component-cache")
}

/// A scratch directory, removed when dropped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

/// What one `sluice` invocation did.
#[derive(Debug)]
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run the `sluice` binary with `args`.
pub fn sluice<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    sluice_env(args, &[])
}

/// Run the `sluice` binary with `args` and extra environment variables.
pub fn sluice_env<I, S>(args: I, env: &[(&str, &str)]) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_CACHE_DIR", cache_dir())
        .env("SLUICE_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("spawn sluice");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Open a database for checking.
pub fn db(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

pub fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The runs table as (status, error, records_upserted, http_requests, http_denied), oldest first.
pub fn runs(db: &rusqlite::Connection) -> Vec<(String, Option<String>, i64, i64, i64)> {
    let mut stmt = db
        .prepare(
            "SELECT status, error, records_upserted, http_requests, http_denied FROM _sluice_runs ORDER BY started_at, id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// The destination table of `stream` in a database that one instance
/// wrote (each instance owns its tables: `_sluice_tables`).
pub fn stream_table(db: &rusqlite::Connection, stream: &str) -> String {
    db.query_row(
        "SELECT name FROM _sluice_tables WHERE stream = ?1",
        [stream],
        |r| r.get(0),
    )
    .unwrap_or_else(|e| panic!("no table of stream {stream}: {e}"))
}
