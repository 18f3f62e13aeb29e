"""The pure parts of probes and metrics: what /healthz and /readyz answer for a given worker state
(over a real HTTP server in this process), which runtime decisions move which counter, the frame
types the gateway counts, and the probe ports of ``python -m functions all``.

The same paths against running processes and a real Prometheus: tests/integration/test_probes_metrics.py."""
import json
import logging
import threading
import types
import urllib.error
import urllib.request

import pytest
from kafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from common.config import load
from common.errors import Code
from common.models import init_db
from common.migrations import migrate
from functions import metrics as fn_metrics
from functions.__main__ import probe_port
from functions.probes import Probes, WorkerState, start_server
from functions.api import Invalid, Transient
from gateway import metrics as gw_metrics
from tests.unit.test_runtime import TP, TP1, FakeProducer, Record, _worker


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def samples(exposition: bytes) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition.decode()) for s in family.samples}


def value(exposition: bytes, name: str, **labels) -> float:
    return samples(exposition).get((name, frozenset(labels.items())), 0.0)


# -- probes ---------------------------------------------------------------------------------------

def _probes(checks=None, clock=None, **kw):
    clock = clock or Clock()
    state = WorkerState(clock)
    return Probes(state, checks if checks is not None else {"db": lambda: None}, threading.Event(),
                  stale_after_s=70, clock=clock, **kw), state, clock


def test_liveness_turns_503_when_the_loop_stops_coming_round():
    probes, state, clock = _probes()
    clock.now += 69
    assert probes.health()[0] == 200       # start-up counts as a beat
    clock.now += 2
    status, body = probes.health()
    assert (status, body["status"]) == (503, "wedged")
    state.beat()
    assert probes.health()[0] == 200


def test_readiness_needs_an_assignment_reachable_dependencies_and_no_drain():
    def redis_down():
        raise ConnectionError("refused")
    probes, state, clock = _probes({"db": lambda: None, "redis": redis_down})
    status, body = probes.readiness()
    assert status == 503 and body["not_ready"] == ["group", "redis"]
    assert body["checks"]["redis"]["error"] == "ConnectionError" and body["checks"]["db"]["ok"]
    state.assigned = True
    probes.checks["redis"] = lambda: None
    clock.now += probes.cache_s  # the cached checks expire: Redis is asked again
    assert probes.readiness() == (200, {**probes.readiness()[1], "not_ready": []})
    probes.stop.set()
    assert probes.readiness()[1]["not_ready"] == ["running"]


def test_dependency_checks_run_at_most_once_per_cache_period():
    calls = []
    probes, state, clock = _probes({"db": lambda: calls.append(1)}, cache_s=2.0)
    for _ in range(5):
        probes.readiness()
    assert len(calls) == 1
    clock.now += 2.0
    probes.readiness()
    assert len(calls) == 2


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers["Content-Type"]


def test_the_probe_server_answers_over_http():
    probes, state, clock = _probes()
    server = start_server(probes, lambda: b"pingme_x 1\n", "text/plain; version=0.0.4", "127.0.0.1", 0)
    base = "http://127.0.0.1:%d" % server.server_address[1]
    try:
        assert _get(base + "/healthz")[0] == 200
        status, body, ctype = _get(base + "/readyz")
        assert (status, ctype, json.loads(body)["not_ready"]) == (503, "application/json", ["group"])
        assert _get(base + "/metrics") == (200, b"pingme_x 1\n", "text/plain; version=0.0.4")
        assert _get(base + "/nope")[0] == 404
        clock.now += 71  # the loop wedged: liveness fails, so the orchestrator restarts the worker
        assert _get(base + "/healthz")[0] == 503
    finally:
        server.shutdown()
        server.server_close()


def test_each_child_of_functions_all_gets_its_own_port():
    assert [probe_port(name, 9100) for name in ("register", "login", "send", "deliver", "retry", "dlq")] == \
        [9100, 9101, 9102, 9103, 9104, 9105]
    assert probe_port("send", 0) == 0


# -- the runtime's counters ----------------------------------------------------------------------

def _rec(offset, value=b'{"a":1}', tp=TP):
    return Record(tp.topic, tp.partition, offset, b"k", value, [], 0)


def _delta(before, name, **labels):
    return value(fn_metrics.exposition(), name, **labels) - value(before, name, **labels)


