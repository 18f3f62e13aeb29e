"""The runtime's decisions, driven with in-memory stand-ins for the Kafka clients and a fake
clock; the pure parts (failure routing, the commit schedule, the declared spec) without either.

The same paths run against a real broker in tests/integration/test_runtime_kafka.py."""
import importlib
import threading
import types
from collections import namedtuple

import peewee as pw
import pytest
import redis
from kafka.errors import KafkaConnectionError
from kafka.structs import TopicPartition

from common import bus
from common.config import load
from common.errors import Code
from functions import FUNCTIONS
from functions.api import Emit, Event, Invalid, Publish, Spec, Transient, spec_of
from functions.commits import CommitSchedule
from functions.policy import RetryPolicy, classify, redact, route_failure
from functions.runtime import Worker

Record = namedtuple("Record", "topic partition offset key value headers timestamp")
CFG = load({"APP_CONF": "/dev/null", "PINGME_NAMESPACE": "t"})


def test_backoff_schedule_grows_and_caps():
    policy = RetryPolicy(max_attempts=6, initial_backoff_ms=100, multiplier=2.0, max_backoff_ms=1000)
    assert policy.schedule() == [100, 200, 400, 800, 1000, 1000]
    assert policy.due_ms(0, now_ms=5000) == 5100
    assert policy.due_ms(5, now_ms=5000) == 6000
    assert policy.due_ms(6, now_ms=5000) is None
    with pytest.raises(ValueError):
        policy.delay_ms(0)


def _event(value=b'{"a":1}', attempt=0, headers=None):
    h = dict(headers or {})
    if attempt:
        h[bus.H_ATTEMPT] = str(attempt)
    return Event("t.send", 3, 17, b"k", None, value, h, 0)


def test_transient_failure_goes_to_retry_with_its_history():
    out = route_failure(_event(), Code.DATABASE_ERROR, "db down", False, RetryPolicy(), CFG, now=1000)
    assert out.topic == "t.retry" and out.value == b'{"a":1}' and out.key == b"k"
    assert out.headers[bus.H_ORIGIN_TOPIC] == "t.send"
    assert out.headers[bus.H_ATTEMPT] == 1
    assert out.headers[bus.H_DUE_MS] == 1100
    assert out.headers[bus.H_ERROR_CODE] == 20001
    assert out.headers[bus.H_FIRST_FAILED_MS] == 1000


def test_last_retry_goes_to_dlq_as_exhausted_with_redaction():
    event = _event(value=b'{"body":{"password":"pw"},"x":1}', attempt=3,
                   headers={bus.H_FIRST_FAILED_MS: "900", bus.H_ORIGIN_TOPIC: "t.send"})
    out = route_failure(event, Code.DATABASE_ERROR, "db down", False, RetryPolicy(), CFG, now=5000,
                        redact_fields=("body",))
    assert out.topic == "t.dlq"
    assert out.headers[bus.H_ERROR_CODE] == int(Code.RETRY_EXHAUSTED)
    assert out.headers[bus.H_FIRST_FAILED_MS] == "900"
    assert out.headers[bus.H_ORIGIN_PARTITION] == 3 and out.headers[bus.H_ORIGIN_OFFSET] == 17
    assert b"pw" not in out.value and bus.decode(out.value)["x"] == 1


def test_permanent_failure_skips_retries_and_dlq_can_be_disabled():
    out = route_failure(_event(), Code.UNMARSHAL_FAILED, "bad", True, RetryPolicy(), CFG, now=1)
    assert out.topic == "t.dlq" and out.headers[bus.H_ERROR_CODE] == 50002
    no_dlq = load({"APP_CONF": "/dev/null", "ENABLE_DLQ": "false"})
    assert route_failure(_event(), Code.UNMARSHAL_FAILED, "bad", True, RetryPolicy(), no_dlq, now=1) is None


