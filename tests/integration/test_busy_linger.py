"""The gateway producer's linger while busy (common.bus.BusyLinger) on the real broker: the
kafka-python producer it tunes really holds a busy gateway's records for the linger, and sends a
quiet one's at once. The windows run on a clock the test moves; the producer's waits are real."""
import time

import pytest

from common import bus
from tests.unit.test_busy_linger import Clock

LINGER_MS = 3000  # long, so that "held for the linger" and "sent at once" cannot be confused


@pytest.fixture()
def producer(cfg):
    bus.ensure_topics(cfg, ["linger-test"])
    p = bus.make_producer(cfg)
    p.send(cfg.topic("linger-test"), b"metadata").get(timeout=30)  # the topic's leader known
    yield p
    p.close()


def acknowledged_after(producer, topic) -> float:
    started = time.monotonic()
    producer.send(topic, b"probe").get(timeout=30)
    return time.monotonic() - started


def test_a_busy_producer_holds_records_for_the_linger_and_a_quiet_one_sends_them_at_once(cfg, producer):
    topic, clock = cfg.topic("linger-test"), Clock()
    linger = bus.BusyLinger(producer, linger_ms=LINGER_MS, from_rate=300, window_s=0.25, clock=clock)

    linger.note()
    assert acknowledged_after(producer, topic) < LINGER_MS / 1000

    for _ in range(150):                     # 500 a second over 0.3 s
        clock.now += 0.002
        linger.note()
        producer.send(topic, b"busy")
    assert linger.lingering
    producer.flush(timeout=30)               # what the burst left is out; the next record starts a batch
    assert acknowledged_after(producer, topic) >= LINGER_MS / 1000

    clock.now += 30                          # a quiet spell
    linger.note()
    assert not linger.lingering
    assert acknowledged_after(producer, topic) < LINGER_MS / 1000
