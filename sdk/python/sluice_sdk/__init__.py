"""The Python SDK for Sluice source connectors.

A connector subclasses :class:`Connector` and exports it with
:func:`export`; componentize-py builds the component from the module's
``WitWorld`` class against the WIT world ``sluice:connector/source@0.1.0``
(bindings generated from ``wit/`` at build time). The concepts and names
follow the Rust SDK (``sdk/rust``): ``Spec``, ``Stream``, ``Reader.emit`` /
``state`` / ``commit`` / ``selected`` / ``set_batch_size``, ``http.get_json``,
``log``, and the errors ``ConfigError``, ``UpstreamError``, ``HostError`` and
``InternalError``.

    import sluice_sdk as sluice

    class Hello(sluice.Connector):
        @classmethod
        def spec(cls):
            return sluice.Spec("hello", "0.1.0").stream(
                sluice.Stream("greetings", {"type": "object",
                    "properties": {"id": {"type": "integer"}}})
                .primary_key(["id"]).incremental("id"))

        def read(self, config, reader):
            since = reader.state("greetings") or 0
            reader.emit("greetings", {"id": since + 1})   # batched
            reader.commit("greetings", since + 1)          # records + state, one transaction

    WitWorld = sluice.export(Hello)
"""

import json
import traceback
from enum import Enum

from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import sink as _sink
from wit_world.imports import state as _state
from wit_world.imports import types as _types

from . import http, log  # noqa: F401  (re-exported: sluice_sdk.http, sluice_sdk.log)
from .errors import ConfigError, Error, HostError, InternalError, UpstreamError  # noqa: F401

#: Records buffered per stream before one ``sink.emit`` host call.
DEFAULT_BATCH_SIZE = 500


class SyncMode(Enum):
    FULL_REFRESH = "full_refresh"
    INCREMENTAL = "incremental"

    def _wit(self):
        return {
            SyncMode.FULL_REFRESH: _types.SyncMode.FULL_REFRESH,
            SyncMode.INCREMENTAL: _types.SyncMode.INCREMENTAL,
        }[self]

    @staticmethod
    def _from_wit(mode):
        if mode == _types.SyncMode.INCREMENTAL:
            return SyncMode.INCREMENTAL
        return SyncMode.FULL_REFRESH


class Stream:
    """A stream a connector can read: name, record JSON Schema, primary key, cursor."""

    def __init__(self, name, schema):
        self.name = name
        self.schema = schema
        self.primary_key_fields = []
        self.cursor_field = None
        self.sync_modes = [SyncMode.FULL_REFRESH]

    def primary_key(self, fields):
        self.primary_key_fields = list(fields)
        return self

    def incremental(self, cursor_field):
        self.cursor_field = cursor_field
        if SyncMode.INCREMENTAL not in self.sync_modes:
            self.sync_modes.append(SyncMode.INCREMENTAL)
        return self

    def _wit(self):
        return _types.Stream(
            name=self.name,
            json_schema=json.dumps(self.schema),
            primary_key=list(self.primary_key_fields),
            cursor_field=self.cursor_field,
            sync_modes=[m._wit() for m in self.sync_modes],
        )


class Spec:
    """What a connector is: name, version, description, config schema, streams."""

    def __init__(self, name, version):
        self.name = name
        self.version = version
        self.description_text = ""
        self.config_schema_value = {"type": "object"}
        self.streams = []

    def description(self, text):
        self.description_text = text
        return self

    def config_schema(self, schema):
        self.config_schema_value = schema
        return self

    def stream(self, stream):
        self.streams.append(stream)
        return self

    def _wit(self):
        return _types.ConnectorSpec(
            name=self.name,
            version=self.version,
            description=self.description_text,
            config_schema=json.dumps(self.config_schema_value),
            streams=[s._wit() for s in self.streams],
        )


def _sink_error_text(e):
    v = e.value
    if isinstance(v, _sink.SinkError_UnknownStream):
        return f"unknown stream {v.value}"
    if isinstance(v, _sink.SinkError_InvalidRecord):
        return f"record {v.value[0]} invalid: {v.value[1]}"
    if isinstance(v, _sink.SinkError_TooLarge):
        return f"too large: {v.value}"
    return f"store: {getattr(v, 'value', v)}"


def _state_error_text(e):
    v = e.value
    if isinstance(v, _state.StateError_UnknownStream):
        return f"unknown stream {v.value}"
    if isinstance(v, _state.StateError_TooLarge):
        return f"state too large (over {v.value} bytes)"
    return f"store: {getattr(v, 'value', v)}"


