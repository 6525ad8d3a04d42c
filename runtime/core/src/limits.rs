//! Every per-run limit and default, as a named constant, the [`Limits`] of
//! one run, and [`LimitsOverride`]: what an operator may change, the same
//! for the CLI flags (`--fuel`, `--memory`, `--timeout`, …) and for an
//! instance's `limits` and `http` tables in `sluice.toml`, with one bounds
//! check ([`LimitsOverride::apply`]) for both.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

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

/// The longest grace period `sluice serve --grace` takes.
pub const MAX_CANCEL_GRACE: Duration = Duration::from_secs(3600);

/// Epoch ticks a guest runs before it yields its thread to other runs
/// (and the host looks at its deadline): 2 ticks, about 20 ms of guest
/// execution at a time.
pub const GUEST_SLICE_TICKS: u64 = 2;

/// Timeout of one outbound HTTP request attempt (connect + response);
/// `--http-timeout`. Retries each get their own.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest duration an operator may set (`timeout`, `http.timeout`,
/// `http.breaker_cooldown`; `--timeout`, `--http-timeout`,
/// `--breaker-cooldown`), in seconds: one year.
pub const MAX_DURATION_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Shortest duration an operator may set, in seconds: one millisecond
/// (shorter ones would round to no time at all).
pub const MIN_DURATION_SECONDS: f64 = 0.001;

/// Least fuel an operator may give a run: a run with none cannot execute
/// a single instruction.
pub const MIN_FUEL: u64 = 1;

/// Smallest memory limit an operator may set: one WebAssembly page.
pub const MIN_MEMORY_BYTES: u64 = 64 * 1024;

/// Smallest byte limit an operator may set (`max_http_bytes`,
/// `max_emit_bytes`, `max_record_bytes`, `max_state_bytes`): zero would
/// refuse every response, record or state value.
pub const MIN_BYTE_LIMIT: u64 = 1;

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

/// Requests of one `http.send-all` (WIT `@0.2.0`) the host has in flight
/// at once, per run (`--max-in-flight`, the `http.max_in_flight` key of
/// `sluice.toml`): the host sends the list's requests concurrently, never
/// more than this many at a time; a run's guest waits in one host call at
/// a time, so this bounds the run. Each request still goes through every
/// check, retry, rate limit and breaker of `http.send`.
pub const DEFAULT_HTTP_MAX_IN_FLIGHT: u32 = 8;

/// Most requests an operator may let one run have in flight
/// (`--max-in-flight`).
pub const MAX_HTTP_MAX_IN_FLIGHT: u32 = 256;

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

/// A run's first guest log lines kept in its run log (`sluice serve`'s
/// run page and `GET /api/v1/runs/{id}`); the rest still go to the
/// process log (up to the run's `max_log_lines`).
pub const MAX_KEPT_LOG_LINES: usize = 1000;

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

impl fmt::Display for RateLimit {
    /// `HOST=RPS/BURST`, as `--rate-limit` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]={}/{}", self.host, self.rps, self.burst)
        } else {
            write!(f, "{}={}/{}", self.host, self.rps, self.burst)
        }
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    /// A `"HOST=RPS[/BURST]"` string, as `--rate-limit` takes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

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
/// `--rate-limit`, `--breaker-threshold`, `--breaker-cooldown`,
/// `--max-in-flight`), and a
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
    /// Requests of one `http.send-all` in flight at once (at least 1).
    pub max_in_flight: u32,
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
            max_in_flight: DEFAULT_HTTP_MAX_IN_FLIGHT,
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

/// Parse a byte size with [`parse_size`]: `1048576`, `64MiB`, `1.5 GiB`,
/// `64MB`. Binary prefixes (`KiB`, `MiB`, `GiB`, `Ki`) are powers of 2^10,
/// decimal ones (`KB`, `MB`, `GB`, `K`, `M`, `G`) powers of 10^3; the unit
/// is case-insensitive and `B` optional. Sizes past `u64` are an error.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim()).map_err(|e| {
        format!("{text:?} is not a byte size ({e}; give bytes or a size such as 64MiB or 64MB)")
    })
}

/// A byte size an operator wrote: a number of bytes, or a size text
/// ([`parse_bytes`]). In `sluice.toml` an integer or a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s).map(ByteSize)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size: a whole number of bytes or a string such as \"256MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a byte size cannot be negative ({v})")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration an operator wrote, as seconds: a number (`90`, `0.5`), or a
/// duration text such as `90s`, `15m`, `1h 30m` ([`humantime`]). Kept as
/// written (NaN, infinities and 1e20 included) until
/// [`LimitsOverride::apply`] checks it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub f64);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(n) = s.parse::<f64>() {
            return Ok(Seconds(n));
        }
        humantime::parse_duration(s)
            .map(|d| Seconds(d.as_secs_f64()))
            .map_err(|e| {
                format!(
                    "{s:?} is not a duration ({e}; give seconds or a duration such as 90s or 15m)"
                )
            })
    }
}

