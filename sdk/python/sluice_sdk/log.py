"""Logging into the host's log, tagged with run id and connector."""

from wit_world.imports import log as _log
from wit_world.imports import types as _types


def trace(message):
    _log.log(_types.Level.TRACE, str(message))


def debug(message):
    _log.log(_types.Level.DEBUG, str(message))


def info(message):
    _log.log(_types.Level.INFO, str(message))


def warn(message):
    _log.log(_types.Level.WARN, str(message))


def error(message):
    _log.log(_types.Level.ERROR, str(message))
