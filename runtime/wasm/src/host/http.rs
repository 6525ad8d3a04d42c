//! The `http` capability: outbound requests on the guest's behalf, only to
//! hosts the operator granted, with a timeout, a response-size cap and a
//! per-run request budget.
//!
//! Egress is checked twice: on the URL (scheme, grants, odd spellings, IP
//! literals) before anything is sent, and on every *resolved* address at
//! connect time by [`GuardedResolver`], so a DNS answer cannot smuggle a
//! loopback, private or metadata address past a name grant. Redirects are
//! followed only to granted hosts, and each hop connects through the same
//! resolver. Secrets ([`super::secrets`]) are substituted after the checks.
//!
//! Resilience ([`super::resilience`], tuned by the run's
//! [`sluice_core::limits::HttpPolicy`]): idempotent requests (and those the
//! connector marks `retryable`) are retried on connect errors, resets,
//! timeouts, 429 and 500/502/503/504 with capped full-jitter backoff,
//! honouring `Retry-After`, never waiting past the run's deadline; every
//! attempt goes through all the checks again. A process-wide token bucket
//! per rate-limited host spaces requests, and a process-wide circuit breaker
//! per upstream fails requests fast (`http-error.circuit-open`) after
//! repeated failures.
//!
//! `@0.2.0`'s `send-all` sends a list of requests concurrently, at most the
//! run's `max_in_flight` at once ([`HttpCtx::send_many`]), each exactly as
//! `send` does ([`HttpCtx::send_one`]); the run's counters are shared by
//! the requests in flight, so budgets hold across them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::http::{self, HttpError, Method, Request, Response};
use crate::bindings::source_v0_2 as v0_2;
use crate::host::resilience::{self, Admission, ProbeGuard, Upstreams};
use sluice_core::abort::HostAbort;
pub use sluice_core::egress::{
    egress_check, forbidden_reason, host_port, is_granted, parse_request_url, BadUrl, EgressDenied,
    GrantError, GrantHost, HostGrant,
};
use sluice_core::limits::{HttpPolicy, Limits, MAX_HTTP_LOG_LINES, MAX_REDIRECTS};
use sluice_core::secrets::{self, SecretUseError, Secrets};

/// Every name resolved for a connector goes through this: addresses in a
/// forbidden range ([`forbidden_reason`]) are dropped, and a name with no
/// other address fails to resolve with [`AddressDenied`]. Names never reach
/// a forbidden address, even one granted as an IP literal: to reach a
/// private service, the operator grants and the connector uses its IP.
#[derive(Debug, Default)]
pub struct GuardedResolver;

