//! Process-wide protection of upstreams, shared by every run in the
//! process: a token bucket per rate-limited host ([`governor`]'s keyed
//! limiter) and a circuit breaker per upstream (host and port). Plus the
//! per-request pieces of retrying: which failures are worth another
//! attempt, full-jitter backoff, and `Retry-After`.
//!
//! The [`Upstreams`] live in the [`crate::Runtime`]; each run's
//! [`super::http::HttpCtx`] holds an `Arc` of them and applies its own
//! [`HttpPolicy`] (thresholds, rates) to the shared state.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;

use sluice_core::limits::{HttpPolicy, RateLimit};

/// A host's token bucket had no token before the run's deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit of {host}: the next request slot is {wait_ms} ms away, past the run's deadline"
)]
pub struct ThrottledPastDeadline {
    pub host: String,
    pub wait_ms: u64,
}

/// Token buckets keyed by host, one keyed limiter per distinct quota, so
/// runs with the same `--rate-limit` for a host share its bucket.
type Limiters = HashMap<(Duration, u32), Arc<DefaultKeyedRateLimiter<String>>>;

/// The state of one upstream's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    /// Requests flow; `failures` consecutive ones failed.
    Closed { failures: u32 },
    /// Requests fail fast until `until`.
    Open { until: Instant },
    /// One probe is in flight; everyone else fails fast.
    HalfOpen,
}

/// What the breaker says about a request about to be sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it (breaker closed, or off).
    Pass,
    /// Send it as the half-open probe: its outcome closes or re-opens.
    Probe,
    /// Fail fast: the breaker is open (for about this long still).
    Reject { retry_in: Duration },
}

/// Process-wide rate limiters and circuit breakers.
#[derive(Default)]
pub struct Upstreams {
    limiters: Mutex<Limiters>,
    breakers: Mutex<HashMap<String, BreakerState>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

/// One upstream's breaker as metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerView {
    /// `host:port`.
    pub upstream: String,
    /// Open or half-open: requests fail fast (but for one probe).
    pub open: bool,
}

impl Upstreams {
    /// Every upstream whose breaker has seen a failure, by name.
    pub fn breakers(&self) -> Vec<BreakerView> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<BreakerView> = breakers
            .iter()
            .map(|(upstream, state)| BreakerView {
                upstream: upstream.clone(),
                open: !matches!(state, BreakerState::Closed { .. }),
            })
            .collect();
        out.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        out
    }
}

fn quota(limit: &RateLimit) -> (Quota, (Duration, u32)) {
    let period = Duration::from_secs_f64(1.0 / limit.rps).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    (quota, (period, burst.get()))
}

impl Upstreams {
    pub fn new() -> Self {
        Self::default()
    }