def test_failures_are_classified_by_type_and_an_untyped_one_is_a_retried_bug():
    assert classify(Invalid(Code.UNMARSHAL_FAILED, "bad")) == (Code.UNMARSHAL_FAILED, "bad", True)
    assert classify(Transient(Code.PERSIST_FAILED, "x")) == (Code.PERSIST_FAILED, "Transient: x", False)
    assert classify(pw.OperationalError("gone")) == (Code.DATABASE_ERROR, "OperationalError: gone", False)
    assert classify(redis.ConnectionError("refused")) == (Code.CACHE_ERROR, "ConnectionError: refused", False)
    assert classify(KeyError("k")) == (Code.MESSAGE_PROCESSING_ERROR, "KeyError: 'k'", False)
    assert len(classify(ValueError("x" * 1000))[1]) == 300  # bounded: never a whole event body


def test_redact_leaves_undecodable_bytes_alone():
    assert redact(b"\xff\x00", ("body",)) == b"\xff\x00"
    assert redact(b'{"a":1}', ()) == b'{"a":1}'


class FakeConsumer:
    def __init__(self, batches):
        self.batches = list(batches)
        self.committed, self.seeks = [], []
        self.commit_errors: list = []   # exceptions handed to the next commit callbacks
        self.owned = {TP, TP1}

    def poll(self, timeout_ms, max_records):
        return self.batches.pop(0) if self.batches else {}

    def commit_async(self, offsets, callback=None):
        self.committed.append({tp: meta.offset for tp, meta in offsets.items()})
        if self.commit_errors and callback is not None:
            callback(offsets, self.commit_errors.pop(0))

    def assignment(self):
        return self.owned

    def seek(self, tp, offset):
        self.seeks.append((tp, offset))


class FakeFuture:
    def __init__(self, ok=True):
        self.is_done, self._ok, self.exception = True, ok, None if ok else RuntimeError("down")

    def failed(self):
        return not self._ok


class FakeProducer:
    def __init__(self, fail_topics=()):
        self.sent, self.fail_topics, self.timestamps = [], set(fail_topics), []

    def send(self, topic, value, key, headers, timestamp_ms=None):
        self.sent.append((topic, value, key, dict(headers)))
        self.timestamps.append(timestamp_ms)
        return FakeFuture(topic not in self.fail_topics)

    def flush(self, timeout):
        pass


class FakeRedis:
    def __init__(self):
        self.published = []

    def pipeline(self, transaction):
        return self

    def publish(self, channel, value):
        self.published.append((channel, value))

    def execute(self):
        pass


class FakeTime:
    """The worker's two clocks, moved by the test: wall milliseconds and monotonic seconds."""

    def __init__(self, ms=1_700_000_000_000, s=1000.0):
        self.ms, self.s = ms, s

    def now_ms(self):
        return self.ms

    def monotonic(self):
        return self.s


def _worker(handle, batches, producer=None, config=CFG, time=None, **attrs):
    module = types.SimpleNamespace(handle=handle, **attrs)
    stop = threading.Event()
    stop.set()  # makes the rewind wait return at once
    time = time or FakeTime()
    return Worker("send", module, config, FakeConsumer(batches), producer or FakeProducer(), FakeRedis(),
                  stop, clock=time.now_ms, monotonic=time.monotonic)


TP = TopicPartition("t.send", 0)
TP1 = TopicPartition("t.send", 1)


def _rec(offset, value):
    return Record("t.send", 0, offset, b"k", value, [], 0)


def test_poison_record_goes_to_dlq_and_the_good_ones_behind_it_are_processed():
    seen = []

    def handle(event, ctx):
        seen.append(event.value["n"])
        return [Emit("t.deliver", {"n": event.value["n"]}), Publish("t:gw:g1", {"n": event.value["n"]})]

    worker = _worker(handle, [{TP: [_rec(0, b'{"n":0}'), _rec(1, b"\xffnot json"), _rec(2, b'{"n":2}')]}])
    assert worker.run_once() == 3
    assert worker.consumer.committed == []  # not before the broker acknowledged the outputs
    assert worker.run_once() == 0           # the next poll: acknowledged, committed
    assert seen == [0, 2]
    topics = [sent[0] for sent in worker.producer.sent]
    assert topics == ["t.deliver", "t.dlq", "t.deliver"]
    dlq = worker.producer.sent[1]
    assert dlq[1] == b"\xffnot json" and dlq[3][bus.H_ERROR_CODE] == b"50002"
    # Both publishes to the gateway's channel travel as one Redis message, in order.
    assert [(channel, bus.decode(value)) for channel, value in worker.redis.published] == [
        ("t:gw:g1", {"type": "batch", "items": [{"n": 0}, {"n": 2}]})]
    assert worker.consumer.committed == [{TP: 3}]