/// A name that resolved only to forbidden addresses.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to forbidden addresses ({detail})")]
pub struct AddressDenied {
    host: String,
    detail: String,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|a| forbidden_reason(a.ip()).is_none());
            if allowed.is_empty() && !denied.is_empty() {
                let detail = denied
                    .iter()
                    .map(|a| format!("{} is {}", a.ip(), forbidden_reason(a.ip()).unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(AddressDenied { host, detail }) as _);
            }
            if !denied.is_empty() {
                tracing::debug!(target: "sluice::http", %host, ?denied, "dropped forbidden addresses");
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Counters of one run's HTTP use, kept in the run record.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpStats {
    /// Requests sent (granted and within budget).
    pub requests: u64,
    /// Requests refused by the grants or a secret's hosts (the URL, its
    /// resolved address, or a redirect hop).
    pub denied: u64,
    /// Requests refused as invalid (a malformed URL, header or secret
    /// placeholder).
    pub invalid: u64,
    /// Requests that failed in transport (timeout, connect, too large).
    pub failed: u64,
    /// Response body bytes handed to the guest.
    pub bytes_received: u64,
    /// Attempts made again after a retryable failure.
    pub retries: u64,
    /// Time spent waiting for rate-limit tokens, in milliseconds.
    pub throttled_ms: u64,
    /// Times this run's failures opened an upstream's circuit breaker.
    pub breaker_trips: u64,
    /// Requests failed fast because an upstream's breaker was open.
    pub circuit_open: u64,
    /// `sluice::http` log lines about this run over
    /// [`MAX_HTTP_LOG_LINES`], counted and not written.
    pub log_lines_suppressed: u64,
}

impl HttpStats {
    /// What the run's request budget has paid for: every attempt sent,
    /// and every request the host refused (denied, invalid) or failed fast
    /// (circuit open) without sending it, so a connector cannot spin on a
    /// refusal for free.
    pub fn budget_spent(&self) -> u64 {
        self.requests + self.denied + self.invalid + self.circuit_open
    }

    /// Requests the host refused: denied or invalid.
    pub fn refused(&self) -> u64 {
        self.denied + self.invalid
    }
}

/// Per-run state of the `http` capability. Shared by the requests of one
/// `send-all` in flight together: what they count is behind a lock, and
/// each request borrows a [`Lane`] of its own.
pub struct HttpCtx {
    /// Idle lanes; a request takes one (or makes one) and gives it back.
    lanes: Mutex<Vec<Lane>>,
    grants: Arc<[HostGrant]>,
    secrets: Secrets,
    max_requests: u64,
    /// Refused requests (denied or invalid) past which the run ends.
    max_refused: u64,
    /// `sluice::http` lines written about this run so far.
    log_lines: AtomicU64,
    max_response_bytes: u64,
    max_http_bytes: u64,
    policy: HttpPolicy,
    /// Rate limiters and breakers shared by every run in the process.
    upstreams: Arc<Upstreams>,
    /// The run's deadline: no wait (backoff, rate limit) is started that
    /// would end after it.
    deadline: Instant,
    tally: Mutex<Tally>,
}

/// What a run's requests count, together.
#[derive(Debug, Default)]
struct Tally {
    stats: HttpStats,
    /// Body bytes of responses still being read (not yet in
    /// `stats.bytes_received`), so that requests in flight together stay
    /// within the run's byte limit together.
    receiving: u64,
}

/// One HTTP client with the secrets its request in flight carries: the
/// redirect policy re-checks each against every hop, as a redirect carries
/// the headers (and on 307/308 the body) on, and the hop's URL may echo the
/// query. The redirect policy belongs to the client, so requests in flight
/// together each need their own (at most `max_in_flight` per run).
struct Lane {
    client: reqwest::Client,
    carried_secrets: Arc<Mutex<Vec<String>>>,
}

impl Lane {
    fn new(
        grants: &Arc<[HostGrant]>,
        secrets: &Secrets,
        policy: &HttpPolicy,
    ) -> Result<Self, reqwest::Error> {
        let carried_secrets: Arc<Mutex<Vec<String>>> = Arc::default();
        let (policy_grants, policy_secrets, policy_carried_secrets) =
            (grants.clone(), secrets.clone(), carried_secrets.clone());
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let url = attempt.url().clone();
            let refuse = |reason: String| RedirectDenied {
                url: url.to_string(),
                reason,
            };
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(refuse(format!("more than {MAX_REDIRECTS} redirects")));
            }
            if let Err(denied) = egress_check(&policy_grants, &url) {
                return attempt.error(refuse(denied.to_string()));
            }
            // A hop may only go where every secret the request carries may
            // go: the hop gets the headers again (and the body on 307/308),
            // and its URL may repeat the query the last host received.
            let carried = policy_carried_secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for name in &carried {
                if let Err(e) = policy_secrets.check_allowed(name, &url) {
                    return attempt.error(refuse(format!("the request carries a secret: {e}")));
                }
            }
            attempt.follow()
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            // A Referer would hand the next hop the last URL, query (and
            // the secrets substituted into it) included: never send one.
            .referer(false)
            // A proxy would resolve and connect on our behalf, past the
            // resolved-address check: never use one (nor $HTTP_PROXY & co).
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver))
            .timeout(policy.timeout)
            .connect_timeout(policy.connect_timeout.min(policy.timeout))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Lane {
            client,
            carried_secrets,
        })
    }
}

/// A lane lent to one request, given back to the idle ones when the
/// request ends (or is dropped).
struct LentLane<'a> {
    lane: Option<Lane>,
    idle: &'a Mutex<Vec<Lane>>,
}

impl std::ops::Deref for LentLane<'_> {
    type Target = Lane;
    fn deref(&self) -> &Lane {
        self.lane
            .as_ref()
            .expect("a lent lane is present until dropped")
    }
}

impl Drop for LentLane<'_> {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lane);
        }
    }
}