    fn limiter(&self, limit: &RateLimit) -> Arc<DefaultKeyedRateLimiter<String>> {
        let (quota, key) = quota(limit);
        self.limiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new(RateLimiter::keyed(quota)))
            .clone()
    }

    /// Wait for a token of `host`'s bucket, if the policy limits it.
    /// Returns the time waited; refuses (without waiting) when the token
    /// would come after `deadline`.
    pub async fn throttle(
        &self,
        policy: &HttpPolicy,
        host: &str,
        deadline: Instant,
    ) -> Result<Duration, ThrottledPastDeadline> {
        let Some(limit) = policy.rate_limit(host) else {
            return Ok(Duration::ZERO);
        };
        let limiter = self.limiter(limit);
        let clock = DefaultClock::default();
        let key = limit.host.clone();
        let started = Instant::now();
        loop {
            match limiter.check_key(&key) {
                Ok(()) => return Ok(started.elapsed()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(clock.now());
                    if Instant::now() + wait >= deadline {
                        return Err(ThrottledPastDeadline {
                            host: host.to_string(),
                            wait_ms: wait.as_millis() as u64,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Ask `upstream`'s breaker whether a request may go out now.
    pub fn admit(&self, policy: &HttpPolicy, upstream: &str) -> Admission {
        if policy.breaker_threshold == 0 {
            return Admission::Pass;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let state = breakers
            .entry(upstream.to_string())
            .or_insert(BreakerState::Closed { failures: 0 });
        match *state {
            BreakerState::Closed { .. } => Admission::Pass,
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    *state = BreakerState::HalfOpen;
                    Admission::Probe
                } else {
                    Admission::Reject {
                        retry_in: until - now,
                    }
                }
            }
            BreakerState::HalfOpen => Admission::Reject {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// Record the outcome of a request to `upstream` (after its retries).
    /// Returns `true` when this failure opened the breaker (a trip).
    pub fn record(&self, policy: &HttpPolicy, upstream: &str, success: bool) -> bool {
        if policy.breaker_threshold == 0 {
            return false;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let state = breakers
            .entry(upstream.to_string())
            .or_insert(BreakerState::Closed { failures: 0 });
        let open = BreakerState::Open {
            until: Instant::now() + policy.breaker_cooldown,
        };
        match (*state, success) {
            (_, true) => {
                *state = BreakerState::Closed { failures: 0 };
                false
            }
            (BreakerState::Closed { failures }, false) => {
                let failures = failures + 1;
                if failures >= policy.breaker_threshold {
                    *state = open;
                    true
                } else {
                    *state = BreakerState::Closed { failures };
                    false
                }
            }
            // The probe failed: open again for another cool-down.
            (BreakerState::HalfOpen, false) => {
                *state = open;
                true
            }
            // Already open (a request admitted before it opened).
            (BreakerState::Open { .. }, false) => false,
        }
    }

    /// A probe that ended without an outcome (cancelled, or refused before
    /// reaching the upstream): let the next request probe instead.
    pub fn release_probe(&self, upstream: &str) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = breakers.get_mut(upstream) {
            if *state == BreakerState::HalfOpen {
                *state = BreakerState::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

/// Releases a half-open probe that is dropped without an outcome (e.g. the
/// run's deadline cancelled the guest mid-request).
pub struct ProbeGuard {
    upstreams: Arc<Upstreams>,
    upstream: String,
    armed: bool,
}

impl ProbeGuard {
    pub fn new(upstreams: Arc<Upstreams>, upstream: String, armed: bool) -> Self {
        ProbeGuard {
            upstreams,
            upstream,
            armed,
        }
    }

    /// The outcome was recorded.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.upstreams.release_probe(&self.upstream);
        }
    }
}

/// Whether a response status is worth retrying (and counts against the
/// breaker): 429 and 500/502/503/504.
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// Full-jitter backoff before retry `retry` (0-based): uniform in
/// `[0, min(max, base * 2^retry)]`.
pub fn backoff(policy: &HttpPolicy, retry: u32) -> Duration {
    let ceiling = policy
        .base_delay
        .saturating_mul(2u32.saturating_pow(retry.min(31)))
        .min(policy.max_delay);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    let nanos = rand::rng().random_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64);
    Duration::from_nanos(nanos)
}

/// A `Retry-After` value (delta-seconds or an HTTP-date) as a wait from
/// `now`; `None` if absent or unparsable. Dates in the past mean no wait.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32, cooldown_ms: u64) -> HttpPolicy {
        HttpPolicy {
            breaker_threshold: threshold,
            breaker_cooldown: Duration::from_millis(cooldown_ms),
            ..HttpPolicy::default()
        }
    }

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let p = HttpPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..HttpPolicy::default()
        };
        for retry in 0..40 {
            let ceiling = Duration::from_millis((100u64 << retry.min(20)).min(1000));
            for _ in 0..50 {
                assert!(backoff(&p, retry) <= ceiling, "retry {retry}");
            }
        }
        // Jittered: not always the same value.
        let draws: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(&p, 3)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }

    #[test]
    fn breaker_opens_fails_fast_half_opens_and_closes() {
        let u = Upstreams::new();
        let p = policy(3, 50);
        let host = "127.0.0.1:9";
        assert_eq!(u.admit(&p, host), Admission::Pass);
        assert!(!u.record(&p, host, false));
        assert!(!u.record(&p, host, false));
        assert!(!u.record(&p, host, true), "a success resets the count");
        assert!(!u.record(&p, host, false));
        assert!(!u.record(&p, host, false));
        assert!(u.record(&p, host, false), "third consecutive failure trips");
        assert!(matches!(u.admit(&p, host), Admission::Reject { .. }));
        assert_eq!(u.admit(&p, "other:1"), Admission::Pass, "per upstream");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(u.admit(&p, host), Admission::Probe);
        assert!(
            matches!(u.admit(&p, host), Admission::Reject { .. }),
            "one probe at a time"
        );
        assert!(u.record(&p, host, false), "a failed probe re-opens");
        assert!(matches!(u.admit(&p, host), Admission::Reject { .. }));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(u.admit(&p, host), Admission::Probe);
        u.release_probe(host);
        assert_eq!(
            u.admit(&p, host),
            Admission::Probe,
            "a dropped probe frees the slot"
        );
        assert!(!u.record(&p, host, true));
        assert_eq!(u.admit(&p, host), Admission::Pass, "closed again");
        let off = policy(0, 50);
        for _ in 0..10 {
            assert!(!u.record(&off, "x:1", false));
        }
        assert_eq!(u.admit(&off, "x:1"), Admission::Pass);
    }

    #[tokio::test]
    async fn throttle_spaces_requests_and_respects_the_deadline() {
        let u = Upstreams::new();
        let p = HttpPolicy {
            rate_limits: vec!["h=20/2".parse().unwrap()],
            ..HttpPolicy::default()
        };
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            u.throttle(&p, "unlimited", far).await.unwrap(),
            Duration::ZERO
        );
        let start = Instant::now();
        for _ in 0..6 {
            u.throttle(&p, "h", far).await.unwrap();
        }
        // 2 at once, then 4 more at 20/s: at least ~200 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
        let near = Instant::now() + Duration::from_millis(1);
        let e = u.throttle(&p, "h", near).await.unwrap_err();
        assert_eq!(e.host, "h");
    }
}