def test_finished_events_failures_retries_and_dead_letters_are_counted_by_code():
    def handle(event, ctx):
        if event.value.get("bad"):
            raise Invalid(Code.INVALID_PARAMS, "bad")
        if event.value.get("flaky"):
            raise Transient(Code.DATABASE_ERROR, "db")
        return []
    batch = {TP: [_rec(0), _rec(1, b'{"bad":1}'), _rec(2, b'{"flaky":1}'), _rec(3, b"not json")]}
    before = fn_metrics.exposition()
    worker = _worker(handle, [batch])
    assert worker.run_once() == 4
    worker.run_once()  # the outputs are acknowledged while the next poll waits; then it is finished
    assert _delta(before, "pingme_events_processed_total", function="send") == 4
    assert _delta(before, "pingme_events_failed_total", function="send", code="10002") == 1
    assert _delta(before, "pingme_events_failed_total", function="send", code="20001") == 1
    assert _delta(before, "pingme_events_failed_total", function="send", code="50002") == 1
    assert _delta(before, "pingme_events_retried_total", function="send", code="20001") == 1
    assert _delta(before, "pingme_events_dead_lettered_total", function="send", code="10002") == 1
    assert _delta(before, "pingme_events_dead_lettered_total", function="send", code="50002") == 1
    assert _delta(before, "pingme_handler_seconds_count", function="send", call="handle") == 3
    assert _delta(before, "pingme_batch_seconds_count", function="send") == 1


def test_exhausted_retries_are_dead_lettered_as_50006():
    def handle(event, ctx):
        raise Transient(Code.DATABASE_ERROR, "db")
    before = fn_metrics.exposition()
    worker = _worker(handle, [{TP: [_rec(0)]}])
    worker.policy = types.SimpleNamespace(due_ms=lambda attempt, now: None, max_attempts=0)
    worker.run_once()
    assert _delta(before, "pingme_events_dead_lettered_total", function="send", code="50006") == 1
    assert _delta(before, "pingme_events_retried_total", function="send", code="20001") == 0


def test_a_rewound_batch_and_a_failed_commit_are_counted_and_the_batch_counts_once_finished():
    before = fn_metrics.exposition()
    producer = FakeProducer(fail_topics={"t.out"})
    from functions.api import Emit
    worker = _worker(lambda event, ctx: [Emit("t.out", {"x": 1})], [{TP: [_rec(0)]}, {}], producer=producer)
    worker.run_once()
    worker.run_once()  # the broker refused the output: rewound, not finished
    assert _delta(before, "pingme_batch_rewinds_total", function="send", code=str(int(Code.PRODUCER_ERROR))) == 1
    assert _delta(before, "pingme_events_processed_total", function="send") == 0
    committing = _worker(lambda event, ctx: [], [{TP: [_rec(0)]}])
    committing.consumer.commit_errors = [RuntimeError("coordinator moved")]
    committing.run_once()
    assert _delta(before, "pingme_commit_failures_total", function="send") == 1


def test_a_failed_handle_batch_is_counted_and_logged_with_its_traceback(caplog):
    def handle_batch(events, ctx):
        raise KeyError("bug in the batch path")
    before = fn_metrics.exposition()
    worker = _worker(lambda e, c: [], [{TP: [_rec(0), _rec(1)]}], handle_batch=handle_batch)
    with caplog.at_level(logging.ERROR, logger="functions.runtime"):
        assert worker.run_once() == 2
    assert _delta(before, "pingme_batch_fallbacks_total", function="send") == 1
    [record] = [r for r in caplog.records if "handle_batch" in r.getMessage()]
    assert record.getMessage() == "function send handle_batch of 2 events failed; processing them one by one"
    assert record.exc_info and record.exc_info[0] is KeyError


def test_handle_batch_time_is_observed_per_call():
    before = fn_metrics.exposition()
    worker = _worker(lambda e, c: [], [{TP: [_rec(0), _rec(1)], TP1: [_rec(0, tp=TP1)]}],
                     handle_batch=lambda events, ctx: [[] for _ in events])
    worker.run_once()
    assert _delta(before, "pingme_handler_seconds_count", function="send", call="handle_batch") == 1
    assert _delta(before, "pingme_handler_seconds_count", function="send", call="handle") == 0


class LagConsumer:
    def __init__(self, highwater, position):
        self.hw, self.pos = highwater, position

    def assignment(self):
        return set(self.hw)

    def highwater(self, tp):
        return self.hw[tp]

    def position(self, tp, timeout_ms=None):
        assert timeout_ms == 0  # a metrics update never waits on the network
        return self.pos.get(tp)


