//! The next run of each scheduled instance (`sluice serve`) on Postgres,
//! in `_sluice_schedule` (made on first write), as on SQLite
//! (`sqlite/schedule.rs`).

use sluice_core::destination::ScheduleEntry;

use super::{PgError, PostgresStore, LOCK_SCHEMA};

/// One row per scheduled instance.
const SCHEDULE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_schedule (
    instance     TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    next_run_at  BIGINT NOT NULL,
    updated_at   TEXT NOT NULL
);
";

impl PostgresStore {
    pub(crate) fn get_schedule_pg(
        &mut self,
        instance: &str,
    ) -> Result<Option<ScheduleEntry>, PgError> {
        if !self.has_table("_sluice_schedule")? {
            return Ok(None);
        }
        Ok(self
            .client
            .query_opt(
                "SELECT instance, schedule, next_run_at, updated_at FROM _sluice_schedule \
                 WHERE instance = $1",
                &[&instance],
            )?
            .map(|r| ScheduleEntry {
                instance: r.get(0),
                schedule: r.get(1),
                next_run_at_ms: r.get(2),
                updated_at: r.get(3),
            }))
    }

    pub(crate) fn set_schedule_pg(&mut self, entry: &ScheduleEntry) -> Result<(), PgError> {
        let mut tx = self.client.transaction()?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` can collide on Postgres.
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_SCHEMA])?;
        tx.batch_execute(SCHEDULE_SCHEMA)?;
        tx.execute(
            "INSERT INTO _sluice_schedule (instance, schedule, next_run_at, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (instance) DO UPDATE SET schedule = excluded.schedule, \
             next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
            &[
                &entry.instance,
                &entry.schedule,
                &entry.next_run_at_ms,
                &entry.updated_at,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }
}
