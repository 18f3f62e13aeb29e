"""Issue 13 against the live system: hostile input never yields a 500 or a silent close, floods are
refused with 10007 and a retry hint, revoked tokens stop working at once (their sockets closed with
4003), every HTTP answer is JSON with a code from the table.

One gateway with small rate-limit budgets; it trusts 127.0.0.1 as a proxy, so each test names its
own client address in X-Forwarded-For and address budgets do not leak between tests.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import time
import uuid
from collections import Counter

import pytest

from common import auth
from tests.integration.conftest import wait_for
from tests.load import rawws

LIMITS = {
    "RATE_LIMIT_ENABLED": "true",
    "TRUSTED_PROXIES": "127.0.0.1",
    "RATE_LIMIT_LOGIN_ACCOUNT": "4/1m",
    "RATE_LIMIT_LOGIN_ADDRESS": "6/1m",
    "RATE_LIMIT_REGISTER_ADDRESS": "3/1h",
    "RATE_LIMIT_API_USER": "40/1m",
    "RATE_LIMIT_DIRECTORY_USER": "5/1m",
    "RATE_LIMIT_WS_CONNECTION": "30/10s",
    "RATE_LIMIT_WS_SEND_USER": "4/1m",
    "RATE_LIMIT_WS_TYPING_USER": "2/1m",
    "RATE_LIMIT_WS_SYNC_USER": "3/1m",
    "BODY_TIMEOUT_MS": "1000",
    "OPERATOR_TOKEN": "operator-token-for-the-security-tests-0123456789",
}


@pytest.fixture(scope="module")
def gw(module_procs):
    for name in ("register", "login", "send", "deliver"):
        module_procs.function(name)
    return module_procs.gateway(**LIMITS)


def address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def call(gw, method: str, path: str, body=None, *, token: str | None = None, raw: bytes | None = None,
         headers: dict | None = None, addr: str | None = None):
    """(status, headers, decoded JSON body): every answer must be JSON."""
    host, port = gw.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    if addr:
        hdrs["X-Forwarded-For"] = addr
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), (resp.status, payload[:200])
        return resp.status, dict(resp.getheaders()), json.loads(payload)
    finally:
        conn.close()


def register(gw, addr: str | None = None) -> dict:
    name = "z" + uuid.uuid4().hex[:12]
    status, _, body = call(gw, "POST", "/api/v1/auth/register", {"username": name, "password": "correct horse"},
                           addr=addr or address())
    assert status == 201, body
    return {"id": body["data"]["id"], "username": name, "password": "correct horse"}


def login(gw, user, addr: str | None = None) -> dict:
    status, _, body = call(gw, "POST", "/api/v1/auth/login", {"username": user["username"], "password": user["password"]},
                           addr=addr or address())
    assert status == 200, (body, str(gw.proc.log_path))
    return body["data"]


def ws_url(gw, token: str | None = None) -> str:
    return gw.base.replace("http://", "ws://") + "/ws" + (f"?token={token}" if token else "")


def frames_until(ws, predicate, timeout: float = 10.0) -> list[dict]:
    """Frames received until one matches (included)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = json.loads(ws.receive(timeout=max(deadline - time.monotonic(), 0.01)))
        seen.append(frame)
        if predicate(frame):
            return seen
    raise AssertionError(f"no matching frame; saw {seen[-5:]}")


