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

/// One upstream's breaker: its state, and how many times it has opened.
/// The count tells an answer to a request admitted while the breaker was
/// closed from one admitted after it closed again: only answers of the
/// current closed period count (see [`Upstreams::record`]).
#[derive(Debug, Clone, Copy)]
struct Breaker {
    state: BreakerState,
    /// Times this breaker has opened (tripped or re-opened by a probe).
    opened: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            opened: 0,
        }
    }
}

/// What the breaker says about a request about to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it: the breaker is closed (or off). `period` is the closed
    /// period it was admitted in; its answer counts only while the breaker
    /// is still in that period.
    Pass { period: u64 },
    /// Send it as the half-open probe: its answer (one attempt, never
    /// retried) alone closes or re-opens the breaker.
    Probe,
    /// Fail fast: the breaker is open (for about this long still).
    Reject { retry_in: Duration },
}

/// Process-wide rate limiters and circuit breakers.
#[derive(Default)]
pub struct Upstreams {
    limiters: Mutex<Limiters>,
    breakers: Mutex<HashMap<String, Breaker>>,
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
                open: !matches!(state.state, BreakerState::Closed { .. }),
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
            return Admission::Pass { period: 0 };
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = breakers.entry(upstream.to_string()).or_default();
        match breaker.state {
            BreakerState::Closed { .. } => Admission::Pass {
                period: breaker.opened,
            },
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    breaker.state = BreakerState::HalfOpen;
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

    /// Whether a request admitted as `admission` may be sent again (a
    /// retry): a probe never (its one answer decides), a passed request
    /// only while the breaker is still closed in the period it was admitted
    /// in (once the breaker has opened, retrying it would hit the upstream
    /// the breaker protects).
    pub fn may_retry(&self, policy: &HttpPolicy, upstream: &str, admission: &Admission) -> bool {
        match *admission {
            Admission::Probe | Admission::Reject { .. } => false,
            Admission::Pass { .. } if policy.breaker_threshold == 0 => true,
            Admission::Pass { period } => {
                let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
                breakers.get(upstream).is_none_or(|b| {
                    matches!(b.state, BreakerState::Closed { .. }) && b.opened == period
                })
            }
        }
    }

    /// Record the answer (after its retries) to a request to `upstream`
    /// that was let through as `admission`. Returns `true` when this
    /// failure opened the breaker (a trip).
    ///
    /// Only the half-open probe's answer closes an open breaker. The answer
    /// to a request admitted before the breaker opened (still in flight
    /// when it opened, or answered while the probe is out) says nothing
    /// about the upstream now: it is ignored, success or failure, as is one
    /// admitted in an earlier closed period.
    pub fn record(
        &self,
        policy: &HttpPolicy,
        upstream: &str,
        admission: &Admission,
        success: bool,
    ) -> bool {
        if policy.breaker_threshold == 0 {
            return false;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = breakers.entry(upstream.to_string()).or_default();
        let open = BreakerState::Open {
            until: Instant::now() + policy.breaker_cooldown,
        };
        match (*admission, breaker.state) {
            (Admission::Probe, BreakerState::HalfOpen) => {
                if success {
                    breaker.state = BreakerState::Closed { failures: 0 };
                    false
                } else {
                    // The probe failed: open again for another cool-down.
                    breaker.state = open;
                    breaker.opened += 1;
                    true
                }
            }
            (Admission::Pass { period }, BreakerState::Closed { failures })
                if period == breaker.opened =>
            {
                if success {
                    breaker.state = BreakerState::Closed { failures: 0 };
                    return false;
                }
                let failures = failures + 1;
                if failures >= policy.breaker_threshold {
                    breaker.state = open;
                    breaker.opened += 1;
                    true
                } else {
                    breaker.state = BreakerState::Closed { failures };
                    false
                }
            }
            // Admitted before the breaker last opened, or not admitted.
            _ => false,
        }
    }

    /// A probe that ended without an outcome (cancelled, or refused before
    /// reaching the upstream): let the next request probe instead.
    pub fn release_probe(&self, upstream: &str) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(breaker) = breakers.get_mut(upstream) {
            if breaker.state == BreakerState::HalfOpen {
                breaker.state = BreakerState::Open {
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

    fn passes(a: Admission) -> bool {
        matches!(a, Admission::Pass { .. })
    }

    #[test]
    fn breaker_opens_fails_fast_half_opens_and_closes() {
        let u = Upstreams::new();
        let p = policy(3, 50);
        let host = "127.0.0.1:9";
        let send = |ok: bool| {
            let a = u.admit(&p, host);
            assert!(passes(a), "{a:?}");
            u.record(&p, host, &a, ok)
        };
        assert!(!send(false));
        assert!(!send(false));
        assert!(!send(true), "a success resets the count");
        assert!(!send(false));
        assert!(!send(false));
        assert!(send(false), "third consecutive failure trips");
        assert!(matches!(u.admit(&p, host), Admission::Reject { .. }));
        assert!(passes(u.admit(&p, "other:1")), "per upstream");
        std::thread::sleep(Duration::from_millis(60));
        let probe = u.admit(&p, host);
        assert_eq!(probe, Admission::Probe);
        assert!(!u.may_retry(&p, host, &probe), "a probe is one attempt");
        assert!(
            matches!(u.admit(&p, host), Admission::Reject { .. }),
            "one probe at a time"
        );
        assert!(u.record(&p, host, &probe, false), "a failed probe re-opens");
        assert!(matches!(u.admit(&p, host), Admission::Reject { .. }));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(u.admit(&p, host), Admission::Probe);
        u.release_probe(host);
        let probe = u.admit(&p, host);
        assert_eq!(probe, Admission::Probe, "a dropped probe frees the slot");
        assert!(!u.record(&p, host, &probe, true));
        assert!(passes(u.admit(&p, host)), "closed again");
        let off = policy(0, 50);
        for _ in 0..10 {
            let a = u.admit(&off, "x:1");
            assert!(!u.record(&off, "x:1", &a, false));
        }
        assert!(passes(u.admit(&off, "x:1")));
    }

    /// An always-503 upstream, hit by several requests at once (one run's
    /// `send-all`, or several runs): requests admitted before the breaker
    /// opened answer late, while the probe is out or after it failed.
    /// Their answers must not close the breaker, or the upstream gets
    /// request after request during what should be a long cool-down: it
    /// gets exactly the one probe.
    #[test]
    fn only_the_probe_closes_an_open_breaker() {
        let u = Upstreams::new();
        let host = "127.0.0.1:9";
        let short = policy(2, 30);
        let long = policy(2, 60_000);
        // Four requests in flight while the breaker is closed.
        let early: Vec<Admission> = (0..4).map(|_| u.admit(&short, host)).collect();
        assert!(early.iter().all(|a| passes(*a)));
        // Two of them fail and trip it (a short cool-down, to reach the
        // probe quickly).
        assert!(!u.record(&short, host, &early[0], false));
        assert!(u.record(&short, host, &early[1], false));
        // A late failure of the same period is not a second trip.
        assert!(!u.record(&short, host, &early[2], false));
        assert!(
            !u.may_retry(&short, host, &early[3]),
            "no retries once open"
        );
        std::thread::sleep(Duration::from_millis(40));
        let probe = u.admit(&long, host);
        assert_eq!(probe, Admission::Probe);
        // A success from before the trip arrives while the probe is out
        // (say a cached page, or a request the upstream answered just
        // before it broke): it must not close the breaker.
        assert!(!u.record(&long, host, &early[3], true));
        let mut sent = 1; // the probe
        for _ in 0..10 {
            if !matches!(u.admit(&long, host), Admission::Reject { .. }) {
                sent += 1;
            }
        }
        // The probe gets the upstream's 503: open again, for the long
        // cool-down.
        assert!(u.record(&long, host, &probe, false));
        // Another early answer, now that it is open again.
        assert!(!u.record(&long, host, &early[3], true));
        for _ in 0..10 {
            if !matches!(u.admit(&long, host), Admission::Reject { .. }) {
                sent += 1;
            }
        }
        assert_eq!(sent, 1, "the upstream gets exactly one probe");
    }

    #[test]
    fn answers_from_an_earlier_closed_period_do_not_count() {
        let u = Upstreams::new();
        let host = "h:1";
        let p = policy(1, 10);
        let before = u.admit(&p, host);
        let tripping = u.admit(&p, host);
        assert!(u.record(&p, host, &tripping, false));
        std::thread::sleep(Duration::from_millis(20));
        let probe = u.admit(&p, host);
        assert!(!u.record(&p, host, &probe, true), "the probe closes it");
        // A failure of a request admitted before the trip, answered after
        // the probe closed the breaker, is no news about the upstream now.
        assert!(!u.record(&p, host, &before, false));
        assert!(!u.may_retry(&p, host, &before));
        let now = u.admit(&p, host);
        assert!(passes(now));
        assert!(u.may_retry(&p, host, &now));
        assert!(
            u.record(&p, host, &now, false),
            "current answers still count"
        );
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
