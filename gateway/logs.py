"""Log setup: one line per event, as text or JSON (``--log-format``)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, cast

from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogBeginner


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        node = getattr(record, "node", None)
        if node is not None:
            entry["node"] = node
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str, node_id: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{node_id}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The cluster layer logs through twisted.logger; until something begins logging, Twisted
    # only buffers those events, so "redis down", "redis up" and HMAC-reject warnings were
    # never printed. cast: zope interfaces confuse mypy (see examples/backend.py).
    globalLogBeginner.beginLoggingTo([cast(Any, _to_stdlib)], redirectStandardIO=False)


_LEVELS = {
    LogLevel.debug: logging.DEBUG,
    LogLevel.info: logging.INFO,
    LogLevel.warn: logging.WARNING,
    LogLevel.error: logging.ERROR,
    LogLevel.critical: logging.CRITICAL,
}


def _to_stdlib(event: LogEvent) -> None:
    """Forward one twisted.logger event to the stdlib logger named after its namespace.

    Below WARNING only the cluster layer's events: Twisted's own info chatter (an access-log
    line per /metrics scrape, "Starting factory ...") would drown the gateway's lines.
    """
    namespace = str(event.get("log_namespace") or "twisted")
    level = _LEVELS.get(event.get("log_level", LogLevel.info), logging.INFO)
    if level < logging.WARNING and not namespace.startswith("gateway.cluster"):
        return
    logger = logging.getLogger(namespace)
    if not logger.isEnabledFor(level):
        return
    failure = event.get("log_failure")
    exc_info = None
    if failure is not None:
        exc_info = (failure.type, failure.value, failure.getTracebackObject())
    logger.log(level, "%s", formatEvent(event), exc_info=exc_info)
