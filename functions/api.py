"""What a function's module imports: the handler API, apart from the engine that runs it.

A function is a module with ``handle(event, ctx)`` (and optionally ``handle_batch(events, ctx)``
and ``on_dead_letter(event, code, ctx)``) that returns the outputs to emit: :class:`Emit` for a
Kafka topic, :class:`Publish` for a gateway's Redis channel. It raises :class:`Invalid` for an
event that can never succeed, :class:`Transient` for one worth retrying, :class:`Outage` when a
shared dependency is down. Its options are one declared :class:`Spec` (``SPEC = Spec(...)``),
checked when its worker starts (:func:`spec_of`): a misspelt option is an error, never a no-op.
The engine (functions/runtime.py) owns the consumer, the producer, offsets and failure routing
(functions/policy.py); nothing here touches them.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Union

from common import bus
from common.config import Config
from common.errors import Code
from common.models import now_ms


@dataclass(frozen=True)
class Event:
    """One input record as a handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any                  # decoded JSON object, or the raw bytes for ``Spec(raw=True)`` functions
    raw: bytes | None
    headers: dict[str, str]
    timestamp_ms: int

    @property
    def attempt(self) -> int:
        """How many retries this event has had so far (0 on its first run)."""
        return int(self.headers.get(bus.H_ATTEMPT, "0") or 0)


@dataclass(frozen=True)
class Emit:
    """Produce ``value`` (a JSON-able object, or bytes as they are) to the Kafka topic ``topic``."""

    topic: str
    value: Any
    key: str | bytes | None = None
    headers: dict[str, object] = field(default_factory=dict)
    timestamp_ms: int | None = None  # the record's timestamp; None: when it is handed to the producer


@dataclass(frozen=True)
class Publish:
    """Publish ``value`` to a gateway's Redis channel."""

    channel: str
    value: Any


Output = Union[Emit, Publish]


class Invalid(Exception):
    """The event can never succeed (bad shape, unknown kind): send it to the DLQ now."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


class Transient(Exception):
    """A temporary failure (a server down, a timeout): retry the event later."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


class Outage(Transient):
    """A shared dependency (the database, Redis) is unreachable: not a property of the event. The
    batch is rewound and tried again until the dependency is back; no retry budget is spent."""


class Context:
    """What a handler may use besides the event: config, Redis, the clock, the stop signal."""

    def __init__(self, config: Config, redis_client=None, clock: Callable[[], int] = now_ms,
                 stop: threading.Event | None = None):
        self.config = config
        self.redis = redis_client
        self.now_ms = clock
        self.stop = stop or threading.Event()

    def topic(self, name: str) -> str:
        return self.config.topic(name)

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False when a shutdown cut the wait short."""
        return not self.stop.wait(max(0.0, seconds))


@dataclass(frozen=True)
class Spec:
    """A function's options, declared once in its module as ``SPEC = Spec(...)``.

    ``raw``: the event's ``value`` stays undecoded bytes. ``route_failures``: False makes a failure
    block the batch (rewound, tried again) instead of going to retry/DLQ (retry and dlq themselves).
    ``redact``: top-level fields blanked before an event is kept in the DLQ. ``max_records``: the
    poll batch size. An unknown keyword is a TypeError at import; a bad value a TypeError here.
    """

    raw: bool = False
    route_failures: bool = True
    redact: tuple[str, ...] = ()
    max_records: int = 200

    def __post_init__(self):
        if not isinstance(self.raw, bool) or not isinstance(self.route_failures, bool):
            raise TypeError("Spec: raw and route_failures are booleans")
        if not isinstance(self.redact, tuple) or not all(isinstance(f, str) and f for f in self.redact):
            raise TypeError(f"Spec: redact must be a tuple of field names, not {self.redact!r}")
        if isinstance(self.max_records, bool) or not isinstance(self.max_records, int) or self.max_records < 1:
            raise TypeError(f"Spec: max_records must be a positive integer, not {self.max_records!r}")


_UNDECLARED = ("RAW", "ROUTE_FAILURES", "REDACT", "MAX_RECORDS")  # options before Spec: now ignored


def spec_of(module: ModuleType) -> Spec:
    """The declared :class:`Spec` of a function module (the defaults when it declares none).
    TypeError for anything that looks like an option but would do nothing: a ``SPEC`` that is not
    a Spec, a Spec under another name, or an option left as a module global."""
    name = getattr(module, "__name__", "function")
    spec = getattr(module, "SPEC", Spec())
    if not isinstance(spec, Spec):
        raise TypeError(f"{name}.SPEC must be a functions.api.Spec, not {type(spec).__name__}")
    stray = sorted(attr for attr, value in vars(module).items()
                   if (isinstance(value, Spec) and attr != "SPEC") or attr in _UNDECLARED)
    if stray:
        raise TypeError(f"{name}: {', '.join(stray)} would be ignored; declare options as SPEC = Spec(...)")
    return spec