/// A redirect the policy refused.
#[derive(Debug, thiserror::Error)]
#[error("redirect to {url} refused: {reason}")]
struct RedirectDenied {
    url: String,
    reason: String,
}

impl HttpCtx {
    /// The `http` state of one run whose deadline is `deadline`, sharing the
    /// process's `upstreams` (rate limiters, breakers).
    pub fn new(
        grants: &[HostGrant],
        secrets: &Secrets,
        limits: &Limits,
        upstreams: Arc<Upstreams>,
        deadline: Instant,
    ) -> Result<Self, reqwest::Error> {
        let grants: Arc<[HostGrant]> = grants.to_vec().into();
        let policy = limits.http.clone();
        let first = Lane::new(&grants, secrets, &policy)?;
        Ok(HttpCtx {
            lanes: Mutex::new(vec![first]),
            grants,
            secrets: secrets.clone(),
            max_requests: limits.max_http_requests,
            max_refused: limits.max_http_denied,
            log_lines: AtomicU64::new(0),
            max_response_bytes: limits.max_response_bytes,
            max_http_bytes: limits.max_http_bytes,
            policy,
            upstreams,
            deadline,
            tally: Mutex::default(),
        })
    }

    /// The run's HTTP figures so far.
    pub fn stats(&self) -> HttpStats {
        self.tally().stats
    }