impl Serialize for Seconds {
    /// A number when finite; NaN and the infinities as their text (which
    /// [`Seconds::from_str`] reads back), so a value stays as written until
    /// [`LimitsOverride::apply`] checks it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else {
            s.serialize_str(&self.0.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: seconds, or a string such as \"90s\" or \"15m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One setting of [`LimitsOverride`]: its flag and its `sluice.toml` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Fuel,
    Memory,
    Timeout,
    MaxHttpRequests,
    MaxHttpDenied,
    MaxHttpBytes,
    MaxEmitBytes,
    MaxRecordBytes,
    MaxStateBytes,
    HttpTimeout,
    Retries,
    BreakerThreshold,
    BreakerCooldown,
    MaxInFlight,
}

impl Setting {
    /// The command-line flag, e.g. `--http-timeout`.
    pub fn flag(self) -> &'static str {
        match self {
            Setting::Fuel => "--fuel",
            Setting::Memory => "--memory",
            Setting::Timeout => "--timeout",
            Setting::MaxHttpRequests => "--max-http-requests",
            Setting::MaxHttpDenied => "--max-http-denied",
            Setting::MaxHttpBytes => "--max-http-bytes",
            Setting::MaxEmitBytes => "--max-emit-bytes",
            Setting::MaxRecordBytes => "--max-record-bytes",
            Setting::MaxStateBytes => "--max-state-bytes",
            Setting::HttpTimeout => "--http-timeout",
            Setting::Retries => "--retries",
            Setting::BreakerThreshold => "--breaker-threshold",
            Setting::BreakerCooldown => "--breaker-cooldown",
            Setting::MaxInFlight => "--max-in-flight",
        }
    }

    /// The instance table of `sluice.toml` it is in: `limits` or `http`.
    pub fn table(self) -> &'static str {
        match self {
            Setting::HttpTimeout
            | Setting::Retries
            | Setting::BreakerThreshold
            | Setting::BreakerCooldown
            | Setting::MaxInFlight => "http",
            _ => "limits",
        }
    }

    /// Its key in that table, e.g. `timeout`.
    pub fn key(self) -> &'static str {
        match self {
            Setting::Fuel => "fuel",
            Setting::Memory => "memory",
            Setting::Timeout | Setting::HttpTimeout => "timeout",
            Setting::MaxHttpRequests => "max_http_requests",
            Setting::MaxHttpDenied => "max_http_denied",
            Setting::MaxHttpBytes => "max_http_bytes",
            Setting::MaxEmitBytes => "max_emit_bytes",
            Setting::MaxRecordBytes => "max_record_bytes",
            Setting::MaxStateBytes => "max_state_bytes",
            Setting::Retries => "retries",
            Setting::BreakerThreshold => "breaker_threshold",
            Setting::BreakerCooldown => "breaker_cooldown",
            Setting::MaxInFlight => "max_in_flight",
        }
    }
}

/// A setting outside its bounds. Shown as `limits.timeout: must be …`;
/// the CLI names the flag instead ([`LimitError::for_flag`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}.{}: {problem}", setting.table(), setting.key())]
pub struct LimitError {
    pub setting: Setting,
    /// What is wrong, e.g. `must be at most 20; got 1000`.
    pub problem: String,
}

impl LimitError {
    /// `--timeout: must be …`, for the command line.
    pub fn for_flag(&self) -> String {
        format!("{}: {}", self.setting.flag(), self.problem)
    }
}

/// A duration setting within [`MIN_DURATION_SECONDS`] and
/// [`MAX_DURATION_SECONDS`] (so never NaN, infinite, negative or zero).
fn duration(setting: Setting, v: Seconds) -> Result<Duration, LimitError> {
    let secs = v.0;
    if secs.is_finite() && (MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&secs) {
        return Ok(Duration::from_secs_f64(secs));
    }
    Err(LimitError {
        setting,
        problem: format!(
            "must be from {MIN_DURATION_SECONDS} to {MAX_DURATION_SECONDS} seconds (one year); got {secs}"
        ),
    })
}

