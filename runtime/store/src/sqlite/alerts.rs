//! Alert states and their events (`sluice serve`'s alert rules), kept in
//! `_sluice_alerts` and `_sluice_alert_events` (made on first write).

use rusqlite::params;

use sluice_core::destination::{AlertEvent, AlertState};

use super::{has_table, SqlError, SqliteStore};

const ALERTS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_alerts (
    rule         TEXT NOT NULL,
    instance     TEXT NOT NULL,
    firing       INTEGER NOT NULL,
    since        TEXT NOT NULL,
    last_sent_at TEXT,
    message      TEXT NOT NULL,
    value        REAL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (rule, instance)
);
CREATE TABLE IF NOT EXISTS _sluice_alert_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        TEXT NOT NULL,
    rule      TEXT NOT NULL,
    instance  TEXT NOT NULL,
    event     TEXT NOT NULL,
    message   TEXT NOT NULL,
    delivered INTEGER NOT NULL,
    error     TEXT
);
";

impl SqliteStore {
    pub(crate) fn list_alerts_sql(&mut self) -> Result<Vec<AlertState>, SqlError> {
        if !has_table(&self.conn, "_sluice_alerts")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT rule, instance, firing, since, last_sent_at, message, value, updated_at \
             FROM _sluice_alerts ORDER BY rule, instance",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AlertState {
                rule: r.get(0)?,
                instance: r.get(1)?,
                firing: r.get(2)?,
                since: r.get(3)?,
                last_sent_at: r.get(4)?,
                message: r.get(5)?,
                value: r.get(6)?,
                updated_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn record_alert_sql(
        &mut self,
        state: &AlertState,
        event: Option<&AlertEvent>,
    ) -> Result<(), SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(ALERTS_SCHEMA)?;
        tx.execute(
            "INSERT INTO _sluice_alerts \
             (rule, instance, firing, since, last_sent_at, message, value, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (rule, instance) DO UPDATE SET firing = excluded.firing, \
             since = excluded.since, last_sent_at = excluded.last_sent_at, \
             message = excluded.message, value = excluded.value, updated_at = excluded.updated_at",
            params![
                state.rule,
                state.instance,
                state.firing,
                state.since,
                state.last_sent_at,
                state.message,
                state.value,
                state.updated_at
            ],
        )?;
        if let Some(e) = event {
            tx.execute(
                "INSERT INTO _sluice_alert_events \
                 (at, rule, instance, event, message, delivered, error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    e.at,
                    e.rule,
                    e.instance,
                    e.event,
                    e.message,
                    e.delivered,
                    e.error
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn list_alert_events_sql(
        &mut self,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, SqlError> {
        if !has_table(&self.conn, "_sluice_alert_events")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT at, rule, instance, event, message, delivered, error \
             FROM _sluice_alert_events ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(AlertEvent {
                at: r.get(0)?,
                rule: r.get(1)?,
                instance: r.get(2)?,
                event: r.get(3)?,
                message: r.get(4)?,
                delivered: r.get(5)?,
                error: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
