"""A WebSocket frame fuzzer (hypothesis) against the live gateway and the send/deliver/retry/dlq
functions.

An attacker's socket gets random and structured frames — wrong types, huge and non-finite numbers,
deep nesting, lone surrogates, invalid UTF-8, binary frames, unknown types and fields — each followed
by a valid ``ping``. Pass criteria: every frame the server writes is a well-formed frame of the
protocol (an ``error`` carries a code of the table); a socket is closed only with a documented code
for what the client did (1007 invalid UTF-8, 1009 too large; never 1000 or 1011); the gateway stays up
with no traceback in its log; a canary conversation between two other users is unchanged; the DLQ
depth is unchanged once the pipeline is idle.

Bounded and seeded for `make test` (``FUZZ_FRAMES`` examples, default 150; derandomized). A longer run:
``FUZZ_FRAMES=5000 python -m pytest tests/integration/test_ws_fuzz.py`` (docs/SECURITY.md).
"""
from __future__ import annotations

import json
import os
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from common import auth, protocol
from common.errors import Code
from common.models import DeadLetter, Message, User, db, username_key
from tests.integration.conftest import wait_for
from tests.load import rawws

FRAMES = int(os.environ.get("FUZZ_FRAMES", "150"))
INT64 = 2 ** 63 - 1
CODES = {int(code) for code in Code}
ALLOWED_CLOSES = {1007, 1009}  # invalid UTF-8 in a text frame, a frame over 64 KiB: the client's fault


def make_user(cfg) -> tuple[int, str]:
    name = "w" + uuid.uuid4().hex[:12]
    with db.connection_context():
        user = User.create(username=name, username_key=username_key(name), password_hash="x")
    return user.id, auth.issue_token(user.id, cfg.jwt)


@pytest.fixture(scope="module")
def system(module_procs, cfg):
    for name in ("send", "deliver", "retry", "dlq"):
        module_procs.function(name)
    gw = module_procs.gateway()
    alice, bob, mallory = make_user(cfg), make_user(cfg), make_user(cfg)
    canary = []
    for i in range(3):
        ws = rawws.connect(gw.base.replace("http://", "ws://") + f"/ws?token={alice[1]}")
        assert json.loads(ws.receive(timeout=10))["type"] == "auth_ok"
        ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": uuid.uuid4().hex, "to_user_id": bob[0],
                                                             "content": f"canary {i}"}}))
        while True:
            frame = json.loads(ws.receive(timeout=15))
            if frame["type"] == "message_ack":
                canary.append(frame["payload"]["conversation_id"])
                break
        ws.close()
    return {"gw": gw, "alice": alice, "bob": bob, "mallory": mallory, "canary": canary[0],
            "known_ids": [alice[0], bob[0], mallory[0], canary[0]]}


def conversation_rows(conversation_id: int) -> list[tuple]:
    with db.connection_context():
        return [(m.seq, m.msg_id, m.sender_id, m.content, m.content_type, m.state) for m in
                Message.select().where(Message.conversation_id == conversation_id).order_by(Message.seq)]


def dlq_depth() -> int:
    with db.connection_context():
        return DeadLetter.select().count()


