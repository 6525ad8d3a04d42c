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

/// How long an instance's lease lasts without a heartbeat. A run whose
/// process dies is `crashed` once its lease has expired (at once, if the
/// process was on this host and is gone).
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// How often a running run renews its lease.
pub const LEASE_HEARTBEAT: Duration = Duration::from_secs(5);

/// After a stop request (SIGTERM, Ctrl-C) a run stops at its next commit,
/// or after this long without one; a second request stops it at once.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Epoch ticks a guest runs before it yields its thread to other runs
/// (and the host looks at its deadline): 2 ticks, about 20 ms of guest
/// execution at a time.
pub const GUEST_SLICE_TICKS: u64 = 2;

/// Timeout of one outbound HTTP request attempt (connect + response);
/// `--http-timeout`. Retries each get their own.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest number of seconds a duration flag (`--timeout`,
/// `--http-timeout`, `--breaker-cooldown`) accepts: one year.
pub const MAX_FLAG_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Timeout for establishing one outbound connection.
pub const DEFAULT_HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body a guest may receive, in bytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;

/// Outbound HTTP requests one run may make (`--max-http-requests`). Every
/// attempt sent counts, and so does every request the host refuses
/// (denied, invalid) or fails fast (circuit open) without sending it.
pub const DEFAULT_MAX_HTTP_REQUESTS: u64 = 100_000;

/// Requests of one run the host may refuse (denied by the grants or a
/// secret's hosts, or invalid) before the run ends with `http_denied_limit`
/// (`--max-http-denied`): the refusal past this many ends it. A connector
/// that works makes a few refused requests at most; a thousand is probing
/// (SSRF scans, host enumeration), and is stopped long before the request
/// budget.
pub const DEFAULT_MAX_HTTP_DENIED: u64 = 1_000;

/// `sluice::http` log lines (request failures, retries, breaker trips) the
/// host writes about one run; later ones are counted in the run's report
/// (`http_log_lines_suppressed`), not written, so a connector cannot flood
/// the operator's log through the host.
pub const MAX_HTTP_LOG_LINES: u64 = 100;

/// Response body bytes one run may receive in all its requests together.
pub const DEFAULT_MAX_HTTP_BYTES: u64 = 1024 * 1024 * 1024;
/// Retries of one `http.send` after its first attempt (`--retries`; 0
/// turns retrying off). Only idempotent requests (GET, HEAD, PUT, DELETE)
/// and requests the connector marks `retryable` are retried, on connect
/// errors, resets, timeouts, 429 and 500/502/503/504.
pub const DEFAULT_HTTP_RETRIES: u32 = 3;

/// Most retries an operator may ask for (`--retries`).
pub const MAX_HTTP_RETRIES: u32 = 20;

/// Backoff before retry `n` (0-based) is a uniformly random delay in
/// `[0, min(DEFAULT_RETRY_MAX_DELAY, DEFAULT_RETRY_BASE_DELAY * 2^n)]`
/// ("full jitter").
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(250);

/// Cap of one backoff delay, and of a `Retry-After` the upstream asks for.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Consecutive failed requests to one upstream (after their retries:
/// transport errors, 429 and 5xx) that open its circuit breaker
/// (`--breaker-threshold`; 0 turns the breaker off).
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;

/// How long an open breaker fails requests fast before letting one probe
/// through (`--breaker-cooldown`).
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);

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

/// Most bytes one host call may carry out of the guest — a `sink.emit`
/// batch (record bytes plus 8 per record), a state value, a request, a log
/// message — however large the memory limit. Enforced by wasmtime's
/// hostcall fuel while the call's arguments are copied into the host, so
/// an oversized batch ends the run with `batch_too_large` before the host
/// holds it. Lifting a batch copies it into host memory and checking it
/// parses it, so this (with [`BATCH_MEMORY_DIVISOR`]) is the main bound on
/// the host memory a guest can make the host spend per call.
pub const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

/// A run's batch limit is at most its memory limit divided by this: a
/// guest near its memory limit cannot hand the host a copy nearly as large.
pub const BATCH_MEMORY_DIVISOR: u64 = 4;

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
/// A token bucket for one upstream host (`--rate-limit HOST=RPS[/BURST]`):
/// `rps` requests per second on average, at most `burst` at once. Shared by
/// every run in the process that reaches the host with the same rate.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Lower-case host name or IP address (IPv6 without brackets), as in the
    /// request URL; the limit applies to every port of it.
    pub host: String,
    /// Requests per second (may be fractional: `0.5` is one every 2 s).
    pub rps: f64,
    /// Requests allowed back to back after a quiet spell.
    pub burst: u32,
}

/// Most requests per second a `--rate-limit` may name.
pub const MAX_RATE_LIMIT_RPS: f64 = 1_000_000.0;

