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
//! [`crate::limits::HttpPolicy`]): idempotent requests (and those the
//! connector marks `retryable`) are retried on connect errors, resets,
//! timeouts, 429 and 500/502/503/504 with capped full-jitter backoff,
//! honouring `Retry-After`, never waiting past the run's deadline; every
//! attempt goes through all the checks again. A process-wide token bucket
//! per rate-limited host spaces requests, and a process-wide circuit breaker
//! per upstream fails requests fast (`http-error.circuit-open`) after
//! repeated failures.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use ipnet::{Ipv4Net, Ipv6Net};
use wasmtime::component::{HasSelf, Linker};

use super::HostAbort;
use crate::bindings::http::{self, HttpError, Method, Request, Response};
use crate::host::resilience::{self, Admission, ProbeGuard, Upstreams};
use crate::host::secrets::{self, SecretUseError, Secrets};
use crate::limits::{
    HttpPolicy, Limits, MAX_HTTP_LOG_LINES, MAX_REDIRECTS, MIN_WILDCARD_DOMAIN_LABELS,
};

/// The host part of a [`HostGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantHost {
    /// Exactly this address (the only way to reach a loopback, private or
    /// otherwise forbidden address).
    Ip(IpAddr),
    /// Exactly this DNS name (lower case, ASCII).
    Name(String),
    /// Any name strictly under this domain (`*.example.com` holds
    /// `example.com`): `a.example.com`, `a.b.example.com`, not the apex.
    Subdomains(String),
}

/// A host the operator lets a connector reach, as given to `--allow-host`:
/// `[SCHEME://]HOST[:PORT]` with HOST a DNS name, `*.` + a domain, an IPv4
/// address or a bracketed IPv6 address (`api.example.com`,
/// `https://*.example.com`, `127.0.0.1:8080`, `[::1]:80`). Without a port,
/// any port is granted; without a scheme, http and https.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// `http` or `https`, if the grant is limited to one.
    pub scheme: Option<String>,
    pub host: GrantHost,
    pub port: Option<u16>,
}

/// A malformed `--allow-host` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid host grant {input:?}: {reason}")]
pub struct GrantError {
    input: String,
    reason: &'static str,
}

/// Longest DNS name in text form (RFC 1035), in bytes.
const MAX_DNS_NAME_BYTES: usize = 253;
/// Longest DNS label (RFC 1035), in bytes.
const MAX_DNS_LABEL_BYTES: usize = 63;

/// Check a DNS name (already lower case): labels of letters, digits and
/// hyphens, not numeric at the end (that would be an IPv4 spelling).
fn check_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty host");
    }
    if !name.is_ascii() {
        return Err("write internationalised names in punycode (xn--…)");
    }
    if name.len() > MAX_DNS_NAME_BYTES {
        return Err("host name longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > MAX_DNS_LABEL_BYTES {
            return Err("each dot-separated label must have 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "host names are letters, digits, - and _ (a wildcard only as a leading *.)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with -");
        }
    }
    let last = labels[labels.len() - 1];
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if last.bytes().all(|b| b.is_ascii_digit()) || hex {
        return Err("not a host name, and not an IPv4 address written a.b.c.d in decimal");
    }
    Ok(())
}

