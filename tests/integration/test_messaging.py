"""Chat end to end: WebSocket clients on two gateway processes (gunicorn, gevent), the send and
deliver functions as separate processes, real Kafka, Redis and MariaDB."""
from __future__ import annotations

import json
import queue
import socket
import time
import uuid

import peewee as pw
import pytest
import simple_websocket

from common import auth, sessions
from common.models import Message, User, db

from tests import wsclient
from tests.integration.conftest import wait_for


class User_:
    def __init__(self, uid: int, token: str):
        self.id, self.token = uid, token


def make_users(cfg, count: int) -> list[User_]:
    """Users created straight in the database (registration has its own tests), with tokens."""
    prefix = "m" + uuid.uuid4().hex[:8]
    with db.connection_context():
        User.insert_many([{"username": f"{prefix}{i}", "username_key": f"{prefix}{i}", "password_hash": "x", "nickname": f"n{i}"}
                          for i in range(count)]).execute()
        ids = [u.id for u in User.select(User.id).where(User.username.startswith(prefix)).order_by(User.id)]
    return [User_(uid, auth.issue_token(uid, cfg.jwt)) for uid in ids]


class Client:
    """A WebSocket client that collects every frame it receives."""

    def __init__(self, api, user: User_, token_in_query: bool = True):
        url = api.base.replace("http://", "ws://") + "/ws"
        self.user = user
        self.ws = wsclient.connect(url + (f"?token={user.token}" if token_in_query else ""))
        self.frames: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        if not token_in_query:
            self.send("auth", {"token": user.token})
        self.conn_id = self.expect("auth_ok")["conn_id"]

    def send(self, kind: str, payload: dict) -> None:
        self.ws.send(json.dumps({"type": kind, "payload": payload}))

    def next(self, timeout: float = 10.0) -> dict | None:
        text = self.ws.receive(timeout=timeout)
        if text is None:
            return None
        frame = json.loads(text)
        self.seen.append(frame)
        return frame

    def expect(self, kind: str, timeout: float = 15.0, where=lambda p: True) -> dict:
        """The payload of the next frame of ``kind`` matching ``where`` (others are kept in seen)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.next(timeout=max(deadline - time.monotonic(), 0.01))
            if frame and frame["type"] == kind and where(frame["payload"]):
                return frame["payload"]
        raise AssertionError(f"no {kind} frame in {timeout}s; saw {[f['type'] for f in self.seen][-10:]}")

    def quiet(self, kind: str, seconds: float = 1.0) -> bool:
        """True when no frame of ``kind`` arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            frame = self.next(timeout=max(deadline - time.monotonic(), 0.01))
            if frame and frame["type"] == kind:
                return False
        return True

    def close_code(self, timeout: float = 30.0) -> int | None:
        """Wait for the server to close the socket; its close code (frames before it are kept)."""
        deadline = time.monotonic() + timeout
        try:
            while self.ws.connected and time.monotonic() < deadline:
                self.next(timeout=0.2)
        except simple_websocket.ConnectionClosed:
            pass
        return None if self.ws.connected else self.ws.close_reason

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass


@pytest.fixture()
def clients():
    opened: list[Client] = []

    def open_(api, user, **kw) -> Client:
        client = Client(api, user, **kw)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        client.close()


def mid() -> str:
    return str(uuid.uuid4())


def stored(msg_id: str) -> list[Message]:
    with db.connection_context():
        return list(Message.select().where(Message.msg_id == msg_id))