/// A number setting of at least `min`.
fn at_least(setting: Setting, v: u64, min: u64) -> Result<u64, LimitError> {
    if v >= min {
        return Ok(v);
    }
    Err(LimitError {
        setting,
        problem: format!("must be at least {min}; got {v}"),
    })
}

/// What an operator overrides of a run's [`Limits`]: every setting that
/// has a flag, unset ones keeping their defaults. The CLI flags fill it
/// (clap); in `sluice.toml` an instance's `limits` table deserializes into
/// it and its `http` table into [`LimitsOverride::http`]. Values are kept
/// as written; [`LimitsOverride::apply`] checks the same bounds for both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    /// Fuel (≈ instructions) for the run, at least 1 [default: 20000000000].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub fuel: Option<u64>,
    /// Linear-memory limit, e.g. 268435456, 256MiB or 256MB (MB = 10^6,
    /// MiB = 2^20), at least 64KiB [default: 256MiB].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub memory: Option<ByteSize>,
    /// Wall-clock deadline in seconds (or e.g. 15m), at most a year
    /// [default: 900].
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub timeout: Option<Seconds>,
    /// HTTP requests the run may make [default: 100000].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_http_requests: Option<u64>,
    /// Requests the host may refuse (denied or invalid) before the run
    /// ends with http_denied_limit [default: 1000].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_http_denied: Option<u64>,
    /// Response bytes the run may receive in all [default: 1GiB].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_http_bytes: Option<ByteSize>,
    /// Record bytes the run may emit in all [default: 4GiB].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_emit_bytes: Option<ByteSize>,
    /// Largest single record [default: 4MiB].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_record_bytes: Option<ByteSize>,
    /// Largest state value [default: 1MiB].
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_state_bytes: Option<ByteSize>,
    /// The HTTP policy (the `http` table of `sluice.toml`).
    #[command(flatten)]
    #[serde(skip)]
    pub http: HttpOverride,
}

/// The HTTP settings of [`LimitsOverride`]: `--http-timeout`, `--retries`,
/// `--rate-limit`, `--breaker-*`, or an instance's `http` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct HttpOverride {
    /// Timeout of one HTTP request attempt in seconds (or e.g. 20s)
    /// [default: 30].
    #[arg(
        id = "http_timeout",
        long = "http-timeout",
        value_name = "SECS",
        allow_hyphen_values = true
    )]
    pub timeout: Option<Seconds>,
    /// Retries of a failed idempotent HTTP request (connect errors,
    /// resets, timeouts, 429, 5xx), with backoff; 0 = none, at most 20
    /// [default: 3].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub retries: Option<u32>,
    /// Limit requests to HOST to RPS per second, BURST at once
    /// (repeatable; shared by all runs in the process) [default: none].
    #[arg(long = "rate-limit", value_name = "HOST=RPS[/BURST]")]
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// Consecutive failed requests to an upstream that open its circuit
    /// breaker; 0 = no breaker [default: 5].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub breaker_threshold: Option<u32>,
    /// Seconds an open breaker fails requests fast before one probe
    /// [default: 30].
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub breaker_cooldown: Option<Seconds>,
    /// Requests of one `http.send-all` (WIT 0.2.0) the run has in flight
    /// at once, 1 to 256 [default: 8].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub max_in_flight: Option<u32>,
}

