//! The embedded SQLite store: WAL, `synchronous=NORMAL`, one write
//! connection, prepared (cached) statements, one transaction per commit.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use sluice_core::destination::{
    CommitRequest, CommitStats, ComponentSeen, Destination, DriftEvent, LeaseHolder,
    QuarantineEntry, QuarantineFilter, ReplayApplied, ReplayPlan, RunLog, RunPage, RunQuery, Scan,
    StoreError, StreamDef, NO_RUN_START,
};
use sluice_core::row::{ColumnKind, Row, StreamTable, META_COLUMNS};
use sluice_core::run::{now_rfc3339, RunRecord, RunStatus};
use sluice_core::value::Value;

mod alerts;
pub mod checkpoint;
mod run_logs;
mod schedule;
mod state;

use checkpoint::{Checkpointer, BACKSTOP_CHECKPOINT_PAGES};

use crate::quarantine::record_hash;

/// A failure inside the SQLite backend: SQLite's own, or one of the
/// store's refusals. Leaves the backend as a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SqlError> for StoreError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Sqlite(e) => StoreError::Backend {
                backend: "sqlite",
                message: e.to_string(),
            },
            SqlError::Store(e) => e,
        }
    }
}

/// `name` quoted as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQLite column type of a column kind.
pub fn sql_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Integer | ColumnKind::Boolean => "INTEGER",
        ColumnKind::Real => "REAL",
        ColumnKind::Text | ColumnKind::Json => "TEXT",
    }
}

/// Whether SQLite failed because the database (or the `-wal`/`-shm` beside
/// it) cannot be written.
fn cannot_write(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
    )
}

/// A neutral value as SQLite binds it.
fn bind(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Integer(n) => ValueRef::Integer(*n),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t.as_bytes()),
    })
}

