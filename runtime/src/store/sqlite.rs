//! The embedded SQLite store: WAL, `synchronous=NORMAL`, one write
//! connection, prepared (cached) statements, one transaction per commit.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::table::quote_ident;
use super::{Batch, CommitStats, RunRecord, RunStatus, Store, StoreError, StreamTable};

/// How long a connection waits for another's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection.
pub const STATEMENT_CACHE_CAPACITY: usize = 64;

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
    records_upserted  INTEGER NOT NULL DEFAULT 0,
    commits           INTEGER NOT NULL DEFAULT 0,
    http_requests     INTEGER NOT NULL DEFAULT 0,
    http_denied       INTEGER NOT NULL DEFAULT 0,
    http_bytes        INTEGER NOT NULL DEFAULT 0,
    fuel_used         INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0,
    error             TEXT
);
CREATE INDEX IF NOT EXISTS _sluice_runs_started ON _sluice_runs (started_at);
";

const RUN_COLUMNS: &str =
    "id, connector, connector_version, component_hash, started_at, ended_at, \
    duration_ms, status, records_emitted, records_upserted, commits, http_requests, http_denied, \
    http_bytes, fuel_used, peak_memory_bytes, error";

/// SQLite behind the [`Store`] trait.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Open (or create) the database at `path` and its Sluice tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Fails with "file is not a database" on a non-SQLite file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        Ok(SqliteStore { conn })
    }

    /// The underlying connection (for tests and read-only tooling).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn upsert_sql(table: &StreamTable) -> String {
        let mut cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        cols.extend(super::META_COLUMNS.iter().map(|c| quote_ident(c)));
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote_ident(&table.name),
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
    })
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn ensure_table(&mut self, table: &StreamTable) -> Result<(), StoreError> {
        let existing: Vec<(String, i64)> = self
            .conn
            .prepare("SELECT name, pk FROM pragma_table_info(?1)")?
            .query_map([&table.name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if existing.is_empty() {
            let mut defs: Vec<String> = table
                .columns
                .iter()
                .map(|c| format!("{} {}", quote_ident(&c.name), c.kind.sql_type()))
                .collect();
            defs.extend(
                super::META_COLUMNS
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
            self.conn.execute_batch(&format!(
                "CREATE TABLE {} ({})",
                quote_ident(&table.name),
                defs.join(", ")
            ))?;
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
                table: table.name.clone(),
                existing: existing_pk.join(", "),
                declared: declared_pk.join(", "),
            });
        }
        for col in &table.columns {
            if !existing.iter().any(|(n, _)| n == &col.name) {
                self.conn.execute_batch(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote_ident(&table.name),
                    quote_ident(&col.name),
                    col.kind.sql_type()
                ))?;
            }
        }
        Ok(())
    }

    fn get_state(&mut self, connector: &str, stream: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM _sluice_state WHERE connector = ?1 AND stream = ?2")?
            .query_row(params![connector, stream], |r| r.get(0))
            .optional()?)
    }

    fn commit(
        &mut self,
        connector: &str,
        run_id: &str,
        batches: &[Batch],
        state: Option<(&str, &str)>,
    ) -> Result<CommitStats, StoreError> {
        let now = super::now_rfc3339();
        let tx = self.conn.transaction()?;
        let mut upserted = 0u64;
        for (table, rows) in batches {
            let mut stmt = tx.prepare_cached(&Self::upsert_sql(table))?;
            for row in rows {
                let meta = [
                    rusqlite::types::Value::Text(row.raw.clone()),
                    rusqlite::types::Value::Text(run_id.to_string()),
                    rusqlite::types::Value::Text(now.clone()),
                ];
                stmt.execute(params_from_iter(row.values.iter().chain(meta.iter())))?;
                upserted += 1;
            }
        }
        if let Some((stream, value)) = state {
            tx.prepare_cached(
                "INSERT INTO _sluice_state (connector, stream, value, run_id, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (connector, stream) DO UPDATE SET value = excluded.value, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at",
            )?
            .execute(params![connector, stream, value, run_id, now])?;
        }
        tx.commit()?;
        Ok(CommitStats { upserted })
    }

    fn insert_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        self.conn.execute(
            &format!("INSERT INTO _sluice_runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
            params![
                run.id,
                run.connector,
                run.connector_version,
                run.component_hash,
                run.started_at,
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
            ],
        )?;
        Ok(())
    }

    fn update_run(&mut self, run: &RunRecord) -> Result<(), StoreError> {
        let n = self.conn.execute(
            "UPDATE _sluice_runs SET ended_at = ?2, duration_ms = ?3, status = ?4, records_emitted = ?5, \
             records_upserted = ?6, commits = ?7, http_requests = ?8, http_denied = ?9, http_bytes = ?10, \
             fuel_used = ?11, peak_memory_bytes = ?12, error = ?13 WHERE id = ?1",
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
            ],
        )?;
        if n == 0 {
            return Err(StoreError::RunNotFound(run.id.clone()));
        }
        Ok(())
    }

    fn list_runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM _sluice_runs ORDER BY started_at DESC, id DESC LIMIT ?1"
        ))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], run_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn get_run(&mut self, id: &str) -> Result<RunRecord, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM _sluice_runs WHERE id = ?1"),
                [id],
                run_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::RunNotFound(id.to_string()))
    }
}
