//! Outbound HTTP through the host. Only hosts the operator granted are
//! reachable; a denial comes back as [`Error::Host`], a transport failure
//! (after the host's retries) as [`Error::Upstream`].

use serde::de::DeserializeOwned;

use crate::bindings::sluice::connector::http as wit;
use crate::Error;

/// Bytes of a non-success response body quoted in an [`Error::Upstream`].
pub const ERROR_BODY_SNIPPET: usize = 300;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body decoded as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Upstream(format!("response is not the expected JSON: {e}")))
    }

    /// `Err(Error::Upstream)` unless the status is 2xx.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let end = self.body.len().min(ERROR_BODY_SNIPPET);
        Err(Error::Upstream(format!(
            "HTTP {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body[..end])
        )))
    }
}

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: wit::Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    retryable: bool,
}

impl Request {
    pub fn get(url: impl Into<String>) -> Self {
        Request {
            method: wit::Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            retryable: false,
        }
    }

    pub fn post(url: impl Into<String>, body: Vec<u8>) -> Self {
        Request {
            method: wit::Method::Post,
            url: url.into(),
            headers: Vec::new(),
            body: Some(body),
            retryable: false,
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Let the host retry this request after a transient failure even if
    /// its method is not idempotent (a POST with an idempotency key, say).
    /// GET, HEAD, PUT and DELETE are always retryable.
    pub fn retryable(mut self, yes: bool) -> Self {
        self.retryable = yes;
        self
    }

    /// Send through the host (which retries transient failures of
    /// retryable requests, rate-limits and circuit-breaks per the
    /// operator's policy).
    pub fn send(self) -> Result<Response, Error> {
        let req = self.into_wit();
        answer(&req.url, wit::send(&req))
    }

    fn into_wit(self) -> wit::Request {
        wit::Request {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            retryable: self.retryable,
        }
    }
}

fn answer(url: &str, r: Result<wit::Response, wit::HttpError>) -> Result<Response, Error> {
    match r {
        Ok(r) => Ok(Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
        Err(e) => Err(http_error(url, e)),
    }
}

/// Send every request and wait for all the answers, one per request, in
/// request order. Built against `@0.2.0` (the default) this is one
/// `http.send-all`: the host sends the requests concurrently, at most the
/// operator's `max_in_flight` (default 8) at once, each through the same
/// checks, retries, rate limits and breaker as [`Request::send`]. Built
/// with the `wit-0-1` feature it sends them one after the other, with the
/// same results.
///
/// ```ignore
/// let pages = (1..=4).map(|p| Request::get(format!("{base}/items?page={p}")));
/// for answer in sluice_sdk::http::send_all(pages) {
///     let page: Page = answer?.error_for_status()?.json()?;
/// }
/// ```
pub fn send_all<I>(requests: I) -> Vec<Result<Response, Error>>
where
    I: IntoIterator<Item = Request>,
{
    let reqs: Vec<wit::Request> = requests.into_iter().map(Request::into_wit).collect();
    send_all_wit(reqs)
}

#[cfg(not(feature = "wit-0-1"))]
fn send_all_wit(reqs: Vec<wit::Request>) -> Vec<Result<Response, Error>> {
    if reqs.is_empty() {
        return Vec::new();
    }
    let answers = wit::send_all(&reqs);
    reqs.iter()
        .zip(answers)
        .map(|(req, r)| answer(&req.url, r))
        .collect()
}

#[cfg(feature = "wit-0-1")]
fn send_all_wit(reqs: Vec<wit::Request>) -> Vec<Result<Response, Error>> {
    reqs.iter()
        .map(|req| answer(&req.url, wit::send(req)))
        .collect()
}

/// A failed `http.send` as a connector error. What the host refused or
/// stopped (an egress denial, an invalid request, a response over the
/// limit, the spent budget, an open breaker) is [`Error::Host`]; a
/// transport failure the host's retries did not overcome (timeout, connect
/// error, reset) is the upstream's: [`Error::Upstream`]. Only egress
/// denials say "denied".
fn http_error(url: &str, e: wit::HttpError) -> Error {
    match e {
        wit::HttpError::Denied(why) => Error::Host(format!("request to {url} denied: {why}")),
        wit::HttpError::InvalidRequest(why) => {
            Error::Host(format!("invalid request to {url}: {why}"))
        }
        wit::HttpError::TooLarge(n) => {
            Error::Host(format!("response from {url} over the {n}-byte limit"))
        }
        wit::HttpError::BudgetExhausted => {
            Error::Host("HTTP request budget of this run is spent".to_string())
        }
        wit::HttpError::CircuitOpen(why) => {
            Error::Host(format!("request to {url} not sent, circuit open: {why}"))
        }
        wit::HttpError::Timeout => Error::Upstream(format!("request to {url} timed out")),
        wit::HttpError::Connect(why) => Error::Upstream(format!("cannot connect to {url}: {why}")),
        wit::HttpError::Other(why) => Error::Upstream(format!("request to {url} failed: {why}")),
    }
}

/// GET `url` and decode a 2xx JSON body.
pub fn get_json<T: DeserializeOwned>(url: &str) -> Result<T, Error> {
    Request::get(url).send()?.error_for_status()?.json()
}

/// Percent-encode `s` for a URL query value or path segment (RFC 3986:
/// unreserved characters kept, every other byte as `%XX`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
