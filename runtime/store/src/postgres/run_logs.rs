//! The kept guest log lines of each run on Postgres, in
//! `_sluice_run_logs` (made on first write), as on SQLite
//! (`sqlite/run_logs.rs`).

use sluice_core::run::LogLine;

use super::{PgError, PostgresStore, LOCK_SCHEMA};

const RUN_LOGS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_run_logs (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    at      TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
";

impl PostgresStore {
    pub(crate) fn insert_run_logs_pg(
        &mut self,
        run_id: &str,
        lines: &[LogLine],
    ) -> Result<(), PgError> {
        let mut tx = self.client.transaction()?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` can collide on Postgres.
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_SCHEMA])?;
        tx.batch_execute(RUN_LOGS_SCHEMA)?;
        let stmt = tx.prepare(
            "INSERT INTO _sluice_run_logs (run_id, seq, at, level, message) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, seq) DO UPDATE SET \
             at = excluded.at, level = excluded.level, message = excluded.message",
        )?;
        for l in lines {
            let seq = i64::try_from(l.seq).unwrap_or(i64::MAX);
            tx.execute(&stmt, &[&run_id, &seq, &l.at, &l.level, &l.message])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn get_run_logs_pg(&mut self, run_id: &str) -> Result<Vec<LogLine>, PgError> {
        if !self.has_table("_sluice_run_logs")? {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .query(
                "SELECT seq, at, level, message FROM _sluice_run_logs \
                 WHERE run_id = $1 ORDER BY seq",
                &[&run_id],
            )?
            .iter()
            .map(|r| LogLine {
                seq: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                at: r.get(1),
                level: r.get(2),
                message: r.get(3),
            })
            .collect())
    }
}