impl FromStr for HostGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GrantError {
            input: s.to_string(),
            reason,
        };
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme != "http" && scheme != "https" {
                    return Err(err("the scheme may only be http:// or https://"));
                }
                (Some(scheme), rest)
            }
            None => (None, s),
        };
        if rest.contains(['/', '@', '?', '#', '\\']) || rest.chars().any(char::is_whitespace) {
            return Err(err(
                "give [http(s)://]HOST[:PORT], without path, query or user info",
            ));
        }
        let parse_port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(err("port is not a number 1-65535")),
            Ok(p) => Ok(p),
        };
        let (host_text, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (h, after) = inner.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None if after.is_empty() => None,
                None => return Err(err("junk after ]")),
            };
            let ip: Ipv6Addr = h
                .parse()
                .map_err(|_| err("brackets hold an IPv6 address"))?;
            return Ok(HostGrant {
                scheme,
                host: GrantHost::Ip(IpAddr::V6(ip)),
                port,
            });
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(parse_port(p)?)),
                Some(_) => return Err(err("write IPv6 addresses in brackets: [::1]:8080")),
                None => (rest, None),
            }
        };
        let host_text = host_text.to_ascii_lowercase();
        let host = if let Some(domain) = host_text.strip_prefix("*.") {
            check_domain(domain).map_err(err)?;
            if domain.split('.').count() < MIN_WILDCARD_DOMAIN_LABELS {
                return Err(err(
                    "a wildcard must stand under a domain of at least two labels (*.example.com)",
                ));
            }
            GrantHost::Subdomains(domain.to_string())
        } else if host_text.contains('*') {
            return Err(err(
                "a wildcard may only be a whole leading label: *.example.com",
            ));
        } else if let Ok(ip) = host_text.parse::<Ipv4Addr>() {
            GrantHost::Ip(IpAddr::V4(ip))
        } else {
            check_domain(&host_text).map_err(err)?;
            GrantHost::Name(host_text)
        };
        Ok(HostGrant { scheme, host, port })
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        match &self.host {
            GrantHost::Ip(IpAddr::V6(a)) => write!(f, "[{a}]")?,
            GrantHost::Ip(IpAddr::V4(a)) => write!(f, "{a}")?,
            GrantHost::Name(n) => f.write_str(n)?,
            GrantHost::Subdomains(d) => write!(f, "*.{d}")?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl HostGrant {
    /// Whether this grant allows `url` (scheme, host and port).
    pub fn matches(&self, url: &url::Url) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != url.scheme()) {
            return false;
        }
        if self
            .port
            .is_some_and(|p| url.port_or_known_default() != Some(p))
        {
            return false;
        }
        match (&self.host, url.host()) {
            (GrantHost::Ip(ip), Some(url::Host::Ipv4(a))) => *ip == IpAddr::V4(a),
            (GrantHost::Ip(ip), Some(url::Host::Ipv6(a))) => *ip == IpAddr::V6(a),
            (GrantHost::Name(n), Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case(n),
            (GrantHost::Subdomains(s), Some(url::Host::Domain(d))) => {
                let d = d.to_ascii_lowercase();
                d.len() > s.len() + 1
                    && d.ends_with(s.as_str())
                    && d[..d.len() - s.len()].ends_with('.')
            }
            _ => false,
        }
    }

    /// Whether this grant names exactly `ip`.
    pub fn is_ip(&self, ip: IpAddr) -> bool {
        self.host == GrantHost::Ip(ip)
    }
}

/// `host` as the URL spells it (IPv6 in brackets) and the effective port.
fn host_port(url: &url::Url) -> Option<(String, u16)> {
    let host = match url.host()? {
        url::Host::Domain(d) => d.to_ascii_lowercase(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => format!("[{a}]"),
    };
    Some((host, url.port_or_known_default()?))
}

/// Whether any grant allows `url`.
pub fn is_granted(grants: &[HostGrant], url: &url::Url) -> bool {
    grants.iter().any(|g| g.matches(url))
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges a connector may not reach unless the operator grants the
/// address itself, most specific first, with why.
const FORBIDDEN_V4: &[(Ipv4Net, &str)] = &[
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(169, 254, 169, 254, 32), "cloud metadata (link-local)"),
    (v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "shared carrier-grade NAT (RFC 6598)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments (reserved)"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast (reserved)"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (reserved)"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// IPv6 ranges a connector may not reach unless granted, most specific
/// first. IPv4-mapped (`::ffff:0:0/96`) and NAT64 (`64:ff9b::/96`)
/// addresses are judged by the IPv4 address they embed.
const FORBIDDEN_V6: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 0, 0, 128), "unspecified"),
    (v6(0, 0, 0, 0, 0, 0, 0, 1, 128), "loopback"),
    (
        v6(0, 0, 0, 0, 0, 0, 0, 0, 96),
        "IPv4-compatible (deprecated)",
    ),
    (
        v6(0, 0, 0, 0, 0xffff, 0, 0, 0, 96),
        "IPv4-translated (reserved)",
    ),
    (v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0, 48), "local-use NAT64"),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0, 64), "discard-only"),
    (
        v6(0x2001, 0, 0, 0, 0, 0, 0, 0, 32),
        "Teredo (embeds an IPv4 address)",
    ),
    (v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0, 32), "documentation"),
    (
        v6(0x2002, 0, 0, 0, 0, 0, 0, 0, 16),
        "6to4 (embeds an IPv4 address)",
    ),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0, 20), "documentation"),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0, 7), "unique-local (private)"),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0, 10), "link-local"),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 0, 0, 10),
        "site-local (deprecated)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0, 8), "multicast"),
];

const NAT64: Ipv6Net = v6(0x64, 0xff9b, 0, 0, 0, 0, 0, 0, 96);

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    FORBIDDEN_V4
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, why)| *why)
}

