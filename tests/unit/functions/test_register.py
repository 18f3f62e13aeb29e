"""register by name: a request envelope in, the account row and the reply on the requester's channel out."""
import pytest

from common.errors import Code
from common.models import User
from functions import register
from functions.api import Invalid, Publish
from tests.unit.functions.conftest import NOW, make_event


def make_register_event(body=None, **overrides):
    value = {"request_id": "req-1", "reply_to": "t:gw:g1", "deadline_ms": NOW + 5000,
             "body": {"username": "alice", "password": "correct horse", **(body or {})}, **overrides}
    return make_event("t.register", value, key=b"req-1")


def test_an_account_is_created_and_the_new_user_is_the_reply(ctx, database):
    [reply] = register.handle(make_register_event(), ctx)
    [user] = User.select()
    assert (user.username, user.username_key, user.register_request_id) == ("alice", "alice", "req-1")
    assert "correct horse" not in user.password_hash
    assert reply == Publish("t:gw:g1", {"type": "reply", "request_id": "req-1", "ok": True, "data": {
        "id": user.id, "username": "alice", "email": None, "nickname": "alice", "avatar": "",
        "created_at": user.created_at}})


def test_a_redelivered_request_gets_the_account_it_created(ctx, database):
    first = register.handle(make_register_event(), ctx)
    assert register.handle(make_register_event(), ctx) == first
    assert User.select().count() == 1


def test_a_name_taken_in_any_letter_case_is_30002(ctx, database):
    register.handle(make_register_event(), ctx)
    [reply] = register.handle(make_register_event(body={"username": "ALICE", "password": "another one"},
                                                  request_id="req-2"), ctx)
    assert reply.value == {"type": "reply", "request_id": "req-2", "ok": False,
                           "error": {"code": 30002, "message": Code.USER_EXISTS.message}}
    assert User.select().count() == 1


def test_a_bad_field_is_10002_with_its_name(ctx, database):
    [reply] = register.handle(make_register_event(body={"password": "short"}), ctx)
    assert reply.value["ok"] is False
    assert (reply.value["error"]["code"], reply.value["error"]["field"]) == (10002, "password")
    assert User.select().count() == 0


def test_a_request_past_its_deadline_is_dropped_unanswered_and_stores_nothing(ctx, database):
    assert register.handle(make_register_event(deadline_ms=NOW - 1), ctx) == []
    assert User.select().count() == 0


def test_a_record_that_is_not_a_request_envelope_is_invalid(ctx, database):
    with pytest.raises(Invalid) as raised:
        register.handle(make_register_event(reply_to=None), ctx)
    assert raised.value.code == Code.UNMARSHAL_FAILED
