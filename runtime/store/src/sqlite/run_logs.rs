//! The kept guest log lines of each run (`_sluice_run_logs`, made on
//! first write): what `sluice serve` shows of a run.

use rusqlite::params;

use sluice_core::run::LogLine;

use super::{has_table, SqlError, SqliteStore};

const RUN_LOGS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _sluice_run_logs (
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    at      TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
";

impl SqliteStore {
    pub(crate) fn insert_run_logs_sql(
        &mut self,
        run_id: &str,
        lines: &[LogLine],
    ) -> Result<(), SqlError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(RUN_LOGS_SCHEMA)?;
        {
            let mut stmt = tx.prepare(
                "INSERT OR REPLACE INTO _sluice_run_logs (run_id, seq, at, level, message) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for l in lines {
                stmt.execute(params![
                    run_id,
                    i64::try_from(l.seq).unwrap_or(i64::MAX),
                    l.at,
                    l.level,
                    l.message
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn get_run_logs_sql(&mut self, run_id: &str) -> Result<Vec<LogLine>, SqlError> {
        if !has_table(&self.conn, "_sluice_run_logs")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT seq, at, level, message FROM _sluice_run_logs WHERE run_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([run_id], |r| {
            Ok(LogLine {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                at: r.get(1)?,
                level: r.get(2)?,
                message: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
