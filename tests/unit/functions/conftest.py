"""What a function's unit test needs to call its handler by name: an in-memory SQLite database
behind the models' proxy (common/models.py), a config, a context with a fixed clock and an
in-memory presence store, and :func:`make_event`, which the per-function factories build on.

The same handlers run against MariaDB, Redis and Kafka in tests/integration."""
from __future__ import annotations

import itertools
import threading

import peewee as pw
import pytest

from common import bus, chat
from common.config import load
from common.models import MODELS, User, db, username_key
from functions.api import Context, Event

NOW = 1_700_000_000_000  # the context's clock: every handler sees this time
_offsets = itertools.count()


@pytest.fixture
def database():
    database = pw.SqliteDatabase(":memory:")
    db.initialize(database)
    db.create_tables(MODELS)
    # Private conversations are cached per process (rows that never change); a fresh database per
    # test reuses their ids, so the cache must start empty too.
    chat.forget_cached_conversations()
    yield database
    db.close()
    db.initialize(None)


@pytest.fixture
def file_database(tmp_path):
    """The same, in a file: for a test in which the runtime reconnects (memory would start empty)."""
    database = pw.SqliteDatabase(str(tmp_path / "functions.db"))
    db.initialize(database)
    db.create_tables(MODELS)
    chat.forget_cached_conversations()
    yield database
    db.close()
    db.initialize(None)


@pytest.fixture
def cfg():
    return load({"APP_CONF": "/dev/null", "PINGME_NAMESPACE": "t", "PASSWORD_ITERATIONS": "1000"})


class MemoryRedis:
    """The hash commands presence uses (common/presence.py), in memory: a stand-in for Redis in
    unit tests only; tests/integration runs deliver against a real server."""

    def __init__(self):
        self.hashes: dict[str, dict[str, str]] = {}
        self._queued: list = []

    def pipeline(self, transaction=False):
        return self

    def hset(self, key, field, value):
        self._queued.append(lambda: self.hashes.setdefault(key, {}).__setitem__(field, value))

    def pexpire(self, key, ms):
        self._queued.append(lambda: True)

    def hgetall(self, key):
        self._queued.append(lambda: dict(self.hashes.get(key, {})))

    def hdel(self, key, *fields):
        self._queued.append(lambda: [self.hashes.get(key, {}).pop(f, None) for f in fields])

    def execute(self):
        queued, self._queued = self._queued, []
        return [run() for run in queued]


@pytest.fixture
def ctx(cfg):
    """The handler's context: config, an in-memory presence store, the clock at :data:`NOW`."""
    return Context(cfg, MemoryRedis(), clock=lambda: NOW, stop=threading.Event())


def make_event(topic: str, value, *, key: bytes | None = None, headers: dict | None = None,
               timestamp_ms: int = NOW) -> Event:
    """An input record as the runtime hands it to a handler: ``value`` decoded, ``raw`` its bytes
    (``value`` given as bytes stays raw, as for RAW functions)."""
    raw = value if isinstance(value, bytes) else bus.encode(value)
    return Event(topic, 0, next(_offsets), key, value, raw,
                 {name: str(v) for name, v in (headers or {}).items()}, timestamp_ms)


def make_user(name: str) -> int:
    """A stored user (no usable password) and its id."""
    return User.create(username=name, username_key=username_key(name), password_hash="x").id
