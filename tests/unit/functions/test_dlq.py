"""dlq by name: a dead letter in, one ``dead_letter`` row (idempotent on its DLQ coordinates) and
its log line out."""
import logging

from common import bus
from common.errors import Code
from common.models import DeadLetter
from functions import dlq
from tests.unit.functions.conftest import NOW, make_event

RAW = b'{"msg_id":"m-1"}'


def make_dlq_event(**headers):
    h = {bus.H_ORIGIN_TOPIC: "t.send", bus.H_ORIGIN_PARTITION: 3, bus.H_ORIGIN_OFFSET: 17,
         bus.H_ATTEMPT: 3, bus.H_ERROR_CODE: int(Code.RETRY_EXHAUSTED),
         bus.H_ERROR: "20001 OperationalError: gone", bus.H_FIRST_FAILED_MS: NOW - 900, **headers}
    return make_event("t.dlq", RAW, key=b"k", headers={k: v for k, v in h.items() if v is not None})


def test_a_dead_letter_is_stored_with_its_history_and_logged(ctx, database, caplog):
    event = make_dlq_event()
    with caplog.at_level(logging.WARNING, logger="functions.dlq"):
        assert dlq.handle(event, ctx) == []
    assert caplog.messages == ["dead letter from t.send code=50006 attempts=3 stored"]
    [row] = DeadLetter.select()
    assert (row.dlq_topic, row.dlq_partition, row.dlq_offset) == ("t.dlq", 0, event.offset)
    assert (row.origin_topic, row.origin_partition, row.origin_offset) == ("t.send", 3, 17)
    assert (bytes(row.key), bytes(row.value), row.code, row.error) == (b"k", RAW, 50006, "20001 OperationalError: gone")
    assert (row.attempts, row.first_failed_at, row.last_failed_at, row.replayed_at) == (3, NOW - 900, NOW, None)


def test_a_redelivered_dead_letter_is_stored_once(ctx, database):
    event = make_dlq_event()
    dlq.handle(event, ctx)
    dlq.handle(event, ctx)
    assert DeadLetter.select().count() == 1


def test_an_undecodable_event_keeps_its_code_and_missing_headers_get_defaults(ctx, database, caplog):
    event = make_dlq_event(**{bus.H_ERROR_CODE: 50002, bus.H_ATTEMPT: None, bus.H_ORIGIN_PARTITION: "",
                              bus.H_FIRST_FAILED_MS: None})
    with caplog.at_level(logging.WARNING, logger="functions.dlq"):
        dlq.handle(event, ctx)
    assert caplog.messages == ["dead letter from t.send code=50002 attempts=0 stored"]
    [row] = DeadLetter.select()
    assert (row.code, row.attempts, row.origin_partition, row.first_failed_at) == (50002, 0, None, None)
    no_code = make_dlq_event(**{bus.H_ERROR_CODE: None})
    dlq.handle(no_code, ctx)
    assert DeadLetter.get(DeadLetter.dlq_offset == no_code.offset).code == int(Code.KAFKA_ERROR)
