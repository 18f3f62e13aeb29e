"""Pure messaging rules: send validation, routing keys, presence entries, fan-out grouping and the
gateway's frame handling (with a recording stand-in for the pipeline)."""
import json
from types import SimpleNamespace

import pytest

from common import chat, presence
from common.errors import AppError, Code
from common.ratelimit import ALLOWED


def test_valid_send_defaults_content_type():
    fields = chat.validate_send({"msg_id": "m1", "to_user_id": 7, "content": "hi"})
    assert fields == {"msg_id": "m1", "to_user_id": 7, "group_id": None, "content": "hi", "content_type": "text"}


@pytest.mark.parametrize("payload, field", [
    ({"to_user_id": 7, "content": "hi"}, "msg_id"),
    ({"msg_id": "x" * 65, "to_user_id": 7, "content": "hi"}, "msg_id"),
    ({"msg_id": "m", "content": "hi"}, "to_user_id"),
    ({"msg_id": "m", "to_user_id": 7, "group_id": 3, "content": "hi"}, "to_user_id"),
    ({"msg_id": "m", "to_user_id": "7", "content": "hi"}, "to_user_id"),
    ({"msg_id": "m", "group_id": True, "content": "hi"}, "group_id"),
    ({"msg_id": "m", "to_user_id": 7, "content": ""}, "content"),
    ({"msg_id": "m", "to_user_id": 7, "content": "x" * (chat.MAX_CONTENT + 1)}, "content"),
    ({"msg_id": "m", "to_user_id": 7, "content": "hi", "content_type": "system"}, "content_type"),
])
def test_invalid_send_names_the_field(payload, field):
    with pytest.raises(AppError) as info:
        chat.validate_send(payload)
    assert (info.value.code, info.value.field) == (Code.INVALID_PARAMS, field)


def test_route_key_is_one_per_conversation():
    assert chat.route_key(3, 9, None) == chat.route_key(9, 3, None) == "p3:9"
    assert chat.route_key(3, None, 12) == "g12"


@pytest.mark.parametrize("raw, expected", [(None, 50), ("", 50), ("10", 10), (200, 200)])
def test_page_limit(raw, expected):
    assert chat.page_limit(raw) == expected


@pytest.mark.parametrize("raw", ["0", "201", "ten"])
def test_bad_page_limit(raw):
    with pytest.raises(AppError):
        chat.page_limit(raw)


def test_presence_entries_expire_by_their_own_time():
    raw = {b"c1": b"gwA|2000", b"c2": b"gwB|999", b"c3": b"garbage"}
    live, expired = presence.live_entries(raw, now_ms=1000)
    assert live == {"c1": "gwA"}
    assert sorted(expired) == [b"c2", b"c3"]


def test_fan_out_is_one_batch_per_gateway_without_the_origin():
    connections = {1: {"a": "gw1", "b": "gw2"}, 2: {"c": "gw1"}, 3: {"d": "gw3"}}
    assert presence.group_by_gateway(connections, skip_conn="d") == {"gw1": ["a", "c"], "gw2": ["b"]}


class RecordingGateway:
    limiter = SimpleNamespace(check=lambda *hits: ALLOWED)  # rate limits: tests/integration/test_security.py

    def __init__(self):
        self.produced = []

    def produce(self, function, value, key, on_error=None, reply=False):
        self.produced.append((function, value, key, reply))


class Conn:
    user_id, conn_id, bucket, abuse = 5, "c5", None, None

    def __init__(self):
        self.pushed = []

    def push(self, text):
        self.pushed.append(json.loads(text))


def _handle(frame):
    from gateway import frames  # imports the gateway's ws module (flask-sock), no server needed
    gw, conn = RecordingGateway(), Conn()
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return [json.loads(out) for out in frames.handle(text, conn, gw)], gw.produced


def test_send_frame_goes_to_the_send_function_keyed_by_conversation():
    replies, produced = _handle({"type": "send", "payload": {"msg_id": "m1", "to_user_id": 9, "content": "hi"}})
    assert replies == []
    (function, value, key, reply), = produced
    assert (function, key, reply) == ("send", "p5:9", True)
    assert value["sender_id"] == 5 and value["conn_id"] == "c5" and value["msg_id"] == "m1"


@pytest.mark.parametrize("frame, ref", [
    ("{nope", None),
    ({"type": "fly"}, "fly"),
    ({"type": "send", "payload": {"msg_id": "m9", "to_user_id": 1}}, "m9"),
    ({"type": "ack", "payload": {"conversation_id": 1, "seq": -1}}, "ack"),
    ({"type": "ack", "payload": {"conversation_id": 1, "seq": 2, "ack_type": "seen"}}, "ack"),
    ({"type": "typing", "payload": {}}, "typing"),
    ({"type": "auth", "payload": {"token": "t"}}, "auth"),
])
def test_bad_frames_get_an_error_frame_with_ref(frame, ref):
    replies, produced = _handle(frame)
    assert produced == []
    assert replies[0]["type"] == "error" and replies[0]["payload"]["code"] == 10002
    assert replies[0]["payload"]["ref"] == ref


def test_ack_and_typing_go_to_deliver():
    _, produced = _handle({"type": "ack", "payload": {"conversation_id": 4, "seq": 2, "ack_type": "read"}})
    assert produced == [("deliver", {"kind": "ack", "conversation_id": 4, "user_id": 5, "seq": 2,
                                     "ack_type": "read"}, "4", False)]
    _, produced = _handle({"type": "typing", "payload": {"conversation_id": 4}})
    assert produced == [("deliver", {"kind": "typing", "conversation_id": 4, "user_id": 5}, "4", False)]


def test_ping_is_answered_with_server_time():
    replies, _ = _handle({"type": "ping", "payload": {}})
    assert replies[0]["type"] == "pong" and replies[0]["payload"]["server_ts"] > 0