/// Why `ip` is forbidden to connectors (loopback, private, link-local and
/// cloud metadata, CGNAT, unique-local, unspecified, multicast, broadcast,
/// documentation and reserved ranges), or `None` for a public address.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => forbidden_v4(a),
        IpAddr::V6(a) => {
            let embedded = a.to_ipv4_mapped().or_else(|| {
                NAT64
                    .contains(&a)
                    .then(|| Ipv4Addr::from(a.to_bits() as u32))
            });
            if let Some(v4) = embedded {
                return forbidden_v4(v4).map(|_| "IPv6 embedding a forbidden IPv4 address");
            }
            FORBIDDEN_V6
                .iter()
                .find(|(net, _)| net.contains(&a))
                .map(|(_, why)| *why)
        }
    }
}

/// The URL's host if it is an IP literal.
fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// Why the egress check refused a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    #[error("URL {0} has no host or port")]
    NoHost(String),
    #[error("{host} is a {why} address; only an --allow-host grant of that exact IP reaches it")]
    ForbiddenAddress { host: String, why: &'static str },
    #[error("{scheme}://{host}:{port} is not granted to this connector (the operator grants it with --allow-host)")]
    NotGranted {
        scheme: String,
        host: String,
        port: u16,
    },
}

/// The egress check of one URL (the request's or a redirect's): an IP
/// literal in a forbidden range must be granted as that IP, and some grant
/// must allow the scheme, host and port.
pub fn egress_check(grants: &[HostGrant], url: &url::Url) -> Result<(), EgressDenied> {
    let Some((host, port)) = host_port(url) else {
        return Err(EgressDenied::NoHost(url.to_string()));
    };
    if let Some(ip) = literal_ip(url) {
        if let Some(why) = forbidden_reason(ip) {
            if !grants.iter().any(|g| g.is_ip(ip)) {
                return Err(EgressDenied::ForbiddenAddress { host, why });
            }
        }
    }
    if !is_granted(grants, url) {
        return Err(EgressDenied::NotGranted {
            scheme: url.scheme().to_string(),
            host,
            port,
        });
    }
    Ok(())
}

/// Why a guest's URL is an invalid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error("the URL contains whitespace or control characters")]
    Whitespace,
    #[error("the URL must be absolute, http://… or https://…")]
    NotAbsolute,
    #[error("scheme {0:?} is not http or https")]
    Scheme(String),
    #[error("URLs with user info are refused")]
    UserInfo,
    #[error("the URL has no host")]
    NoHost,
    #[error("bad URL: {0}")]
    Parse(url::ParseError),
    #[error("host {raw:?} is an unusual spelling of the IPv4 address {addr}; refused")]
    OddIpv4 { raw: String, addr: Ipv4Addr },
    #[error("percent-encoded host names are refused")]
    PercentEncodedHost,
}

/// Parse a guest's URL, refusing what the `url` crate would silently
/// normalise: the raw host text is checked before parsing, so `2130706433`,
/// `0177.0.0.1`, `0x7f.0.0.1`, `127.1` or a percent-encoded host are
/// invalid requests rather than quiet spellings of `127.0.0.1`.
pub fn parse_request_url(raw: &str) -> Result<url::Url, BadUrl> {
    if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(BadUrl::Whitespace);
    }
    let (scheme, after) = raw.split_once("://").ok_or(BadUrl::NotAbsolute)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(BadUrl::Scheme(scheme.to_string()));
    }
    let authority = &after[..after.find(['/', '?', '#', '\\']).unwrap_or(after.len())];
    if authority.contains('@') {
        return Err(BadUrl::UserInfo);
    }
    let raw_host = if authority.starts_with('[') {
        &authority[..authority.find(']').map_or(authority.len(), |i| i + 1)]
    } else {
        &authority[..authority.find(':').unwrap_or(authority.len())]
    };
    if raw_host.is_empty() {
        return Err(BadUrl::NoHost);
    }
    let url = url::Url::parse(raw).map_err(BadUrl::Parse)?;
    match url.host() {
        None => return Err(BadUrl::NoHost),
        Some(url::Host::Ipv4(addr)) if raw_host != addr.to_string() => {
            return Err(BadUrl::OddIpv4 {
                raw: raw_host.to_string(),
                addr,
            })
        }
        Some(url::Host::Domain(_)) if raw_host.contains('%') => {
            return Err(BadUrl::PercentEncodedHost)
        }
        _ => {}
    }
    Ok(url)
}

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