/// A value SQLite returned, as a neutral one (blobs, which Sluice never
/// writes, as their hex text).
fn neutral(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Text(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}

/// How long a connection waits for another's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection.
pub const STATEMENT_CACHE_CAPACITY: usize = 64;
/// Page size of a database Sluice creates (SQLite's default is 4 KiB). A
/// commit writes each dirty page to the WAL and a checkpoint writes it
/// again, one `pwrite` per page: 16 KiB pages cut those calls by 4× and a
/// 300k-record run's time by ~8 % (docs/benchmarks.md). An existing
/// database keeps the page size it was created with.
pub const NEW_DATABASE_PAGE_SIZE: u32 = 16_384;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_state (
    connector  TEXT NOT NULL,
    stream     TEXT NOT NULL,
    value      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (connector, stream)
);
CREATE TABLE IF NOT EXISTS _sluice_runs (
    id                TEXT PRIMARY KEY,
    connector         TEXT NOT NULL,
    connector_version TEXT NOT NULL,
    component_hash    TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    ended_at          TEXT,
    duration_ms       INTEGER,
    status            TEXT NOT NULL,
    records_emitted   INTEGER NOT NULL DEFAULT 0,
    records_valid     INTEGER NOT NULL DEFAULT 0,
    records_quarantined INTEGER NOT NULL DEFAULT 0,
    records_upserted  INTEGER NOT NULL DEFAULT 0,
    stream_counts     TEXT NOT NULL DEFAULT '{}',
    drift             TEXT NOT NULL DEFAULT '[]',
    commits           INTEGER NOT NULL DEFAULT 0,
    http_requests     INTEGER NOT NULL DEFAULT 0,
    http_denied       INTEGER NOT NULL DEFAULT 0,
    http_bytes        INTEGER NOT NULL DEFAULT 0,
    fuel_used         INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    error             TEXT,
    pid               INTEGER,
    http_retries      INTEGER NOT NULL DEFAULT 0,
    http_throttled_ms INTEGER NOT NULL DEFAULT 0,
    http_breaker_trips INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS _sluice_runs_started ON _sluice_runs (started_at);
CREATE INDEX IF NOT EXISTS _sluice_runs_instance ON _sluice_runs (connector, started_at);
CREATE TABLE IF NOT EXISTS _sluice_streams (
    connector         TEXT NOT NULL,
    stream            TEXT NOT NULL,
    connector_version TEXT NOT NULL,
    json_schema       TEXT NOT NULL,
    primary_key       TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (connector, stream)
);
CREATE TABLE IF NOT EXISTS _sluice_quarantine (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id            TEXT NOT NULL,
    connector         TEXT NOT NULL,
    connector_version TEXT NOT NULL,
    stream            TEXT NOT NULL,
    record            TEXT NOT NULL,
    errors            TEXT NOT NULL,
    quarantined_at    TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'quarantined',
    replay_id         TEXT,
    original_record   TEXT,
    record_key        TEXT,
    record_hash       TEXT,
    seen_count        INTEGER NOT NULL DEFAULT 1,
    last_seen_run     TEXT,
    last_seen_at      TEXT
);
CREATE INDEX IF NOT EXISTS _sluice_quarantine_stream ON _sluice_quarantine (connector, stream, status);
CREATE TABLE IF NOT EXISTS _sluice_replays (
    id            TEXT PRIMARY KEY,
    at            TEXT NOT NULL,
    examined      INTEGER NOT NULL,
    replayed      INTEGER NOT NULL,
    still_invalid INTEGER NOT NULL,
    stale         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS _sluice_drift (
    connector      TEXT NOT NULL,
    stream         TEXT NOT NULL,
    path           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    observed_type  TEXT NOT NULL,
    first_seen_run TEXT NOT NULL,
    last_seen_run  TEXT NOT NULL,
    first_seen_at  TEXT NOT NULL,
    last_seen_at   TEXT NOT NULL,
    sample         TEXT NOT NULL,
    count          INTEGER NOT NULL,
    PRIMARY KEY (connector, stream, path, kind, observed_type)
);
";

/// Who owns each destination table, and what each instance ran last. A
/// database made before instances owned their tables gets these (and its
/// tables renamed) when first opened: see [`migrate_tables`].
const INSTANCE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_tables (
    name       TEXT PRIMARY KEY,
    instance   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    UNIQUE (instance, stream)
);
CREATE TABLE IF NOT EXISTS _sluice_leases (
    instance   TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    since      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _sluice_instances (
    instance          TEXT PRIMARY KEY,
    component_hash    TEXT NOT NULL,
    connector         TEXT NOT NULL,
    connector_version TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
";

/// Milliseconds since the Unix epoch now.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `d` in whole milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// This process as a lease holder: `host:pid`.
pub fn lease_holder() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether the lease holder `host:pid` is a process of this host that is
/// gone: its lease need not wait to expire. A holder on another host is
/// never known to be gone; its lease expires.
pub(crate) fn holder_is_gone(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else {
        return false;
    };
    host == host_name()
        && pid
            .parse::<u32>()
            .is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists())
}

/// Whether `conn` has a table named `name`.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Give each instance of a database made before instances owned their
/// tables its own: every stream table (named by the stream alone, and
/// written by every connector that declared the stream) is renamed to its
/// instance's default name and recorded as that instance's. Where several
/// instances declared one stream, the one that declared it last gets the
/// table; the others start a new one (their rows were mixed into it).
/// One transaction: another process opening the database at the same time
/// waits and then finds nothing left to do.
fn migrate_tables(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if has_table(&tx, "_sluice_tables")? {
        return Ok(());
    }
    tx.execute_batch(INSTANCE_SCHEMA)?;
    let declared: Vec<(String, String)> = tx
        .prepare("SELECT connector, stream FROM _sluice_streams ORDER BY updated_at DESC")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let now = now_rfc3339();
    for (instance, stream) in declared {
        // Gone already (a later declaration of the stream took it), or
        // never made.
        if !has_table(&tx, &stream)? {
            continue;
        }
        let table = sluice_core::instance::default_table(&instance, &stream);
        if has_table(&tx, &table)? {
            continue;
        }
        tx.execute_batch(&format!(
            "ALTER TABLE {} RENAME TO {}",
            quote_ident(&stream),
            quote_ident(&table)
        ))?;
        tx.execute(
            "INSERT OR IGNORE INTO _sluice_tables (name, instance, stream, claimed_at) VALUES (?1, ?2, ?3, ?4)",
            params![table, instance, stream, now],
        )?;
        tracing::info!(%instance, %stream, %table, "moved the stream's table into its instance's namespace");
    }
    tx.commit()
}

const RUN_COLUMNS: &str = "id, connector, connector_version, component_hash, started_at, ended_at, \
    duration_ms, status, records_emitted, records_upserted, commits, http_requests, http_denied, \
    http_bytes, fuel_used, peak_memory_bytes, error, records_valid, records_quarantined, stream_counts, drift, \
    http_retries, http_throttled_ms, http_breaker_trips, component_change";

/// Columns `_sluice_runs` gained after its first release, with their
/// declarations and the value (SQL) an older row reads as: added to
/// databases created before them when opened to write; a read-only open
/// reads the value in their place.
const RUN_COLUMNS_ADDED: &[(&str, &str, &str)] = &[
    ("http_retries", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("http_throttled_ms", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("http_breaker_trips", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("component_change", "TEXT", "NULL"),
];

/// Columns `_sluice_quarantine` gained after its first release (see
/// [`RUN_COLUMNS_ADDED`]): the record's key, the hash it is found again
/// by, and how often and when it was seen (see `quarantine.rs`). An older
/// row reads as seen once, by the run that quarantined it.
const QUARANTINE_COLUMNS_ADDED: &[(&str, &str, &str)] = &[
    ("record_key", "TEXT", "NULL"),
    ("record_hash", "TEXT", "NULL"),
    ("seen_count", "INTEGER NOT NULL DEFAULT 1", "1"),
    ("last_seen_run", "TEXT", "NULL"),
    ("last_seen_at", "TEXT", "NULL"),
];

/// Columns `_sluice_replays` gained after its first release.
const REPLAY_COLUMNS_ADDED: &[(&str, &str, &str)] = &[("stale", "INTEGER NOT NULL DEFAULT 0", "0")];

/// Indexes on quarantine columns added after its first release (made once
/// the columns are there): an open row found again by its record's hash,
/// and the keys one run quarantined, which its full refresh keeps.
const QUARANTINE_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS _sluice_quarantine_record ON _sluice_quarantine (connector, stream, record_hash);
CREATE INDEX IF NOT EXISTS _sluice_quarantine_seen ON _sluice_quarantine (connector, stream, last_seen_run);
";

/// The error of a `running` run found without a live lease (recorded by
/// [`RunLog::mark_crashed`], shown by a read-only store).
pub(crate) const CRASHED_ERROR: &str = "the run ended without recording its end: its lease expired (the process running it was killed or lost)";

/// Names of `table`'s columns.
fn column_names(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    conn.prepare(&format!("PRAGMA table_info({})", quote_ident(table)))?
        .query_map([], |r| r.get::<_, String>(1))?
        .collect()
}

/// Add the `added` columns `table` lacks (a database of an older
/// Sluice); returns the names of those it lacked. Another process may add
/// one at the same moment: a failed `ALTER` is fine if the column is there.
fn add_columns<'a>(
    conn: &Connection,
    table: &str,
    added: &[(&'a str, &str, &str)],
) -> rusqlite::Result<Vec<&'a str>> {
    let have = column_names(conn, table)?;
    let mut lacked = Vec::new();
    for (name, decl, _) in added {
        if have.iter().any(|c| c == name) {
            continue;
        }
        lacked.push(*name);
        if let Err(e) = conn.execute_batch(&format!(
            "ALTER TABLE {} ADD COLUMN {} {decl}",
            quote_ident(table),
            quote_ident(name)
        )) {
            if !column_names(conn, table)?.iter().any(|c| c == name) {
                return Err(e);
            }
        }
    }
    Ok(lacked)
}

/// Bring the Sluice tables of an older database up to date: the columns
/// added since (see the `*_COLUMNS_ADDED` lists), the indexes on them, and
/// the `record_hash` of open quarantine rows stored before there was one
/// (so a record quarantined by an older Sluice is found again too).
fn add_sluice_columns(conn: &mut Connection) -> rusqlite::Result<()> {
    add_columns(conn, "_sluice_runs", RUN_COLUMNS_ADDED)?;
    let lacked = add_columns(conn, "_sluice_quarantine", QUARANTINE_COLUMNS_ADDED)?;
    add_columns(conn, "_sluice_replays", REPLAY_COLUMNS_ADDED)?;
    conn.execute_batch(QUARANTINE_INDEXES)?;
    if !lacked.contains(&"record_hash") {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let unhashed: Vec<(i64, String)> = tx
        .prepare(
            "SELECT id, coalesce(original_record, record) FROM _sluice_quarantine \
             WHERE record_hash IS NULL AND status = 'quarantined'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    {
        let mut set = tx.prepare("UPDATE _sluice_quarantine SET record_hash = ?2 WHERE id = ?1")?;
        for (id, raw) in &unhashed {
            set.execute(params![id, record_hash(raw)])?;
        }
    }
    tx.commit()
}

const QUARANTINE_COLUMNS: &str =
    "id, run_id, connector, connector_version, stream, record, errors, \
    quarantined_at, status, replay_id, original_record, record_key, seen_count, \
    last_seen_run, last_seen_at";

/// How [`SqliteStore::open_read_only`] reads a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOnlyMode {
    /// A read-only connection that takes part in SQLite's WAL locking
    /// through the `-shm` index: it sees every commit, also those still in
    /// the `-wal` log and those of a writer working at the same time.
    /// SQLite creates the `-shm` (and an empty `-wal`) beside a WAL
    /// database if they are missing and the directory lets it.
    Shared,
    /// SQLite's `immutable=1`: the database file alone, no locks, no
    /// `-wal` or `-shm`. Used only where [`ReadOnlyMode::Shared`] cannot
    /// open (the `-shm` cannot be created: a read-only directory) and the
    /// file holds every commit (no `-wal` or `-journal` with anything in
    /// it beside it).
    Immutable,
}

/// What a store opened read-only remembers.
struct ReadOnly {
    /// The database as the caller named it (for errors).
    path: String,
    mode: ReadOnlyMode,
}

/// SQLite behind the [`Destination`] and [`RunLog`] seams.
pub struct SqliteStore {
    /// Declared first: dropped (its thread stopped) before `conn` closes.
    /// `None` when open read-only (nothing to checkpoint).
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    /// `Some` when open read-only: every write is refused.
    read_only: Option<ReadOnly>,
}

/// A probe that makes SQLite read the database's header and schema (and,
/// in WAL mode, open the `-wal` log and `-shm` index): a connection that
/// cannot read the database fails here, not at open.
const READ_PROBE: &str = "SELECT count(*) FROM sqlite_master";

/// The file beside database `db` with `suffix` (`-wal`, `-shm`, `-journal`).
fn side_file(db: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// Whether the file beside `db` with `suffix` may hold something: it
/// exists and is not empty, or it cannot be looked at.
fn side_file_holds_data(db: &Path, suffix: &str) -> bool {
    match std::fs::metadata(side_file(db, suffix)) {
        Ok(m) => m.len() > 0,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// `path` (absolute) as an SQLite URI filename with `query`: every byte
/// but unreserved ones and `/` percent-encoded (so `?`, `#` and `%` in a
/// name stay part of it).
fn sqlite_uri(path: &Path, query: &str) -> String {
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

/// A read-only connection to `path` (absolute) in `mode` that has read
/// the database's schema: SQLite's error if it cannot.
fn connect_read_only(path: &Path, mode: ReadOnlyMode) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    // No SQLITE_OPEN_CREATE: SQLite creates no database file.
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match mode {
        // A plain file name (no URI flag): a name like `file:x` is a file.
        ReadOnlyMode::Shared => Connection::open_with_flags(path, flags)?,
        ReadOnlyMode::Immutable => Connection::open_with_flags(
            sqlite_uri(path, "immutable=1"),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )?,
    };
    // A connection setting, not a write: a reader may meet a writer's
    // lock while the WAL index is rebuilt.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.query_row(READ_PROBE, [], |r| r.get::<_, i64>(0))?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (or create) the database at `path` and its Sluice tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            message: if cannot_write(&e) && path.is_file() {
                // SQLite says "unable to open database file" or "attempt
                // to write a readonly database": name the likely cause.
                format!("{e}: it cannot be written there (a read-only filesystem, or no write access to the file or its directory), and this command writes to it")
            } else {
                e.to_string()
            },
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Takes effect only while the file is still empty (a new database).
        conn.pragma_update(None, "page_size", NEW_DATABASE_PAGE_SIZE)
            .map_err(open_err)?;
        // Fails with "file is not a database" on a non-SQLite file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        let mut conn = conn;
        add_sluice_columns(&mut conn).map_err(open_err)?;
        if !has_table(&conn, "_sluice_tables").map_err(open_err)? {
            migrate_tables(&mut conn).map_err(open_err)?;
        }
        conn.execute_batch(INSTANCE_SCHEMA).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        // Checkpoints run in the background (see checkpoint.rs); this
        // connection's own are a backstop.
        conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)
            .map_err(open_err)?;
        Ok(SqliteStore {
            checkpointer: Some(Checkpointer::new(path)),
            conn,
            read_only: None,
        })
    }

    /// Open the existing database at `path` to read only: for commands
    /// that look (run history, quarantine, drift), also where neither the
    /// database nor its directory may be written (a read-only filesystem).
    ///
    /// Nothing is created or changed: no database file (a missing one is
    /// an error), no Sluice tables, no migration, no pragma that writes,
    /// no checkpoint thread. Every write through [`Destination`] or
    /// [`RunLog`] is refused with [`StoreError::ReadOnly`].
    ///
    /// WAL: a reader of a WAL database needs the `-shm` index, which SQLite
    /// creates (with an empty `-wal`) if it is missing — harmless files, not
    /// a change of the database, and what lets a reader see a concurrent
    /// writer's commits. So the store first opens as such a reader
    /// ([`ReadOnlyMode::Shared`]). Where the `-shm` cannot be created (a
    /// read-only directory) SQLite refuses with SQLITE_CANTOPEN; then, and
    /// only if no `-wal` (or `-journal`) with anything in it lies beside
    /// the database, it reads the file alone with `immutable=1`
    /// ([`ReadOnlyMode::Immutable`]): a cleanly closed Sluice database
    /// holds every commit in its file (the last connection to close folds
    /// the WAL in and removes it). SQLite's own refusal, not a guess from
    /// permission bits (which root ignores), decides. If the `-wal` holds
    /// commits and no `-shm` can be made, immutable would silently miss
    /// them (it never reads the `-wal`): that is an error saying what to
    /// do. An immutable read takes no locks, so a writer that starts on
    /// the same file through another, writable, mount while it reads could
    /// be seen half-done; the commands that open read-only read for a
    /// moment and print, so that is accepted rather than refusing to read.
    ///
    /// A database of an older Sluice is read as far as it goes: a Sluice
    /// table it lacks reads as empty, run columns it lacks as the values
    /// opening it to write would give them. A `running` run without a live
    /// lease reads as `crashed`, as [`RunLog::mark_crashed`] would record
    /// it (nothing is written).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let open_err = |message: String| StoreError::Open {
            path: shown.clone(),
            message,
        };
        // Checked first, for a clear error (SQLite, told not to create the
        // file, would only say "unable to open database file").
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            // (SQLite would read a directory and report a disk I/O error.)
            Ok(_) => return Err(open_err("it is not a file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(open_err("it does not exist".into()))
            }
            Err(e) => return Err(open_err(e.to_string())),
        }
        // Absolute: the URI form of immutable needs it, and the side files
        // are looked for where SQLite looks.
        let abs = std::fs::canonicalize(path).map_err(|e| open_err(e.to_string()))?;
        let (conn, mode) = match connect_read_only(&abs, ReadOnlyMode::Shared) {
            Ok(conn) => (conn, ReadOnlyMode::Shared),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {
                if let Some(log) = ["-wal", "-journal"]
                    .into_iter()
                    .find(|suffix| side_file_holds_data(&abs, suffix))
                {
                    return Err(open_err(format!(
                        "{e}: {shown}{log} holds changes not yet in the database file, which SQLite cannot read without creating files beside it (a read-only directory?); open the database once where it is writable (any write-capable sluice command folds them in)"
                    )));
                }
                let conn = connect_read_only(&abs, ReadOnlyMode::Immutable)
                    .map_err(|e| open_err(e.to_string()))?;
                (conn, ReadOnlyMode::Immutable)
            }
            Err(e) => return Err(open_err(e.to_string())),
        };
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(SqliteStore {
            checkpointer: None,
            conn,
            read_only: Some(ReadOnly { path: shown, mode }),
        })
    }

    /// How the store reads, if it was opened read-only.
    pub fn read_only_mode(&self) -> Option<ReadOnlyMode> {
        self.read_only.as_ref().map(|r| r.mode)
    }

    /// Refuse `operation` (a write) if open read-only.
    fn writable(&self, operation: &'static str) -> Result<(), StoreError> {
        match &self.read_only {
            Some(r) => Err(StoreError::ReadOnly {
                path: r.path.clone(),
                operation,
            }),
            None => Ok(()),
        }
    }

    /// Whether a read of Sluice table `table` finds nothing because the
    /// database (of an older Sluice, opened read-only) lacks it. A store
    /// open to write has every table.
    fn lacks(&self, table: &str) -> rusqlite::Result<bool> {
        Ok(self.read_only.is_some() && !has_table(&self.conn, table)?)
    }

    /// The run columns to select: [`RUN_COLUMNS`], with the values of the
    /// columns an older database (opened read-only) lacks in their place.
    fn run_columns(&self) -> rusqlite::Result<std::borrow::Cow<'static, str>> {
        self.columns_of("_sluice_runs", RUN_COLUMNS, RUN_COLUMNS_ADDED)
    }

    /// `columns` of `table` to select, with the values of the `added`
    /// columns an older database (opened read-only) lacks in their place.
    fn columns_of(
        &self,
        table: &str,
        columns: &'static str,
        added: &[(&str, &str, &str)],
    ) -> rusqlite::Result<std::borrow::Cow<'static, str>> {
        if self.read_only.is_none() {
            return Ok(columns.into());
        }
        let have = column_names(&self.conn, table)?;
        let cols: Vec<String> = columns
            .split(',')
            .map(str::trim)
            .map(|col| {
                match added
                    .iter()
                    .find(|(name, ..)| *name == col && !have.iter().any(|h| h == name))
                {
                    Some((name, _, value)) => format!("{value} AS {}", quote_ident(name)),
                    None => col.to_string(),
                }
            })
            .collect();
        Ok(cols.join(", ").into())
    }

    /// Read-only: show `running` runs without a live lease as `crashed`,
    /// as [`RunLog::mark_crashed`] would record them (a store open to write
    /// leaves that to `mark_crashed`).
    fn show_crashed(&self, runs: &mut [RunRecord]) -> rusqlite::Result<()> {
        if self.read_only.is_none() {
            return Ok(());
        }
        let leases = !self.lacks("_sluice_leases")?;
        let now = unix_ms();
        for run in runs.iter_mut().filter(|r| r.status == RunStatus::Running) {
            let holder: Option<String> = if leases {
                self.conn
                    .query_row(
                        "SELECT holder FROM _sluice_leases WHERE run_id = ?1 AND expires_ms > ?2",
                        params![run.id, now],
                        |r| r.get(0),
                    )
                    .optional()?
            } else {
                None
            };
            if holder.is_none_or(|h| holder_is_gone(&h)) {
                run.status = RunStatus::Crashed;
                run.error = Some(CRASHED_ERROR.to_string());
            }
        }
        Ok(())
    }

    /// [`Destination::commit`], with `deliver` called inside the commit's
    /// transaction after the lease fence and every write, just before the
    /// transaction commits. An error from `deliver` rolls the whole
    /// transaction back and is the commit's error. The protocol outputs
    /// ([`crate::protocol`]) write a commit's records and state to their
    /// stream there: a run whose lease was taken over delivers nothing, and
    /// the log never records a state that was not delivered.
    pub fn commit_delivering(
        &mut self,
        req: &CommitRequest<'_>,
        deliver: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<CommitStats, StoreError> {
        self.writable("commit")?;
        Ok(self.commit_sql(req, deliver)?)
    }

    /// Background checkpoints run so far (for tests).
    pub fn checkpoints(&self) -> u64 {
        self.checkpointer
            .as_ref()
            .map_or(0, Checkpointer::checkpoints)
    }

    /// The underlying connection (for tests and read-only tooling).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn upsert_sql(table: &StreamTable) -> String {
        let mut cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        cols.extend(META_COLUMNS.iter().map(|c| quote_ident(c)));
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(&table.table),
            cols.join(", "),
            placeholders.join(", ")
        );
        if !table.primary_key.is_empty() {
            let pk: Vec<String> = table
                .primary_key
                .iter()
                .map(|&i| quote_ident(&table.columns[i].name))
                .collect();
            let updates: Vec<String> = cols
                .iter()
                .enumerate()
                .filter(|(i, _)| !table.primary_key.contains(i))
                .map(|(_, c)| format!("{c} = excluded.{c}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                pk.join(", "),
                updates.join(", ")
            ));
        }
        sql
    }
}

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = row.get(7)?;
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(RunRecord {
        id: row.get(0)?,
        connector: row.get(1)?,
        connector_version: row.get(2)?,
        component_hash: row.get(3)?,
        started_at: row.get(4)?,
        ended_at: row.get(5)?,
        duration_ms: row.get::<_, Option<i64>>(6)?.map(|d| d.max(0) as u64),
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        records_emitted: u(8)?,
        records_upserted: u(9)?,
        commits: u(10)?,
        http_requests: u(11)?,
        http_denied: u(12)?,
        http_bytes: u(13)?,
        fuel_used: u(14)?,
        peak_memory_bytes: u(15)?,
        error: row.get(16)?,
        records_valid: u(17)?,
        records_quarantined: u(18)?,
        streams: serde_json::from_str(&row.get::<_, String>(19)?).unwrap_or_default(),
        drift: serde_json::from_str(&row.get::<_, String>(20)?).unwrap_or_default(),
        http_retries: u(21)?,
        http_throttled_ms: u(22)?,
        http_breaker_trips: u(23)?,
        component_change: row.get(24)?,
    })
}

fn quarantine_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<QuarantineEntry> {
    Ok(QuarantineEntry {
        id: row.get(0)?,
        run_id: row.get(1)?,
        connector: row.get(2)?,
        connector_version: row.get(3)?,
        stream: row.get(4)?,
        record: row.get(5)?,
        errors: serde_json::from_str(&row.get::<_, String>(6)?).unwrap_or_default(),
        quarantined_at: row.get(7)?,
        status: row.get(8)?,
        replay_id: row.get(9)?,
        original_record: row.get(10)?,
        key: row.get(11)?,
        seen_count: row.get::<_, i64>(12)?.max(1) as u64,
        last_seen_run: row.get::<_, Option<String>>(13)?.unwrap_or(row.get(1)?),
        last_seen_at: row.get::<_, Option<String>>(14)?.unwrap_or(row.get(7)?),
    })
}

fn upsert_rows(
    tx: &rusqlite::Transaction<'_>,
    table: &StreamTable,
    rows: &[Row],
    run_id: &str,
    now: &str,
) -> Result<u64, SqlError> {
    let mut stmt = tx.prepare_cached(&SqliteStore::upsert_sql(table))?;
    let n = table.columns.len();
    // Parameters: the columns, then `_record`, `_run_id`, `_synced_at`. The
    // run id and time are the same for every row, so they are bound once:
    // SQLite keeps a statement's bindings from one execution to the next.
    stmt.raw_bind_parameter(n + 2, run_id)?;
    stmt.raw_bind_parameter(n + 3, now)?;
    for row in rows {
        if row.values.len() != n {
            return Err(StoreError::InvalidStream {
                stream: table.name.clone(),
                reason: format!("a row has {} values for {n} columns", row.values.len()),
            }
            .into());
        }
        for (i, v) in row.values.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, bind(v))?;
        }
        stmt.raw_bind_parameter(n + 1, &row.raw)?;
        stmt.raw_execute()?;
    }
    Ok(rows.len() as u64)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The full-refresh sweep of `table` (parameters: the run, the instance,
/// the stream; see [`CommitRequest::sweep`]): delete every row the run
/// did not write and that was written before it started, except rows of
/// keys the run quarantined (its quarantine rows of the stream, first
/// quarantined or seen again by it, with a key: `record_key`'s element
/// `i` is key column `i`). `NOT IN` over an uncorrelated subquery: SQLite
/// builds the set of kept keys once. The arity check keeps a NULL out of
/// that set (which would make `NOT IN` keep every row).
fn sweep_sql(table: &StreamTable) -> String {
    let target = quote_ident(&table.table);
    // Rows written since the run started (by a replay) are kept too.
    let before_run = format!(
        "\"_synced_at\" < coalesce((SELECT started_at FROM _sluice_runs WHERE id = ?1), '{NO_RUN_START}')"
    );
    if table.primary_key.is_empty() {
        return format!(
            "DELETE FROM {target} WHERE \"_run_id\" <> ?1 AND {before_run} AND ?2 IS NOT NULL AND ?3 IS NOT NULL"
        );
    }
    let n = table.primary_key.len();
    let cols: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| quote_ident(&table.columns[i].name))
        .collect();
    let elems: Vec<String> = (0..n)
        .map(|i| format!("json_extract(q.record_key, '$[{i}]')"))
        .collect();
    let lhs = if n == 1 {
        cols[0].clone()
    } else {
        format!("({})", cols.join(", "))
    };
    format!(
        "DELETE FROM {target} WHERE \"_run_id\" <> ?1 AND {before_run} AND {lhs} NOT IN (SELECT {} \
         FROM _sluice_quarantine q WHERE q.connector = ?2 AND q.stream = ?3 \
         AND q.last_seen_run = ?1 AND q.record_key IS NOT NULL \
         AND json_array_length(q.record_key) = {n})",
        elems.join(", ")
    )
}