def test_private_chat_across_two_gateways_and_devices(cfg, gw1, gw2, clients):
    alice, bob = make_users(cfg, 2)
    a1, a2, b = clients(gw1, alice), clients(gw1, alice), clients(gw2, bob, token_in_query=False)
    msg = mid()
    a1.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "hello bob", "content_type": "text"})
    ack = a1.expect("message_ack")
    assert ack["msg_id"] == msg and ack["seq"] == 1
    pushed = b.expect("message")
    assert pushed == {**pushed, "msg_id": msg, "seq": 1, "conversation_id": ack["conversation_id"],
                      "from_user_id": alice.id, "to_user_id": bob.id, "content": "hello bob"}
    assert a2.expect("message")["msg_id"] == msg      # the sender's other device
    assert a1.quiet("message", 0.5)                    # not echoed to the sending connection

    # A resend of the same msg_id: same ack, one stored row.
    a1.send("send", {"msg_id": msg, "to_user_id": bob.id, "content": "hello bob"})
    again = a1.expect("message_ack")
    assert (again["seq"], again["conversation_id"]) == (1, ack["conversation_id"])
    assert len(stored(msg)) == 1

    # Bob answers; seq continues in the same conversation.
    reply = mid()
    b.send("send", {"msg_id": reply, "to_user_id": alice.id, "content": "hi alice"})
    assert b.expect("message_ack")["seq"] == 2
    assert a1.expect("message", where=lambda p: p["msg_id"] == reply)["seq"] == 2


def test_offline_recipient_syncs_every_message_in_order(cfg, gw1, gw2, clients):
    alice, carol = make_users(cfg, 2)
    a = clients(gw1, alice)
    ids = [mid() for _ in range(5)]
    for i, msg in enumerate(ids):
        a.send("send", {"msg_id": msg, "to_user_id": carol.id, "content": f"m{i}"})
    acks = [a.expect("message_ack") for _ in ids]
    conversation_id = acks[0]["conversation_id"]

    status, body = gw2.call("GET", "/api/v1/messages/offline?limit=3", token=carol.token)
    assert status == 200 and [m["content"] for m in body["data"]["messages"]] == ["m0", "m1", "m2"]
    assert body["data"]["has_more"] is True
    status, body = gw2.call("GET", f"/api/v1/messages/offline?limit=3&cursor={body['data']['next_cursor']}",
                            token=carol.token)
    assert [m["content"] for m in body["data"]["messages"]] == ["m3", "m4"] and not body["data"]["has_more"]

    c = clients(gw2, carol)
    c.send("sync", {"conversation_id": conversation_id, "after_seq": 0})
    synced = c.expect("sync")
    assert [m["seq"] for m in synced["messages"]] == [1, 2, 3, 4, 5]
    assert [m["msg_id"] for m in synced["messages"]] == ids

    c.send("ack", {"conversation_id": conversation_id, "seq": 5, "ack_type": "delivered"})
    c.send("sync", {})  # nothing left past the delivered cursor
    wait_for(lambda: gw2.call("GET", "/api/v1/messages/offline", token=carol.token)[1]["data"]["messages"] == [],
             what="the delivered cursor to move")


def test_read_cursor_only_moves_forward_and_sends_receipts(cfg, gw1, gw2, clients):
    alice, bob = make_users(cfg, 2)
    a, b = clients(gw1, alice), clients(gw2, bob)
    for i in range(3):
        a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": f"r{i}"})
    conversation_id = [a.expect("message_ack") for _ in range(3)][0]["conversation_id"]
    b.send("ack", {"conversation_id": conversation_id, "seq": 2, "ack_type": "read"})
    receipt = a.expect("receipt")
    assert receipt == {"conversation_id": conversation_id, "user_id": bob.id, "seq": 2, "ack_type": "read"}
    # Beyond the last message: the cursor stops at seq 3, and the receipt says where it is.
    b.send("ack", {"conversation_id": conversation_id, "seq": 2**62, "ack_type": "read"})
    assert a.expect("receipt")["seq"] == 3
    b.send("ack", {"conversation_id": conversation_id, "seq": 1, "ack_type": "read"})
    assert a.quiet("receipt", 1.0)

    def read_seq():
        convs = gw2.call("GET", "/api/v1/conversations", token=bob.token)[1]["data"]["conversations"]
        return next(c for c in convs if c["conversation_id"] == conversation_id)
    conv = wait_for(lambda: read_seq()["read_seq"] == 3 and read_seq(), what="read_seq 3")
    assert conv["unread_count"] == 0 and conv["last_seq"] == 3 and conv["last_message"]["content"] == "r2"


