"""The function runtime on the real broker: poison events, kill -9 mid-batch, SIGTERM draining,
and the retry function's re-publish."""
import json
import signal
import time
import uuid

import pytest
from kafka import KafkaConsumer

from common import bus
from common.models import DeadLetter, User, db, now_ms

from tests.integration.conftest import wait_for


@pytest.fixture()
def producer(cfg):
    p = bus.make_producer(cfg)
    yield p
    p.close()


@pytest.fixture()
def replies(cfg, redis_client):
    """A private reply channel and the decoded replies that arrived on it."""
    channel = cfg.redis_key("test-replies", uuid.uuid4().hex[:8])
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    got: list[dict] = []

    def collect():
        while (message := pubsub.get_message(timeout=0.05)) is not None:
            got.extend(bus.unbatch(json.loads(message["data"])))
        return got

    collect.channel = channel
    yield collect
    pubsub.close()


def _request(channel, deadline_ms, body):
    """The request envelope a gateway produces (common/rpc.py)."""
    return {"request_id": uuid.uuid4().hex, "reply_to": channel, "deadline_ms": deadline_ms, "body": body}


def _register_request(channel, username):
    return _request(channel, now_ms() + 600_000, {"username": username, "password": "long-enough"})


def _users(prefix):
    with db.connection_context():
        return User.select().where(User.username.startswith(prefix)).count()