class Reader:
    """The handle ``read`` gets: emit records, read and commit state.

    Records are buffered per stream and handed to the host in batches of
    ``DEFAULT_BATCH_SIZE`` (one host call per batch); ``commit`` flushes
    every buffer first, so the state commits together with every record
    emitted before it.
    """

    def __init__(self, streams):
        self._streams = streams
        self._buffers = {}
        self._batch_size = DEFAULT_BATCH_SIZE
        self.emitted = 0

    def streams(self):
        """The streams the operator selected: ``[(name, SyncMode)]``."""
        return list(self._streams)

    def selected(self, name):
        """The ``SyncMode`` of stream ``name`` if it was selected, else ``None``."""
        for n, mode in self._streams:
            if n == name:
                return mode
        return None

    def set_batch_size(self, n):
        self._batch_size = max(1, int(n))

    def emit(self, stream, record):
        """Buffer ``record`` (a dict, serialised as JSON) for ``stream``."""
        buf = self._buffers.setdefault(stream, [])
        buf.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        self.emitted += 1
        if len(buf) >= self._batch_size:
            self._send(stream)

    def _send(self, stream):
        buf = self._buffers.get(stream)
        if not buf:
            return
        self._buffers[stream] = []
        try:
            _sink.emit(stream, buf)
        except Err as e:
            raise HostError(f"sink refused a batch of {stream}: {_sink_error_text(e)}") from None

    def flush(self):
        """Hand every buffered record to the host."""
        for stream in list(self._buffers):
            self._send(stream)

    def state(self, stream):
        """The last committed state of ``stream`` (parsed JSON), or ``None``."""
        text = _state.get(stream)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as e:
            raise InternalError(f"saved state of {stream} is not JSON: {e}") from None

    def commit(self, stream, value):
        """Make every record emitted so far durable with ``value`` (JSON) as the state of ``stream``."""
        self.flush()
        try:
            _state.commit(stream, json.dumps(value, separators=(",", ":")))
        except Err as e:
            raise HostError(f"state commit of {stream} failed: {_state_error_text(e)}") from None


class Connector:
    """A source connector. Override ``spec`` (a classmethod) and ``read``;
    ``check`` and ``discover`` have defaults (accept; the spec's streams)."""

    @classmethod
    def spec(cls):
        raise NotImplementedError("a connector must define spec()")

    def check(self, config):
        """Validate the config; raise ``ConfigError`` if it is unusable."""

    def discover(self, config):
        """Streams available with ``config``; by default the spec's."""
        return type(self).spec().streams

    def read(self, config, reader):
        raise NotImplementedError("a connector must define read()")


def _parse_config(text):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"config is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError("config must be a JSON object")
    return value


def _connector_error(e):
    """An exception as the WIT ``connector-error`` the host reports."""
    if isinstance(e, ConfigError):
        return _types.ConnectorError_Config(str(e))
    if isinstance(e, UpstreamError):
        return _types.ConnectorError_Upstream(str(e))
    if isinstance(e, HostError):
        return _types.ConnectorError_Host(str(e))
    if isinstance(e, InternalError):
        return _types.ConnectorError_Internal(str(e))
    # Not an SDK error: a bug in the connector. Report it, don't trap.
    _log.log(_types.Level.ERROR, "".join(traceback.format_exception(e)).strip())
    return _types.ConnectorError_Internal(f"{type(e).__name__}: {e}")


def _guarded(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - every failure becomes a connector error
        raise Err(_connector_error(e)) from None


def export(connector_cls):
    """The ``WitWorld`` class componentize-py exports for ``connector_cls``."""

    class WitWorld:
        def spec(self):
            return connector_cls.spec()._wit()

        def check(self, config):
            return _guarded(lambda: connector_cls().check(_parse_config(config)))

        def discover(self, config):
            return _guarded(
                lambda: [s._wit() for s in connector_cls().discover(_parse_config(config))]
            )

        def read(self, config, streams):
            def run():
                reader = Reader([(s.name, SyncMode._from_wit(s.sync_mode)) for s in streams])
                connector_cls().read(_parse_config(config), reader)
                reader.flush()
                return _types.ReadSummary(records=reader.emitted)

            return _guarded(run)

        # The Python build exports `read` as `read-records` and renames it
        # back (see scripts/build-python-connectors.sh).
        read_records = read

    return WitWorld
