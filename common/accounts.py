"""Accounts: input validation, registration, login and profile updates.

The gateway validates requests with the same functions before it puts them on Kafka (a bad request
is answered at once with 10002 naming the field); the register and login functions do the work.
"""
from __future__ import annotations

import re
from functools import lru_cache

from common import auth, rpc, sessions, validate
from common.config import Config
from common.errors import AppError, Code
from common.models import User, db, now_ms, username_key

USERNAME = validate.USERNAME  # the whole string must match (fullmatch): "abcd\n" is refused
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}")
PASSWORD_MIN, PASSWORD_MAX = 8, 128


def validate_registration(body) -> dict:
    body = validate.obj(body)
    username = validate.username(validate.text(body, "username", max_len=32, empty_is_absent=True))
    password = validate.text(body, "password", min_len=PASSWORD_MIN, max_len=PASSWORD_MAX, empty_is_absent=True)
    email = validate.text(body, "email", required=False, max_len=254, empty_is_absent=True)
    if email is not None and not EMAIL.fullmatch(email):
        raise AppError(Code.INVALID_PARAMS, "email is not a valid address", field="email")
    nickname = validate.text(body, "nickname", required=False, max_len=64, empty_is_absent=True,
                             default=username)
    return {"username": username, "password": password, "email": email, "nickname": nickname}


def validate_login(body) -> dict:
    """Any string is a name one may try (an unknown one is answered like a wrong password)."""
    body = validate.obj(body)
    return {"username": validate.text(body, "username", max_len=32, empty_is_absent=True),
            "password": validate.text(body, "password", max_len=PASSWORD_MAX, empty_is_absent=True)}


def validate_password_change(body) -> dict:
    """``{password, new_password}``: the current password proves it is the user at the keyboard."""
    body = validate.obj(body)
    return {"password": validate.text(body, "password", max_len=PASSWORD_MAX, empty_is_absent=True),
            "new_password": validate.text(body, "new_password", min_len=PASSWORD_MIN, max_len=PASSWORD_MAX,
                                          empty_is_absent=True)}


def validate_profile_update(body) -> dict:
    body = validate.obj(body)
    changes = {}
    for name, max_len in (("nickname", 64), ("avatar", 512)):
        if name in body:
            changes[name] = validate.text(body, name, min_len=0, max_len=max_len)
    if not changes:
        raise AppError(Code.INVALID_PARAMS, "nothing to update: give nickname and/or avatar")
    return changes


def _by_name(username: str) -> User | None:
    return User.get_or_none(User.username_key == username_key(username))


def register(fields: dict, request_id: str | None, cfg: Config, in_time=lambda: True) -> User:
    """Create the account, stored as typed; its name is taken in every letter case.

    Idempotent: a redelivered request (same ``request_id``) and a retry with the same username
    and password both get the account they created. ``in_time()`` is asked just before the
    commit: when it says no, nothing is stored (:class:`common.rpc.Expired`).
    """
    password_hash = auth.hash_password(fields["password"], cfg.auth.password_iterations)
    with db.atomic():
        created = (User.insert(username=fields["username"], username_key=username_key(fields["username"]),
                               password_hash=password_hash, email=fields.get("email"),
                               nickname=fields.get("nickname") or "", register_request_id=request_id)
                   .on_conflict_ignore().as_rowcount().execute())
        if created and not in_time():
            raise rpc.Expired()  # rolls the insert back
    user = _by_name(fields["username"])
    if user is None:
        raise AppError(Code.USER_EXISTS)
    if not created and not (request_id is not None and user.register_request_id == request_id) \
            and not auth.verify_password(fields["password"], user.password_hash):
        raise AppError(Code.USER_EXISTS)
    return user


@lru_cache(maxsize=4)
def _dummy_hash(iterations: int) -> str:
    return auth.hash_password("not-a-real-password", iterations)


