"""Token lifecycle (common/sessions.py, common/accounts.py) against the real Redis and MariaDB:
rotation, reuse detection, logout, logout everywhere and password change take effect at once."""
import uuid

import pytest

from common import accounts, auth, sessions
from common.errors import AppError, Code
from common.models import db


@pytest.fixture
def r(redis_client):
    return redis_client


@pytest.fixture
def user(cfg):
    name = f"s{uuid.uuid4().hex[:10]}"
    with db.connection_context():
        user = accounts.register({"username": name, "password": "correct horse"}, None, cfg)
    return {"id": user.id, "username": name, "password": "correct horse"}


def login(cfg, r, user, password=None):
    with db.connection_context():
        return accounts.login({"username": user["username"], "password": password or user["password"]}, cfg, r)


def refused(fn, *args) -> AppError:
    with pytest.raises(AppError) as err:
        fn(*args)
    return err.value


def authenticate(cfg, r, token):
    with db.connection_context():
        return accounts.authenticate(token, cfg, r)


def test_login_starts_a_session_and_refresh_rotates_it(cfg, r, user):
    first = login(cfg, r, user)
    assert set(first) == {"token", "expires_in", "refresh_token", "refresh_expires_in", "user"}
    assert first["refresh_expires_in"] == cfg.jwt.refresh_ttl_seconds
    claims = auth.decode_token(first["token"], cfg.jwt)
    assert (claims["sub"], claims["ver"]) == (str(user["id"]), 0) and len(claims["sid"]) == 32
    assert authenticate(cfg, r, first["token"]) == user["id"]

    second = sessions.refresh(r, cfg, first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert auth.decode_token(second["token"], cfg.jwt)["sid"] == claims["sid"]  # the same session
    assert authenticate(cfg, r, second["token"]) == user["id"]
    third = sessions.refresh(r, cfg, second["refresh_token"])
    assert authenticate(cfg, r, third["token"]) == user["id"]
    # the session lives refresh_ttl after its last use
    assert 0 < r.pttl(cfg.redis_key("rt", claims["sid"])) <= cfg.jwt.refresh_ttl_seconds * 1000


def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(cfg, r, user):
    first = login(cfg, r, user)
    other = login(cfg, r, user)  # another device: not affected
    second = sessions.refresh(r, cfg, first["refresh_token"])
    err = refused(sessions.refresh, r, cfg, first["refresh_token"])  # a stolen copy used after the owner
    assert (err.code, err.message) == (Code.INVALID_TOKEN, "refresh token reused; the session is revoked, log in again")
    assert refused(sessions.refresh, r, cfg, second["refresh_token"]).code == Code.INVALID_TOKEN
    for token in (first["token"], second["token"]):
        assert refused(authenticate, cfg, r, token).message == "the session has ended"
    assert authenticate(cfg, r, other["token"]) == user["id"]
    assert sessions.refresh(r, cfg, other["refresh_token"])["token"]


def test_logout_ends_one_session(cfg, r, user):
    mine, theirs = login(cfg, r, user), login(cfg, r, user)
    sessions.end(r, cfg, auth.decode_token(mine["token"], cfg.jwt))
    assert refused(authenticate, cfg, r, mine["token"]).code == Code.INVALID_TOKEN
    assert refused(sessions.refresh, r, cfg, mine["refresh_token"]).message == "the session has ended; log in again"
    assert authenticate(cfg, r, theirs["token"]) == user["id"]


def test_logout_everywhere_revokes_every_token_so_far(cfg, r, user):
    a, b = login(cfg, r, user), login(cfg, r, user)
    assert sessions.end_all(r, cfg, user["id"]) == 1
    for tokens in (a, b):
        assert refused(authenticate, cfg, r, tokens["token"]).message == "the token was revoked"
        assert refused(sessions.refresh, r, cfg, tokens["refresh_token"]).code == Code.INVALID_TOKEN
    fresh = login(cfg, r, user)
    assert auth.decode_token(fresh["token"], cfg.jwt)["ver"] == 1
    assert authenticate(cfg, r, fresh["token"]) == user["id"]
    assert sessions.revoked(r, cfg, auth.decode_token(a["token"], cfg.jwt))
    assert not sessions.revoked(r, cfg, auth.decode_token(fresh["token"], cfg.jwt))


def test_password_change_revokes_the_others_and_keeps_the_caller(cfg, r, user):
    phone, laptop = login(cfg, r, user), login(cfg, r, user)
    with db.connection_context():
        err = refused(accounts.change_password, user["id"], {"password": "wrong horse", "new_password": "x" * 8},
                      cfg, r)
    assert err.code == Code.INVALID_PASSWORD
    assert authenticate(cfg, r, phone["token"]) == user["id"]  # a wrong current password changes nothing

    with db.connection_context():
        changed = accounts.change_password(user["id"], {"password": "correct horse", "new_password": "battery staple"},
                                           cfg, r)
    assert changed["user"]["id"] == user["id"]
    assert authenticate(cfg, r, changed["token"]) == user["id"]
    assert sessions.refresh(r, cfg, changed["refresh_token"])["token"]
    for tokens in (phone, laptop):
        assert refused(authenticate, cfg, r, tokens["token"]).code == Code.INVALID_TOKEN
        assert refused(sessions.refresh, r, cfg, tokens["refresh_token"]).code == Code.INVALID_TOKEN
    assert refused(login, cfg, r, user).code == Code.INVALID_PASSWORD
    assert login(cfg, r, user, "battery staple")["token"]


@pytest.mark.parametrize("token", [None, 5, "", "rt1", "rt1.1.abc.def", "rt1.0." + "a" * 32 + "." + "b" * 43,
                                   "rt1.1." + "a" * 32 + "." + "b" * 43 + "\n", "rt2.1." + "a" * 32 + "." + "b" * 43])
def test_malformed_or_unknown_refresh_tokens(cfg, r, token):
    assert refused(sessions.refresh, r, cfg, token).code == Code.INVALID_TOKEN


def test_a_refresh_token_is_bound_to_its_user(cfg, r, user):
    tokens = login(cfg, r, user)
    _, uid, sid, secret = tokens["refresh_token"].split(".")
    forged = f"rt1.{int(uid) + 1}.{sid}.{secret}"
    assert refused(sessions.refresh, r, cfg, forged).code == Code.INVALID_TOKEN


def test_a_refresh_token_is_not_an_access_token(cfg, r, user):
    tokens = login(cfg, r, user)
    assert refused(authenticate, cfg, r, tokens["refresh_token"]).code == Code.INVALID_TOKEN


def test_a_password_change_for_an_unknown_user_is_30001(cfg, r):
    with db.connection_context():
        err = refused(accounts.change_password, 10 ** 15, {"password": "x" * 8, "new_password": "y" * 8}, cfg, r)
    assert err.code == Code.USER_NOT_FOUND


def test_the_tokens_of_a_batch_are_checked_with_one_read(cfg, r, user):
    """revoked_among (the send function's check of a batch of HTTP sends): each token's refusal or
    None, from one MGET; the same verdicts as check() one by one."""
    live, ended, bare = login(cfg, r, user), login(cfg, r, user), auth.issue_token(user["id"], cfg.jwt)
    claims = [auth.decode_token(t, cfg.jwt) for t in (live["token"], ended["token"], bare)]
    sessions.end(r, cfg, claims[1])
    calls = []

    class Counting:
        def mget(self, keys):
            calls.append(keys)
            return r.mget(keys)
    verdicts = sessions.revoked_among(Counting(), cfg, claims)
    assert [v and v.message for v in verdicts] == [None, "the session has ended", None]
    assert len(calls) == 1 and len(calls[0]) == 5  # version + session, version + session, version
    sessions.end_all(r, cfg, user["id"])
    verdicts = sessions.revoked_among(r, cfg, claims)
    assert [v.message for v in verdicts] == ["the token was revoked"] * 3
    assert all(v.code == Code.INVALID_TOKEN for v in verdicts)
    assert sessions.revoked_among(r, cfg, []) == []