/// Whether replaying quarantine row `id` as `row` would take `table`'s
/// row of its key back to an older revision (see [`ReplayPlan`]): that row
/// was written (`_synced_at`) at or after the record was last seen, by
/// anything but this replay (`replay_id`).
fn replay_is_stale(
    tx: &rusqlite::Transaction<'_>,
    table: &StreamTable,
    id: i64,
    row: &Row,
    replay_id: &str,
) -> Result<bool, SqlError> {
    if table.primary_key.is_empty() {
        return Ok(false);
    }
    let seen_at: Option<String> = tx
        .prepare_cached(
            "SELECT coalesce(last_seen_at, quarantined_at) FROM _sluice_quarantine WHERE id = ?1",
        )?
        .query_row([id], |r| r.get(0))
        .optional()?;
    let Some(seen_at) = seen_at else {
        return Err(StoreError::QuarantineNotFound(id).into());
    };
    let cond: Vec<String> = table
        .primary_key
        .iter()
        .enumerate()
        .map(|(k, &i)| format!("{} = ?{}", quote_ident(&table.columns[i].name), k + 1))
        .collect();
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT \"_synced_at\", \"_run_id\" FROM {} WHERE {}",
        quote_ident(&table.table),
        cond.join(" AND ")
    ))?;
    for (k, v) in table.key_values(row).into_iter().enumerate() {
        stmt.raw_bind_parameter(k + 1, bind(v))?;
    }
    let mut rows = stmt.raw_query();
    let current = match rows.next()? {
        Some(r) => Some((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        None => None,
    };
    Ok(current.is_some_and(|(synced_at, run)| run != replay_id && synced_at >= seen_at))
}

/// The backend's operations, in SQLite's terms; the [`Destination`] and
/// [`RunLog`] impls below are these.
impl SqliteStore {
    fn ensure_table_sql(&mut self, table: &StreamTable) -> Result<(), SqlError> {
        // IMMEDIATE takes the write lock first, so two processes (or two
        // writers) creating the same table cannot race between the check
        // and the CREATE.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // SQLite's names are case-insensitive: `Items` and `items` would
        // be one table, `Name` and `name` one column. Refused, never
        // merged.
        let namesake: Option<String> = tx
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE AND name <> ?1",
                [&table.table],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = namesake {
            return Err(StoreError::Invalid(format!(
                "table {:?} differs only in case from the existing table {other:?}, and SQLite \
                 cannot keep both: choose another table name (--table STREAM=TABLE)",
                table.table
            ))
            .into());
        }
        let mut seen: Vec<&str> = Vec::with_capacity(table.columns.len());
        for c in &table.columns {
            if let Some(other) = seen.iter().find(|o| o.eq_ignore_ascii_case(&c.name)) {
                return Err(StoreError::InvalidStream {
                    stream: table.name.clone(),
                    reason: format!(
                        "properties {other:?} and {:?} differ only in case, and SQLite cannot \
                         keep them as two columns",
                        c.name
                    ),
                }
                .into());
            }
            seen.push(&c.name);
        }
        let existing: Vec<(String, i64)> = tx
            .prepare("SELECT name, pk FROM pragma_table_info(?1)")?
            .query_map([&table.table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if existing.is_empty() {
            let mut defs: Vec<String> = table
                .columns
                .iter()
                .map(|c| format!("{} {}", quote_ident(&c.name), sql_type(c.kind)))
                .collect();
            defs.extend(
                META_COLUMNS
                    .iter()
                    .map(|c| format!("{} TEXT NOT NULL", quote_ident(c))),
            );
            if !table.primary_key.is_empty() {
                let pk: Vec<String> = table
                    .primary_key
                    .iter()
                    .map(|&i| quote_ident(&table.columns[i].name))
                    .collect();
                defs.push(format!("PRIMARY KEY ({})", pk.join(", ")));
            }
            tx.execute_batch(&format!(
                "CREATE TABLE {} ({})",
                quote_ident(&table.table),
                defs.join(", ")
            ))?;
            tx.commit()?;
            return Ok(());
        }
        let mut existing_pk: Vec<(i64, &str)> = existing
            .iter()
            .filter(|(_, pk)| *pk > 0)
            .map(|(n, pk)| (*pk, n.as_str()))
            .collect();
        existing_pk.sort();
        let existing_pk: Vec<&str> = existing_pk.into_iter().map(|(_, n)| n).collect();
        let declared_pk: Vec<&str> = table
            .primary_key
            .iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect();
        if existing_pk != declared_pk {
            return Err(StoreError::PrimaryKeyMismatch {
                table: table.table.clone(),
                existing: existing_pk.join(", "),
                declared: declared_pk.join(", "),
            }
            .into());
        }
        for col in &table.columns {
            if let Some((other, _)) = existing
                .iter()
                .find(|(n, _)| n != &col.name && n.eq_ignore_ascii_case(&col.name))
            {
                return Err(StoreError::InvalidStream {
                    stream: table.name.clone(),
                    reason: format!(
                        "property {:?} differs only in case from the column {other:?} of table \
                         {:?}, and SQLite cannot keep both",
                        col.name, table.table
                    ),
                }
                .into());
            }
            if !existing.iter().any(|(n, _)| n == &col.name) {
                tx.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote_ident(&table.table),
                    quote_ident(&col.name),
                    sql_type(col.kind)
                ))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn claim_table_sql(&mut self, instance: &str, table: &StreamTable) -> Result<(), SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let owner: Option<(String, String)> = tx
            .prepare_cached("SELECT instance, stream FROM _sluice_tables WHERE name = ?1")?
            .query_row([&table.table], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match owner {
            Some((i, s)) if i == instance && s == table.name => return Ok(()),
            Some((owner, owner_stream)) => {
                return Err(StoreError::TableTaken {
                    table: table.table.clone(),
                    owner,
                    owner_stream,
                    instance: instance.to_string(),
                    stream: table.name.clone(),
                }
                .into())
            }
            None if has_table(&tx, &table.table)? => {
                return Err(StoreError::TableForeign {
                    table: table.table.clone(),
                    instance: instance.to_string(),
                }
                .into())
            }
            None => {}
        }
        // The instance's stream may move to another table (the operator
        // named one): the new claim replaces the old.
        tx.execute(
            "DELETE FROM _sluice_tables WHERE instance = ?1 AND stream = ?2",
            params![instance, table.name],
        )?;
        tx.execute(
            "INSERT INTO _sluice_tables (name, instance, stream, claimed_at) VALUES (?1, ?2, ?3, ?4)",
            params![table.table, instance, table.name, now_rfc3339()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn claim_lease_sql(
        &mut self,
        instance: &str,
        run_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseHolder>, SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = unix_ms();
        let current: Option<(String, String, String, i64)> = tx
            .prepare_cached(
                "SELECT run_id, holder, since, expires_ms FROM _sluice_leases WHERE instance = ?1",
            )?
            .query_row([instance], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        if let Some((held_by, holder_then, since, expires)) = current {
            let live = expires > now && !holder_is_gone(&holder_then);
            if live && held_by != run_id {
                return Ok(Some(LeaseHolder {
                    run_id: held_by,
                    holder: holder_then,
                    since,
                }));
            }
        }
        tx.execute(
            "INSERT INTO _sluice_leases (instance, run_id, holder, since, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (instance) DO UPDATE SET run_id = excluded.run_id, holder = excluded.holder, \
             since = excluded.since, expires_ms = excluded.expires_ms",
            params![instance, run_id, holder, now_rfc3339(), now + ms(ttl)],
        )?;
        tx.commit()?;
        Ok(None)
    }

    fn renew_lease_sql(
        &mut self,
        instance: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<bool, SqlError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE _sluice_leases SET expires_ms = ?3 WHERE instance = ?1 AND run_id = ?2",
            )?
            .execute(params![instance, run_id, unix_ms() + ms(ttl)])?;
        Ok(n > 0)
    }

    fn release_lease_sql(&mut self, instance: &str, run_id: &str) -> Result<(), SqlError> {
        self.conn
            .prepare_cached("DELETE FROM _sluice_leases WHERE instance = ?1 AND run_id = ?2")?
            .execute(params![instance, run_id])?;
        Ok(())
    }

    fn table_of_sql(&mut self, instance: &str, stream: &str) -> Result<Option<String>, SqlError> {
        if self.lacks("_sluice_tables")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT name FROM _sluice_tables WHERE instance = ?1 AND stream = ?2")?
            .query_row(params![instance, stream], |r| r.get(0))
            .optional()?)
    }

    fn note_component_sql(
        &mut self,
        instance: &str,
        hash: &str,
        connector: &str,
        version: &str,
    ) -> Result<Option<ComponentSeen>, SqlError> {
        // IMMEDIATE: it reads, then writes (a deferred transaction would
        // fail at once, not wait, if another writer came in between).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let before = tx
            .prepare_cached(
                "SELECT component_hash, connector, connector_version FROM _sluice_instances WHERE instance = ?1",
            )?
            .query_row([instance], |r| {
                Ok(ComponentSeen {
                    component_hash: r.get(0)?,
                    connector: r.get(1)?,
                    connector_version: r.get(2)?,
                })
            })
            .optional()?;
        tx.execute(
            "INSERT INTO _sluice_instances (instance, component_hash, connector, connector_version, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (instance) DO UPDATE SET \
             component_hash = excluded.component_hash, connector = excluded.connector, \
             connector_version = excluded.connector_version, updated_at = excluded.updated_at",
            params![instance, hash, connector, version, now_rfc3339()],
        )?;
        tx.commit()?;
        Ok(before)
    }

    fn get_state_sql(&mut self, connector: &str, stream: &str) -> Result<Option<String>, SqlError> {
        if self.lacks("_sluice_state")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM _sluice_state WHERE connector = ?1 AND stream = ?2")?
            .query_row(params![connector, stream], |r| r.get(0))
            .optional()?)
    }

    fn commit_sql(
        &mut self,
        req: &CommitRequest<'_>,
        deliver: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<CommitStats, SqlError> {
        let now = now_rfc3339();
        // IMMEDIATE: the fence below reads before anything is written.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Fencing: a run whose lease was taken over (it expired while the
        // run was stalled) writes nothing more.
        let holds: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM _sluice_leases WHERE instance = ?1 AND run_id = ?2",
            )?
            .query_row(params![req.connector, req.run_id], |r| r.get(0))?;
        if holds == 0 {
            return Err(StoreError::LeaseLost {
                instance: req.connector.to_string(),
                run_id: req.run_id.to_string(),
            }
            .into());
        }
        let mut stats = CommitStats::default();
        for (table, rows) in &req.pending.batches {
            let n = upsert_rows(&tx, table, rows, req.run_id, &now)?;
            stats.upserted += n;
            *stats
                .upserted_by_stream
                .entry(table.name.clone())
                .or_default() += n;
        }
        if !req.pending.quarantine.is_empty() {
            // One open row per distinct record (see quarantine.rs): the
            // same record again counts on it, also within this commit.
            let mut find = tx.prepare_cached(
                "SELECT id FROM _sluice_quarantine WHERE connector = ?1 AND stream = ?2 \
                 AND record_hash = ?3 AND status = 'quarantined' \
                 AND coalesce(original_record, record) = ?4 ORDER BY id LIMIT 1",
            )?;
            let mut seen = tx.prepare_cached(
                "UPDATE _sluice_quarantine SET seen_count = seen_count + 1, last_seen_run = ?2, \
                 last_seen_at = ?3, record_key = ?4 WHERE id = ?1",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO _sluice_quarantine (run_id, connector, connector_version, stream, record, errors, \
                 quarantined_at, record_key, record_hash, seen_count, last_seen_run, last_seen_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?1, ?7)",
            )?;
            for q in &req.pending.quarantine {
                let hash = record_hash(&q.record);
                let open: Option<i64> = find
                    .query_row(params![req.connector, q.stream, hash, q.record], |r| {
                        r.get(0)
                    })
                    .optional()?;
                match open {
                    Some(id) => {
                        seen.execute(params![id, req.run_id, now, q.key])?;
                    }
                    None => {
                        let errors =
                            serde_json::to_string(&q.errors).unwrap_or_else(|_| "[]".into());
                        insert.execute(params![
                            req.run_id,
                            req.connector,
                            req.connector_version,
                            q.stream,
                            q.record,
                            errors,
                            now,
                            q.key,
                            hash
                        ])?;
                    }
                }
                stats.quarantined += 1;
            }
        }
        if !req.pending.drift.is_empty() {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO _sluice_drift (connector, stream, path, kind, observed_type, first_seen_run, last_seen_run, \
                 first_seen_at, last_seen_at, sample, count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?7, ?8, ?9) \
                 ON CONFLICT (connector, stream, path, kind, observed_type) DO UPDATE SET \
                 last_seen_run = excluded.last_seen_run, last_seen_at = excluded.last_seen_at, count = count + excluded.count",
            )?;
            for d in &req.pending.drift {
                stmt.execute(params![
                    req.connector,
                    d.stream,
                    d.path,
                    d.kind.as_str(),
                    d.observed_type,
                    req.run_id,
                    now,
                    d.sample,
                    i(d.count)
                ])?;
            }
        }
        if let Some((stream, value)) = req.state {
            tx.prepare_cached(
                "INSERT INTO _sluice_state (connector, stream, value, run_id, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (connector, stream) DO UPDATE SET value = excluded.value, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at",
            )?
            .execute(params![req.connector, stream, value, req.run_id, now])?;
        }
        for table in req.sweep {
            let n = tx.execute(
                &sweep_sql(table),
                params![req.run_id, req.connector, table.name],
            )? as u64;
            stats.swept += n;
            *stats.swept_by_stream.entry(table.name.clone()).or_default() += n;
        }
        // Last before the commit: a failure here rolls everything back.
        deliver()?;
        tx.commit()?;
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.nudge();
        }
        Ok(stats)
    }

    fn record_streams_sql(&mut self, defs: &[StreamDef]) -> Result<(), SqlError> {
        let now = now_rfc3339();
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO _sluice_streams (connector, stream, connector_version, json_schema, primary_key, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (connector, stream) DO UPDATE SET \
                 connector_version = excluded.connector_version, json_schema = excluded.json_schema, \
                 primary_key = excluded.primary_key, updated_at = excluded.updated_at",
            )?;
            for d in defs {
                let pk = serde_json::to_string(&d.primary_key).unwrap_or_else(|_| "[]".into());
                stmt.execute(params![
                    d.connector,
                    d.stream,
                    d.connector_version,
                    d.json_schema,
                    pk,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn stream_def_sql(
        &mut self,
        connector: &str,
        stream: &str,
    ) -> Result<Option<StreamDef>, SqlError> {
        if self.lacks("_sluice_streams")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT connector, stream, connector_version, json_schema, primary_key FROM _sluice_streams \
                 WHERE connector = ?1 AND stream = ?2",
            )?
            .query_row(params![connector, stream], |r| {
                Ok(StreamDef {
                    connector: r.get(0)?,
                    stream: r.get(1)?,
                    connector_version: r.get(2)?,
                    json_schema: r.get(3)?,
                    primary_key: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                })
            })
            .optional()?)
    }

    fn list_quarantine_sql(
        &mut self,
        f: &QuarantineFilter,
    ) -> Result<Vec<QuarantineEntry>, SqlError> {
        if self.lacks("_sluice_quarantine")? {
            return Ok(Vec::new());
        }
        let mut sql = format!(
            "SELECT {} FROM _sluice_quarantine WHERE 1 = 1",
            self.columns_of(
                "_sluice_quarantine",
                QUARANTINE_COLUMNS,
                QUARANTINE_COLUMNS_ADDED
            )?
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if !f.all {
            sql.push_str(" AND status = 'quarantined'");
        }
        if let Some(c) = &f.connector {
            args.push(rusqlite::types::Value::Text(c.clone()));
            sql.push_str(&format!(" AND connector = ?{}", args.len()));
        }
        if let Some(s) = &f.stream {
            args.push(rusqlite::types::Value::Text(s.clone()));
            sql.push_str(&format!(" AND stream = ?{}", args.len()));
        }
        if !f.ids.is_empty() {
            let list: Vec<String> = f.ids.iter().map(|id| id.to_string()).collect();
            sql.push_str(&format!(" AND id IN ({})", list.join(", ")));
        }
        sql.push_str(" ORDER BY id");
        if let Some(limit) = f.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params_from_iter(args.iter()), quarantine_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn edit_quarantined_sql(&mut self, id: i64, record: &str) -> Result<(), SqlError> {
        match serde_json::from_str::<serde_json::Value>(record) {
            Ok(serde_json::Value::Object(_)) => {}
            _ => {
                return Err(
                    StoreError::Invalid("the edited record must be a JSON object".into()).into(),
                )
            }
        }
        let n = self.conn.execute(
            "UPDATE _sluice_quarantine SET original_record = coalesce(original_record, record), record = ?2 \
             WHERE id = ?1 AND status = 'quarantined'",
            params![id, record],
        )?;
        if n == 0 {
            return Err(StoreError::QuarantineNotFound(id).into());
        }
        Ok(())
    }

    fn apply_replay_sql(&mut self, plan: &ReplayPlan) -> Result<ReplayApplied, SqlError> {
        let now = now_rfc3339();
        // IMMEDIATE: the staleness checks read before anything is written.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut applied = ReplayApplied::default();
        for (id, table, row) in &plan.accepted {
            if !plan.force && replay_is_stale(&tx, table, *id, row, &plan.replay_id)? {
                applied.stale.push(*id);
                continue;
            }
            upsert_rows(&tx, table, std::slice::from_ref(row), &plan.replay_id, &now)?;
            tx.prepare_cached(
                "UPDATE _sluice_quarantine SET status = 'replayed', replay_id = ?2 WHERE id = ?1",
            )?
            .execute(params![id, plan.replay_id])?;
            applied.replayed.push(*id);
        }
        for (id, errors) in &plan.rejected {
            let errors = serde_json::to_string(errors).unwrap_or_else(|_| "[]".into());
            tx.prepare_cached("UPDATE _sluice_quarantine SET errors = ?2 WHERE id = ?1")?
                .execute(params![id, errors])?;
        }
        tx.execute(
            "INSERT INTO _sluice_replays (id, at, examined, replayed, still_invalid, stale) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                plan.replay_id,
                now,
                i((plan.accepted.len() + plan.rejected.len()) as u64),
                i(applied.replayed.len() as u64),
                i(plan.rejected.len() as u64),
                i(applied.stale.len() as u64)
            ],
        )?;
        tx.commit()?;
        Ok(applied)
    }

    fn list_drift_sql(
        &mut self,
        connector: Option<&str>,
        stream: Option<&str>,
    ) -> Result<Vec<DriftEvent>, SqlError> {
        if self.lacks("_sluice_drift")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT connector, stream, path, kind, observed_type, first_seen_run, last_seen_run, first_seen_at, sample, count \
             FROM _sluice_drift WHERE (?1 IS NULL OR connector = ?1) AND (?2 IS NULL OR stream = ?2) \
             ORDER BY last_seen_at DESC, connector, stream, path",
        )?;
        let rows = stmt
            .query_map(params![connector, stream], |r| {
                Ok(DriftEvent {
                    connector: r.get(0)?,
                    stream: r.get(1)?,
                    path: r.get(2)?,
                    kind: r.get(3)?,
                    observed_type: r.get(4)?,
                    first_seen_run: r.get(5)?,
                    last_seen_run: r.get(6)?,
                    first_seen_at: r.get(7)?,
                    sample: r.get(8)?,
                    count: r.get::<_, i64>(9)?.max(0) as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn insert_run_sql(&mut self, run: &RunRecord) -> Result<(), SqlError> {
        // The identity and start (with this process's pid, so a later
        // process can tell the run crashed) ...
        self.conn.execute(
            "INSERT INTO _sluice_runs (id, connector, connector_version, component_hash, started_at, status, pid) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                run.id,
                run.connector,
                run.connector_version,
                run.component_hash,
                run.started_at,
                run.status.as_str(),
                std::process::id()
            ],
        )?;
        // ... then every counter, as at the end of a run.
        self.update_run_sql(run)
    }

    fn mark_crashed_sql(&mut self) -> Result<u64, SqlError> {
        // A running run is alive exactly while it holds its instance's
        // lease: one that expired (or whose process on this host is gone)
        // means the run ended without recording its end.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let leases: Vec<(String, String)> = tx
            .prepare("SELECT instance, holder FROM _sluice_leases")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (instance, holder) in leases {
            if holder_is_gone(&holder) {
                tx.execute(
                    "DELETE FROM _sluice_leases WHERE instance = ?1",
                    [&instance],
                )?;
            }
        }
        let n = tx.execute(
            "UPDATE _sluice_runs SET status = 'crashed', error = ?2 \
             WHERE status = 'running' AND NOT EXISTS \
             (SELECT 1 FROM _sluice_leases l WHERE l.run_id = _sluice_runs.id AND l.expires_ms > ?1)",
            params![unix_ms(), CRASHED_ERROR],
        )? as u64;
        tx.commit()?;
        Ok(n)
    }

    fn update_run_sql(&mut self, run: &RunRecord) -> Result<(), SqlError> {
        let n = self.conn.execute(
            "UPDATE _sluice_runs SET ended_at = ?2, duration_ms = ?3, status = ?4, records_emitted = ?5, \
             records_upserted = ?6, commits = ?7, http_requests = ?8, http_denied = ?9, http_bytes = ?10, \
             fuel_used = ?11, peak_memory_bytes = ?12, error = ?13, records_valid = ?14, \
             records_quarantined = ?15, stream_counts = ?16, drift = ?17, http_retries = ?18, \
             http_throttled_ms = ?19, http_breaker_trips = ?20, component_change = ?21 WHERE id = ?1",
            params![
                run.id,
                run.ended_at,
                run.duration_ms.map(i),
                run.status.as_str(),
                i(run.records_emitted),
                i(run.records_upserted),
                i(run.commits),
                i(run.http_requests),
                i(run.http_denied),
                i(run.http_bytes),
                i(run.fuel_used),
                i(run.peak_memory_bytes),
                run.error,
                i(run.records_valid),
                i(run.records_quarantined),
                serde_json::to_string(&run.streams).unwrap_or_else(|_| "{}".into()),
                serde_json::to_string(&run.drift).unwrap_or_else(|_| "[]".into()),
                i(run.http_retries),
                i(run.http_throttled_ms),
                i(run.http_breaker_trips),
                run.component_change,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::RunNotFound(run.id.clone()).into());
        }
        Ok(())
    }

    fn list_runs_sql(&mut self, limit: usize) -> Result<Vec<RunRecord>, SqlError> {
        if self.lacks("_sluice_runs")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM _sluice_runs ORDER BY started_at DESC, id DESC LIMIT ?1",
            self.run_columns()?
        ))?;
        let mut rows: Vec<RunRecord> = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], run_from_row)?
            .collect::<Result<_, _>>()?;
        self.show_crashed(&mut rows)?;
        Ok(rows)
    }

    fn query_runs_sql(&mut self, q: &RunQuery) -> Result<RunPage, SqlError> {
        if self.lacks("_sluice_runs")? {
            return Ok(RunPage::default());
        }
        let (filter, args) = crate::run_query::run_filter(q, 1, |i| format!("?{i}"));
        let n = args.len();
        let values: Vec<rusqlite::types::Value> =
            args.into_iter().map(rusqlite::types::Value::Text).collect();
        let big = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let paged: Vec<rusqlite::types::Value> = values
            .iter()
            .cloned()
            .chain([big(q.limit).into(), big(q.offset).into()])
            .collect();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {} FROM _sluice_runs {filter} \
             ORDER BY started_at DESC, id DESC LIMIT ?{} OFFSET ?{}",
            self.run_columns()?,
            n + 1,
            n + 2
        ))?;
        let mut runs: Vec<RunRecord> = stmt
            .query_map(params_from_iter(paged), run_from_row)?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        self.show_crashed(&mut runs)?;
        let total = match q.total_of_page(runs.len()) {
            Some(total) => total,
            None => self
                .conn
                .prepare_cached(&format!("SELECT count(*) FROM _sluice_runs {filter}"))?
                .query_row(params_from_iter(values), |r| r.get::<_, i64>(0))?
                .max(0) as u64,
        };
        Ok(RunPage { runs, total })
    }

    fn scan_sql(&mut self, table: &str) -> Result<Option<Scan>, SqlError> {
        if !has_table(&self.conn, table)? {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT * FROM {}", quote_ident(table)))?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let n = columns.len();
        let rows = stmt
            .query_map([], |r| (0..n).map(|i| r.get_ref(i).map(neutral)).collect())?
            .collect::<Result<Vec<Vec<Value>>, _>>()?;
        Ok(Some(Scan { columns, rows }))
    }

    fn get_run_sql(&mut self, id: &str) -> Result<RunRecord, SqlError> {
        let not_found = || StoreError::RunNotFound(id.to_string()).into();
        if self.lacks("_sluice_runs")? {
            return Err(not_found());
        }
        let mut run = self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM _sluice_runs WHERE id = ?1",
                    self.run_columns()?
                ),
                [id],
                run_from_row,
            )
            .optional()?
            .ok_or_else(not_found)?;
        self.show_crashed(std::slice::from_mut(&mut run))?;
        Ok(run)
    }
}

impl Destination for SqliteStore {
    fn ensure_table(&mut self, table: &StreamTable) -> Result<(), StoreError> {
        self.writable("ensure_table")?;
        Ok(self.ensure_table_sql(table)?)
    }

    fn claim_table(&mut self, instance: &str, table: &StreamTable) -> Result<(), StoreError> {
        self.writable("claim_table")?;
        Ok(self.claim_table_sql(instance, table)?)
    }

    fn table_of(&mut self, instance: &str, stream: &str) -> Result<Option<String>, StoreError> {
        Ok(self.table_of_sql(instance, stream)?)
    }

    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError> {
        Ok(self.get_state_sql(connector, stream)?)
    }

    fn commit(&mut self, req: &CommitRequest<'_>) -> Result<CommitStats, StoreError> {
        self.writable("commit")?;
        Ok(self.commit_sql(req, || Ok(()))?)
    }

    fn scan(&mut self, table: &str) -> Result<Option<Scan>, StoreError> {
        Ok(self.scan_sql(table)?)
    }
}

impl RunLog for SqliteStore {
    fn claim_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseHolder>, StoreError> {
        self.writable("claim_lease")?;
        Ok(self.claim_lease_sql(instance, run_id, holder, ttl)?)
    }

    fn renew_lease(
        &mut self,
        instance: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.writable("renew_lease")?;
        Ok(self.renew_lease_sql(instance, run_id, ttl)?)
    }

    fn release_lease(&mut self, instance: &str, run_id: &str) -> Result<(), StoreError> {
        self.writable("release_lease")?;
        Ok(self.release_lease_sql(instance, run_id)?)
    }

    fn note_component(
        &mut self,
        instance: &str,
        hash: &str,
        connector: &str,
        version: &str,
    ) -> Result<Option<ComponentSeen>, StoreError> {
        self.writable("note_component")?;
        Ok(self.note_component_sql(instance, hash, connector, version)?)
    }

    fn record_streams(&mut self, defs: &[StreamDef]) -> Result<(), StoreError> {
        self.writable("record_streams")?;
        Ok(self.record_streams_sql(defs)?)
    }

    fn stream_def(
        &mut self,
        connector: &str,
        stream: &str,
    ) -> Result<Option<StreamDef>, StoreError> {
        Ok(self.stream_def_sql(connector, stream)?)
    }

    fn list_quarantine(
        &mut self,
        f: &QuarantineFilter,
    ) -> Result<Vec<QuarantineEntry>, StoreError> {
        Ok(self.list_quarantine_sql(f)?)
    }

    fn edit_quarantined(&mut self, id: i64, record: &str) -> Result<(), StoreError> {
        self.writable("edit_quarantined")?;
        Ok(self.edit_quarantined_sql(id, record)?)
    }

    fn apply_replay(&mut self, plan: &ReplayPlan) -> Result<ReplayApplied, StoreError> {
        self.writable("apply_replay")?;
        Ok(self.apply_replay_sql(plan)?)
    }

    fn list_drift(
        &mut self,
        connector: Option<&str>,
        stream: Option<&str>,
    ) -> Result<Vec<DriftEvent>, StoreError> {
        Ok(self.list_drift_sql(connector, stream)?)
    }

    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.writable("insert_run")?;
        Ok(self.insert_run_sql(run)?)
    }

    fn mark_crashed(&mut self) -> Result<u64, StoreError> {
        self.writable("mark_crashed")?;
        Ok(self.mark_crashed_sql()?)
    }

    fn update_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.writable("update_run")?;
        Ok(self.update_run_sql(run)?)
    }

    fn list_runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self.list_runs_sql(limit)?)
    }

    fn query_runs(&mut self, query: &RunQuery) -> Result<RunPage, StoreError> {
        Ok(self.query_runs_sql(query)?)
    }

    fn get_run(&mut self, id: &str) -> Result<RunRecord, StoreError> {
        Ok(self.get_run_sql(id)?)
    }

    fn list_state(
        &mut self,
        instance: &str,
    ) -> Result<Vec<sluice_core::destination::StateEntry>, StoreError> {
        Ok(self.list_state_sql(instance)?)
    }

    fn get_schedule(
        &mut self,
        instance: &str,
    ) -> Result<Option<sluice_core::destination::ScheduleEntry>, StoreError> {
        Ok(self.get_schedule_sql(instance)?)
    }

    fn insert_run_logs(
        &mut self,
        run_id: &str,
        lines: &[sluice_core::run::LogLine],
    ) -> Result<(), StoreError> {
        Ok(self.insert_run_logs_sql(run_id, lines)?)
    }

    fn get_run_logs(&mut self, run_id: &str) -> Result<Vec<sluice_core::run::LogLine>, StoreError> {
        Ok(self.get_run_logs_sql(run_id)?)
    }

    fn list_alerts(&mut self) -> Result<Vec<sluice_core::destination::AlertState>, StoreError> {
        Ok(self.list_alerts_sql()?)
    }

    fn record_alert(
        &mut self,
        state: &sluice_core::destination::AlertState,
        event: Option<&sluice_core::destination::AlertEvent>,
    ) -> Result<(), StoreError> {
        Ok(self.record_alert_sql(state, event)?)
    }

    fn list_alert_events(
        &mut self,
        limit: usize,
    ) -> Result<Vec<sluice_core::destination::AlertEvent>, StoreError> {
        Ok(self.list_alert_events_sql(limit)?)
    }

    fn set_schedule(
        &mut self,
        entry: &sluice_core::destination::ScheduleEntry,
    ) -> Result<(), StoreError> {
        Ok(self.set_schedule_sql(entry)?)
    }

    fn change_state(
        &mut self,
        change: &sluice_core::destination::StateChange,
    ) -> Result<Vec<sluice_core::destination::StateChangeRecord>, StoreError> {
        Ok(self.change_state_sql(change)?)
    }

    fn list_state_changes(
        &mut self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<sluice_core::destination::StateChangeRecord>, StoreError> {
        Ok(self.list_state_changes_sql(instance, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::destination::Pending;
    use sluice_core::value::Value as SqlValue;

    fn page_size(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn new_databases_get_the_page_size_and_old_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let new = SqliteStore::open(&dir.path().join("new.db")).unwrap();
        assert_eq!(page_size(new.connection()), NEW_DATABASE_PAGE_SIZE);

        // A database created elsewhere with SQLite's default pages.
        let old_path = dir.path().join("old.db");
        let conn = Connection::open(&old_path).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 4096; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        )
        .unwrap();
        drop(conn);
        let mut old = SqliteStore::open(&old_path).unwrap();
        assert_eq!(page_size(old.connection()), 4096);
        assert_eq!(old.get_state("c", "s").unwrap(), None);
        let x: i64 = old
            .connection()
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 1);
    }

    /// A store at `path` with table `t` (`id` integer key, `text`).
    fn store_with_table(path: &Path) -> (SqliteStore, std::sync::Arc<StreamTable>) {
        let mut store = SqliteStore::open(path).unwrap();
        let schema = r#"{"properties":{"id":{"type":"integer"},"text":{"type":"string"}}}"#;
        let table =
            std::sync::Arc::new(StreamTable::from_spec("t", schema, &["id".to_string()]).unwrap());
        store.ensure_table(&table).unwrap();
        // Run `r` of instance `c` holds the lease its commits are fenced by.
        let held = store.claim_lease("c", "r", "here:1", Duration::from_secs(60));
        assert_eq!(held.unwrap(), None);
        (store, table)
    }

    /// Commit `rows` into `table` (and `state` of stream `t`) for run `r`.
    fn commit_rows(
        store: &mut SqliteStore,
        table: &std::sync::Arc<StreamTable>,
        rows: Vec<Row>,
        state: Option<(&str, &str)>,
    ) -> Result<CommitStats, StoreError> {
        let pending = Pending {
            batches: vec![(table.clone(), rows)],
            ..Pending::default()
        };
        store.commit(&CommitRequest {
            run_id: "r",
            connector: "c",
            connector_version: "1",
            pending: &pending,
            state,
            sweep: &[],
        })
    }

    fn rows_in_t(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn commits_are_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let (mut store, table) = store_with_table(&path);
        let db_len = || std::fs::metadata(&path).unwrap().len();
        let before = db_len();
        // ~2 MB over ten commits: far below the writer's own (backstop)
        // checkpoint threshold, so only the background checkpoints can move
        // these pages into the database file.
        let text = "x".repeat(1_000);
        for c in 0..10 {
            let rows = (0..200)
                .map(|i| Row {
                    values: vec![SqlValue::Integer(c * 200 + i), SqlValue::Text(text.clone())],
                    raw: "{}".into(),
                })
                .collect();
            commit_rows(&mut store, &table, rows, None).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // (The file grows while the checkpoint runs; it is counted after.)
        while (db_len() < before + 1_000_000 || store.checkpoints() == 0)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(store.checkpoints() > 0);
        assert!(db_len() >= before + 1_000_000, "{} -> {}", before, db_len());
        assert_eq!(rows_in_t(store.connection()), 2_000);
        // Closing stops the checkpoint thread; the data stays whole.
        drop(store);
        assert_eq!(rows_in_t(&Connection::open(&path).unwrap()), 2_000);
    }

    #[test]
    fn a_row_with_the_wrong_number_of_values_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, table) = store_with_table(&dir.path().join("rows.db"));
        let row = |values: Vec<SqlValue>| Row {
            values,
            raw: "{}".into(),
        };
        let rows = vec![
            row(vec![SqlValue::Integer(1), SqlValue::Text("a".into())]),
            row(vec![SqlValue::Integer(2)]),
        ];
        let err = commit_rows(&mut store, &table, rows, Some(("t", "{}"))).unwrap_err();
        assert!(err.to_string().contains("1 values for 2 columns"), "{err}");
        assert_eq!(
            rows_in_t(store.connection()),
            0,
            "nothing of the failed commit is stored"
        );
        assert_eq!(store.get_state("c", "t").unwrap(), None);
    }

    #[test]
    fn a_live_lease_is_refused_an_expired_or_orphaned_one_taken_over_and_commits_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, table) = store_with_table(&dir.path().join("lease.db"));
        let ttl = Duration::from_secs(60);
        // Run `r` holds instance `c`: another run is told who holds it.
        let held = store.claim_lease("c", "r2", "elsewhere:7", ttl).unwrap();
        assert_eq!(
            held.map(|h| (h.run_id, h.holder)),
            Some(("r".into(), "here:1".into()))
        );
        assert!(store.renew_lease("c", "r", ttl).unwrap());
        assert!(!store.renew_lease("c", "r2", ttl).unwrap());
        // A lease of another host that expired is taken over...
        store
            .connection()
            .execute("UPDATE _sluice_leases SET expires_ms = 0", [])
            .unwrap();
        assert_eq!(
            store.claim_lease("c", "r2", "elsewhere:7", ttl).unwrap(),
            None
        );
        // ... and the old holder's commit is refused whole.
        let row = Row {
            values: vec![SqlValue::Integer(1), SqlValue::Text("a".into())],
            raw: "{}".into(),
        };
        let err = commit_rows(&mut store, &table, vec![row], Some(("t", "{}"))).unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
        assert_eq!(rows_in_t(store.connection()), 0);
        assert!(!store.renew_lease("c", "r", ttl).unwrap());
        // A live lease of a process of this host that is gone is taken over
        // at once (no waiting for it to expire).
        let gone = format!("{}:{}", host_name(), u32::MAX - 1);
        store
            .connection()
            .execute("UPDATE _sluice_leases SET holder = ?1", [&gone])
            .unwrap();
        assert_eq!(
            store.claim_lease("c", "r3", &lease_holder(), ttl).unwrap(),
            None
        );
        store.release_lease("c", "r3").unwrap();
        assert_eq!(
            store.claim_lease("c", "r4", "elsewhere:8", ttl).unwrap(),
            None
        );
    }

    #[test]
    fn a_running_run_without_a_live_lease_is_crashed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = store_with_table(&dir.path().join("crash.db"));
        let run = |id: &str| RunRecord::started(id, "c", "1", "h");
        store.insert_run(&run("r")).unwrap();
        store.insert_run(&run("orphan")).unwrap();
        assert_eq!(
            store.mark_crashed().unwrap(),
            1,
            "only the run without a lease"
        );
        assert_eq!(store.get_run("r").unwrap().status, RunStatus::Running);
        assert_eq!(store.get_run("orphan").unwrap().status, RunStatus::Crashed);
        store
            .connection()
            .execute("UPDATE _sluice_leases SET expires_ms = 0", [])
            .unwrap();
        assert_eq!(store.mark_crashed().unwrap(), 1);
        let r = store.get_run("r").unwrap();
        assert_eq!(r.status, RunStatus::Crashed);
        assert!(r.error.unwrap().contains("lease expired"));
    }

    // ------------------------------------------------------- read-only

    /// A Sluice database at `path`, closed: table `t` with one row, state
    /// `{"n":1}` of (`c`, `t`), a succeeded run `done` and a `running` run
    /// `orphan` that holds no lease.
    fn closed_database(path: &Path) {
        let (mut store, table) = store_with_table(path);
        let row = Row {
            values: vec![SqlValue::Integer(1), SqlValue::Text("a".into())],
            raw: "{}".into(),
        };
        commit_rows(&mut store, &table, vec![row], Some(("t", r#"{"n":1}"#))).unwrap();
        let mut done = RunRecord::started("done", "c", "1", "h");
        done.status = RunStatus::Succeeded;
        store.insert_run(&done).unwrap();
        store
            .insert_run(&RunRecord::started("orphan", "other", "1", "h"))
            .unwrap();
        store.release_lease("c", "r").unwrap();
    }

    /// Each file of `dir`: name, length, modification time.
    fn listing(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
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

    #[test]
    fn a_read_only_open_changes_no_byte_of_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        closed_database(&path);
        assert_eq!(
            listing(dir.path()).len(),
            1,
            "closed cleanly: the database file alone"
        );
        let bytes = std::fs::read(&path).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();

        let mut store = SqliteStore::open_read_only(&path).unwrap();
        // The directory is writable: a reader that sees concurrent commits.
        assert_eq!(store.read_only_mode(), Some(ReadOnlyMode::Shared));
        assert_eq!(
            store.get_state("c", "t").unwrap().as_deref(),
            Some(r#"{"n":1}"#)
        );
        assert_eq!(store.list_runs(10).unwrap().len(), 2);
        assert_eq!(store.scan("t").unwrap().unwrap().rows.len(), 1);
        drop(store);

        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file is unchanged"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        // SQLite's reader of a WAL database makes the -shm index (and an
        // empty -wal) beside it where it may: nothing is logged in them.
        for (name, len, _) in listing(dir.path()) {
            match name.as_str() {
                "ro.db" | "ro.db-shm" => {}
                "ro.db-wal" => assert_eq!(len, 0, "a reader logs nothing"),
                other => panic!("a read-only open created {other}"),
            }
        }
    }

    #[test]
    fn a_read_only_store_refuses_every_write_and_shows_an_orphaned_run_crashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        closed_database(&path);
        let mut store = SqliteStore::open_read_only(&path).unwrap();

        let runs = store.list_runs(10).unwrap();
        let orphan = runs.iter().find(|r| r.id == "orphan").unwrap();
        assert_eq!(
            orphan.status,
            RunStatus::Crashed,
            "as mark_crashed would record it"
        );
        assert_eq!(orphan.error.as_deref(), Some(CRASHED_ERROR));
        assert_eq!(store.get_run("orphan").unwrap().status, RunStatus::Crashed);
        assert_eq!(store.get_run("done").unwrap().status, RunStatus::Succeeded);

        let table = StreamTable::from_spec("t", r#"{"properties":{"id":{"type":"integer"}}}"#, &[])
            .unwrap();
        let pending = Pending::default();
        let ttl = Duration::from_secs(60);
        let refused: Vec<(&str, StoreError)> = vec![
            ("ensure_table", store.ensure_table(&table).unwrap_err()),
            ("claim_table", store.claim_table("c", &table).unwrap_err()),
            (
                "commit",
                store
                    .commit(&CommitRequest {
                        run_id: "r",
                        connector: "c",
                        connector_version: "1",
                        pending: &pending,
                        state: Some(("t", "{}")),
                        sweep: &[],
                    })
                    .unwrap_err(),
            ),
            (
                "claim_lease",
                store.claim_lease("c", "r", "here:1", ttl).unwrap_err(),
            ),
            ("renew_lease", store.renew_lease("c", "r", ttl).unwrap_err()),
            ("release_lease", store.release_lease("c", "r").unwrap_err()),
            (
                "note_component",
                store.note_component("c", "h", "c", "1").unwrap_err(),
            ),
            ("record_streams", store.record_streams(&[]).unwrap_err()),
            (
                "edit_quarantined",
                store.edit_quarantined(1, "{}").unwrap_err(),
            ),
            (
                "apply_replay",
                store.apply_replay(&ReplayPlan::default()).unwrap_err(),
            ),
            (
                "insert_run",
                store
                    .insert_run(&RunRecord::started("x", "c", "1", "h"))
                    .unwrap_err(),
            ),
            ("mark_crashed", store.mark_crashed().unwrap_err()),
            (
                "update_run",
                store
                    .update_run(&RunRecord::started("done", "c", "1", "h"))
                    .unwrap_err(),
            ),
        ];
        for (operation, err) in refused {
            assert!(
                matches!(&err, StoreError::ReadOnly { operation: o, .. } if *o == operation),
                "{operation}: {err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "database {} is open read-only: {operation} writes to it, which needs a write-capable open",
                    path.display()
                )
            );
        }
        drop(store);
        // Nothing was marked: the file still says `running`.
        assert_eq!(
            SqliteStore::open_read_only(&path)
                .unwrap()
                .connection()
                .query_row(
                    "SELECT status FROM _sluice_runs WHERE id = 'orphan'",
                    [],
                    |r| { r.get::<_, String>(0) }
                )
                .unwrap(),
            "running"
        );
    }

    #[test]
    fn a_missing_database_is_an_error_and_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let err = SqliteStore::open_read_only(&path).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!("cannot open database {}: it does not exist", path.display())
        );
        assert!(listing(dir.path()).is_empty(), "nothing created");
    }

    #[test]
    fn a_database_of_an_older_sluice_is_read_as_far_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // The first released runs table (no HTTP resilience columns, no
        // component change), and no other Sluice table.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE _sluice_runs (id TEXT PRIMARY KEY, connector TEXT NOT NULL, \
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
             VALUES ('old', 'c', '1', 'h', '2026-01-01T00:00:00Z', 'succeeded'), \
             ('stuck', 'c', '1', 'h', '2026-01-02T00:00:00Z', 'running');",
        )
        .unwrap();
        drop(conn);
        let bytes = std::fs::read(&path).unwrap();

        let mut store = SqliteStore::open_read_only(&path).unwrap();
        let runs = store.list_runs(10).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["stuck", "old"]);
        let old = store.get_run("old").unwrap();
        assert_eq!(old.status, RunStatus::Succeeded);
        assert_eq!(
            (
                old.http_retries,
                old.http_throttled_ms,
                old.http_breaker_trips
            ),
            (0, 0, 0)
        );
        assert_eq!(old.component_change, None);
        // No leases table: no run holds a lease.
        assert_eq!(runs[0].status, RunStatus::Crashed);
        assert!(store
            .list_quarantine(&QuarantineFilter::default())
            .unwrap()
            .is_empty());
        assert!(store.list_drift(None, None).unwrap().is_empty());
        assert_eq!(store.get_state("c", "s").unwrap(), None);
        assert!(store.stream_def("c", "s").unwrap().is_none());
        assert_eq!(store.table_of("c", "s").unwrap(), None);
        assert!(matches!(
            store.get_run("nope").unwrap_err(),
            StoreError::RunNotFound(_)
        ));
        drop(store);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "not migrated");
    }

    #[test]
    fn quarantine_and_replays_of_an_older_sluice_are_read_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old-quarantine.db");
        // The quarantine and replay tables as first released: no key, no
        // hash, no seen counts, no stale count; one open record.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE _sluice_quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             run_id TEXT NOT NULL, connector TEXT NOT NULL, connector_version TEXT NOT NULL, \
             stream TEXT NOT NULL, record TEXT NOT NULL, errors TEXT NOT NULL, \
             quarantined_at TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'quarantined', \
             replay_id TEXT, original_record TEXT);
             CREATE TABLE _sluice_replays (id TEXT PRIMARY KEY, at TEXT NOT NULL, \
             examined INTEGER NOT NULL, replayed INTEGER NOT NULL, still_invalid INTEGER NOT NULL);
             INSERT INTO _sluice_quarantine (run_id, connector, connector_version, stream, record, \
             errors, quarantined_at) VALUES ('old', 'c', '1', 't', '{\"id\":1,\"text\":1}', '[]', \
             '2026-01-01T00:00:00.000Z');",
        )
        .unwrap();
        drop(conn);

        // Read-only: the old row as seen once, by the run that stored it.
        let mut ro = SqliteStore::open_read_only(&path).unwrap();
        let q = ro.list_quarantine(&QuarantineFilter::default()).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].seen_count, q[0].key.as_deref()), (1, None));
        assert_eq!(q[0].last_seen_run, "old");
        assert_eq!(q[0].last_seen_at, "2026-01-01T00:00:00.000Z");
        drop(ro);

        // Opened to write: the columns are added and the open row hashed,
        // so the same record read again counts on it.
        let (mut store, table) = store_with_table(&path);
        let have = column_names(store.connection(), "_sluice_quarantine").unwrap();
        for (name, ..) in QUARANTINE_COLUMNS_ADDED {
            assert!(have.iter().any(|c| c == name), "{name}: {have:?}");
        }
        let record = r#"{"id":1,"text":1}"#;
        let pending = Pending {
            quarantine: vec![sluice_core::destination::QuarantinedRecord {
                stream: "t".into(),
                record: record.into(),
                errors: vec![],
                key: table.record_key(record),
            }],
            ..Pending::default()
        };
        store
            .commit(&CommitRequest {
                run_id: "r",
                connector: "c",
                connector_version: "1",
                pending: &pending,
                state: None,
                sweep: &[],
            })
            .unwrap();
        let q = store.list_quarantine(&QuarantineFilter::default()).unwrap();
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!((q[0].seen_count, q[0].last_seen_run.as_str()), (2, "r"));
        assert_eq!(
            (q[0].run_id.as_str(), q[0].key.as_deref()),
            ("old", Some("[1]"))
        );
        // The replay audit has its stale count.
        store
            .apply_replay(&ReplayPlan {
                replay_id: "rp".into(),
                ..ReplayPlan::default()
            })
            .unwrap();
        let stale: i64 = store
            .connection()
            .query_row(
                "SELECT stale FROM _sluice_replays WHERE id = 'rp'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stale, 0);
        drop(store);
        // Opening again changes nothing more.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            column_names(store.connection(), "_sluice_quarantine")
                .unwrap()
                .len(),
            11 + QUARANTINE_COLUMNS_ADDED.len()
        );
    }

    /// The directory a read-only mount's child test reads (set by its
    /// parent, [`a_read_only_filesystem_is_read_without_creating_anything`]).
    const READ_ONLY_CHILD_DIR_ENV: &str = "SLUICE_STORE_TEST_READ_ONLY_DIR";

    /// `sh -c` script that bind-mounts `$1` over itself read-only, then
    /// runs the rest of its arguments (inside `unshare --mount`: the mount
    /// is this process tree's alone).
    const READ_ONLY_MOUNT_SCRIPT: &str =
        r#"mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@""#;

    /// A command that runs `program` with `dir` mounted read-only: a truly
    /// read-only filesystem (root writes past file permissions, not past
    /// a read-only mount).
    fn with_read_only(dir: &Path, program: &Path) -> std::process::Command {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(READ_ONLY_MOUNT_SCRIPT)
            .arg("sh")
            .arg(dir)
            .arg(program);
        cmd
    }

    /// Why no read-only mount can be made here, if none can (no `unshare`,
    /// or no right to mount); panics if one is made but can be written.
    fn read_only_mount_unavailable() -> Option<String> {
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

    #[test]
    fn a_read_only_filesystem_is_read_without_creating_anything() {
        if let Some(why) = read_only_mount_unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // Closed cleanly: the file alone, every commit in it.
        closed_database(&dir.path().join("clean.db"));
        // A writer has it open with a commit in the -wal only (its -shm
        // beside it).
        closed_database(&dir.path().join("live.db"));
        let live = Connection::open(dir.path().join("live.db")).unwrap();
        live.execute_batch(
            r#"PRAGMA wal_autocheckpoint = 0; UPDATE _sluice_state SET value = '{"n":2}';"#,
        )
        .unwrap();
        // A commit in the -wal, and no -shm (a copy taken while a writer
        // had it open).
        for suffix in ["", "-wal"] {
            std::fs::copy(
                side_file(&dir.path().join("live.db"), suffix),
                side_file(&dir.path().join("pending.db"), suffix),
            )
            .unwrap();
        }
        let before = listing(dir.path());
        let clean = std::fs::read(dir.path().join("clean.db")).unwrap();

        let out = with_read_only(dir.path(), &std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sqlite::tests::read_only_mount_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env(READ_ONLY_CHILD_DIR_ENV, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // (Before the writer closes, which folds its -wal in.)
        assert_eq!(listing(dir.path()), before, "nothing created or changed");
        assert_eq!(std::fs::read(dir.path().join("clean.db")).unwrap(), clean);
        drop(live);
    }

    /// What [`a_read_only_filesystem_is_read_without_creating_anything`]
    /// runs inside its read-only mount.
    #[test]
    #[ignore = "runs inside a read-only mount, started by a_read_only_filesystem_is_read_without_creating_anything"]
    fn read_only_mount_child() {
        let dir = std::path::PathBuf::from(std::env::var_os(READ_ONLY_CHILD_DIR_ENV).unwrap());
        assert!(
            std::fs::write(dir.join("probe"), "x").is_err(),
            "not read-only"
        );

        let mut clean = SqliteStore::open_read_only(&dir.join("clean.db")).unwrap();
        assert_eq!(clean.read_only_mode(), Some(ReadOnlyMode::Immutable));
        assert_eq!(
            clean.get_state("c", "t").unwrap().as_deref(),
            Some(r#"{"n":1}"#)
        );
        assert_eq!(clean.list_runs(10).unwrap().len(), 2);
        assert_eq!(clean.get_run("orphan").unwrap().status, RunStatus::Crashed);

        let mut live = SqliteStore::open_read_only(&dir.join("live.db")).unwrap();
        assert_eq!(live.read_only_mode(), Some(ReadOnlyMode::Shared));
        assert_eq!(
            live.get_state("c", "t").unwrap().as_deref(),
            Some(r#"{"n":2}"#),
            "the writer's commit in the -wal"
        );

        let err = SqliteStore::open_read_only(&dir.join("pending.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("pending.db-wal holds changes not yet in the database file"),
            "{err}"
        );
    }
}