    /// Requests of one `send-all` in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.policy.max_in_flight.max(1) as usize
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle lane, or a new one.
    fn lend_lane(&self) -> Result<LentLane<'_>, HttpError> {
        let idle = self.lanes.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let lane = match idle {
            Some(lane) => lane,
            None => Lane::new(&self.grants, &self.secrets, &self.policy)
                .map_err(|e| HttpError::Other(format!("cannot set up an HTTP client: {e}")))?,
        };
        Ok(LentLane {
            lane: Some(lane),
            idle: &self.lanes,
        })
    }

    /// One `http.send`: the breaker's admission, then attempts (each
    /// rate-limited and fully checked by [`Self::send_checked`]) with
    /// backoff between them while the failure is retryable, the request
    /// may be repeated, retries are left and the wait ends before the
    /// deadline. The outcome (after retries) is recorded in the breaker.
    async fn send_resilient(&self, req: Request) -> Result<Response, SendFail> {
        // A URL that does not parse fails in send_checked, untouched by
        // limiters and breakers.
        let Some((host, port)) = parse_request_url(&req.url)
            .ok()
            .as_ref()
            .and_then(host_port)
        else {
            return self.send_checked(req).await;
        };
        let upstream = format!("{host}:{port}");
        let limit_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let repeatable = req.retryable
            || matches!(
                req.method,
                Method::Get | Method::Head | Method::Put | Method::Delete
            );
        let upstreams = self.upstreams.clone();
        let admission = upstreams.admit(&self.policy, &upstream);
        if let Admission::Reject { retry_in } = admission {
            self.tally().stats.circuit_open += 1;
            return Err(HttpError::CircuitOpen(format!(
                "the circuit breaker of {upstream} is open after repeated failures; \
                 requests fail fast for {:.1} s more, then one probe is let through",
                retry_in.as_secs_f64()
            ))
            .into());
        }
        let mut probe = ProbeGuard::new(
            upstreams.clone(),
            upstream.clone(),
            admission == Admission::Probe,
        );
        // A probe is one attempt, and a request stops being retried once the
        // breaker has opened (see `Upstreams::may_retry`).
        let shown_url = self.secrets.redact(&req.url).into_owned();
        let mut retry = 0u32;
        loop {
            let waited = upstreams
                .throttle(&self.policy, &limit_host, self.deadline)
                .await
                .map_err(|e| SendFail::Guest(HttpError::Other(e.to_string())))?;
            self.tally().stats.throttled_ms += waited.as_millis() as u64;
            // A limit the run tripped ends it at once: no retry.
            let outcome = match self.send_checked(req.clone()).await {
                Ok(r) => Ok(r),
                Err(SendFail::Guest(e)) => Err(e),
                Err(SendFail::Abort(a)) => return Err(SendFail::Abort(a)),
            };
            let reason = match &outcome {
                Ok(r) if resilience::retryable_status(r.status) => format!("HTTP {}", r.status),
                Ok(_) => {
                    upstreams.record(&self.policy, &upstream, &admission, true);
                    probe.disarm();
                    return outcome.map_err(SendFail::Guest);
                }
                Err(HttpError::Timeout) => "timed out".to_string(),
                Err(HttpError::Connect(e) | HttpError::Other(e)) => {
                    self.secrets.redact(e).into_owned()
                }
                // Refused by the host, or the guest's fault: not the
                // upstream's, so neither retried nor held against it.
                Err(_) => return outcome.map_err(SendFail::Guest),
            };
            if repeatable
                && retry < self.policy.retries
                && upstreams.may_retry(&self.policy, &upstream, &admission)
            {
                let asked = match &outcome {
                    Ok(r) => r
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                        .and_then(|(_, v)| resilience::retry_after(v, SystemTime::now())),
                    Err(_) => None,
                };
                let wait = match asked {
                    Some(a) => a.min(self.policy.max_delay),
                    None => resilience::backoff(&self.policy, retry),
                };
                if Instant::now() + wait < self.deadline {
                    retry += 1;
                    self.tally().stats.retries += 1;
                    if self.may_log() {
                        tracing::info!(
                            target: "sluice::http",
                            url = %shown_url,
                            %reason,
                            retry,
                            of = self.policy.retries,
                            wait_ms = wait.as_millis() as u64,
                            retry_after = asked.is_some(),
                            "retrying request"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
                if self.may_log() {
                    tracing::warn!(
                        target: "sluice::http",
                        url = %shown_url,
                        %reason,
                        wait_ms = wait.as_millis() as u64,
                        "not retrying: the backoff would end after the run's deadline"
                    );
                }
            }
            if upstreams.record(&self.policy, &upstream, &admission, false) {
                self.tally().stats.breaker_trips += 1;
                if self.may_log() {
                    tracing::warn!(
                        target: "sluice::http",
                        %upstream,
                        %reason,
                        cooldown_s = self.policy.breaker_cooldown.as_secs_f64(),
                        "circuit breaker opened"
                    );
                }
            }
            probe.disarm();
            return outcome.map_err(SendFail::Guest);
        }
    }

    /// Whether one more `sluice::http` line about this run may be written.
    /// Past [`MAX_HTTP_LOG_LINES`] a line is counted in
    /// [`HttpStats::log_lines_suppressed`] instead; the first one suppressed
    /// says so, once.
    fn may_log(&self) -> bool {
        let written = self
            .log_lines
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_HTTP_LOG_LINES).then_some(n + 1)
            });
        if written.is_ok() {
            return true;
        }
        let mut tally = self.tally();
        if tally.stats.log_lines_suppressed == 0 {
            tracing::warn!(
                target: "sluice::http",
                limit = MAX_HTTP_LOG_LINES,
                "further HTTP log lines about this run are suppressed (counted in the run's report)"
            );
        }
        tally.stats.log_lines_suppressed += 1;
        false
    }

    async fn send_checked(&self, req: Request) -> Result<Response, SendFail> {
        let mut url =
            parse_request_url(&req.url).map_err(|e| HttpError::InvalidRequest(e.to_string()))?;
        // Placeholders only in the query and in header values: anywhere
        // else in the URL the value could change where the request goes.
        let before_fragment = req.url.split('#').next().unwrap_or("");
        let before_query = before_fragment.split('?').next().unwrap_or("");
        if before_query.contains(secrets::PLACEHOLDER_OPEN)
            || before_fragment.len() < req.url.len()
                && req.url[before_fragment.len()..].contains(secrets::PLACEHOLDER_OPEN)
        {
            return Err(SendFail::Guest(HttpError::InvalidRequest(
                "secret placeholders may appear only in the URL query and in header values".into(),
            )));
        }
        let use_err = |e: SecretUseError| HttpError::InvalidRequest(e.to_string());
        let query = url.query().unwrap_or("").to_string();
        let mut used: Vec<String> = secrets::placeholders(&query)
            .map_err(use_err)?
            .into_iter()
            .map(str::to_string)
            .collect();
        for (_, value) in &req.headers {
            used.extend(
                secrets::placeholders(value)
                    .map_err(use_err)?
                    .into_iter()
                    .map(str::to_string),
            );
        }
        for name in &used {
            self.secrets.check_known(name).map_err(use_err)?;
        }
        if let Err(denied) = egress_check(&self.grants, &url) {
            return Err(HttpError::Denied(denied.to_string()).into());
        }
        for name in &used {
            if let Err(e) = self.secrets.check_allowed(name, &url) {
                return Err(HttpError::Denied(e.to_string()).into());
            }
        }
        // A client for this request alone (its redirects re-check the
        // secrets it carries), before it counts as sent.
        let lane = self.lend_lane()?;
        {
            let mut tally = self.tally();
            if tally.stats.budget_spent() >= self.max_requests {
                // Ends the run (`http_budget`) rather than telling the guest,
                // which could otherwise spin on the refusal.
                return Err(SendFail::Abort(HostAbort::HttpBudget {
                    limit: self.max_requests,
                }));
            }
            tally.stats.requests += 1;
        }

        // Past every check: substitute the secrets.
        if !used.is_empty() {
            let q = self.secrets.substitute(&query, true).map_err(use_err)?;
            url.set_query(Some(&q));
        }
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = lane.client.request(method, url);
        for (name, raw) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::InvalidRequest(format!("bad header name {name:?}")))?;
            let carries_secret = raw.contains(secrets::PLACEHOLDER_OPEN);
            let value = self.secrets.substitute(raw, false).map_err(use_err)?;
            let mut value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {name}")))?;
            value.set_sensitive(carries_secret);
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        *lane
            .carried_secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = used;
        let mut resp = builder.send().await.map_err(transport_error)?;
        let cap = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(HttpError::TooLarge(cap).into());
        }
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        let read = self.read_body(&mut resp, &mut body, cap).await;
        let mut tally = self.tally();
        tally.receiving -= body.len() as u64;
        read?;
        tally.stats.bytes_received += body.len() as u64;
        drop(tally);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

