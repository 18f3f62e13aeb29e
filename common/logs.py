"""Logging set-up for every process: one line per record on stderr, level from ``LOG_LEVEL``
(default INFO), format from ``LOG_FORMAT``: ``text`` (the default) or ``json``.

Text: ``time level process[pid] logger[ cid=…]: message``.
JSON: one object per line with ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``process``
(the name given to :func:`setup`: ``gateway``, ``fn-send``, …), ``pid``, ``logger``, ``message``,
``cid`` when there is one and ``exception`` (the formatted traceback) when there is one.

Correlation id (``cid``): the gateway makes one per client request (an HTTP request or a WebSocket
frame). It travels with the request's Kafka events in the ``pingme-cid`` header (common/bus.py);
the function runtime puts it back into the context while it handles such an event and copies it
onto the event's Kafka outputs (send → deliver, the retry topic, the DLQ). While one is set
(:func:`correlation`) every record of that context carries it.

Never logged: message bodies, passwords and tokens (callers log ids and codes only). Libraries
that would log them stay above DEBUG whatever ``LOG_LEVEL`` says: peewee logs every query with its
parameters (message bodies, password hashes) at DEBUG.
"""
from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, Mapping

FORMATS = ("text", "json")
_cid: contextvars.ContextVar[str | None] = contextvars.ContextVar("pingme_cid", default=None)


def new_cid() -> str:
    return uuid.uuid4().hex[:16]


def current_cid() -> str | None:
    return _cid.get()


def bind(cid: str | None) -> contextvars.Token:
    """Set the correlation id of this context until :func:`unbind` with the returned token."""
    return _cid.set(cid)


def unbind(token: contextvars.Token) -> None:
    _cid.reset(token)


@contextmanager
def correlation(cid: str | None) -> Iterator[str | None]:
    """Every record logged inside carries ``cid`` (None: none)."""
    token = bind(cid)
    try:
        yield cid
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Adds ``cid`` (and ``cid_text`` for the text format) to every record of its handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        cid = _cid.get()
        record.cid = cid
        record.cid_text = f" cid={cid}" if cid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, process_name: str):
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self.process_name,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "cid", None)
        if cid:
            entry["cid"] = cid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format(env: Mapping[str, str] = os.environ) -> str:
    value = env.get("LOG_FORMAT", "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def config(name: str, env: Mapping[str, str] = os.environ) -> dict:
    """The ``logging.config.dictConfig`` of a process called ``name`` (gunicorn's master takes it
    as ``logconfig_dict``, so its own lines and the access log are formatted alike)."""
    if log_format(env) == "json":
        formatter = {"()": JsonFormatter, "process_name": name}
    else:
        formatter = {"format": f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s%(cid_text)s: %(message)s"}
    above_debug = {"level": "INFO", "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"pingme": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "pingme", "filters": ["context"]}},
        "root": {"level": env.get("LOG_LEVEL", "INFO").upper(), "handlers": ["stderr"]},
        "loggers": {
            # kafka-python is chatty at INFO (every connection and rebalance step).
            "kafka": {"level": "WARNING", "handlers": [], "propagate": True},
            "peewee": above_debug,  # every query with its parameters at DEBUG
            # gunicorn's own loggers go through the handler above; its DEBUG prints every setting.
            "gunicorn.error": above_debug,
            "gunicorn.access": above_debug,
        },
    }


def setup(name: str) -> None:
    logging.config.dictConfig(config(name))