/// Per-run state of the `http` capability.
pub struct HttpCtx {
    client: reqwest::Client,
    grants: Arc<[HostGrant]>,
    secrets: Secrets,
    /// Every secret substituted into the request in flight, in its query
    /// or its headers: the redirect policy re-checks each against every
    /// hop, as a redirect carries the headers (and on 307/308 the body) on,
    /// and the hop's URL may echo the query. The client belongs to this one
    /// run, whose requests are sequential.
    carried_secrets: Arc<Mutex<Vec<String>>>,
    max_requests: u64,
    /// Refused requests (denied or invalid) past which the run ends.
    max_refused: u64,
    /// `sluice::http` lines written about this run so far.
    log_lines: u64,
    max_response_bytes: u64,
    max_http_bytes: u64,
    policy: HttpPolicy,
    /// Rate limiters and breakers shared by every run in the process.
    upstreams: Arc<Upstreams>,
    /// The run's deadline: no wait (backoff, rate limit) is started that
    /// would end after it.
    deadline: Instant,
    pub stats: HttpStats,
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
        let carried_secrets: Arc<Mutex<Vec<String>>> = Arc::default();
        let (policy_grants, policy_secrets, policy_carried_secrets) =
            (grants.clone(), secrets.clone(), carried_secrets.clone());
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
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
            .redirect(policy)
            // A Referer would hand the next hop the last URL, query (and
            // the secrets substituted into it) included: never send one.
            .referer(false)
            // A proxy would resolve and connect on our behalf, past the
            // resolved-address check: never use one (nor $HTTP_PROXY & co).
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver))
            .timeout(limits.http.timeout)
            .connect_timeout(limits.http.connect_timeout.min(limits.http.timeout))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpCtx {
            client,
            grants,
            secrets: secrets.clone(),
            carried_secrets,
            max_requests: limits.max_http_requests,
            max_refused: limits.max_http_denied,
            log_lines: 0,
            max_response_bytes: limits.max_response_bytes,
            max_http_bytes: limits.max_http_bytes,
            policy: limits.http.clone(),
            upstreams,
            deadline,
            stats: HttpStats::default(),
        })
    }

    /// One `http.send`: the breaker's admission, then attempts (each
    /// rate-limited and fully checked by [`Self::send_checked`]) with
    /// backoff between them while the failure is retryable, the request
    /// may be repeated, retries are left and the wait ends before the
    /// deadline. The outcome (after retries) is recorded in the breaker.
    async fn send_resilient(&mut self, req: Request) -> Result<Response, SendFail> {
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
            self.stats.circuit_open += 1;
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
        let shown_url = self.secrets.redact(&req.url).into_owned();
        let mut retry = 0u32;
        loop {
            let waited = upstreams
                .throttle(&self.policy, &limit_host, self.deadline)
                .await
                .map_err(|e| SendFail::Guest(HttpError::Other(e.to_string())))?;
            self.stats.throttled_ms += waited.as_millis() as u64;
            // A limit the run tripped ends it at once: no retry.
            let outcome = match self.send_checked(req.clone()).await {
                Ok(r) => Ok(r),
                Err(SendFail::Guest(e)) => Err(e),
                Err(SendFail::Abort(a)) => return Err(SendFail::Abort(a)),
            };
            let reason = match &outcome {
                Ok(r) if resilience::retryable_status(r.status) => format!("HTTP {}", r.status),
                Ok(_) => {
                    upstreams.record(&self.policy, &upstream, true);
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
            if repeatable && retry < self.policy.retries {
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
                    self.stats.retries += 1;
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
            if upstreams.record(&self.policy, &upstream, false) {
                self.stats.breaker_trips += 1;
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
    fn may_log(&mut self) -> bool {
        if self.log_lines < MAX_HTTP_LOG_LINES {
            self.log_lines += 1;
            return true;
        }
        if self.stats.log_lines_suppressed == 0 {
            tracing::warn!(
                target: "sluice::http",
                limit = MAX_HTTP_LOG_LINES,
                "further HTTP log lines about this run are suppressed (counted in the run's report)"
            );
        }
        self.stats.log_lines_suppressed += 1;
        false
    }

    async fn send_checked(&mut self, req: Request) -> Result<Response, SendFail> {
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
        if self.stats.budget_spent() >= self.max_requests {
            // Ends the run (`http_budget`) rather than telling the guest,
            // which could otherwise spin on the refusal.
            return Err(SendFail::Abort(HostAbort::HttpBudget {
                limit: self.max_requests,
            }));
        }
        self.stats.requests += 1;

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
        let mut builder = self.client.request(method, url);
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
        *self
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
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(HttpError::TooLarge(cap).into());
            }
            if self.stats.bytes_received + (body.len() + chunk.len()) as u64 > self.max_http_bytes {
                return Err(SendFail::Abort(HostAbort::HttpBytes {
                    limit: self.max_http_bytes,
                }));
            }
            body.extend_from_slice(&chunk);
        }
        self.stats.bytes_received += body.len() as u64;
        Ok(Response {
            status,
            headers,
            body,
        })
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
        // Refused requests spend the budget too: a connector spinning on a
        // refusal ends with `http_budget` like one spinning on answers.
        if self.stats.budget_spent() >= self.max_requests {
            return Err(HostAbort::HttpBudget {
                limit: self.max_requests,
            }
            .into());
        }
        let url = req.url.clone();
        // The guest never gets a secret's value from the host: transport
        // errors quote the substituted URL, so they are redacted.
        let result = match self.send_resilient(req).await {
            Ok(r) => Ok(r),
            Err(SendFail::Abort(a)) => return Err(a.into()),
            Err(SendFail::Guest(e)) => Err(redact_error(&self.secrets, e)),
        };
        if let Err(e) = &result {
            match e {
                HttpError::Denied(_) => self.stats.denied += 1,
                HttpError::InvalidRequest(_) => self.stats.invalid += 1,
                // Counted where they are decided.
                HttpError::BudgetExhausted | HttpError::CircuitOpen(_) => {}
                _ => self.stats.failed += 1,
            }
            let url = self.secrets.redact(&url).into_owned();
            let refusal = match e {
                HttpError::Denied(why) => Some(format!("denied: {why}")),
                HttpError::InvalidRequest(why) => Some(format!("invalid request: {why}")),
                _ => None,
            };
            if let Some(last) = refusal.filter(|_| self.stats.refused() > self.max_refused) {
                // Past the threshold a connector is probing, not syncing:
                // end the run (`http_denied_limit`).
                return Err(HostAbort::HttpDeniedLimit {
                    limit: self.max_refused,
                    last: format!("{url}: {last}"),
                }
                .into());
            }
            if self.may_log() {
                tracing::warn!(target: "sluice::http", url = %crate::text::escaped(&url), error = ?e, "request failed");
            }
        }
        Ok(result)
    }
}

/// Link the `http` interface, reaching each store's [`HttpCtx`] through `get`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut HttpCtx,
) -> wasmtime::Result<()> {
    http::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[&str]) -> Vec<HostGrant> {
        list.iter().map(|g| g.parse().unwrap()).collect()
    }

    fn url(u: &str) -> url::Url {
        url::Url::parse(u).unwrap()
    }

    #[test]
    fn grants_parse() {
        assert_eq!(
            "127.0.0.1:8080".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: None,
                host: GrantHost::Ip("127.0.0.1".parse().unwrap()),
                port: Some(8080)
            }
        );
        assert_eq!(
            "API.Example.com".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: None,
                host: GrantHost::Name("api.example.com".into()),
                port: None
            }
        );
        assert_eq!(
            "HTTPS://*.Example.com:8443".parse::<HostGrant>().unwrap(),
            HostGrant {
                scheme: Some("https".into()),
                host: GrantHost::Subdomains("example.com".into()),
                port: Some(8443)
            }
        );
        assert_eq!(
            "[::1]:80".parse::<HostGrant>().unwrap().host,
            GrantHost::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            "[0:0:0:0:0:0:0:1]"
                .parse::<HostGrant>()
                .unwrap()
                .to_string(),
            "[::1]"
        );
        for g in [
            "https://*.example.com:8443",
            "http://api.example.com",
            "10.1.2.3:22",
        ] {
            assert_eq!(g.parse::<HostGrant>().unwrap().to_string(), g);
        }
        for bad in [
            "",
            "::1",
            "[::1",
            "[nothost]:80",
            "x:notaport",
            "x:0",
            "x:65536",
            "ftp://x",
            "http://x/path",
            "https://",
            "user@x",
            "x?q",
            "*",
            "*.com",
            "*example.com",
            "a.*.example.com",
            "**.example.com",
            "*.*.example.com",
            "2130706433",
            "127.1",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "exa mple.com",
            "-bad.example.com",
            "a..b",
            "bücher.example",
        ] {
            assert!(
                bad.parse::<HostGrant>().is_err(),
                "{bad:?} should be refused"
            );
        }
        let e = "*.com".parse::<HostGrant>().unwrap_err().to_string();
        assert!(e.contains("*.com") && e.contains("two labels"), "{e}");
    }

    #[test]
    fn grant_matching() {
        let g = grants(&["127.0.0.1:8080", "api.example.com", "[::1]:9"]);
        let ok = |u: &str| is_granted(&g, &url(u));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("http://API.EXAMPLE.COM:9999/"));
        assert!(ok("http://[0::1]:9/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://api.example.com.evil.net/"));
        assert!(!ok("http://localhost:8080/"));
    }

    #[test]
    fn wildcard_and_scheme_grants() {
        let g = grants(&["*.example.com", "https://secure.example.org"]);
        let ok = |u: &str| is_granted(&g, &url(u));
        assert!(ok("https://a.example.com/"));
        assert!(ok("http://a.b.example.com:81/"));
        assert!(!ok("https://example.com/"), "the apex is not a subdomain");
        assert!(!ok("https://notexample.com/"));
        assert!(!ok("https://a.example.com.evil.net/"));
        assert!(ok("https://secure.example.org/"));
        assert!(!ok("http://secure.example.org/"), "scheme-limited grant");
    }

    #[test]
    fn ip_classifier() {
        let forbidden = [
            "127.0.0.1",
            "127.255.0.9",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.8",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2001::1",
            "fec0::1",
        ];
        for ip in forbidden {
            assert!(
                forbidden_reason(ip.parse().unwrap()).is_some(),
                "{ip} should be forbidden"
            );
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
        ] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip}");
        }
        assert_eq!(
            forbidden_reason("169.254.169.254".parse().unwrap()),
            Some("cloud metadata (link-local)")
        );
        assert_eq!(
            forbidden_reason("::ffff:127.0.0.1".parse().unwrap()),
            Some("IPv6 embedding a forbidden IPv4 address")
        );
    }

    #[test]
    fn odd_spellings_are_invalid_requests() {
        for raw in [
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://127.0.1/",
            "http://127.0.0.1./",
            "http://%31%32%37.0.0.1/",
            "http://0/",
            "http://user@127.0.0.1/",
            "http://:80/",
            "http:///x",
            "http:/127.0.0.1/",
            "http:127.0.0.1/",
            "ftp://127.0.0.1/",
            "http://127.0.0.1 /",
            "http://exa\tmple.com/",
            "/relative",
        ] {
            assert!(parse_request_url(raw).is_err(), "{raw:?} should be refused");
        }
        for raw in [
            "http://127.0.0.1:8080/x?a=b",
            "https://api.example.com/v1",
            "HTTPS://API.example.com",
            "http://[::1]:80/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(parse_request_url(raw).is_ok(), "{raw:?}");
        }
        assert_eq!(
            parse_request_url("http://2130706433/").unwrap_err(),
            BadUrl::OddIpv4 {
                raw: "2130706433".into(),
                addr: Ipv4Addr::LOCALHOST
            }
        );
        assert_eq!(
            parse_request_url("http://u:p@api.example.com/").unwrap_err(),
            BadUrl::UserInfo
        );
        assert_eq!(
            parse_request_url("http://%61pi.example.com/").unwrap_err(),
            BadUrl::PercentEncodedHost
        );
    }

    #[test]
    fn literal_ips_need_an_exact_ip_grant() {
        let g = grants(&["127.0.0.1:8080", "localhost", "*.example.com", "8.8.8.8"]);
        assert!(egress_check(&g, &url("http://127.0.0.1:8080/")).is_ok());
        assert!(egress_check(&g, &url("http://8.8.8.8/")).is_ok());
        for denied in [
            "http://127.0.0.1:8081/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::1]:8080/",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0.0.0.0:8080/",
            "http://8.8.4.4/",
        ] {
            assert!(egress_check(&g, &url(denied)).is_err(), "{denied}");
        }
        assert_eq!(
            egress_check(&g, &url("http://169.254.169.254/")).unwrap_err(),
            EgressDenied::ForbiddenAddress {
                host: "169.254.169.254".into(),
                why: "cloud metadata (link-local)"
            }
        );
        assert!(matches!(
            egress_check(&g, &url("http://127.0.0.1:8081/")).unwrap_err(),
            EgressDenied::NotGranted { port: 8081, .. }
        ));
        assert!(matches!(
            egress_check(&g, &url("https://example.com/")).unwrap_err(),
            EgressDenied::NotGranted { .. }
        ));
    }

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
