//! The `log` capability: guest log lines into `tracing`, tagged with the run
//! id and connector, truncated, capped per run and escaped (one line each).

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::source_v0_2 as v0_2;
use crate::bindings::{log, types::Level};
use sluice_core::limits::{MAX_KEPT_LOG_LINES, MAX_LOG_MESSAGE_BYTES};
use sluice_core::run::LogLine;
use sluice_core::secrets::Secrets;
use sluice_core::text::{escaped, truncate};

/// Per-run state of the `log` capability.
#[derive(Debug)]
pub struct LogCtx {
    pub run_id: String,
    pub connector: String,
    pub max_lines: u64,
    /// Lines written.
    pub lines: u64,
    /// Lines over the cap, counted and not written.
    pub suppressed: u64,
    /// The last error-level line (e.g. a panic message the SDK logged just
    /// before trapping), quoted in the run's error.
    pub last_error: Option<String>,
    /// Values redacted from every line before it is kept or written.
    pub secrets: Secrets,
    /// The first [`MAX_KEPT_LOG_LINES`] lines written, for the run log.
    pub kept: Vec<LogLine>,
}

impl LogCtx {
    pub fn new(run_id: &str, connector: &str, max_lines: u64, secrets: &Secrets) -> Self {
        LogCtx {
            run_id: run_id.to_string(),
            connector: connector.to_string(),
            max_lines,
            lines: 0,
            suppressed: 0,
            last_error: None,
            secrets: secrets.clone(),
            kept: Vec::new(),
        }
    }
}

impl log::Host for LogCtx {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        // Redact before truncating, so a cut cannot leave half a secret.
        let message = self.secrets.redact(&message).into_owned();
        if level == Level::Error {
            self.last_error = Some(truncate(&message, MAX_LOG_MESSAGE_BYTES).to_string());
        }
        if self.lines >= self.max_lines {
            self.suppressed += 1;
            return Ok(());
        }
        self.lines += 1;
        if self.kept.len() < MAX_KEPT_LOG_LINES {
            self.kept.push(LogLine {
                seq: self.kept.len() as u64,
                at: sluice_core::run::now_rfc3339(),
                level: match level {
                    Level::Trace => "trace",
                    Level::Debug => "debug",
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                }
                .to_string(),
                message: truncate(&message, MAX_LOG_MESSAGE_BYTES).to_string(),
            });
        }
        // One event per message, on one line: newlines, carriage returns
        // and escape sequences are shown escaped, never sent to the terminal.
        let msg = escaped(truncate(&message, MAX_LOG_MESSAGE_BYTES));
        let (run, conn) = (self.run_id.as_str(), self.connector.as_str());
        match level {
            Level::Trace => {
                tracing::trace!(target: "guest", run_id = run, connector = conn, "{msg}")
            }
            Level::Debug => {
                tracing::debug!(target: "guest", run_id = run, connector = conn, "{msg}")
            }
            Level::Info => tracing::info!(target: "guest", run_id = run, connector = conn, "{msg}"),
            Level::Warn => tracing::warn!(target: "guest", run_id = run, connector = conn, "{msg}"),
            Level::Error => {
                tracing::error!(target: "guest", run_id = run, connector = conn, "{msg}")
            }
        }
        Ok(())
    }
}

impl v0_2::log::Host for LogCtx {
    async fn log(&mut self, level: v0_2::types::Level, message: String) -> wasmtime::Result<()> {
        log::Host::log(self, level.into(), message).await
    }
}

/// Link the `log` interface of every WIT version, reaching each store's
/// [`LogCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LogCtx,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, HasSelf<LogCtx>>(linker, get)?;
    v0_2::log::add_to_linker::<T, HasSelf<LogCtx>>(linker, get)
}