@pytest.mark.parametrize("size", [3, 200])
def test_group_chat_reaches_every_online_member(cfg, gw1, gw2, clients, size):
    users = make_users(cfg, size)
    owner = users[0]
    status, body = gw1.call("POST", "/api/v1/groups", {"name": f"g{size}", "member_ids": [u.id for u in users[1:]]},
                            token=owner.token)
    assert status == 201 and body["data"]["member_count"] == size
    assert body["data"]["last_seq"] == 1  # group_created
    group_id = body["data"]["group_id"]
    conns = [clients(gw1 if i % 2 else gw2, u) for i, u in enumerate(users)]
    msg = mid()
    conns[0].send("send", {"msg_id": msg, "group_id": group_id, "content": "hello group"})
    ack = conns[0].expect("message_ack")
    for conn in conns[1:]:
        got = conn.expect("message", where=lambda p: p["msg_id"] == msg)
        assert got["group_id"] == group_id and got["seq"] == ack["seq"]
    status, body = gw1.call("GET", f"/api/v1/groups/{group_id}/members", token=owner.token)
    assert len(body["data"]["members"]) == size and all(m["online"] for m in body["data"]["members"])


def test_non_member_is_refused_and_nothing_is_stored(cfg, gw1, clients):
    owner, member, outsider = make_users(cfg, 3)
    group_id = gw1.call("POST", "/api/v1/groups", {"name": "closed", "member_ids": [member.id]},
                        token=owner.token)[1]["data"]["group_id"]
    o = clients(gw1, outsider)
    msg = mid()
    o.send("send", {"msg_id": msg, "group_id": group_id, "content": "let me in"})
    error = o.expect("error")
    assert (error["code"], error["ref"]) == (40003, msg)
    assert stored(msg) == []
    assert gw1.call("GET", f"/api/v1/conversations/{group_id}/messages", token=outsider.token)[1]["code"] == 40003
    o.send("sync", {"conversation_id": group_id})
    assert o.expect("error")["code"] == 40003
    status, body = gw1.call("POST", "/api/v1/messages", {"msg_id": mid(), "group_id": group_id, "content": "x"},
                            token=outsider.token)
    assert (status, body["code"]) == (403, 40003)


def test_membership_changes_are_in_the_seq_stream(cfg, gw1, clients):
    owner, member, newcomer = make_users(cfg, 3)
    group_id = gw1.call("POST", "/api/v1/groups", {"name": "team", "member_ids": [member.id]},
                        token=owner.token)[1]["data"]["group_id"]
    m = clients(gw1, member)
    status, _ = gw1.call("POST", f"/api/v1/groups/{group_id}/members", {"user_ids": [newcomer.id]}, token=member.token)
    assert status == 403  # only the owner or an admin adds members
    assert gw1.call("POST", f"/api/v1/groups/{group_id}/members", {"user_ids": [newcomer.id]},
                    token=owner.token)[0] == 200
    added = m.expect("message", where=lambda p: p["content_type"] == "system"
                     and json.loads(p["content"])["event"] == "members_added")
    assert added["seq"] == 2 and json.loads(added["content"])["user_ids"] == [newcomer.id]
    assert gw1.call("DELETE", f"/api/v1/groups/{group_id}/members/{newcomer.id}", token=newcomer.token)[0] == 200
    history = gw1.call("GET", f"/api/v1/conversations/{group_id}/messages", token=owner.token)[1]["data"]
    assert [json.loads(x["content"])["event"] for x in history["messages"]] == [
        "group_created", "members_added", "member_left"]
    assert [x["seq"] for x in history["messages"]] == [1, 2, 3]


def test_send_over_http_is_idempotent(cfg, gw1, gw2, clients):
    alice, bob = make_users(cfg, 2)
    b = clients(gw2, bob)
    body = {"msg_id": mid(), "to_user_id": bob.id, "content": "via http"}
    first = gw1.call("POST", "/api/v1/messages", body, token=alice.token)
    second = gw1.call("POST", "/api/v1/messages", body, token=alice.token)
    assert first[0] == second[0] == 200 and first[1]["data"]["seq"] == second[1]["data"]["seq"]
    assert b.expect("message")["content"] == "via http"
    assert len(stored(body["msg_id"])) == 1
    assert gw1.call("POST", "/api/v1/messages", {"msg_id": mid(), "to_user_id": 10**9, "content": "?"},
                    token=alice.token)[1]["code"] == 30001


