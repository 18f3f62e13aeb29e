"""Failure routing decisions, pure and clock-free: the caller passes ``now``.

:func:`classify` names a handler's failure (code, text, whether it can ever succeed);
:func:`route_failure` decides where the event goes: the retry topic, with its attempt count and due
time, while retries remain; the DLQ (:func:`dead_letter`, sensitive fields :func:`redact`-ed)
when they are exhausted (50006) or the event can never succeed; nowhere when the DLQ is disabled.
A failed event is retried ``max_attempts`` times with delays ``initial × multiplier^(n-1)`` capped
at ``max_backoff`` (:class:`RetryPolicy`).
"""
from __future__ import annotations

from dataclasses import dataclass

import peewee as pw
import redis

from common import bus
from common.config import Config, KafkaConfig
from common.errors import Code
from functions.api import Emit, Event, Invalid, Transient

# Errors of a shared dependency: the runtime checks whether it is down (an outage) before the
# event's own retries apply.
DEPENDENCY_ERRORS = (pw.OperationalError, pw.InterfaceError, redis.ConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_ms: int = 100
    multiplier: float = 2.0
    max_backoff_ms: int = 10_000

    @classmethod
    def from_config(cls, cfg: KafkaConfig) -> "RetryPolicy":
        return cls(cfg.retry_max_attempts, cfg.retry_initial_backoff_ms, cfg.retry_multiplier,
                   cfg.retry_max_backoff_ms)

    def delay_ms(self, attempt: int) -> int:
        """The delay before retry number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        delay = self.initial_backoff_ms * self.multiplier ** (attempt - 1)
        return int(min(delay, self.max_backoff_ms))

    def due_ms(self, retries_done: int, now_ms: int) -> int | None:
        """When the next retry may run, or None when the retries are exhausted."""
        if retries_done >= self.max_attempts:
            return None
        return now_ms + self.delay_ms(retries_done + 1)

    def schedule(self) -> list[int]:
        """Every delay in order, for docs and operators."""
        return [self.delay_ms(n) for n in range(1, self.max_attempts + 1)]


def error_text(exc: BaseException) -> str:
    """Type and a bounded message: enough to diagnose, never an event body."""
    return f"{type(exc).__name__}: {exc}"[:300]


def classify(exc: Exception) -> tuple[Code, str, bool]:
    """``(code, error text, permanent)`` of a handler's failure. Anything untyped is a bug or an
    unclassified server error (20003): retried like a transient failure."""
    if isinstance(exc, Invalid):
        return exc.code, str(exc), True
    if isinstance(exc, Transient):
        return exc.code, error_text(exc), False
    if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
        return Code.DATABASE_ERROR, error_text(exc), False
    if isinstance(exc, redis.ConnectionError):
        return Code.CACHE_ERROR, error_text(exc), False
    return Code.MESSAGE_PROCESSING_ERROR, error_text(exc), False


def dead_letter(record_topic: str, partition: int | None, offset: int | None, key, raw: bytes | None,
                headers: dict[str, str], code: Code, error: str, now: int, cfg: Config) -> Emit:
    """The DLQ output for a record, keeping its bytes and its failure history in headers."""
    meta = dict(headers)
    meta.update({
        bus.H_ORIGIN_TOPIC: headers.get(bus.H_ORIGIN_TOPIC) or record_topic,
        bus.H_ORIGIN_PARTITION: "" if partition is None else partition,
        bus.H_ORIGIN_OFFSET: "" if offset is None else offset,
        bus.H_ERROR_CODE: int(code),
        bus.H_ERROR: error,
        bus.H_FIRST_FAILED_MS: headers.get(bus.H_FIRST_FAILED_MS) or now,
    })
    return Emit(cfg.topic("dlq"), raw if raw is not None else b"", key, meta, timestamp_ms=now)


def route_failure(event: Event, code: Code, error: str, permanent: bool, policy: RetryPolicy,
                  cfg: Config, now: int, redact_fields: tuple[str, ...] = ()) -> Emit | None:
    """Where a failed event goes: the retry topic while retries remain, else the DLQ (or nowhere,
    when the DLQ is disabled) with ``redact_fields`` blanked. Pure: all inputs are passed in."""
    if not permanent:
        due = policy.due_ms(event.attempt, now)
        if due is not None:
            headers = dict(event.headers)
            headers.update({
                bus.H_ORIGIN_TOPIC: event.topic,
                bus.H_ATTEMPT: event.attempt + 1,
                bus.H_DUE_MS: due,
                bus.H_ERROR_CODE: int(code),
                bus.H_ERROR: error,
                bus.H_FIRST_FAILED_MS: event.headers.get(bus.H_FIRST_FAILED_MS) or now,
            })
            # Stamped with the failure's time, which the due time counts from: the record itself
            # goes out only after the rest of its batch is processed.
            return Emit(cfg.topic("retry"), event.raw or b"", event.key, headers, timestamp_ms=now)
        code, error = Code.RETRY_EXHAUSTED, f"{int(code)} {error}"
    if not cfg.kafka.enable_dlq:
        return None
    return dead_letter(event.topic, event.partition, event.offset, event.key,
                       redact(event.raw, redact_fields), event.headers, code, error, now, cfg)


def redact(raw: bytes | None, fields: tuple[str, ...]) -> bytes | None:
    """Blank sensitive fields of a JSON event before it is kept in the DLQ."""
    if not fields or raw is None:
        return raw
    try:
        value = bus.decode(raw)
    except ValueError:
        return raw
    for name in fields:
        if name in value:
            value[name] = "[redacted]"
    return bus.encode(value)