/// Burst of a `--rate-limit` without `/BURST`: one request at a time.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 1;

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!("invalid rate limit {s:?}: {why} (give HOST=RPS[/BURST], e.g. api.example.com=10/20)")
        };
        let (host, rate) = s.split_once('=').ok_or_else(|| bad("no ="))?;
        let host = host.trim().to_ascii_lowercase();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host)
            .to_string();
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(bad(
                "HOST must be a host name or IP address, without scheme, port or path",
            ));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("HOST takes no port (the limit covers every port)"));
        }
        let (rps, burst) = match rate.split_once('/') {
            Some((r, b)) => (r, Some(b)),
            None => (rate, None),
        };
        let rps: f64 = rps.trim().parse().map_err(|_| bad("RPS is not a number"))?;
        if !(rps.is_finite() && rps > 0.0 && rps <= MAX_RATE_LIMIT_RPS) {
            return Err(bad("RPS must be above 0 and at most 1000000"));
        }
        let burst = match burst {
            None => DEFAULT_RATE_LIMIT_BURST,
            Some(b) => match b.trim().parse::<u32>() {
                Ok(b) if b >= 1 => b,
                _ => return Err(bad("BURST must be a whole number of at least 1")),
            },
        };
        Ok(RateLimit { host, rps, burst })
    }
}

/// How the host's HTTP client treats upstreams: timeouts, retries, rate
/// limits and circuit breaking. Defaults are the constants above; the
/// operator overrides them per run (`--http-timeout`, `--retries`,
/// `--rate-limit`, `--breaker-threshold`, `--breaker-cooldown`), and a
/// config file can set them per connector.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpPolicy {
    /// Timeout of one request attempt (connect + whole response).
    pub timeout: Duration,
    /// Timeout of establishing one connection (never above `timeout`).
    pub connect_timeout: Duration,
    /// Retries after the first attempt (0 = never retry).
    pub retries: u32,
    /// Backoff base: retry `n` waits up to `base_delay * 2^n` (full jitter).
    pub base_delay: Duration,
    /// Cap of one backoff or `Retry-After` wait.
    pub max_delay: Duration,
    /// Token buckets per upstream host; hosts without one are unlimited.
    pub rate_limits: Vec<RateLimit>,
    /// Consecutive failures that open a host's breaker (0 = no breaker).
    pub breaker_threshold: u32,
    /// How long an open breaker fails fast before one probe.
    pub breaker_cooldown: Duration,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            timeout: DEFAULT_HTTP_TIMEOUT,
            connect_timeout: DEFAULT_HTTP_CONNECT_TIMEOUT,
            retries: DEFAULT_HTTP_RETRIES,
            base_delay: DEFAULT_RETRY_BASE_DELAY,
            max_delay: DEFAULT_RETRY_MAX_DELAY,
            rate_limits: Vec::new(),
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        }
    }
}

impl HttpPolicy {
    /// The rate limit of `host` (lower case, IPv6 without brackets), if any.
    pub fn rate_limit(&self, host: &str) -> Option<&RateLimit> {
        self.rate_limits.iter().rev().find(|r| r.host == host)
    }
}

/// Operator-tunable limits of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub fuel: u64,
    pub memory_bytes: u64,
    pub timeout: Duration,
    /// Timeouts, retries, rate limits and breakers of the run's HTTP.
    pub http: HttpPolicy,
    pub max_response_bytes: u64,
    pub max_http_requests: u64,
    /// Refused requests (denied or invalid) past which the run ends.
    pub max_http_denied: u64,
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
            http: HttpPolicy::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_http_requests: DEFAULT_MAX_HTTP_REQUESTS,
            max_http_denied: DEFAULT_MAX_HTTP_DENIED,
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

impl Limits {
    /// The run's batch limit: the most bytes one host call may carry out of
    /// the guest, [`MAX_BATCH_BYTES`] or a [`BATCH_MEMORY_DIVISOR`]th of the
    /// memory limit, whichever is smaller.
    pub fn max_batch_bytes(&self) -> u64 {
        MAX_BATCH_BYTES.min(self.memory_bytes / BATCH_MEMORY_DIVISOR)
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
    fn the_batch_limit_follows_the_memory_limit() {
        assert_eq!(
            Limits::default().max_batch_bytes(),
            DEFAULT_MEMORY_BYTES / 4
        );
        let big = Limits {
            memory_bytes: 4 << 30,
            ..Limits::default()
        };
        assert_eq!(big.max_batch_bytes(), MAX_BATCH_BYTES);
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn parses_rate_limits() {
        let r: RateLimit = "API.example.com=10/20".parse().unwrap();
        assert_eq!(
            (r.host.as_str(), r.rps, r.burst),
            ("api.example.com", 10.0, 20)
        );
        let r: RateLimit = "127.0.0.1=0.5".parse().unwrap();
        assert_eq!((r.rps, r.burst), (0.5, DEFAULT_RATE_LIMIT_BURST));
        assert_eq!("[::1]=3".parse::<RateLimit>().unwrap().host, "::1");
        for bad in [
            "",
            "x",
            "=5",
            "x=0",
            "x=-1",
            "x=nan",
            "x=inf",
            "x=5/0",
            "x=5/y",
            "x:80=5",
            "http://x=5",
            "x/y=5",
        ] {
            let e = bad.parse::<RateLimit>().unwrap_err();
            assert!(e.contains("HOST=RPS"), "{bad:?}: {e}");
        }
    }
}