def test_an_http_send_with_a_revoked_token_is_refused_by_the_send_function_and_not_stored(cfg, gw1, redis_client):
    """The gateway checks an HTTP send's token signature and expiry; whether it was revoked, the
    send function checks, for its whole batch at once (common/sessions.py revoked_among)."""
    alice, bob = make_users(cfg, 2)
    phone, laptop = sessions.start(redis_client, cfg, alice.id), sessions.start(redis_client, cfg, alice.id)
    sessions.end(redis_client, cfg, auth.decode_token(phone["token"], cfg.jwt))  # the phone logged out
    refused_id, sent_id = mid(), mid()
    status, body = gw1.call("POST", "/api/v1/messages", {"msg_id": refused_id, "to_user_id": bob.id, "content": "x"},
                            token=phone["token"])
    assert (status, body["code"]) == (401, 30005) and body["message"] == "the session has ended"
    status, body = gw1.call("POST", "/api/v1/messages", {"msg_id": sent_id, "to_user_id": bob.id, "content": "y"},
                            token=laptop["token"])
    assert status == 200 and body["data"]["seq"] == 1, body
    assert stored(refused_id) == [] and len(stored(sent_id)) == 1
    sessions.end_all(redis_client, cfg, alice.id)  # logout everywhere: the laptop's token too
    status, body = gw1.call("POST", "/api/v1/messages", {"msg_id": mid(), "to_user_id": bob.id, "content": "z"},
                            token=laptop["token"])
    assert (status, body["code"]) == (401, 30005) and body["message"] == "the token was revoked"


def test_typing_and_presence(cfg, gw1, gw2, clients):
    alice, bob = make_users(cfg, 2)
    a = clients(gw1, alice)
    # Bob writes first, over HTTP without a socket: alice is his contact from then on (presence is
    # for contacts; a private chat's peer is one once you wrote in it).
    status, body = gw1.call("POST", "/api/v1/messages", {"msg_id": mid(), "to_user_id": alice.id,
                                                         "content": "are you there?"}, token=bob.token)
    assert status == 200, body
    conversation_id = body["data"]["conversation_id"]
    assert gw1.call("GET", f"/api/v1/users/{bob.id}/status", token=alice.token)[1]["data"]["online"] is False

    b = clients(gw2, bob)
    assert a.expect("presence", where=lambda p: p["user_id"] == bob.id)["online"] is True
    assert gw1.call("GET", f"/api/v1/users/{bob.id}/status", token=alice.token)[1]["data"]["online"] is True
    b.send("typing", {"conversation_id": conversation_id})
    assert a.expect("typing") == {"conversation_id": conversation_id, "user_id": bob.id}

    b2 = clients(gw1, bob)        # a second device: closing one leaves bob online
    b.close()
    assert a.quiet("presence", 1.5)
    b2.close()
    gone = a.expect("presence", where=lambda p: p["user_id"] == bob.id)
    assert gone["online"] is False and gone["last_seen"]
    assert gw1.call("GET", f"/api/v1/users/{bob.id}/status", token=alice.token)[1]["data"]["online"] is False


def test_bad_frames_get_errors_and_the_connection_stays_healthy(cfg, gw1, clients):
    (alice,) = make_users(cfg, 1)
    a = clients(gw1, alice)
    a.ws.send("{not json")
    assert a.expect("error")["code"] == 10002
    a.send("dance", {})
    assert a.expect("error") == {"code": 10002, "message": "unknown frame type 'dance'", "field": "type",
                                  "ref": "dance"}
    msg = mid()
    a.send("send", {"msg_id": msg, "to_user_id": alice.id + 10**6})
    assert a.expect("error")["ref"] == msg
    a.send("ping", {})
    assert a.expect("pong")["server_ts"] > 0

    big = clients(gw1, alice)
    big.ws.send("x" * (65 * 1024))
    with pytest.raises(simple_websocket.ConnectionClosed):
        for _ in range(50):
            big.ws.receive(timeout=0.2)
            if not big.ws.connected:
                raise simple_websocket.ConnectionClosed(big.ws.close_reason)
    assert big.ws.close_reason == 1009
    a.send("ping", {})
    assert a.expect("pong")
    assert gw1.call("GET", "/health")[0] == 200


