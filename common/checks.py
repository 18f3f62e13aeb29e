"""Dependency checks behind the gateway's ``/health`` and a function worker's ``/readyz``.

Each check is cheap (one round trip or one TCP connect, bounded by the clients' connect timeouts:
database 5 s, Redis 2 s, Kafka 1 s per broker) and raises when its dependency is unreachable.
:func:`run` runs several and reports each as ``{"ok": bool, "ms": float[, "error": type name]}``;
only the exception's type is reported, so no address or credential leaves the process.
"""
from __future__ import annotations

import socket
import time
from typing import Callable

from common.config import Config
from common.models import db


def run(checks: dict[str, Callable[[], object]]) -> dict[str, dict]:
    """Run each check; a check that raises means its dependency is down."""
    results = {}
    for name, check in checks.items():
        started = time.monotonic()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # any failure of a check means "down"
            results[name] = {"ok": False, "error": type(exc).__name__}
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    return results


def database() -> None:
    """The database answers ``SELECT 1`` (on a connection of the calling thread's own)."""
    with db.connection_context():
        db.execute_sql("SELECT 1")


def brokers(cfg: Config) -> None:
    """A Kafka broker accepts connections."""
    errors = []
    for broker in cfg.kafka.brokers:
        host, _, port = broker.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError as exc:
            errors.append(exc)
    raise ConnectionError(f"no broker reachable: {errors[-1]}")


def dependencies(cfg: Config, redis_client) -> dict[str, Callable[[], object]]:
    """The checks of the database, Redis and Kafka, by name (``db``, ``redis``, ``kafka``)."""
    return {"db": database, "redis": redis_client.ping, "kafka": lambda: brokers(cfg)}