def test_a_retry_record_is_stamped_with_its_failure_time_which_its_due_time_counts_from():
    time = FakeTime()
    failed_at = time.ms

    def handle(event, ctx):
        if event.value["n"] == 0:
            raise Transient(Code.DATABASE_ERROR, "db down")
        time.ms += 50  # the rest of the batch takes a while before its outputs go out
        return [Emit("t.deliver", {"n": event.value["n"]})]

    worker = _worker(handle, [{TP: [_rec(0, b'{"n":0}'), _rec(1, b'{"n":1}')]}], time=time)
    worker.run_once()
    retry = worker.producer.sent[0][3]
    assert worker.producer.sent[0][0] == "t.retry" and worker.producer.timestamps[0] == failed_at
    assert int(retry[bus.H_DUE_MS]) == failed_at + worker.policy.delay_ms(1)
    assert int(retry[bus.H_FIRST_FAILED_MS]) == failed_at
    assert worker.producer.timestamps[1] is None  # ordinary outputs: the producer's clock


def test_handler_errors_are_routed_by_type():
    def handle(event, ctx):
        kind = event.value["kind"]
        if kind == "invalid":
            raise Invalid(Code.UNMARSHAL_FAILED, "no recipient")
        if kind == "transient":
            raise Transient(Code.PERSIST_FAILED, "db down")
        raise KeyError("bug")

    batch = {TP: [_rec(0, b'{"kind":"invalid"}'), _rec(1, b'{"kind":"transient"}'), _rec(2, b'{"kind":"bug"}')]}
    worker = _worker(handle, [batch])
    assert worker.run_once() == 3
    routed = [(topic, headers[bus.H_ERROR_CODE]) for topic, _, _, headers in worker.producer.sent]
    assert routed == [("t.dlq", b"50002"), ("t.retry", b"50003"), ("t.retry", b"20003")]


def test_failed_dlq_handoff_is_never_committed_past():
    later = {TP: [_rec(7, b'{"ok":2}')], TP1: [_rec(3, b'{"ok":3}')]}
    worker = _worker(lambda e, c: [], [{TP: [_rec(5, b"garbage"), _rec(6, b'{"ok":1}')]}, later],
                     producer=FakeProducer(fail_topics={"t.dlq"}))
    assert worker.run_once() == 2
    assert worker.run_once() == 0  # the DLQ refused: this batch and the one polled after it go back
    assert worker.consumer.committed == []
    assert worker.consumer.seeks == [(TP, 5), (TP1, 3)]


def test_non_routing_function_blocks_instead_of_retrying():
    def handle(event, ctx):
        raise Transient(Code.DATABASE_ERROR, "db down")

    worker = _worker(handle, [{TP: [_rec(0, b'{"a":1}')]}], SPEC=Spec(route_failures=False))
    assert worker.run_once() == 0
    assert worker.producer.sent == [] and worker.consumer.committed == []
    assert worker.consumer.seeks == [(TP, 0)]


def test_redis_failure_blocks_the_batch():
    class DownRedis(FakeRedis):
        def execute(self):
            raise ConnectionError("redis down")

    worker = _worker(lambda e, c: [Publish("t:gw:1", {"x": 1})], [{TP: [_rec(0, b'{"a":1}')]}])
    worker.redis = DownRedis()
    assert worker.run_once() == 0
    assert worker.consumer.committed == [] and worker.consumer.seeks == [(TP, 0)]


