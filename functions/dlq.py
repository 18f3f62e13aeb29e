"""dlq — store dead letters for operators to inspect and replay.

Input: topic ``<ns>.dlq``: an event the pipeline gave up on, raw bytes and key as they were, with
the origin topic/partition/offset, error code (50002 undecodable, 50006 retries exhausted, …),
error text, attempts and first failure time in its headers.
Output: a ``dead_letter`` row; nothing is emitted.
Idempotency: the record's own DLQ coordinates (topic, partition, offset) are unique in the table.
Failures: if the row cannot be stored, nothing is committed and the batch is tried again.
"""
import logging

from common import bus
from common.errors import Code
from common.models import DeadLetter
from functions.api import Spec

SPEC = Spec(raw=True, route_failures=False)
logger = logging.getLogger(__name__)


def _int(text: str | None):
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def handle(event, ctx):
    h = event.headers
    code = _int(h.get(bus.H_ERROR_CODE)) or int(Code.KAFKA_ERROR)
    DeadLetter.insert(
        dlq_topic=event.topic, dlq_partition=event.partition, dlq_offset=event.offset,
        origin_topic=h.get(bus.H_ORIGIN_TOPIC) or "", origin_partition=_int(h.get(bus.H_ORIGIN_PARTITION)),
        origin_offset=_int(h.get(bus.H_ORIGIN_OFFSET)), key=event.key, value=event.raw, code=code,
        error=h.get(bus.H_ERROR, ""), attempts=event.attempt,
        first_failed_at=_int(h.get(bus.H_FIRST_FAILED_MS)), last_failed_at=event.timestamp_ms,
    ).on_conflict_ignore().execute()
    logger.warning("dead letter from %s code=%d attempts=%d stored", h.get(bus.H_ORIGIN_TOPIC), code,
                   event.attempt)
    return []