def test_lag_is_highwater_minus_position_and_revoked_partitions_disappear():
    lags = fn_metrics.partition_lags(LagConsumer({TP: 10, TP1: None}, {TP: 7, TP1: 3}))
    assert lags == {TP: 3}  # TP1's high watermark is not known yet (no fetch answered)
    m = fn_metrics.FunctionMetrics("lagtest")
    m.set_lags({TP: 3, TP1: 0})
    assert value(fn_metrics.exposition(), "pingme_consumer_lag", function="lagtest", topic="t.send", partition="0") == 3
    m.set_lags({TP1: 5})
    exposed = samples(fn_metrics.exposition())
    assert ("pingme_consumer_lag", frozenset({"function": "lagtest", "topic": "t.send", "partition": "0"}.items())) \
        not in exposed
    assert exposed[("pingme_consumer_lag", frozenset({"function": "lagtest", "topic": "t.send",
                                                        "partition": "1"}.items()))] == 5


# -- the gateway's counters ----------------------------------------------------------------------

@pytest.fixture
def gateway_db(tmp_path):
    """pingme_dlq_depth is read from the database at every scrape: an empty SQLite one."""
    init_db(load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "t.db")}).db)
    migrate()


@pytest.mark.parametrize("text, kind", [
    ('{"type":"message_ack","payload":{}}', "message_ack"),
    ('{"type":"presence","payload":{"user_id":1}}', "presence"),
    ('{"type":"made_up","payload":{}}', "other"),
    ('{"payload":{},"type":"pong"}', "other"),
    ("not json", "other"),
])
def test_frame_types_are_read_from_the_text_without_decoding(text, kind):
    assert gw_metrics.frame_type(text) == kind


def test_client_frame_types_outside_the_protocol_do_not_grow_the_series(gateway_db):
    before = gw_metrics.exposition()
    for kind in ("send", "x" * 100, 'evil"} 1\n', None):
        gw_metrics.frame_in(kind)
    after = gw_metrics.exposition()
    assert value(after, "pingme_ws_frames_in_total", type="send") - value(before, "pingme_ws_frames_in_total", type="send") == 1
    assert value(after, "pingme_ws_frames_in_total", type="unknown") - value(before, "pingme_ws_frames_in_total", type="unknown") == 3
    assert {dict(labels)["type"] for name, labels in samples(after) if name == "pingme_ws_frames_in_total"} == \
        set(gw_metrics.FRAMES_IN_TYPES)


def test_a_slow_reader_drop_is_counted(gateway_db):
    from gevent import socket

    from gateway.ws import Connection, SocketWriter, ws_frame
    server, client = socket.socketpair()
    conn = Connection(types.SimpleNamespace(sock=SocketWriter(server), connected=True), user_id=1, limit=5)
    before = gw_metrics.exposition()
    big = '{"type":"message","payload":"' + "y" * 60_000 + '"}'
    pushed = 0
    while conn.push(big):
        pushed += 1
    after = gw_metrics.exposition()
    assert value(after, "pingme_ws_slow_reader_drops_total") - value(before, "pingme_ws_slow_reader_drops_total") == 1
    assert value(after, "pingme_ws_frames_out_total", type="message") - \
        value(before, "pingme_ws_frames_out_total", type="message") == pushed
    assert not conn.push(ws_frame("late").decode(errors="replace"))  # gone: nothing more is written
    client.close()


def test_the_gateway_counts_its_live_greenlets(gateway_db):
    import gevent
    import gevent.event

    assert value(gw_metrics.exposition(), "pingme_gateway_greenlets") >= 0  # in the scrape
    counter = gw_metrics.Greenlets(max_age_s=0)
    release = gevent.event.Event()
    gevent.sleep(0)  # the hub exists before the first count
    before = counter.live()
    waiting = [gevent.spawn(release.wait) for _ in range(25)]
    gevent.sleep(0)  # started, and parked on the event
    assert counter.live() - before == 25
    release.set()
    gevent.joinall(waiting)
    del waiting
    assert counter.live() == before  # finished ones are not counted


def test_the_greenlet_count_is_walked_at_most_every_max_age():
    now = [1000.0]
    counter = gw_metrics.Greenlets(max_age_s=300, clock=lambda: now[0])
    first = counter.live()
    counter.count = first + 7  # what a new walk would not find: shows whether it walked again
    now[0] += 299
    assert counter.live() == first + 7  # served from the last walk
    now[0] += 1
    assert counter.live() == first  # walked again