def test_batch_handler_outputs_keep_record_order_and_leave_the_rest_to_handle():
    calls = []

    def handle(event, ctx):
        calls.append(("one", event.value["n"]))
        raise Invalid(Code.UNMARSHAL_FAILED, "bad")

    def handle_batch(events, ctx):
        calls.append(("batch", [e.value["n"] for e in events]))
        return [None if e.value.get("bad") else [Emit("t.deliver", {"n": e.value["n"]})] for e in events]

    batch = {TP: [_rec(0, b'{"n":0}'), _rec(1, b"not json"), _rec(2, b'{"n":2,"bad":1}'), _rec(3, b'{"n":3}')]}
    worker = _worker(handle, [batch], handle_batch=handle_batch)
    assert worker.run_once() == 4
    worker.run_once()
    assert calls == [("batch", [0, 2, 3]), ("one", 2)]
    assert [(topic, value) for topic, value, _, _ in worker.producer.sent] == [
        ("t.deliver", b'{"n":0}'), ("t.dlq", b"not json"), ("t.dlq", b'{"n":2,"bad":1}'),
        ("t.deliver", b'{"n":3}')]
    assert worker.consumer.committed == [{TP: 4}]


def test_failed_batch_is_processed_one_event_at_a_time():
    def handle_batch(events, ctx):
        raise KeyError("bug in the batch path")

    def handle(event, ctx):
        return [Emit("t.deliver", {"n": event.value["n"]})]

    worker = _worker(handle, [{TP: [_rec(0, b'{"n":0}'), _rec(1, b'{"n":1}')]}], handle_batch=handle_batch)
    assert worker.run_once() == 2
    assert [value for _, value, _, _ in worker.producer.sent] == [b'{"n":0}', b'{"n":1}']


def test_a_poll_that_raises_is_retried_not_fatal():
    class FlakyConsumer(FakeConsumer):
        def poll(self, timeout_ms, max_records):
            if not self.failed:
                self.failed = True
                raise KafkaConnectionError("111 ECONNREFUSED")
            return super().poll(timeout_ms, max_records)

    worker = _worker(lambda e, c: [], [])
    worker.consumer = FlakyConsumer([{TP: [_rec(0, b'{"a":1}')]}])
    worker.consumer.failed = False
    assert worker.run_once() == 0  # the broker is away: nothing processed, nothing raised
    assert worker.run_once() == 1 and worker.consumer.committed == [{TP: 1}]


def test_offsets_are_committed_at_most_once_per_interval_and_an_idle_worker_commits_the_rest():
    config = load({"APP_CONF": "/dev/null", "PINGME_NAMESPACE": "t", "COMMIT_INTERVAL_MS": "60000"})
    time = FakeTime()
    worker = _worker(lambda e, c: [], [{TP: [_rec(0, b'{"a":1}')]}, {TP: [_rec(1, b'{"a":2}')]},
                                       {TP1: [_rec(0, b'{"a":3}')]}], config=config, time=time)
    assert worker.run_once() == 1 and worker.consumer.committed == [{TP: 1}]  # the first goes out
    time.s += 59.9
    assert worker.run_once() == 1 and worker.run_once() == 1
    assert worker.consumer.committed == [{TP: 1}]       # the others wait for the interval
    time.s += 0.1                                        # ... to pass
    assert worker.run_once() == 0                        # an empty poll commits what is finished
    assert worker.consumer.committed == [{TP: 1}, {TP: 2, TP1: 1}]


def test_a_failed_commit_is_sent_again_by_an_idle_worker_for_the_partitions_it_still_owns():
    time = FakeTime()
    interval = CFG.kafka.commit_interval_ms / 1000
    worker = _worker(lambda e, c: [], [{TP: [_rec(0, b'{"a":1}')], TP1: [_rec(4, b'{"a":2}')]}], time=time)
    worker.consumer.commit_errors = [RuntimeError("rebalance in progress")]
    assert worker.run_once() == 2 and worker.consumer.committed == [{TP: 1, TP1: 5}]  # failed
    worker.consumer.owned = {TP}   # TP1 went to another worker meanwhile: its offset is theirs now
    time.s += interval
    assert worker.run_once() == 0 and worker.consumer.committed[-1] == {TP: 1}
    time.s += interval
    assert worker.run_once() == 0 and len(worker.consumer.committed) == 2  # done: nothing again