def close_code(ws, timeout: float = 10.0) -> int:
    """The code of the server's close (frames before it are dropped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
        except rawws.Closed as closed:
            return closed.code
    raise AssertionError("the socket is still open")


def open_ws(gw, token: str) -> rawws.RawWebSocket:
    ws = rawws.connect(ws_url(gw, token))
    assert json.loads(ws.receive(timeout=10))["type"] == "auth_ok"
    return ws


def no_traceback(gw) -> None:
    log = gw.proc.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


# -- every HTTP answer is JSON with a code of the table ---------------------------------------

@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/api/v1/auth/login", 405, 10009),
    ("DELETE", "/api/v1/user/profile", 405, 10009),
    ("GET", "/ws", 426, 10010),
    ("GET", "/no/such/path", 404, 10005),
    ("GET", f"/api/v1/users/{2 ** 63}", 404, 10005),          # beyond the database's ids
    ("GET", "/api/v1/groups/0", 404, 10005),
    ("DELETE", f"/api/v1/blocks/{2 ** 63}", 404, 10005),      # was 405: Werkzeug's bounded int converter
    ("PATCH", f"/api/v1/groups/{10 ** 30}", 404, 10005),
])
def test_framework_answers_are_json_with_table_codes(gw, method, path, status, code):
    got, headers, body = call(gw, method, path)
    assert (got, body["code"]) == (status, code), body
    if status == 405:
        assert "POST" in headers["Allow"] or "GET" in headers["Allow"]


def test_options_answers_json(gw):
    status, headers, body = call(gw, "OPTIONS", "/api/v1/auth/login")
    assert status == 200 and body["code"] == 0 and "POST" in body["data"]["allow"]
    assert "POST" in headers["Allow"]


def test_a_body_over_64_kib_is_413(gw):
    status, _, body = call(gw, "POST", "/api/v1/auth/login", raw=b'{"username": "' + b"a" * 70_000 + b'"}')
    assert (status, body["code"]) == (413, 10011)


HOSTILE_BODIES = [
    (b'{"username": "\\ud800abc", "password": "correct horse"}', "username"),
    (b'{"username": "abcd\\n", "password": "correct horse"}', "username"),
    (b"[" * 10_000 + b"]" * 10_000, None),
    (b'{"username": "abcd", "password": Infinity}', None),
    (b'{"username": "abcd", "password": "\xff\xfe"}', None),
    (b'{"username": 12345, "password": "correct horse"}', "username"),
    (b'{"username": "abcd", "password": "correct horse", "nickname": {"a": 1}}', "nickname"),
    (b"", None),
    (b"null", None),
]


@pytest.mark.parametrize("raw, field", HOSTILE_BODIES)
def test_hostile_registration_bodies_are_10002(gw, raw, field):
    status, _, body = call(gw, "POST", "/api/v1/auth/register", raw=raw, addr=address())
    assert (status, body["code"], body.get("field")) == (400, 10002, field), body


def test_hostile_authenticated_input_is_10002_never_500(gw):
    user = register(gw)
    token = login(gw, user)["token"]
    cases = [
        ("POST", "/api/v1/groups", {"name": "g", "member_ids": {"1": 2}}, "member_ids"),
        ("POST", "/api/v1/groups", {"name": "g", "member_ids": [[1]]}, "member_ids"),
        ("POST", "/api/v1/groups", {"name": "g", "member_ids": [2 ** 63]}, "member_ids"),
        ("POST", "/api/v1/groups", {"name": "g", "member_ids": [True]}, "member_ids"),
        ("POST", "/api/v1/messages", {"msg_id": "m", "to_user_id": 2 ** 63, "content": "x"}, "to_user_id"),
        ("POST", "/api/v1/messages", {"msg_id": "m", "to_user_id": "3", "content": "x"}, "to_user_id"),
        ("POST", "/api/v1/messages", {"msg_id": "m\ud800", "to_user_id": 3, "content": "x"}, "msg_id"),
        ("PUT", "/api/v1/user/profile", {"nickname": "\udfff"}, "nickname"),
        ("GET", f"/api/v1/messages/offline?cursor={2 ** 63}", None, "cursor"),
        ("GET", "/api/v1/messages/offline?cursor=+1", None, "cursor"),
        ("GET", "/api/v1/messages/offline?limit=1_0", None, "limit"),
        ("GET", "/api/v1/users?username=abcd%0A", None, "username"),
    ]
    for method, path, body, field in cases:
        raw = json.dumps(body).encode() if body is not None else None
        status, _, answer = call(gw, method, path, raw=raw, token=token)
        assert (status, answer["code"], answer.get("field")) == (400, 10002, field), (path, body, answer)
    no_traceback(gw)


def raw_answer(gw, request: bytes) -> tuple[bytes, bytes, float]:
    """(head, body, seconds until it came) of the answer to raw request bytes."""
    host, port = gw.base.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body, time.monotonic() - started


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_malformed_chunked_body_is_10002(gw):
    head, body, _ = raw_answer(gw, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    answer = head + b"\r\n\r\n" + body
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert json.loads(body)["code"] == 10002, answer
    no_traceback(gw)


def test_a_body_that_never_completes_is_408_after_the_body_timeout(gw):
    head, body, seconds = raw_answer(gw, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                         b"Content-Length: 100\r\n\r\n{\"username\":")  # and then nothing
    assert head.startswith(b"HTTP/1.1 408"), head
    assert json.loads(body)["code"] == 10012
    assert 0.9 <= seconds < 5.0  # BODY_TIMEOUT_MS=1000 (it was held for gunicorn's 30 s, the issue saw 90 s)


def test_operators_details(gw):
    token = LIMITS["OPERATOR_TOKEN"]
    outsider = address()  # through the trusted proxy: not in app.operator_networks (loopback)
    for path in ("/health", "/readyz"):
        assert call(gw, "GET", path, addr=outsider)[2]["data"] == {"status": "ok"}
        assert set(call(gw, "GET", path)[2]["data"]) == {"status", "checks", "gateway_id"}  # 127.0.0.1
    assert call(gw, "GET", "/healthz", addr=outsider)[2]["data"] == {"status": "alive"}
    assert "build" not in call(gw, "GET", "/version", addr=outsider)[2]["data"]
    assert set(call(gw, "GET", "/version", addr=outsider, token=token)[2]["data"]["build"]) == {"commit", "built_at", "python"}
    assert call(gw, "GET", "/metrics", addr=outsider)[:3:2] == (403, {"code": 10004, "message": "metrics are for operators (app.operator_networks, app.operator_token)"})
    host, port = gw.base.removeprefix("http://").split(":")
    for bearer, expected in ((token, 200), ("x" + token, 403)):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {bearer}", "X-Forwarded-For": outsider})
        assert conn.getresponse().status == expected
        conn.close()


def test_the_openapi_document_is_served(gw):
    import yaml

    from tests.unit.test_openapi import DOC
    status, _, body = call(gw, "GET", "/openapi.json")
    assert status == 200 and body == yaml.safe_load(DOC.read_text())


# -- rate limits --------------------------------------------------------------------------------

def test_login_flood_on_one_account_is_refused_with_a_retry_hint(gw):
    victim, other = register(gw), register(gw)
    answers = [call(gw, "POST", "/api/v1/auth/login", {"username": victim["username"], "password": "wrong horse"},
                    addr=address()) for _ in range(6)]  # every guess from another address
    assert [a[0] for a in answers] == [401] * 4 + [429] * 2
    status, headers, body = answers[-1]
    assert body["code"] == 10007 and 1 <= body["retry_after_ms"] <= 15_000
    assert 1 <= int(headers["Retry-After"]) <= 15
    # the right password is refused too while the account's budget is spent (by the letter case too)
    status, _, body = call(gw, "POST", "/api/v1/auth/login",
                           {"username": victim["username"].upper(), "password": victim["password"]}, addr=address())
    assert (status, body["code"]) == (429, 10007)
    assert login(gw, other)["token"]  # other accounts are not affected


def test_login_flood_from_one_address_is_refused(gw):
    addr = address()
    users = [register(gw) for _ in range(7)]
    statuses = [call(gw, "POST", "/api/v1/auth/login", {"username": u["username"], "password": "wrong horse"},
                     addr=addr)[0] for u in users]
    assert statuses == [401] * 6 + [429]
    assert login(gw, users[-1], addr=address())["token"]  # the same account from elsewhere


def test_registrations_per_address(gw):
    addr = address()
    for _ in range(3):
        register(gw, addr)
    status, _, body = call(gw, "POST", "/api/v1/auth/register", {"username": "y" + uuid.uuid4().hex[:10],
                                                                  "password": "correct horse"}, addr=addr)
    assert (status, body["code"]) == (429, 10007)
    register(gw, address())


def test_directory_lookups_are_limited_per_user(gw):
    user, other = register(gw), register(gw)
    token = login(gw, user)["token"]
    statuses = [call(gw, "GET", f"/api/v1/users/{other['id']}", token=token)[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    assert call(gw, "GET", "/api/v1/user/profile", token=token)[0] == 200  # the rest of the API is not


def test_the_api_is_limited_per_user(gw):
    user = register(gw)
    token = login(gw, user)["token"]
    statuses = [call(gw, "GET", "/api/v1/conversations", token=token)[0] for _ in range(42)]
    assert statuses.count(200) == 40 and statuses[-1] == 429


def test_a_frame_flood_is_refused_per_connection_and_the_socket_stays_usable(gw):
    user = register(gw)
    ws = open_ws(gw, login(gw, user)["token"])
    for _ in range(60):
        ws.send_text('{"type":"ping","payload":{}}')
    frames = frames_until(ws, lambda f: f["type"] == "error", timeout=10)
    replies = frames + [json.loads(ws.receive(timeout=10)) for _ in range(60 - len(frames))]
    pongs = [f for f in replies if f["type"] == "pong"]
    refused = [f["payload"] for f in replies if f["type"] == "error"]
    assert len(pongs) == 30 and len(refused) == 30
    assert all(p["code"] == 10007 and p["ref"] == "ping" and p["retry_after_ms"] >= 1 for p in refused)
    ws.close()


def test_a_socket_that_keeps_flooding_after_10007_is_closed_with_1008(gw):
    user = register(gw)
    ws = open_ws(gw, login(gw, user)["token"])
    for _ in range(30 + 4 * 30 + 1):  # its budget, then more than 4 times it refused in its period (10 s)
        ws.send_text('{"type":"ping","payload":{}}')
    kinds = Counter()
    with pytest.raises(rawws.Closed) as closed:
        while True:
            kinds[json.loads(ws.receive(timeout=10))["type"]] += 1
    assert closed.value.code == 1008 and kinds == {"pong": 30, "error": 4 * 30 + 1}


def test_sends_are_limited_per_user_across_connections(gw):
    alice, bob = register(gw), register(gw)
    token = login(gw, alice)["token"]
    one, two = open_ws(gw, token), open_ws(gw, token)

    def send(ws) -> str:
        msg_id = uuid.uuid4().hex
        ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": msg_id, "to_user_id": bob["id"],
                                                             "content": "hi"}}))
        return msg_id

    for _ in range(3):
        acked = send(one)
        frames_until(one, lambda f: f["type"] == "message_ack" and f["payload"]["msg_id"] == acked, timeout=15)
    fourth, fifth = send(two), send(two)  # the user's 4th is allowed, the 5th is not, on any socket
    frames = frames_until(two, lambda f: f["type"] == "error", timeout=15)
    error = frames[-1]["payload"]
    assert (error["code"], error["ref"]) == (10007, fifth) and error["retry_after_ms"] > 1000
    frames_until(two, lambda f: f["type"] == "message_ack" and f["payload"]["msg_id"] == fourth, timeout=15)
    one.close()
    two.close()


def test_http_sends_share_the_users_send_limit_with_its_sockets(gw):
    alice, bob = register(gw), register(gw)
    token = login(gw, alice)["token"]
    ws = open_ws(gw, token)
    for _ in range(2):
        acked = uuid.uuid4().hex
        ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": acked, "to_user_id": bob["id"],
                                                             "content": "hi"}}))
        frames_until(ws, lambda f: f["type"] == "message_ack" and f["payload"]["msg_id"] == acked, timeout=15)

    def send() -> tuple:
        return call(gw, "POST", "/api/v1/messages", {"msg_id": uuid.uuid4().hex, "to_user_id": bob["id"],
                                                     "content": "hi"}, token=token)
    answers = [send() for _ in range(3)]  # the user's 3rd and 4th are allowed, the 5th is not
    assert [(status, body["code"]) for status, _, body in answers] == [(200, 0), (200, 0), (429, 10007)]
    assert int(answers[-1][1]["Retry-After"]) >= 1 and answers[-1][2]["retry_after_ms"] > 1000
    ws.close()


def test_a_refused_sync_names_its_conversation(gw):
    """Syncs are limited per user (3 a minute here); the refusal says which conversation to sync
    again, since a client syncs many at once after a reconnect."""
    token = login(gw, register(gw))["token"]
    ws = open_ws(gw, token)
    missing = [2 ** 62 + n for n in range(4)]  # no such conversations (ids count up from 1)
    for cid in missing:
        ws.send_text(json.dumps({"type": "sync", "payload": {"conversation_id": cid, "after_seq": 0}}))
    replies = [json.loads(ws.receive(timeout=15))["payload"] for _ in range(4)]
    assert [r["code"] for r in replies] == [40001, 40001, 40001, 10007]
    assert replies[-1]["ref"] == "sync" and replies[-1]["conversation_id"] == missing[-1]
    assert replies[-1]["retry_after_ms"] > 1000
    ws.close()


# -- hostile frames -----------------------------------------------------------------------------

HOSTILE_FRAMES = [
    ("[" * 5000 + "]" * 5000, None),
    ('{"type": "ping", "payload": {"x": Infinity}}', None),
    ('{"type": "send", "payload": {"msg_id": "\\ud800", "to_user_id": 2, "content": "x"}}', "payload.msg_id"),
    ('{"type": "ack", "payload": {"conversation_id": 9223372036854775808, "seq": 1}}', "payload.conversation_id"),
    ('{"type": "ack", "payload": {"conversation_id": 1, "seq": true}}', "seq"),
    ('{"type": "sync", "payload": {"conversation_id": "1"}}', "conversation_id"),
    ('{"type": "sync", "payload": []}', "payload"),
    ('{"type": 5}', "type"),
    ('"just a string"', "frame"),
    ('{"type": "fly"}', "type"),
]


@pytest.mark.parametrize("text, field", HOSTILE_FRAMES)
def test_hostile_frames_get_an_error_frame_and_the_socket_stays_open(gw, text, field):
    user = register(gw)
    ws = open_ws(gw, login(gw, user)["token"])
    ws.send_text(text)
    error = json.loads(ws.receive(timeout=10))
    assert error["type"] == "error" and error["payload"]["code"] == 10002, error
    assert error["payload"].get("field") == field
    ws.send_text('{"type":"ping","payload":{}}')
    assert json.loads(ws.receive(timeout=10))["type"] == "pong"
    ws.close()


def test_binary_and_invalid_utf8_frames(gw):
    user = register(gw)
    ws = open_ws(gw, login(gw, user)["token"])
    ws._write(rawws.client_frame(rawws.OP_BINARY, b'{"type":"ping","payload":{}}'))
    error = json.loads(ws.receive(timeout=10))
    assert (error["type"], error["payload"]["code"]) == ("error", 10002)
    ws.send_text(b'{"type":"ping","payload":{"x":"\xff"}}')  # not UTF-8: a protocol error of the client
    assert close_code(ws) == 1007
    no_traceback(gw)


@pytest.mark.parametrize("first", [
    "[" * 5000 + "]" * 5000, '{"type": "auth", "payload": {"token": {"a": 1}}}', '{"type": "auth", "payload": 5}',
    '{"type": "auth", "payload": {"token": "\\ud800"}}', "null", '{"type": "ping"}',
])
def test_hostile_first_frames_are_refused_with_4001_never_http(gw, first):
    ws = rawws.connect(ws_url(gw))
    ws.send_text(first)
    fail = json.loads(ws.receive(timeout=10))
    assert fail["type"] == "auth_fail" and fail["payload"]["code"] == 30005
    assert close_code(ws) == 4001
    no_traceback(gw)


# -- token lifecycle over the wire --------------------------------------------------------------

def test_refresh_rotates_and_reuse_revokes_the_session_and_closes_its_sockets(gw):
    user = register(gw)
    first = login(gw, user)
    ws = open_ws(gw, first["token"])
    status, _, body = call(gw, "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]},
                           addr=address())
    assert status == 200 and body["data"]["refresh_token"] != first["refresh_token"]
    second = body["data"]
    assert call(gw, "GET", "/api/v1/user/profile", token=second["token"])[0] == 200
    status, _, body = call(gw, "POST", "/api/v1/auth/refresh", {"refresh_token": first["refresh_token"]},
                           addr=address())
    assert (status, body["code"]) == (401, 30005)
    assert close_code(ws) == 4003
    assert call(gw, "GET", "/api/v1/user/profile", token=second["token"])[2]["code"] == 30005
    # a reconnect with the revoked token is refused
    again = rawws.connect(ws_url(gw, first["token"]))
    assert json.loads(again.receive(timeout=10))["type"] == "auth_fail"
    assert close_code(again) == 4001


def test_logout_ends_one_session_and_logout_all_every_one(gw):
    user = register(gw)
    phone, laptop, tablet = login(gw, user), login(gw, user), login(gw, user)
    ws_phone, ws_laptop = open_ws(gw, phone["token"]), open_ws(gw, laptop["token"])
    assert call(gw, "POST", "/api/v1/auth/logout", token=phone["token"])[0] == 200
    assert close_code(ws_phone) == 4003
    assert call(gw, "GET", "/api/v1/user/profile", token=phone["token"])[0] == 401
    ws_laptop.send_text('{"type":"ping","payload":{}}')
    assert json.loads(ws_laptop.receive(timeout=10))["type"] == "pong"  # the other session is untouched

    assert call(gw, "POST", "/api/v1/auth/logout-all", token=tablet["token"])[0] == 200
    assert close_code(ws_laptop) == 4003
    for tokens in (laptop, tablet):
        assert call(gw, "GET", "/api/v1/user/profile", token=tokens["token"])[0] == 401
        assert call(gw, "POST", "/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]},
                    addr=address())[0] == 401
    assert login(gw, user)["token"]


def test_password_change_closes_the_other_sessions(gw):
    user = register(gw)
    mine, other = login(gw, user), login(gw, user)
    ws_other = open_ws(gw, other["token"])
    status, _, body = call(gw, "PUT", "/api/v1/user/password", {"password": "wrong horse", "new_password": "x" * 10},
                           token=mine["token"])
    assert (status, body["code"]) == (401, 30003)
    status, _, body = call(gw, "PUT", "/api/v1/user/password",
                           {"password": user["password"], "new_password": "battery staple"}, token=mine["token"])
    assert status == 200, body
    assert close_code(ws_other) == 4003
    assert call(gw, "GET", "/api/v1/user/profile", token=body["data"]["token"])[0] == 200
    assert call(gw, "GET", "/api/v1/user/profile", token=mine["token"])[0] == 401
    assert login(gw, {**user, "password": "battery staple"})["token"]


# -- presence is for contacts -------------------------------------------------------------------

def test_status_is_shown_to_contacts_only(gw):
    alice, bob, stranger = register(gw), register(gw), register(gw)
    a = login(gw, alice)["token"]
    s = login(gw, stranger)["token"]
    status, _, body = call(gw, "POST", "/api/v1/messages", {"msg_id": uuid.uuid4().hex, "to_user_id": bob["id"],
                                                           "content": "hi"}, token=a)
    assert status == 200, body
    # One unsolicited message does not show bob's presence to alice; his answer does.
    assert call(gw, "GET", f"/api/v1/users/{bob['id']}/status", token=a)[2]["code"] == 10004
    assert call(gw, "GET", f"/api/v1/users/{alice['id']}/status", token=login(gw, bob)["token"])[0] == 200
    status, _, body = call(gw, "POST", "/api/v1/messages", {"msg_id": uuid.uuid4().hex, "to_user_id": alice["id"],
                                                           "content": "hello"}, token=login(gw, bob)["token"])
    assert status == 200, body
    assert call(gw, "GET", f"/api/v1/users/{bob['id']}/status", token=a)[0] == 200
    status, _, body = call(gw, "GET", f"/api/v1/users/{bob['id']}/status", token=s)
    assert (status, body["code"]) == (403, 10004)
    assert call(gw, "GET", f"/api/v1/users/{10 ** 15}/status", token=s)[2]["code"] == 10004  # no enumeration
    assert call(gw, "GET", f"/api/v1/users/{stranger['id']}/status", token=s)[0] == 200  # oneself
