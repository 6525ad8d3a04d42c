//! Every per-run limit and default, as a named constant, and the [`Limits`]
//! an operator can override per run (CLI flags `--fuel`, `--memory`,
//! `--timeout`, …).

use std::time::Duration;

/// Fuel (≈ WebAssembly instructions) one run may spend across `spec`,
/// `discover` and `read`. Bounds CPU deterministically.
pub const DEFAULT_FUEL: u64 = 20_000_000_000;

/// Linear memory, in bytes, all of a run's memories may grow to together.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;

/// Wall-clock deadline of one run, covering guest execution *and* time spent
/// waiting in host calls (HTTP, commits).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How often the epoch ticker advances the engine's epoch; the granularity
/// of wall-clock interruption of a running guest.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Timeout of one outbound HTTP request (connect + response).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout for establishing one outbound connection.
pub const DEFAULT_HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body a guest may receive, in bytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

/// Outbound HTTP requests one run may make.
pub const DEFAULT_MAX_HTTP_REQUESTS: u64 = 100_000;

/// Response body bytes one run may receive in all its requests together.
pub const DEFAULT_MAX_HTTP_BYTES: u64 = 1024 * 1024 * 1024;

/// Redirect hops followed for one request (each re-checked against grants).
pub const MAX_REDIRECTS: usize = 5;

/// Labels a wildcard grant's domain must have at least: `*.example.com` is
/// accepted, `*.com` (every name under a top-level domain) is refused.
pub const MIN_WILDCARD_DOMAIN_LABELS: usize = 2;

/// Longest secret name (`--secret NAME=…`), in bytes.
pub const MAX_SECRET_NAME_BYTES: usize = 64;

/// Longest secret value read from the environment or a file, in bytes.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Bytes of records emitted but not yet committed a run may hold. A
/// connector must `state.commit` (or finish) before reaching it.
pub const DEFAULT_MAX_UNCOMMITTED_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes of record JSON one run may emit in all (committed or not).
pub const DEFAULT_MAX_EMIT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Largest single record, in bytes of JSON text.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 4 * 1024 * 1024;

/// Largest single state value, in bytes.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 1024 * 1024;

/// Log lines a run may write; later lines are counted, not written.
pub const DEFAULT_MAX_LOG_LINES: u64 = 10_000;

/// Longest log message kept; longer ones are truncated.
pub const MAX_LOG_MESSAGE_BYTES: usize = 4096;

/// Elements any one of a run's tables may grow to.
pub const DEFAULT_MAX_TABLE_ELEMENTS: usize = 100_000;

/// Core instances one run's component may create.
pub const DEFAULT_MAX_INSTANCES: usize = 100;

/// Tables one run's component may create.
pub const DEFAULT_MAX_TABLES: usize = 100;

/// Linear memories one run's component may create.
pub const DEFAULT_MAX_MEMORIES: usize = 16;

/// Bytes of a WASI guest's stdout, and separately of its stderr, kept per
/// run (written to the log, tagged with the run id, when the sandbox ends).
/// Past it the stream reports itself closed to the guest.
pub const MAX_WASI_STDIO_BYTES: usize = 64 * 1024;

/// Native stack the guest may use, in bytes (wasmtime's `max_wasm_stack`).
/// An engine setting, the same for every run of a process; exceeding it ends
/// the run with `stack_overflow`.
pub const MAX_WASM_STACK_BYTES: usize = 1024 * 1024;

/// Batches in flight between the sandboxes and a database's writer thread
/// (back-pressure on `sink.emit`).
pub const WRITER_CHANNEL_CAPACITY: usize = 64;

/// Longest connector instance name in `sluice.toml`, in bytes.
pub const MAX_INSTANCE_NAME_BYTES: usize = 64;

/// Connector instances `sluice sync` runs at once unless `--concurrency`
/// says otherwise. Each holds a sandbox (up to its memory limit) and a
/// database connection; runs mostly wait on HTTP, so a few per core is fine.
pub const DEFAULT_SYNC_CONCURRENCY: usize = 4;

/// Largest `--concurrency` accepted.
pub const MAX_SYNC_CONCURRENCY: usize = 256;

/// Fuel a component's `spec` may spend when the registry discovers it.
pub const REGISTRY_SPEC_FUEL: u64 = 1_000_000_000;

/// Wall-clock deadline of a component's `spec` during registry discovery.
pub const REGISTRY_SPEC_TIMEOUT: Duration = Duration::from_secs(10);

/// Operator-tunable limits of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
    pub http_timeout: Duration,
    pub max_response_bytes: u64,
    pub max_http_requests: u64,
    pub max_uncommitted_bytes: u64,
    pub max_state_bytes: u64,
    pub max_log_lines: u64,
    /// Response body bytes of all the run's requests together.
    pub max_http_bytes: u64,
    /// Record bytes the run may emit in all.
    pub max_emit_bytes: u64,
    /// Largest single record.
    pub max_record_bytes: u64,
    /// Elements any one table may grow to.
    pub max_table_elements: usize,
    /// Core instances, tables and memories the component may create.
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_memories: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_http_requests: DEFAULT_MAX_HTTP_REQUESTS,
            max_uncommitted_bytes: DEFAULT_MAX_UNCOMMITTED_BYTES,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            max_log_lines: DEFAULT_MAX_LOG_LINES,
            max_http_bytes: DEFAULT_MAX_HTTP_BYTES,
            max_emit_bytes: DEFAULT_MAX_EMIT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_tables: DEFAULT_MAX_TABLES,
            max_memories: DEFAULT_MAX_MEMORIES,
        }
    }
}

/// Parse a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB` (also `K`, `M`,
/// `G`, `KB`, `MB`, `GB`, all binary multiples).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size (e.g. 67108864 or 64MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown byte unit {other:?} in {text:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }
}
