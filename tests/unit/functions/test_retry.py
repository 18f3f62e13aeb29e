"""retry by name: a failed event back on its origin topic, unchanged, once its due time has passed."""
import logging
import threading

import pytest

from common import bus
from common.errors import Code
from functions import retry
from functions.api import Context, Emit, Invalid, Transient
from tests.unit.functions.conftest import NOW, make_event

RAW = b'{"msg_id":"m-1"}'


def make_retry_event(due_ms=NOW, **headers):
    h = {bus.H_ORIGIN_TOPIC: "t.send", bus.H_ATTEMPT: 2, bus.H_DUE_MS: due_ms,
         bus.H_ERROR_CODE: 20001, **headers}
    return make_event("t.retry", RAW, key=b"k", headers={k: v for k, v in h.items() if v is not None})


class Waits(threading.Event):
    """A stop signal that records how long the handler waited instead of waiting."""

    def __init__(self, stopping=False):
        super().__init__()
        self.waits, self.stopping = [], stopping

    def wait(self, timeout=None):
        self.waits.append(timeout)
        return self.stopping


def test_a_due_event_goes_back_to_its_origin_unchanged_with_its_history(ctx, caplog):
    event = make_retry_event()
    with caplog.at_level(logging.INFO, logger="functions.retry"):
        assert retry.handle(event, ctx) == [Emit("t.send", RAW, b"k", event.headers)]
    assert caplog.messages == ["retry b'k' attempt=2 to t.send (last code=20001)"]


def test_an_early_event_waits_until_due_capped_at_the_longest_backoff(cfg):
    stop = Waits()
    ctx = Context(cfg, None, clock=lambda: NOW, stop=stop)
    retry.handle(make_retry_event(due_ms=NOW + 250), ctx)
    retry.handle(make_retry_event(due_ms=NOW + 10 * cfg.kafka.retry_max_backoff_ms), ctx)
    assert stop.waits == [0.25, cfg.kafka.retry_max_backoff_ms / 1000]


def test_a_shutdown_during_the_wait_leaves_the_event_uncommitted(cfg):
    ctx = Context(cfg, None, clock=lambda: NOW, stop=Waits(stopping=True))
    with pytest.raises(Transient) as raised:
        retry.handle(make_retry_event(due_ms=NOW + 250), ctx)
    assert raised.value.code == Code.KAFKA_ERROR


@pytest.mark.parametrize("headers", [{bus.H_ORIGIN_TOPIC: None}, {bus.H_DUE_MS: "soon"}])
def test_a_record_without_origin_or_due_time_is_invalid(ctx, headers):
    with pytest.raises(Invalid) as raised:
        retry.handle(make_retry_event(**headers), ctx)
    assert raised.value.code == Code.UNMARSHAL_FAILED