def refused(api, token: str) -> list[tuple[int, bytes]]:
    """The frames of a connection the gateway accepts and then closes: ``[(opcode, payload)]``."""
    sock = _raw_handshake(api, token)
    head, data = _read_headers(sock)
    assert " 101 " in head.splitlines()[0]
    sock.settimeout(10)
    while chunk := sock.recv(65536):  # the server closes after refusing
        data += chunk
    sock.close()
    frames, _ = _server_frames(data)
    return frames


def test_bad_tokens_are_refused(cfg, gw1):
    frames = refused(gw1, "forged")
    (opcode, text), (close_op, close) = frames[0], frames[-1]
    assert opcode == 1 and json.loads(text) == {"type": "auth_fail", "payload": {"code": 30005, "message": "invalid token"}}
    assert close_op == 8 and int.from_bytes(close[:2], "big") == 4001


def test_a_signed_token_of_a_user_that_does_not_exist_is_refused(cfg, gw1):
    with db.connection_context():
        ghost = (User.select(pw.fn.MAX(User.id)).scalar() or 0) + 1000
    token = auth.issue_token(ghost, cfg.jwt)  # valid signature, not expired: a deleted or foreign user
    status, body = gw1.call("GET", "/api/v1/conversations", token=token)
    assert (status, body["code"]) == (401, 30005)
    frames = refused(gw1, token)
    (opcode, text), (close_op, close) = frames[0], frames[-1]
    assert opcode == 1 and json.loads(text)["payload"]["code"] == 30005
    assert close_op == 8 and int.from_bytes(close[:2], "big") == 4001


def _raw_handshake(api, token: str, extra: str = "") -> socket.socket:
    host, port = api.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    return sock


def _read_headers(sock) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode(), rest


