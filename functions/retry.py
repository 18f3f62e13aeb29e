"""retry — put a failed event back on its origin topic once its backoff has passed.

Input: topic ``<ns>.retry``. The record is the failed event's original bytes and key; its headers
carry the origin topic, the attempt number, the due time and the last error (functions/policy.py
writes them). Output: the same bytes, key and headers on the origin topic, at or after the due time.
Idempotency: none needed here; the origin function is idempotent on its own key.
Waiting: events are handled in order, sleeping until each is due. Every delay is capped at
``kafka.retry_max_backoff_ms``, so an event already due waits behind another by at most that cap,
and the cap is kept below the consumer's poll interval. A record without an origin or due time is
invalid (50002) and goes to the DLQ. If the re-publish fails, nothing is committed (50008).
"""
import logging

from common import bus
from common.errors import Code
from functions.api import Emit, Invalid, Spec, Transient

SPEC = Spec(raw=True, route_failures=False)
logger = logging.getLogger(__name__)


def handle(event, ctx):
    origin = event.headers.get(bus.H_ORIGIN_TOPIC)
    try:
        due = int(event.headers[bus.H_DUE_MS])
    except (KeyError, ValueError):
        due = None
    if not origin or due is None:
        raise Invalid(Code.UNMARSHAL_FAILED, "retry record without origin topic or due time")
    wait_ms = min(due - ctx.now_ms(), ctx.config.kafka.retry_max_backoff_ms)
    if wait_ms > 0 and not ctx.sleep(wait_ms / 1000):
        raise Transient(Code.KAFKA_ERROR, "shutting down before the event was due")
    logger.info("retry %s attempt=%s to %s (last code=%s)", event.key, event.attempt, origin,
                event.headers.get(bus.H_ERROR_CODE))
    return [Emit(origin, event.raw, event.key, event.headers)]
