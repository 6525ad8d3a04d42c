//! The `http` capability: outbound requests on the guest's behalf, only to
//! hosts the operator granted, with a timeout, a response-size cap and a
//! per-run request budget. Redirects are followed only to granted hosts.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::http::{self, HttpError, Method, Request, Response};
use crate::limits::{Limits, DEFAULT_HTTP_CONNECT_TIMEOUT, MAX_REDIRECTS};

/// A host (and optionally port) the operator lets a connector reach, as
/// given to `--allow-host`: `api.example.com`, `127.0.0.1:8080`, `[::1]:80`.
/// Without a port, any port of that host is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    pub host: String,
    pub port: Option<u16>,
}

/// A malformed `--allow-host` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid host grant {input:?}: {reason}")]
pub struct GrantError {
    input: String,
    reason: &'static str,
}

impl FromStr for HostGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GrantError {
            input: s.to_string(),
            reason,
        };
        if s.contains("://") || s.contains('/') || s.contains('@') {
            return Err(err("give host or host:port, not a URL"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| err("port is not a number 0-65535"))?),
                None if after.is_empty() => None,
                None => return Err(err("junk after ]")),
            };
            (format!("[{h}]"), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_string(),
                    Some(p.parse().map_err(|_| err("port is not a number 0-65535"))?),
                ),
                Some(_) => return Err(err("write IPv6 addresses in brackets: [::1]:8080")),
                None => (s.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(err("empty host"));
        }
        Ok(HostGrant {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => f.write_str(&self.host),
        }
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
    let Some((host, port)) = host_port(url) else {
        return false;
    };
    grants
        .iter()
        .any(|g| g.host == host && g.port.is_none_or(|p| p == port))
}

/// Counters of one run's HTTP use, kept in the run record.
#[derive(Debug, Default, Clone, Copy)]
pub struct HttpStats {
    /// Requests sent (granted and within budget).
    pub requests: u64,
    /// Requests refused by the grants.
    pub denied: u64,
    /// Requests that failed in transport (timeout, connect, too large).
    pub failed: u64,
    /// Response body bytes handed to the guest.
    pub bytes_received: u64,
}

/// Per-run state of the `http` capability.
pub struct HttpCtx {
    client: reqwest::Client,
    grants: Arc<[HostGrant]>,
    max_requests: u64,
    max_response_bytes: u64,
    pub stats: HttpStats,
}

/// A redirect to a host that is not granted.
#[derive(Debug, thiserror::Error)]
#[error("redirect to {0} is not granted")]
struct RedirectDenied(String);

impl HttpCtx {
    pub fn new(grants: &[HostGrant], limits: &Limits) -> Result<Self, reqwest::Error> {
        let grants: Arc<[HostGrant]> = grants.to_vec().into();
        let policy_grants = grants.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                let url = attempt.url().to_string();
                attempt.error(RedirectDenied(format!("{url} (too many redirects)")))
            } else if is_granted(&policy_grants, attempt.url()) {
                attempt.follow()
            } else {
                let url = attempt.url().to_string();
                attempt.error(RedirectDenied(url))
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .timeout(limits.http_timeout)
            .connect_timeout(DEFAULT_HTTP_CONNECT_TIMEOUT.min(limits.http_timeout))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpCtx {
            client,
            grants,
            max_requests: limits.max_http_requests,
            max_response_bytes: limits.max_response_bytes,
            stats: HttpStats::default(),
        })
    }

    async fn send_checked(&mut self, req: Request) -> Result<Response, HttpError> {
        let url = url::Url::parse(&req.url)
            .map_err(|e| HttpError::InvalidRequest(format!("bad URL {:?}: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidRequest(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpError::InvalidRequest(
                "URLs with user info are refused".into(),
            ));
        }
        let Some((host, port)) = host_port(&url) else {
            return Err(HttpError::InvalidRequest(format!("URL {url} has no host")));
        };
        if !is_granted(&self.grants, &url) {
            self.stats.denied += 1;
            return Err(HttpError::Denied(format!(
                "host {host}:{port} is not granted to this connector (the operator grants it with --allow-host {host}:{port})"
            )));
        }
        if self.stats.requests >= self.max_requests {
            return Err(HttpError::BudgetExhausted);
        }
        self.stats.requests += 1;

        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Head => reqwest::Method::HEAD,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.client.request(method, url);
        for (name, value) in &req.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::InvalidRequest(format!("bad header name {name:?}")))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {name}")))?;
            builder = builder.header(name, value);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let mut resp = builder.send().await.map_err(transport_error)?;
        let cap = self.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(HttpError::TooLarge(cap));
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
                return Err(HttpError::TooLarge(cap));
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

fn transport_error(e: reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(denied) = s.downcast_ref::<RedirectDenied>() {
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
        let url = req.url.clone();
        let result = self.send_checked(req).await;
        if let Err(e) = &result {
            if !matches!(
                e,
                HttpError::Denied(_) | HttpError::InvalidRequest(_) | HttpError::BudgetExhausted
            ) {
                self.stats.failed += 1;
            }
            tracing::warn!(target: "sluice::http", %url, error = ?e, "request failed");
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

    #[test]
    fn grants_parse() {
        assert_eq!(
            "127.0.0.1:8080".parse::<HostGrant>().unwrap(),
            HostGrant {
                host: "127.0.0.1".into(),
                port: Some(8080)
            }
        );
        assert_eq!(
            "API.Example.com".parse::<HostGrant>().unwrap(),
            HostGrant {
                host: "api.example.com".into(),
                port: None
            }
        );
        assert_eq!("[::1]:80".parse::<HostGrant>().unwrap().host, "[::1]");
        assert!("http://x".parse::<HostGrant>().is_err());
        assert!("::1".parse::<HostGrant>().is_err());
        assert!("x:notaport".parse::<HostGrant>().is_err());
        assert!("".parse::<HostGrant>().is_err());
    }

    #[test]
    fn grant_matching() {
        let g = grants(&["127.0.0.1:8080", "api.example.com"]);
        let ok = |u: &str| is_granted(&g, &url::Url::parse(u).unwrap());
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(ok("https://api.example.com/v1"));
        assert!(ok("http://API.EXAMPLE.COM:9999/"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("https://api.example.com.evil.net/"));
    }
}