def _server_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked, unfragmented server frames off ``buffer``: ``[(opcode, payload)]``, rest."""
    frames = []
    while len(buffer) >= 2:
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + length:
            break
        frames.append((opcode, buffer[offset:offset + length]))
        buffer = buffer[offset + length:]
    return frames, buffer


def test_per_message_deflate_is_not_negotiated(cfg, gw1):
    (alice,) = make_users(cfg, 1)
    sock = _raw_handshake(gw1, alice.token, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    head, _ = _read_headers(sock)
    sock.close()
    assert " 101 " in head.splitlines()[0]
    assert "permessage-deflate" not in head.lower()


def test_slow_reader_receives_intact_frames(cfg, gw1, gw2, clients):
    """Pushes to a client that stops reading must arrive whole once it reads again, as long as
    they fit the per-connection queue. With simple-websocket's plain socket.send this stream is
    corrupted once the kernel buffers are full (checked: UnicodeDecodeError at ~4 MB)."""
    alice, bob = make_users(cfg, 2)
    sock = _raw_handshake(gw2, bob.token)
    head, rest = _read_headers(sock)
    assert " 101 " in head.splitlines()[0]
    a = clients(gw1, alice)
    count, content = 600, "y" * 8000  # ~5 MB queued behind a reader that is not reading
    for _ in range(count):
        a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": content})
    for _ in range(count):
        a.expect("message_ack", timeout=30)
    time.sleep(1.0)  # let the gateway hit the full socket buffer

    messages, buffer = [], rest
    sock.settimeout(10)
    while sum(1 for m in messages if m["type"] == "message") < count:
        data = sock.recv(65536)
        assert data, "connection closed early"
        frames, buffer = _server_frames(buffer + data)
        messages += [json.loads(p) for op, p in frames if op == 1]  # a corrupt stream fails here
    sock.close()
    pushed = [m["payload"] for m in messages if m["type"] == "message"]
    assert len(pushed) == count and all(p["content"] == content for p in pushed)
    assert [p["seq"] for p in pushed] == sorted(p["seq"] for p in pushed)


def test_send_worker_killed_mid_batch_stores_each_message_once_gap_free(cfg, system, start_function, redis_client):
    """Send events produced straight to the topic; one send worker is killed with SIGKILL while
    they flow and another is started; every message is stored exactly once, seqs gap-free."""
    import signal

    from common import bus
    from common.models import Conversation

    users = make_users(cfg, 6)
    pairs = [(users[i], users[i + 1]) for i in range(0, 6, 2)]
    channel = cfg.redis_key("test-acks", uuid.uuid4().hex[:8])
    producer = bus.make_producer(cfg)
    per_pair, sent = 400, []
    for n in range(per_pair):
        for sender, recipient in pairs:
            event = {"msg_id": mid(), "sender_id": sender.id, "to_user_id": recipient.id, "content": f"k{n}",
                     "content_type": "text", "reply_to": channel, "conn_id": "test"}
            sent.append(event["msg_id"])
            producer.send(cfg.topic("send"), key=f"p{min(sender.id, recipient.id)}:{max(sender.id, recipient.id)}".encode(),
                          value=bus.encode(event))
    victim = start_function("send", ready=False)
    producer.flush()
    producer.close()

    def count():
        with db.connection_context():
            return Message.select().where(Message.msg_id.in_(sent)).count()
    wait_for(lambda: count() >= 100, timeout=60, what="messages to flow")
    victim.signal(signal.SIGKILL)
    victim.popen.wait()
    start_function("send", ready=False)
    wait_for(lambda: count() == len(sent), timeout=120, what=f"all {len(sent)} messages stored")
    with db.connection_context():
        rows = list(Message.select().where(Message.msg_id.in_(sent)))
        assert len(rows) == len({r.msg_id for r in rows}) == len(sent)
        for conversation_id in {r.conversation_id for r in rows}:
            seqs = sorted(r.seq for r in rows if r.conversation_id == conversation_id)
            assert seqs == list(range(1, per_pair + 1))
            assert Conversation.get_by_id(conversation_id).last_seq == per_pair


def test_presence_of_a_dead_gateway_expires(cfg, redis_client):
    from common import presence

    user_id = 10**9 + 7
    assert presence.connect(redis_client, cfg, user_id, "conn-dead", "gw-dead", presence_now(), ttl_ms=300)
    other = "conn-live"
    presence.refresh(redis_client, cfg, [(user_id, other)], "gw-live", presence_now(), ttl_ms=5000)
    assert set(presence.lookup(redis_client, cfg, [user_id], presence_now())[user_id]) == {"conn-dead", other}
    time.sleep(0.4)  # gw-dead never refreshes again
    assert presence.lookup(redis_client, cfg, [user_id], presence_now()) == {user_id: {other: "gw-live"}}
    assert presence.disconnect(redis_client, cfg, user_id, other, presence_now()) is True
    assert presence.status(redis_client, cfg, [user_id], presence_now())[user_id]["online"] is False


def presence_now() -> int:
    from common.models import now_ms
    return now_ms()


def test_a_reader_that_stops_reading_is_disconnected_not_buffered(cfg, gw1, start_gateway, clients):
    """Once the kernel buffers and the connection's queue (here 20 frames) are full, the gateway
    drops the connection instead of growing memory; the gateway and its other clients carry on."""
    strict = start_gateway(WS_QUEUE_LIMIT="20")
    alice, bob = make_users(cfg, 2)
    stuck = _raw_handshake(strict, bob.token)
    head, _ = _read_headers(stuck)
    assert " 101 " in head.splitlines()[0]
    a = clients(gw1, alice)
    content = "z" * 8000
    for n in range(1200):  # ~10 MB: more than the socket buffers plus the queue can hold
        a.send("send", {"msg_id": mid(), "to_user_id": bob.id, "content": content})
        if n % 100 == 99:
            a.expect("message_ack", where=lambda p: True)
    wait_for(lambda: "too slow" in strict.proc.log(), timeout=60, what="the slow reader to be dropped")
    stuck.settimeout(10)  # a stream that never ends fails here with a timeout
    try:
        while stuck.recv(1 << 20):  # drain what was in flight, up to the end of the stream
            pass
    except ConnectionResetError:
        pass
    stuck.close()
    (carol,) = make_users(cfg, 1)
    c = clients(strict, carol)
    c.send("ping", {})
    assert c.expect("pong")