def pipeline_idle(cfg) -> bool:
    """Every event on the send, deliver, retry and dlq topics has been consumed (committed) by its
    function (an event that failed is then either stored or a dead letter)."""
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    consumer = KafkaConsumer(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        for name in ("send", "deliver", "retry", "dlq"):
            committed = admin.list_group_offsets(cfg.group(name))[cfg.group(name)]
            ends = consumer.end_offsets([TopicPartition(cfg.topic(name), p)
                                         for p in consumer.partitions_for_topic(cfg.topic(name))])
            if any(end > (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()):
                return False
        return True
    finally:
        admin.close()
        consumer.close()


# -- the frames -------------------------------------------------------------------------------------

IDS = st.one_of(st.integers(-5, 5), st.integers(INT64 - 2, INT64 + 2), st.integers(-(2 ** 70), 2 ** 70),
                st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                st.none(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=20)
KINDS = st.sampled_from([*protocol.CLIENT_FRAMES, "", "pong", "message", "SEND", "send\n", "x" * 300])
PAYLOAD = st.fixed_dictionaries({}, optional={
    "msg_id": st.one_of(st.text(max_size=70), IDS), "to_user_id": IDS, "group_id": IDS,
    "conversation_id": IDS, "seq": IDS, "after_seq": IDS, "cursor": IDS, "limit": IDS,
    "content": st.one_of(st.text(max_size=50), IDS), "content_type": st.one_of(st.text(max_size=20), IDS),
    "ack_type": st.one_of(st.sampled_from(["read", "delivered", "seen"]), IDS), "token": st.text(max_size=10),
    "target_msg_id": st.text(max_size=10), "emoji": st.text(max_size=12), "extra": JSON})


def _dump(value) -> str:
    return json.dumps(value, allow_nan=True)  # NaN and Infinity go out as such: the server must refuse them


STRUCTURED = st.builds(lambda kind, payload: _dump({"type": kind, "payload": payload}), KINDS, PAYLOAD | JSON)
RANDOM = JSON.map(_dump)
DEEP = st.integers(9, 20_000).map(lambda n: "[" * n + "]" * n)
SURROGATE = st.sampled_from(['{"type":"send","payload":{"msg_id":"\\ud800","to_user_id":1,"content":"x"}}',
                             '{"type":"sync","payload":{"\\udfff":1}}', '"\\udc00"', '{"type":"\\ud83d"}'])
TEXT = st.one_of(STRUCTURED, RANDOM, DEEP, SURROGATE, st.text(max_size=60))
# (opcode, bytes): text frames (some not UTF-8) and binary frames
FRAME = st.one_of(TEXT.map(lambda t: (rawws.OP_TEXT, t.encode("utf-8", "surrogatepass"))),
                  st.binary(max_size=64).map(lambda b: (rawws.OP_TEXT, b)),
                  st.binary(max_size=64).map(lambda b: (rawws.OP_BINARY, b)))


class Attacker:
    """Mallory's socket; reconnects after an allowed close."""

    def __init__(self, gw, token: str):
        self.url = gw.base.replace("http://", "ws://") + f"/ws?token={token}"
        self.ws = None
        self.closes: list[int] = []

    def socket(self):
        if self.ws is None:
            self.ws = rawws.connect(self.url)
            check_frame(self.ws.receive(timeout=10), expect="auth_ok")
        return self.ws

    def send_and_ping(self, opcode: int, data: bytes) -> None:
        ws = self.socket()
        ws._write(rawws.client_frame(opcode, data))
        try:
            ws.send_text('{"type":"ping","payload":{}}')
            while True:
                if check_frame(ws.receive(timeout=15)) == "pong":
                    return
        except (rawws.Closed, OSError):
            code = ws.close_status[0]
            self.ws = None
            assert code in ALLOWED_CLOSES, f"closed with {code} after {data[:200]!r}"
            self.closes.append(code)


def check_frame(raw: bytes, expect: str | None = None) -> str:
    frame = json.loads(raw)
    assert isinstance(frame, dict) and set(frame) == {"type", "payload"}, frame
    assert frame["type"] in protocol.SERVER_FRAMES and isinstance(frame["payload"], dict), frame
    if expect:
        assert frame["type"] == expect, frame
    if frame["type"] == "error":
        assert frame["payload"]["code"] in CODES and isinstance(frame["payload"]["message"], str), frame
        assert frame["payload"]["code"] < 20000 or frame["payload"]["code"] >= 30000, frame  # no infrastructure error
    return frame["type"]


def test_hostile_frames_leave_the_system_as_it_was(system, cfg):
    gw = system["gw"]
    canary_before, dlq_before = conversation_rows(system["canary"]), dlq_depth()
    attacker = Attacker(gw, system["mallory"][1])

    @given(FRAME, st.booleans(), st.sampled_from(system["known_ids"]))
    @settings(max_examples=FRAMES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(frame, aimed, known_id):
        opcode, data = frame
        if aimed and opcode == rawws.OP_TEXT:  # point ids at real users and the canary conversation
            data = data.replace(b'"to_user_id": 1', b'"to_user_id": %d' % known_id)
        attacker.send_and_ping(opcode, data)

    fuzz()
    # a valid send still works for the attacker afterwards
    ws = attacker.socket()
    msg_id = uuid.uuid4().hex
    ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": msg_id, "to_user_id": system["bob"][0],
                                                         "content": "still fine"}}))
    while check_frame(ws.receive(timeout=15)) != "message_ack":
        pass
    wait_for(lambda: pipeline_idle(cfg), timeout=60, what="send, deliver and retry to consume everything")
    assert gw.proc.popen.poll() is None, "the gateway exited"
    assert gw.call("GET", "/healthz")[0] == 200
    log = gw.proc.log()
    assert "Traceback" not in log and "code=20004" not in log, log[-3000:]
    assert conversation_rows(system["canary"]) == canary_before
    assert dlq_depth() == dlq_before


def test_hostile_first_frames_get_auth_fail_and_a_documented_close(system):
    """Before authentication: whatever the first frame is, the answer is ``auth_fail`` and close 4001
    (or 1007/1009 for what the WebSocket layer refuses) — never HTTP bytes in the upgraded socket
    (a rawws.ProtocolError here) and never a server error."""
    url = system["gw"].base.replace("http://", "ws://") + "/ws"

    @given(FRAME)
    @settings(max_examples=max(FRAMES // 3, 20), derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def first(frame):
        opcode, data = frame
        ws = rawws.connect(url)
        try:
            ws._write(rawws.client_frame(opcode, data))
            try:
                fail = ws.receive(timeout=15)
            except rawws.Closed as closed:
                assert closed.code in ALLOWED_CLOSES, (closed.code, data[:200])
                return
            check_frame(fail, expect="auth_fail")
            with pytest.raises(rawws.Closed) as closed:
                ws.receive(timeout=15)
            assert closed.value.code == 4001, data[:200]
        finally:
            ws.close()

    first()
    log = system["gw"].proc.log()
    assert "Traceback" not in log, log[-3000:]
