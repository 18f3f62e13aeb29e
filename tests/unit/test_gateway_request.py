"""The gateway's request/reply wait (``Gateway.request``, what an HTTP send and the auth calls use):
one wait for whichever comes first, the function's answer through the inbox or Kafka refusing the
event; and the inbox's waiter. A fake producer stands in for Kafka (its futures are kafka-python's
own), so these run without servers."""
import threading

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from common import config
from common.errors import AppError, Code
from gateway.app import Gateway
from gateway.inbox import Inbox, Waiter


class NoRedis:
    """The rate limiter registers its script at start-up; nothing here calls Redis."""

    def register_script(self, _source):
        return None


class Producer:
    """Records what is produced; each send's future stays pending until the test settles it."""

    def __init__(self, on_send=None):
        self.sent: list[tuple[str, bytes, Future]] = []
        self.on_send = on_send

    def send(self, topic, key=None, value=None, headers=None):
        future = Future()
        self.sent.append((topic, value, future))
        if self.on_send is not None:
            self.on_send(value, future)
        return future


def gateway(tmp_path, producer, timeout_ms=5000) -> Gateway:
    cfg = config.load({"APP_CONF": "/dev/null", "DB_PATH": str(tmp_path / "x.db"), "PINGME_NAMESPACE": "unit",
                       "KAFKA_REQUEST_TIMEOUT_MS": str(timeout_ms), "RATE_LIMIT_ENABLED": "false"})
    return Gateway(cfg, producer, redis_client=NoRedis(), inbox=Inbox(None, "unit:gw:test"))


def request_id_of(value: bytes) -> str:
    import json
    return json.loads(value)["request_id"]


def test_the_answer_is_returned_without_waiting_for_the_brokers_acknowledgement(tmp_path):
    """The function's reply arrives while Kafka has not answered for the produce yet (its future
    never completes here): the request returns the reply at once."""
    holder = {}

    def reply(value, _future):
        holder["id"] = request_id_of(value)
        threading.Timer(0.05, lambda: gw.inbox.dispatch({"type": "reply", "request_id": holder["id"],
                                                         "ok": True, "data": {"seq": 1}})).start()
    gw = gateway(tmp_path, Producer(reply))
    answer = gw.request("send", {"msg_id": "m1"}, "p1:2")
    assert answer == {"type": "reply", "request_id": holder["id"], "ok": True, "data": {"seq": 1}}
    [(topic, value, future)] = gw.producer.sent
    assert topic == "unit.send" and not future.is_done
    assert holder["id"] not in gw.inbox._waiters  # forgotten once answered


def test_kafka_refusing_the_event_answers_50008_at_once(tmp_path):
    gw = gateway(tmp_path, Producer(lambda _value, future: threading.Timer(
        0.05, lambda: future.failure(KafkaTimeoutError("expired"))).start()))
    with pytest.raises(AppError) as err:
        gw.request("send", {"msg_id": "m1"}, "p1:2")
    assert err.value.code == Code.PRODUCER_ERROR


def test_no_answer_within_the_timeout_is_10008(tmp_path):
    gw = gateway(tmp_path, Producer(), timeout_ms=200)
    with pytest.raises(AppError) as err:
        gw.request("send", {"msg_id": "m1"}, "p1:2")
    assert err.value.code == Code.TIMEOUT
    assert not gw.inbox._waiters


def test_a_waiter_keeps_the_first_answer():
    waiter = Waiter()
    with pytest.raises(TimeoutError):
        waiter.get(timeout=0.01)
    waiter.put({"ok": True})
    waiter.put({"ok": False})  # a late second answer (a redelivered request's) changes nothing
    assert waiter.get(timeout=0) == {"ok": True}