# -- the commit schedule, pure -------------------------------------------------------------------

def test_commit_schedule_sends_what_is_done_at_most_once_per_interval():
    schedule = CommitSchedule(interval_s=5)
    assert schedule.due(now=0, owned={TP}) == {}                  # nothing done yet
    schedule.finished({TP: 3})
    assert schedule.due(now=0, owned={TP}) == {TP: 3}
    schedule.finished({TP: 7})
    assert not schedule.ready(now=4.9) and schedule.ready(now=5)
    assert schedule.due(now=4.9, owned={TP}) == {}                # not before the interval
    assert schedule.due(now=5, owned={TP}) == {TP: 7}
    assert schedule.due(now=50, owned={TP}) == {}                 # sent: not again


def test_commit_schedule_resends_a_failed_commit_unless_a_later_batch_moved_on():
    schedule = CommitSchedule(interval_s=1)
    schedule.finished({TP: 3, TP1: 9})
    sent = schedule.due(now=0, owned={TP, TP1})
    schedule.finished({TP: 5})                                    # TP moved on meanwhile
    schedule.failed(sent)
    assert schedule.due(now=1, owned={TP, TP1}) == {TP: 5, TP1: 9}
    schedule.failed({TP1: 9})
    assert schedule.due(now=2, owned={TP}) == {}                  # TP1 is another worker's now
    assert schedule.final(owned={TP, TP1}) == {TP: 5, TP1: 9} and schedule.final(owned={TP}) == {TP: 5}


def test_a_late_failure_of_an_older_commit_never_sends_the_partition_back():
    """The rewind helper-k8s's autoscaling test found after a scale-in: the answer to an older
    commit failing after a newer one went out must not queue the older offset again."""
    schedule = CommitSchedule(interval_s=1)
    schedule.finished({TP: 3})
    first = schedule.due(now=0, owned={TP})
    schedule.finished({TP: 5})
    assert schedule.due(now=1, owned={TP}) == {TP: 5}
    schedule.failed(first)                                        # the first one's late answer
    assert schedule.due(now=2, owned={TP}) == {}


def test_a_revoked_partition_is_committed_then_forgotten_so_it_comes_back_clean():
    schedule = CommitSchedule(interval_s=1)
    schedule.finished({TP: 3, TP1: 9})
    assert schedule.due(now=0, owned={TP, TP1}) == {TP: 3, TP1: 9}
    schedule.finished({TP: 4})
    assert schedule.revoked({TP}) == {TP: 4}                      # finished, not sent: commit it now
    schedule.failed({TP: 3})                                      # an answer about it after letting go
    assert schedule.due(now=1, owned={TP, TP1}) == {}
    # TP comes back (another worker moved it on meanwhile): closing commits nothing old for it
    assert schedule.final(owned={TP, TP1}) == {TP1: 9}
    schedule.finished({TP: 40})
    assert schedule.due(now=2, owned={TP, TP1}) == {TP: 40}


# -- the declared spec ---------------------------------------------------------------------------

def test_every_function_declares_a_valid_spec():
    for name in FUNCTIONS:
        spec = spec_of(importlib.import_module(f"functions.{name}"))
        assert isinstance(spec, Spec), name
    assert spec_of(importlib.import_module("functions.retry")) == Spec(raw=True, route_failures=False)


@pytest.mark.parametrize("make", [
    lambda: Spec(max_record=1),           # misspelt option
    lambda: Spec(redact="body"),          # a string, not a tuple of names
    lambda: Spec(max_records=0),
    lambda: Spec(raw="yes"),
])
def test_a_misspelt_or_bad_option_fails_when_declared(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("attrs", [{"MAX_RECORDS": 1}, {"SPECS": Spec()}, {"SPEC": {"raw": True}}])
def test_a_worker_refuses_options_that_would_do_nothing(attrs):
    with pytest.raises(TypeError):
        _worker(lambda e, c: [], [], **attrs)
