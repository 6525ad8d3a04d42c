//! The operator's view and edits of checkpoint state (`sluice state`),
//! with every change audited in `_sluice_state_changes`, made on first
//! use.

use rusqlite::{params, OptionalExtension};

use sluice_core::destination::{StateChange, StateChangeRecord, StateEntry, OPERATOR_RUN_PREFIX};
use sluice_core::run::now_rfc3339;

use super::{has_table, SqlError, SqliteStore};
use crate::state_change;

/// The audit of state changes.
const STATE_CHANGES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_state_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    at         TEXT NOT NULL,
    instance   TEXT NOT NULL,
    stream     TEXT NOT NULL,
    action     TEXT NOT NULL,
    old_value  TEXT,
    new_value  TEXT,
    changed_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS _sluice_state_changes_instance ON _sluice_state_changes (instance, seq);
";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<StateEntry> {
    Ok(StateEntry {
        stream: r.get(0)?,
        value: r.get(1)?,
        run_id: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

impl SqliteStore {
    pub(crate) fn list_state_sql(&mut self, instance: &str) -> Result<Vec<StateEntry>, SqlError> {
        if !has_table(&self.conn, "_sluice_state")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT stream, value, run_id, updated_at FROM _sluice_state \
             WHERE connector = ?1 ORDER BY stream",
        )?;
        let rows = stmt.query_map([instance], entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn change_state_sql(
        &mut self,
        change: &StateChange,
    ) -> Result<Vec<StateChangeRecord>, SqlError> {
        let now = now_rfc3339();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(STATE_CHANGES_SCHEMA)?;
        let before: Vec<(String, String)> = match &change.stream {
            Some(stream) => tx
                .query_row(
                    "SELECT stream, value FROM _sluice_state WHERE connector = ?1 AND stream = ?2",
                    params![change.instance, stream],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .into_iter()
                .collect(),
            None => {
                let mut stmt = tx.prepare(
                    "SELECT stream, value FROM _sluice_state WHERE connector = ?1 ORDER BY stream",
                )?;
                let rows = stmt.query_map([&change.instance], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            }
        };
        let records = state_change::plan(change, &before, &now)?;
        for r in &records {
            match &r.new_value {
                Some(value) => tx.execute(
                    "INSERT INTO _sluice_state (connector, stream, value, run_id, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (connector, stream) DO UPDATE SET \
                     value = excluded.value, run_id = excluded.run_id, updated_at = excluded.updated_at",
                    params![
                        r.instance,
                        r.stream,
                        value,
                        format!("{OPERATOR_RUN_PREFIX}{}", r.id),
                        r.at
                    ],
                )?,
                None => tx.execute(
                    "DELETE FROM _sluice_state WHERE connector = ?1 AND stream = ?2",
                    params![r.instance, r.stream],
                )?,
            };
        }
        for r in &records {
            tx.execute(
                "INSERT INTO _sluice_state_changes \
                 (id, at, instance, stream, action, old_value, new_value, changed_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.id,
                    r.at,
                    r.instance,
                    r.stream,
                    r.action,
                    r.old_value,
                    r.new_value,
                    r.by
                ],
            )?;
        }
        tx.commit()?;
        Ok(records)
    }

    pub(crate) fn list_state_changes_sql(
        &mut self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StateChangeRecord>, SqlError> {
        if !has_table(&self.conn, "_sluice_state_changes")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, at, instance, stream, action, old_value, new_value, changed_by \
             FROM _sluice_state_changes WHERE ?1 IS NULL OR instance = ?1 \
             ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![instance, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(StateChangeRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    instance: r.get(2)?,
                    stream: r.get(3)?,
                    action: r.get(4)?,
                    old_value: r.get(5)?,
                    new_value: r.get(6)?,
                    by: r.get(7)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
