//! The data of one run's wasmtime store: the resource limiter, locked-down
//! WASI, and every capability's per-run state.

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::http::HttpCtx;
use super::log::LogCtx;
use super::sink::SinkCtx;
use super::state::StateCtx;
use sluice_core::limits::{Limits, MAX_WASI_STDIO_BYTES};
use sluice_core::secrets::Secrets;
use sluice_core::text::escaped;

/// A resource limit the guest tried to exceed (raised as a trap).
#[derive(Debug, thiserror::Error)]
pub enum LimitExceeded {
    #[error("linear memory limit of {limit} bytes exceeded (asked for {asked} bytes in all)")]
    Memory { limit: u64, asked: u64 },
    #[error("table limit of {limit} elements exceeded (asked for {asked})")]
    Table { limit: usize, asked: usize },
}

/// Tracks and caps a run's memories and tables.
#[derive(Debug)]
pub struct RunLimiter {
    max_memory: u64,
    max_table_elements: usize,
    max_instances: usize,
    max_tables: usize,
    max_memories: usize,
    /// Bytes of all the run's linear memories now.
    pub memory: u64,
    /// Largest `memory` seen.
    pub peak_memory: u64,
}

impl RunLimiter {
    pub fn new(limits: &Limits) -> Self {
        RunLimiter {
            max_memory: limits.memory_bytes,
            max_table_elements: limits.max_table_elements,
            max_instances: limits.max_instances,
            max_tables: limits.max_tables,
            max_memories: limits.max_memories,
            memory: 0,
            peak_memory: 0,
        }
    }
}

impl ResourceLimiter for RunLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_sub(current as u64) + desired as u64;
        if total > self.max_memory {
            return Err(LimitExceeded::Memory {
                limit: self.max_memory,
                asked: total,
            }
            .into());
        }
        self.memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_table_elements {
            return Err(LimitExceeded::Table {
                limit: self.max_table_elements,
                asked: desired,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }
    fn tables(&self) -> usize {
        self.max_tables
    }
    fn memories(&self) -> usize {
        self.max_memories
    }
}

/// WASI 0.2 for guests built by componentize-py/-js, locked down: clocks and
/// random only; stdout/stderr captured (capped) into the run log; no
/// preopened directories, environment, arguments, stdin, sockets or name
/// lookup. Guests that import nothing from WASI never touch it.
pub struct WasiState {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub stdout: MemoryOutputPipe,
    pub stderr: MemoryOutputPipe,
}

impl WasiState {
    pub fn locked_down() -> Self {
        let stdout = MemoryOutputPipe::new(MAX_WASI_STDIO_BYTES);
        let stderr = MemoryOutputPipe::new(MAX_WASI_STDIO_BYTES);
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        WasiState {
            ctx,
            table: ResourceTable::new(),
            stdout,
            stderr,
        }
    }

    /// Write what the guest printed to the log, tagged with the run id and
    /// connector, one event per line.
    pub(crate) fn log_output(&self, run_id: &str, connector: &str, secrets: &Secrets) {
        for (name, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            if bytes.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let text = secrets.redact(&text);
            for line in text.lines() {
                let line = escaped(line);
                tracing::info!(target: "guest", run_id, connector, stream = name, "{line}");
            }
            if bytes.len() >= MAX_WASI_STDIO_BYTES {
                tracing::warn!(target: "guest", run_id, connector, stream = name,
                    "guest output cut at {MAX_WASI_STDIO_BYTES} bytes");
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

/// The data of one run's wasmtime store: the limiter and every capability.
pub struct HostState {
    pub limiter: RunLimiter,
    pub http: HttpCtx,
    pub sink: SinkCtx,
    pub state: StateCtx,
    pub log: LogCtx,
    pub wasi: WasiState,
}