def login(fields: dict, cfg: Config, r=None) -> dict:
    """Check the password and start a session: ``{token, expires_in, refresh_token,
    refresh_expires_in, user}`` (common/sessions.py; without Redis, ``r``, a bare token that
    cannot be revoked: unit tests only). Unknown user and wrong password look the same."""
    user = _by_name(fields["username"])
    stored = user.password_hash if user else _dummy_hash(cfg.auth.password_iterations)
    # Verify even for an unknown user, so the response time does not reveal which names exist.
    if not auth.verify_password(fields["password"], stored) or user is None:
        raise AppError(Code.INVALID_PASSWORD)
    if r is None:
        return {"token": auth.issue_token(user.id, cfg.jwt), "expires_in": cfg.jwt.ttl_seconds,
                "user": user.public()}
    return {**sessions.start(r, cfg, user.id), "user": user.public()}


def change_password(user_id: int, fields: dict, cfg: Config, r) -> dict:
    """Check the current password, revoke every token of the user (every session, every device),
    store the new password and start a new session for the caller (its tokens, as :func:`login`).

    Revoking comes first: if storing then fails, the user is logged out everywhere with the old
    password still good (safe, and a retry does it all again), never the other way round."""
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise AppError(Code.USER_NOT_FOUND)
    if not auth.verify_password(fields["password"], user.password_hash):
        raise AppError(Code.INVALID_PASSWORD)
    sessions.end_all(r, cfg, user_id)
    User.update(password_hash=auth.hash_password(fields["new_password"], cfg.auth.password_iterations),
                updated_at=now_ms()).where(User.id == user_id).execute()
    return {**sessions.start(r, cfg, user_id), "user": profile(user_id).public()}


_known_users: set[int] = set()
KNOWN_USERS_MAX = 100_000


def authenticate(token: str, cfg: Config, r=None) -> int:
    """The user id of a valid token whose user exists (30004, 30005 otherwise). With Redis (``r``),
    a token whose session ended or whose version was revoked is refused too (30005: common/sessions.py).
    Accounts are never deleted, so a user seen once is remembered: one indexed lookup per user and
    process."""
    return int(authenticate_claims(token, cfg, r)["sub"])


def authenticate_claims(token: str, cfg: Config, r=None) -> dict:
    """As :func:`authenticate`, the token's claims (a socket keeps them, to know when it is revoked)."""
    claims = auth.decode_token(token, cfg.jwt)
    if r is not None:
        sessions.check(r, cfg, claims)
    user_id = int(claims["sub"])
    if user_id not in _known_users:
        with db.connection_context():
            if not User.select().where(User.id == user_id).exists():
                raise AppError(Code.INVALID_TOKEN, "the token's user does not exist")
        if len(_known_users) >= KNOWN_USERS_MAX:
            _known_users.clear()
        _known_users.add(user_id)
    return claims


def profile(user_id: int) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise AppError(Code.USER_NOT_FOUND)
    return user


def find(username) -> User:
    """The user of an exact username in any letter case (30001 if none): how a chat starts."""
    user = _by_name(validate.username(username))
    if user is None:
        raise AppError(Code.USER_NOT_FOUND)
    return user


def contact(user: User) -> dict:
    """What other users see of a user (no email)."""
    return {"id": user.id, "username": user.username, "nickname": user.nickname, "avatar": user.avatar}


def update_profile(user_id: int, changes: dict) -> User:
    updated = User.update(**changes, updated_at=now_ms()).where(User.id == user_id).execute()
    if not updated:
        raise AppError(Code.USER_NOT_FOUND)
    return profile(user_id)


def search(prefix: str, limit: int, after_id: int = 0) -> dict:
    """Users whose username (any letter case) or nickname starts with ``prefix``, by id, paged
    (``after_id``: the last id of the page before); what other users see of each (no email)."""
    rows = list(User.select().where(
        (User.username_key.startswith(username_key(prefix)) | User.nickname.startswith(prefix))
        & (User.id > after_id)).order_by(User.id).limit(limit + 1))
    page = rows[:limit]
    return {"users": [contact(u) for u in page], "has_more": len(rows) > limit,
            "next_after": page[-1].id if page else after_id}