impl HttpCtx {
    /// Read `resp`'s body into `body`, at most `cap` bytes, counting what
    /// arrives in the tally's `receiving` (the caller takes `body.len()`
    /// out again): past the run's byte limit, counting every response
    /// being read, the run ends.
    async fn read_body(
        &self,
        resp: &mut reqwest::Response,
        body: &mut Vec<u8>,
        cap: u64,
    ) -> Result<(), SendFail> {
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(HttpError::TooLarge(cap).into());
            }
            {
                let mut tally = self.tally();
                let n = chunk.len() as u64;
                if tally.stats.bytes_received + tally.receiving + n > self.max_http_bytes {
                    return Err(SendFail::Abort(HostAbort::HttpBytes {
                        limit: self.max_http_bytes,
                    }));
                }
                tally.receiving += n;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    }

    /// One request as `http.send` makes it: the budget, the resilient
    /// send, the counting of refusals and failures, and their log line.
    /// `Err` is a limit that ends the run.
    pub(crate) async fn send_one(
        &self,
        req: Request,
    ) -> Result<Result<Response, HttpError>, HostAbort> {
        // Refused requests spend the budget too: a connector spinning on a
        // refusal ends with `http_budget` like one spinning on answers.
        if self.tally().stats.budget_spent() >= self.max_requests {
            return Err(HostAbort::HttpBudget {
                limit: self.max_requests,
            });
        }
        let url = req.url.clone();
        // The guest never gets a secret's value from the host: transport
        // errors quote the substituted URL, so they are redacted.
        let result = match self.send_resilient(req).await {
            Ok(r) => Ok(r),
            Err(SendFail::Abort(a)) => return Err(a),
            Err(SendFail::Guest(e)) => Err(redact_error(&self.secrets, e)),
        };
        if let Err(e) = &result {
            let refused = {
                let mut tally = self.tally();
                match e {
                    HttpError::Denied(_) => tally.stats.denied += 1,
                    HttpError::InvalidRequest(_) => tally.stats.invalid += 1,
                    // Counted where they are decided.
                    HttpError::BudgetExhausted | HttpError::CircuitOpen(_) => {}
                    _ => tally.stats.failed += 1,
                }
                tally.stats.refused()
            };
            let url = self.secrets.redact(&url).into_owned();
            let refusal = match e {
                HttpError::Denied(why) => Some(format!("denied: {why}")),
                HttpError::InvalidRequest(why) => Some(format!("invalid request: {why}")),
                _ => None,
            };
            if let Some(last) = refusal.filter(|_| refused > self.max_refused) {
                // Past the threshold a connector is probing, not syncing:
                // end the run (`http_denied_limit`).
                return Err(HostAbort::HttpDeniedLimit {
                    limit: self.max_refused,
                    last: format!("{url}: {last}"),
                });
            }
            if self.may_log() {
                tracing::warn!(target: "sluice::http", url = %sluice_core::text::escaped(&url), error = ?e, "request failed");
            }
        }
        Ok(result)
    }

