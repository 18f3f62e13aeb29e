"""login by name: credentials in, a token (or 30003 for a wrong password and an unknown user alike) out."""
import threading

import pytest

from common import accounts, auth
from common.errors import Code
from functions import login
from functions.api import Context, Invalid
from tests.unit.functions.conftest import NOW, make_event


def make_login_event(body=None, **overrides):
    value = {"request_id": "req-1", "reply_to": "t:gw:g1", "deadline_ms": NOW + 5000,
             "body": {"username": "alice", "password": "correct horse", **(body or {})}, **overrides}
    return make_event("t.login", value, key=b"req-1")


@pytest.fixture
def ctx(cfg):
    """Without Redis login hands out a bare token; sessions (refresh, revocation, password change)
    are tested against the real Redis in tests/integration/test_sessions.py."""
    return Context(cfg, None, clock=lambda: NOW, stop=threading.Event())


@pytest.fixture
def alice(cfg, database):
    return accounts.register({"username": "Alice", "password": "correct horse"}, None, cfg)


def test_the_right_password_gets_a_token_for_the_user(ctx, cfg, alice):
    [reply] = login.handle(make_login_event(), ctx)
    assert reply.channel == "t:gw:g1"
    assert (reply.value["type"], reply.value["request_id"], reply.value["ok"]) == ("reply", "req-1", True)
    data = reply.value["data"]
    assert data["user"] == alice.public() and data["expires_in"] == cfg.jwt.ttl_seconds
    assert auth.verify_token(data["token"], cfg.jwt) == alice.id


@pytest.mark.parametrize("body", [{"password": "wrong horse"}, {"username": "mallory"}])
def test_a_wrong_password_and_an_unknown_user_get_the_same_30003(ctx, alice, body):
    [reply] = login.handle(make_login_event(body=body), ctx)
    assert reply.value == {"type": "reply", "request_id": "req-1", "ok": False,
                           "error": {"code": 30003, "message": Code.INVALID_PASSWORD.message}}


def test_a_missing_field_is_10002(ctx, alice):
    [reply] = login.handle(make_login_event(body={"password": None}), ctx)
    assert (reply.value["error"]["code"], reply.value["error"]["field"]) == (10002, "password")


def test_an_expired_request_is_dropped_and_an_envelope_without_body_is_invalid(ctx, alice):
    assert login.handle(make_login_event(deadline_ms=NOW - 1), ctx) == []
    with pytest.raises(Invalid):
        login.handle(make_event("t.login", {"request_id": "req-1", "reply_to": "t:gw:g1"}), ctx)


@pytest.mark.parametrize("user_id", [None, "7", True, 0, -1])
def test_a_password_change_must_name_its_user(ctx, alice, user_id):
    event = make_login_event(body={"new_password": "a new horse"}, op="password", user_id=user_id)
    with pytest.raises(Invalid) as err:
        login.handle(event, ctx)
    assert err.value.code == Code.UNMARSHAL_FAILED
