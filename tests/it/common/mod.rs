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

/// Where `just build-connectors` writes the Rust guests built against WIT
/// `sluice:connector@0.1.0` (the SDK's `wit-0-1` feature), from the same
/// sources as those in [`GUEST_DIRS`] (built against `@0.2.0`).
pub const GUEST_DIR_V0_1: &str = "connectors/target/wit-0.1.0/wasm32-unknown-unknown/release";

/// A Rust guest component built against `@0.1.0` by `just build-connectors`.
pub fn guest_v0_1(name: &str) -> PathBuf {
    let path = repo_root()
        .join(GUEST_DIR_V0_1)
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the guest components first (`just build-connectors`)",
        path.display()
    );
    path
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

/// `sh -c` script that bind-mounts `$1` over itself read-only, then runs
/// the rest of its arguments (inside `unshare --mount`: the mount belongs
/// to that process tree alone).
const READ_ONLY_MOUNT_SCRIPT: &str =
    r#"mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@""#;

/// A command that runs `program` with `dir` mounted read-only: a truly
/// read-only filesystem (the tests run as root, which writes past file
/// permissions but not past a read-only mount).
fn with_read_only(dir: &Path, program: &Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(READ_ONLY_MOUNT_SCRIPT)
        .arg("sh")
        .arg(dir)
        .arg(program);
    cmd
}

/// Why no read-only mount can be made here, if none can (no `unshare`, or
/// no right to mount: not root); panics if one is made but can be written.
pub fn read_only_mount_unavailable() -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    let out = match with_read_only(dir.path(), Path::new("sh"))
        .arg("-c")
        .arg(r#"echo x > "$0""#)
        .arg(&probe)
        .output()
    {
        Ok(out) => out,
        Err(e) => return Some(format!("cannot run unshare: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Read-only file system") {
        assert!(!probe.exists());
        return None;
    }
    assert!(!out.status.success(), "the read-only mount was written");
    Some(format!("no read-only mount: {}", stderr.trim()))
}

/// Run the `sluice` binary with `args` while `dir` is mounted read-only
/// (see [`read_only_mount_unavailable`]).
pub fn sluice_read_only<I, S>(dir: &Path, args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = with_read_only(dir, Path::new(env!("CARGO_BIN_EXE_sluice")))
        .args(args)
        .env("SLUICE_CACHE_DIR", cache_dir())
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("spawn unshare");
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Each file of `dir`: name, length, modification time.
pub fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}
