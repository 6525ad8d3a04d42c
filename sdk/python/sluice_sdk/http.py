"""Outbound HTTP through the host. Only hosts the operator granted are
reachable; a denial raises ``HostError``, a transport failure (after the
host's retries) ``UpstreamError``. The host retries transient failures of
idempotent requests, rate-limits and circuit-breaks per the operator's
policy."""

import json

from componentize_py_types import Err
from wit_world.imports import http as _http

from .errors import HostError, UpstreamError

#: Bytes of a non-success response body quoted in an ``UpstreamError``.
ERROR_BODY_SNIPPET = 300

_METHODS = {
    "GET": _http.Method.GET,
    "HEAD": _http.Method.HEAD,
    "POST": _http.Method.POST,
    "PUT": _http.Method.PUT,
    "PATCH": _http.Method.PATCH,
    "DELETE": _http.Method.DELETE,
}


class Response:
    """An HTTP response: ``status``, ``headers`` (names lower-cased), ``body`` (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        """The first header named ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        """The body decoded as JSON (``UpstreamError`` if it is not)."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise UpstreamError(f"response is not the expected JSON: {e}") from None

    def error_for_status(self):
        """``self``, or ``UpstreamError`` unless the status is 2xx."""
        if 200 <= self.status < 300:
            return self
        snippet = self.body[:ERROR_BODY_SNIPPET].decode("utf-8", errors="replace")
        raise UpstreamError(f"HTTP {self.status}: {snippet}")


#: ``http-error`` kinds that are the upstream's failure, not a host refusal.
_TRANSPORT_FAILURES = frozenset({"Timeout", "Connect", "Other"})


def _error_text(url, e):
    v = e.value
    kind = type(v).__name__.split("_", 1)[-1]
    detail = getattr(v, "value", None)
    return {
        "Denied": f"request to {url} denied: {detail}",
        "InvalidRequest": f"invalid request to {url}: {detail}",
        "Timeout": f"request to {url} timed out",
        "Connect": f"cannot connect to {url}: {detail}",
        "TooLarge": f"response from {url} over {detail} bytes",
        "BudgetExhausted": "HTTP request budget of this run is spent",
        "CircuitOpen": f"request to {url} not sent, circuit open: {detail}",
    }.get(kind, f"request to {url} failed: {detail}")


class Request:
    """A request being built: ``Request.get(url).header(k, v).send()``."""

    def __init__(self, method, url, body=None):
        self.method = method.upper()
        self.url = url
        self.headers = []
        self.body = body
        self.retryable_flag = False

    @classmethod
    def get(cls, url):
        return cls("GET", url)

    @classmethod
    def post(cls, url, body):
        return cls("POST", url, body)

    def header(self, name, value):
        self.headers.append((name, value))
        return self

    def retryable(self, yes=True):
        """Let the host retry this request after a transient failure even if
        its method is not idempotent (GET, HEAD, PUT, DELETE always are)."""
        self.retryable_flag = bool(yes)
        return self

    def send(self):
        if self.method not in _METHODS:
            raise HostError(f"unsupported HTTP method {self.method}")
        body = self.body.encode("utf-8") if isinstance(self.body, str) else self.body
        req = _http.Request(
            method=_METHODS[self.method],
            url=self.url,
            headers=list(self.headers),
            body=body,
            retryable=self.retryable_flag,
        )
        try:
            r = _http.send(req)
        except Err as e:
            # A transport failure the host's retries did not overcome is the
            # upstream's; anything else the host refused or stopped.
            kind = type(e.value).__name__.split("_", 1)[-1]
            if kind in _TRANSPORT_FAILURES:
                raise UpstreamError(_error_text(self.url, e)) from None
            raise HostError(_error_text(self.url, e)) from None
        return Response(r.status, r.headers, r.body)


def get_json(url):
    """GET ``url`` and decode a 2xx JSON body."""
    return Request.get(url).send().error_for_status().json()