impl LimitsOverride {
    /// Check every set value against its bounds, then write them into
    /// `limits`; on an error `limits` is unchanged. Rate limits are added
    /// to those `limits` has.
    pub fn apply(&self, limits: &mut Limits) -> Result<(), LimitError> {
        use Setting as S;
        let mut l = limits.clone();
        if let Some(v) = self.fuel {
            l.fuel = at_least(S::Fuel, v, MIN_FUEL)?;
        }
        if let Some(ByteSize(v)) = self.memory {
            l.memory_bytes = at_least(S::Memory, v, MIN_MEMORY_BYTES)?;
        }
        if let Some(v) = self.timeout {
            l.timeout = duration(S::Timeout, v)?;
        }
        if let Some(v) = self.max_http_requests {
            l.max_http_requests = v;
        }
        if let Some(v) = self.max_http_denied {
            l.max_http_denied = v;
        }
        let bytes = [
            (S::MaxHttpBytes, self.max_http_bytes, &mut l.max_http_bytes),
            (S::MaxEmitBytes, self.max_emit_bytes, &mut l.max_emit_bytes),
            (
                S::MaxRecordBytes,
                self.max_record_bytes,
                &mut l.max_record_bytes,
            ),
            (
                S::MaxStateBytes,
                self.max_state_bytes,
                &mut l.max_state_bytes,
            ),
        ];
        for (setting, value, slot) in bytes {
            if let Some(ByteSize(v)) = value {
                *slot = at_least(setting, v, MIN_BYTE_LIMIT)?;
            }
        }
        let http = &self.http;
        if let Some(v) = http.timeout {
            l.http.timeout = duration(S::HttpTimeout, v)?;
            l.http.connect_timeout = l.http.connect_timeout.min(l.http.timeout);
        }
        if let Some(v) = http.retries {
            if v > MAX_HTTP_RETRIES {
                return Err(LimitError {
                    setting: S::Retries,
                    problem: format!("must be at most {MAX_HTTP_RETRIES}; got {v}"),
                });
            }
            l.http.retries = v;
        }
        l.http.rate_limits.extend(http.rate_limits.iter().cloned());
        if let Some(v) = http.breaker_threshold {
            l.http.breaker_threshold = v;
        }
        if let Some(v) = http.breaker_cooldown {
            l.http.breaker_cooldown = duration(S::BreakerCooldown, v)?;
        }
        if let Some(v) = http.max_in_flight {
            if !(1..=MAX_HTTP_MAX_IN_FLIGHT).contains(&v) {
                return Err(LimitError {
                    setting: S::MaxInFlight,
                    problem: format!("must be from 1 to {MAX_HTTP_MAX_IN_FLIGHT}; got {v}"),
                });
            }
            l.http.max_in_flight = v;
        }
        *limits = l;
        Ok(())
    }

    /// Check every set value against its bounds.
    pub fn check(&self) -> Result<(), LimitError> {
        self.limits().map(|_| ())
    }

