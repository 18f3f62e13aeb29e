"""An idle function worker must stay idle when its broker stalls (issue 15).

kafka-python 3.0.12's poll spun (hundreds of fetch rounds a second, 20-90 % of a core) whenever a
heartbeat went unanswered for longer than the heartbeat interval; common/bus.py's
``_uncap_fetch_wait`` is the fix. Here the idle dlq and retry workers' broker (a private one, so
no other session's broker is touched) is stopped with SIGSTOP, which keeps every connection open
and unanswered, then resumed; each worker's CPU is read from /proc during the stall and over the
30 s after it. Marked slow (about 75 s, most of it the private broker's start and the two windows).
"""
from __future__ import annotations

import time

import pytest

from tests.integration.private_kafka import PrivateKafka
from tests.load.procstats import CLOCK_TICKS, read_stat

pytestmark = pytest.mark.slow
STALL_S = 15
AFTER_S = 30
MAX_CPU_PCT = 5.0  # idle, a worker uses ~1 % of a core (its 200 ms poll loop); the spin used 20-90 %


@pytest.fixture
def kafka(tmp_path):
    broker = PrivateKafka(tmp_path / "state")
    broker.run("start")
    yield broker
    try:
        broker.resume()
    finally:
        broker.run("stop")


def _cpu_pct(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU (% of one core) over the next ``seconds``."""
    before = {name: read_stat(pid).ticks for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)  # the measuring window itself, not a wait for a condition
    wall = time.monotonic() - started
    return {name: round(100 * (read_stat(pid).ticks - before[name]) / CLOCK_TICKS / wall, 1)
            for name, pid in pids.items()}


def test_idle_workers_do_not_spin_while_their_broker_stalls_or_after(kafka, start_function):
    pids = {name: start_function(name, KAFKA_BROKERS=kafka.brokers).popen.pid for name in ("dlq", "retry")}
    idle = _cpu_pct(pids, 5)
    kafka.pause()
    try:
        stalled = _cpu_pct(pids, STALL_S)
    finally:
        kafka.resume()
    after = _cpu_pct(pids, AFTER_S)
    print(f"CPU % of a core: idle {idle}, broker stalled {STALL_S} s {stalled}, the {AFTER_S} s after {after}")
    assert max(stalled.values()) < MAX_CPU_PCT, stalled
    assert max(after.values()) < MAX_CPU_PCT, after
