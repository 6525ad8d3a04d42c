"""Connector errors, reported to the host as the WIT ``connector-error``
variant (never a trap). Any other exception escaping the connector is
reported as ``internal`` with its type and message (and its traceback in
the run log)."""


class Error(Exception):
    """Base of the connector errors."""


class ConfigError(Error):
    """The config is invalid."""


class UpstreamError(Error):
    """The upstream failed or answered something unusable."""


class HostError(Error):
    """A host capability refused (HTTP denied, sink or state error)."""


class InternalError(Error):
    """Anything else."""