    /// Every request of one `send-all`, each exactly as [`Self::send_one`]
    /// makes it, at most [`Self::max_in_flight`] at once; the answers in
    /// request order. A limit one of them trips ends the run at once (the
    /// others in flight are dropped).
    pub(crate) async fn send_many(
        &self,
        reqs: Vec<Request>,
    ) -> Result<Vec<Result<Response, HttpError>>, HostAbort> {
        use futures_util::stream::{self, StreamExt};
        let mut answers: Vec<Option<Result<Response, HttpError>>> = vec![None; reqs.len()];
        let mut in_flight = stream::iter(
            reqs.into_iter()
                .enumerate()
                .map(|(i, req)| async move { (i, self.send_one(req).await) }),
        )
        .buffer_unordered(self.max_in_flight());
        while let Some((i, answer)) = in_flight.next().await {
            answers[i] = Some(answer?);
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every request of the list was answered"))
            .collect())
    }
}

/// Why a request was not answered: an error the guest sees, or a limit that
/// ends the run.
enum SendFail {
    Guest(HttpError),
    Abort(HostAbort),
}

impl From<HttpError> for SendFail {
    fn from(e: HttpError) -> Self {
        SendFail::Guest(e)
    }
}

fn transport_error(e: reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(denied) = s.downcast_ref::<RedirectDenied>() {
            return HttpError::Denied(denied.to_string());
        }
        if let Some(denied) = s.downcast_ref::<AddressDenied>() {
            return HttpError::Denied(denied.to_string());
        }
        source = s.source();
    }
    if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_connect() {
        HttpError::Connect(error_chain(&e))
    } else {
        HttpError::Other(error_chain(&e))
    }
}

/// `e` with every secret value in its text redacted.
fn redact_error(secrets: &Secrets, e: HttpError) -> HttpError {
    let r = |t: String| secrets.redact(&t).into_owned();
    match e {
        HttpError::Denied(t) => HttpError::Denied(r(t)),
        HttpError::InvalidRequest(t) => HttpError::InvalidRequest(r(t)),
        HttpError::Connect(t) => HttpError::Connect(r(t)),
        HttpError::Other(t) => HttpError::Other(r(t)),
        HttpError::CircuitOpen(t) => HttpError::CircuitOpen(r(t)),
        e @ (HttpError::Timeout | HttpError::TooLarge(_) | HttpError::BudgetExhausted) => e,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl http::Host for HttpCtx {
    async fn send(&mut self, req: Request) -> wasmtime::Result<Result<Response, HttpError>> {
        Ok(self.send_one(req).await?)
    }
}

impl v0_2::http::Host for HttpCtx {
    async fn send(
        &mut self,
        req: v0_2::http::Request,
    ) -> wasmtime::Result<Result<v0_2::http::Response, v0_2::http::HttpError>> {
        Ok(self
            .send_one(req.into())
            .await?
            .map(Into::into)
            .map_err(Into::into))
    }

    async fn send_all(
        &mut self,
        reqs: Vec<v0_2::http::Request>,
    ) -> wasmtime::Result<Vec<Result<v0_2::http::Response, v0_2::http::HttpError>>> {
        let answers = self
            .send_many(reqs.into_iter().map(Into::into).collect())
            .await?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(Into::into).map_err(Into::into))
            .collect())
    }
}

/// Link the `http` interface of every WIT version, reaching each store's
/// [`HttpCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut HttpCtx,
) -> wasmtime::Result<()> {
    http::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)?;
    v0_2::http::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_resolver_refuses_names_of_forbidden_addresses() {
        use reqwest::dns::Resolve;
        let err = GuardedResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must not resolve");
        assert!(err.downcast_ref::<AddressDenied>().is_some(), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