    /// The defaults with this applied.
    pub fn limits(&self) -> Result<Limits, LimitError> {
        let mut l = Limits::default();
        self.apply(&mut l)?;
        Ok(l)
    }
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
    fn parses_sizes_decimal_and_binary() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64MB").unwrap(), 64_000_000);
        assert_eq!(parse_bytes("1 mb").unwrap(), 1_000_000);
        assert_eq!(parse_bytes("1mib").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("4KiB").unwrap(), 4096);
        assert_eq!(parse_bytes("1.5 KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("16EiB - 1").ok(), None);
        assert_eq!(
            parse_bytes("18446744073709551615").unwrap(),
            u64::MAX,
            "exact to the last byte"
        );
        for bad in [
            "",
            "12 parsecs",
            "-1",
            "18446744073709551616",
            "16EiB",
            "1e30",
            "MiB",
        ] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("is not a byte size"), "{bad:?}: {e}");
        }
    }

    /// Every overridable setting at once, with extreme values: each is
    /// refused with an error naming it, none panics, and the limits are
    /// left as they were.
    #[test]
    fn every_setting_has_bounds() {
        let secs = |v: f64| Some(Seconds(v));
        let bytes = |v: u64| Some(ByteSize(v));
        let http = |h: HttpOverride| LimitsOverride {
            http: h,
            ..LimitsOverride::default()
        };
        let bad_durations = [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e20,
            MAX_DURATION_SECONDS * 2.0,
            1e-9,
        ];
        let mut cases: Vec<(LimitsOverride, Setting)> = vec![
            (
                LimitsOverride {
                    fuel: Some(0),
                    ..Default::default()
                },
                Setting::Fuel,
            ),
            (
                LimitsOverride {
                    memory: bytes(0),
                    ..Default::default()
                },
                Setting::Memory,
            ),
            (
                LimitsOverride {
                    memory: bytes(MIN_MEMORY_BYTES - 1),
                    ..Default::default()
                },
                Setting::Memory,
            ),
            (
                LimitsOverride {
                    max_http_bytes: bytes(0),
                    ..Default::default()
                },
                Setting::MaxHttpBytes,
            ),
            (
                LimitsOverride {
                    max_emit_bytes: bytes(0),
                    ..Default::default()
                },
                Setting::MaxEmitBytes,
            ),
            (
                LimitsOverride {
                    max_record_bytes: bytes(0),
                    ..Default::default()
                },
                Setting::MaxRecordBytes,
            ),
            (
                LimitsOverride {
                    max_state_bytes: bytes(0),
                    ..Default::default()
                },
                Setting::MaxStateBytes,
            ),
            (
                http(HttpOverride {
                    retries: Some(MAX_HTTP_RETRIES + 1),
                    ..Default::default()
                }),
                Setting::Retries,
            ),
            (
                http(HttpOverride {
                    retries: Some(u32::MAX),
                    ..Default::default()
                }),
                Setting::Retries,
            ),
            (
                http(HttpOverride {
                    max_in_flight: Some(0),
                    ..Default::default()
                }),
                Setting::MaxInFlight,
            ),
            (
                http(HttpOverride {
                    max_in_flight: Some(MAX_HTTP_MAX_IN_FLIGHT + 1),
                    ..Default::default()
                }),
                Setting::MaxInFlight,
            ),
        ];
        for d in bad_durations {
            cases.push((
                LimitsOverride {
                    timeout: secs(d),
                    ..Default::default()
                },
                Setting::Timeout,
            ));
            cases.push((
                http(HttpOverride {
                    timeout: secs(d),
                    ..Default::default()
                }),
                Setting::HttpTimeout,
            ));
            cases.push((
                http(HttpOverride {
                    breaker_cooldown: secs(d),
                    ..Default::default()
                }),
                Setting::BreakerCooldown,
            ));
        }
        for (o, setting) in cases {
            let mut l = Limits::default();
            let e = o.apply(&mut l).unwrap_err();
            assert_eq!(e.setting, setting, "{o:?}: {e}");
            assert_eq!(l, Limits::default(), "{o:?} changed the limits");
            let line = e.to_string();
            assert!(
                line.starts_with(&format!("{}.{}: must be", setting.table(), setting.key())),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
            assert!(e
                .for_flag()
                .starts_with(&format!("{}: must be", setting.flag())));
        }
    }

    /// The largest values each setting takes, and the smallest.
    #[test]
    fn extremes_within_bounds_are_kept() {
        let max = LimitsOverride {
            fuel: Some(u64::MAX),
            memory: Some(ByteSize(u64::MAX)),
            timeout: Some(Seconds(MAX_DURATION_SECONDS)),
            max_http_requests: Some(u64::MAX),
            max_http_denied: Some(u64::MAX),
            max_http_bytes: Some(ByteSize(u64::MAX)),
            max_emit_bytes: Some(ByteSize(u64::MAX)),
            max_record_bytes: Some(ByteSize(u64::MAX)),
            max_state_bytes: Some(ByteSize(u64::MAX)),
            http: HttpOverride {
                timeout: Some(Seconds(MAX_DURATION_SECONDS)),
                retries: Some(MAX_HTTP_RETRIES),
                rate_limits: vec!["a.example=2/3".parse().unwrap()],
                breaker_threshold: Some(u32::MAX),
                breaker_cooldown: Some(Seconds(MAX_DURATION_SECONDS)),
                max_in_flight: Some(MAX_HTTP_MAX_IN_FLIGHT),
            },
        };
        let l = max.limits().unwrap();
        let year = Duration::from_secs(MAX_DURATION_SECONDS as u64);
        assert_eq!(
            (l.fuel, l.memory_bytes, l.timeout),
            (u64::MAX, u64::MAX, year)
        );
        assert_eq!(l.max_batch_bytes(), MAX_BATCH_BYTES);
        assert_eq!(l.http.timeout, year);
        assert_eq!(l.http.connect_timeout, DEFAULT_HTTP_CONNECT_TIMEOUT);
        assert_eq!(l.http.rate_limits.len(), 1);
        assert_eq!(l.http.max_in_flight, MAX_HTTP_MAX_IN_FLIGHT);
        let min = LimitsOverride {
            fuel: Some(MIN_FUEL),
            memory: Some(ByteSize(MIN_MEMORY_BYTES)),
            timeout: Some(Seconds(MIN_DURATION_SECONDS)),
            max_http_requests: Some(0),
            max_http_denied: Some(0),
            max_record_bytes: Some(ByteSize(MIN_BYTE_LIMIT)),
            http: HttpOverride {
                timeout: Some(Seconds(MIN_DURATION_SECONDS)),
                retries: Some(0),
                breaker_threshold: Some(0),
                max_in_flight: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let l = min.limits().unwrap();
        assert_eq!(l.http.max_in_flight, 1);
        assert_eq!(l.timeout, Duration::from_millis(1));
        assert_eq!(l.http.connect_timeout, Duration::from_millis(1));
        assert_eq!((l.max_http_requests, l.http.retries), (0, 0));
    }

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!("0.5".parse::<Seconds>().unwrap(), Seconds(0.5));
        assert_eq!("15m".parse::<Seconds>().unwrap(), Seconds(900.0));
        assert_eq!("1e20".parse::<Seconds>().unwrap(), Seconds(1e20));
        assert!("NaN".parse::<Seconds>().unwrap().0.is_nan());
        assert!("soon"
            .parse::<Seconds>()
            .unwrap_err()
            .contains("not a duration"));
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
