//! The next run of each scheduled instance (`sluice serve`), kept in
//! `_sluice_schedule` (made on first write) so that a restart of the
//! server neither loses nor doubles runs.

use rusqlite::{params, OptionalExtension};

use sluice_core::destination::ScheduleEntry;

use super::{has_table, SqlError, SqliteStore};

/// One row per scheduled instance.
pub(crate) const SCHEDULE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_schedule (
    instance     TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    next_run_at  INTEGER NOT NULL,
    updated_at   TEXT NOT NULL
);
";

impl SqliteStore {
    pub(crate) fn get_schedule_sql(
        &mut self,
        instance: &str,
    ) -> Result<Option<ScheduleEntry>, SqlError> {
        if !has_table(&self.conn, "_sluice_schedule")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT instance, schedule, next_run_at, updated_at FROM _sluice_schedule \
                 WHERE instance = ?1",
                [instance],
                |r| {
                    Ok(ScheduleEntry {
                        instance: r.get(0)?,
                        schedule: r.get(1)?,
                        next_run_at_ms: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub(crate) fn set_schedule_sql(&mut self, entry: &ScheduleEntry) -> Result<(), SqlError> {
        self.conn.execute_batch(SCHEDULE_SCHEMA)?;
        self.conn.execute(
            "INSERT INTO _sluice_schedule (instance, schedule, next_run_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (instance) DO UPDATE SET schedule = excluded.schedule, \
             next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
            params![
                entry.instance,
                entry.schedule,
                entry.next_run_at_ms,
                entry.updated_at
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::destination::RunLog;

    #[test]
    fn a_schedule_is_kept_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_schedule("a").unwrap(), None);
        let mut entry = ScheduleEntry {
            instance: "a".into(),
            schedule: "every:1h".into(),
            next_run_at_ms: 1_000,
            updated_at: "t1".into(),
        };
        store.set_schedule(&entry).unwrap();
        entry.next_run_at_ms = 2_000;
        entry.updated_at = "t2".into();
        store.set_schedule(&entry).unwrap();
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.get_schedule("a").unwrap(), Some(entry));
        assert_eq!(store.get_schedule("b").unwrap(), None);
    }
}