def test_poison_event_goes_to_the_dlq_and_the_good_ones_behind_it_are_processed(
        cfg, producer, replies, start_function):
    start_function("register")
    start_function("dlq")
    prefix = "p" + uuid.uuid4().hex[:6]
    poison = b"\x00this is not json " + prefix.encode()
    topic = cfg.topic("register")
    # Same key: one partition, so the good events really are behind the poison one.
    producer.send(topic, key=b"same", value=bus.encode(_register_request(replies.channel, prefix + "a")))
    producer.send(topic, key=b"same", value=poison)
    producer.send(topic, key=b"same", value=bus.encode(_register_request(replies.channel, prefix + "b")))
    producer.flush()

    got = wait_for(lambda: len(replies()) >= 2 and replies(), timeout=30, what="two replies")
    assert sorted(r["data"]["username"] for r in got) == [prefix + "a", prefix + "b"]

    def stored():
        with db.connection_context():
            return list(DeadLetter.select().where(DeadLetter.value == poison))
    letters = wait_for(stored, timeout=30, what="the poison event in the dead_letter table")
    assert len(letters) == 1
    letter = letters[0]
    assert letter.code == 50002 and letter.origin_topic == topic and bytes(letter.value) == poison

    consumer = KafkaConsumer(cfg.topic("dlq"), bootstrap_servers=list(cfg.kafka.brokers),
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    records = [r for r in consumer if r.value == poison]
    consumer.close()
    assert len(records) == 1
    assert bus.headers_to_dict(records[0].headers)[bus.H_ERROR_CODE] == "50002"


def test_worker_killed_mid_batch_loses_nothing_and_stores_nothing_twice(
        cfg, producer, replies, start_function):
    prefix = "k" + uuid.uuid4().hex[:6]
    total = 1500
    requests = [_register_request(replies.channel, f"{prefix}{i:05d}") for i in range(total)]
    for request in requests:
        producer.send(cfg.topic("register"), key=request["request_id"].encode(), value=bus.encode(request))
    producer.flush()

    worker = start_function("register", ready=False)
    wait_for(lambda: _users(prefix) >= 100, timeout=60, what="the worker to get going")
    worker.signal(signal.SIGKILL)
    worker.popen.wait()
    killed_at = _users(prefix)
    assert killed_at < total, "the worker finished before it was killed; raise `total`"

    start_function("register", ready=False)
    wait_for(lambda: _users(prefix) == total, timeout=120, what=f"all {total} users")
    got = wait_for(lambda: len({r["request_id"] for r in replies()}) == total and replies(),
                   timeout=60, what="a reply to every request")
    # Redelivered requests are answered with the user they created, never with "username taken".
    assert all(r["ok"] for r in got), [r for r in got if not r["ok"]][:3]
    assert _users(prefix) == total


def test_sigterm_drains_and_exits_zero(cfg, producer, replies, start_function):
    worker = start_function("register")
    prefix = "s" + uuid.uuid4().hex[:6]
    request = _register_request(replies.channel, prefix)
    producer.send(cfg.topic("register"), value=bus.encode(request))
    producer.flush()
    wait_for(lambda: replies(), timeout=30, what="a reply")
    started = time.monotonic()
    assert worker.stop(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert "function register stopped" in worker.log()


def test_retry_function_republishes_to_the_origin_when_due(cfg, producer, replies, start_function):
    start_function("register")
    start_function("retry")
    prefix = "r" + uuid.uuid4().hex[:6]
    delay_ms = 700
    sent_at = now_ms()
    producer.send(cfg.topic("retry"), value=bus.encode(_register_request(replies.channel, prefix)),
                  headers=bus.dict_to_headers({bus.H_ORIGIN_TOPIC: cfg.topic("register"),
                                               bus.H_ATTEMPT: 1, bus.H_DUE_MS: sent_at + delay_ms}))
    producer.flush()
    got = wait_for(lambda: replies(), timeout=30, what="the retried request's reply")
    assert got[0]["ok"] and got[0]["data"]["username"] == prefix
    assert now_ms() - sent_at >= delay_ms


def test_expired_request_is_dropped_without_side_effects(cfg, producer, replies, start_function):
    start_function("register")
    prefix = "x" + uuid.uuid4().hex[:6]
    stale = _request(replies.channel, now_ms() - 1, {"username": prefix, "password": "long-enough"})
    fresh = _register_request(replies.channel, prefix + "f")
    for request in (stale, fresh):
        producer.send(cfg.topic("register"), key=b"one", value=bus.encode(request))
    producer.flush()
    got = wait_for(lambda: replies(), timeout=30, what="the fresh request's reply")
    assert [r["data"]["username"] for r in got] == [prefix + "f"]
    assert _users(prefix) == 1


def test_a_worker_commits_what_it_finished_when_a_rebalance_takes_its_partitions(
        cfg, producer, replies, start_function):
    """Offsets go out every COMMIT_INTERVAL_MS; a rebalance in between must not hand finished
    records to the next owner: the revoked partitions are committed first (in the rebalance
    listener, which runs on kafka-python's IO thread), so nothing is processed twice."""
    first = start_function("register", COMMIT_INTERVAL_MS="60000")  # nothing committed on schedule
    prefix = "r" + uuid.uuid4().hex[:6]
    requests = [_register_request(replies.channel, f"{prefix}{i:03d}") for i in range(40)]
    for request in requests:
        producer.send(cfg.topic("register"), key=request["request_id"].encode(), value=bus.encode(request))
    producer.flush()
    wait_for(lambda: len(replies()) >= len(requests), timeout=60, what="a reply to every request")

    second = start_function("register", COMMIT_INTERVAL_MS="60000")  # joins: the first gives up a partition
    wait_for(lambda: first.log().count("partitions assigned") >= 2, timeout=60, what="the first to be reassigned")
    markers = [_register_request(replies.channel, f"{prefix}m{partition}") for partition in range(cfg.kafka.partitions)]
    for partition, marker in enumerate(markers):  # behind anything re-run in each partition
        producer.send(cfg.topic("register"), value=bus.encode(marker), partition=partition)
    producer.flush()
    marker_ids = {m["request_id"] for m in markers}
    wait_for(lambda: marker_ids <= {r["request_id"] for r in replies()}, timeout=60, what="the markers' replies")

    answered = [r["request_id"] for r in replies() if r["request_id"] not in marker_ids]
    assert sorted(answered) == sorted(r["request_id"] for r in requests)  # each exactly once
    for worker in (first, second):
        assert "Cannot block" not in worker.log() and "rebalance callback" not in worker.log()
