"""Sessions: short-lived access tokens, rotating refresh tokens, and revocation every gateway sees.

A login starts a *session* (a refresh-token family). It hands out an access token (a JWT of
``jwt.ttl_seconds``, common/auth.py) that names the session (``sid``) and the user's token version
(``ver``), and a refresh token ``rt1.<user id>.<session id>.<secret>`` (opaque to clients). Redis
holds, per namespace:

- ``tv:<user id>``: the user's token version (absent = 0). Logging out everywhere and changing the
  password increment it: every access token and session made before is dead at once, on every
  gateway, because each authentication compares the token's ``ver`` with it.
- ``rt:<session id>``: ``"<user id>|<version>|<sha256 of the current secret>"``, expiring
  ``jwt.refresh_ttl_seconds`` after its last use. Logging out deletes it: the session's access
  tokens (their ``sid``) and its refresh token stop working at once.

Refreshing rotates: the presented secret must be the session's current one; it is replaced and a
new pair is handed out. Presenting a secret that was already rotated away is *reuse* (a copy is in
someone else's hands): the whole session is revoked, for the thief and the user alike (30005;
the user logs in again). Two tabs that refresh with the same token at the same moment look like
reuse too: a client refreshes from one place (the web client does so before its token expires).

One authentication costs one Redis round trip (:func:`check`: MGET of both keys); the send
function checks the tokens of a whole batch of HTTP sends with one (:func:`revoked_among`). If Redis loses
its data, every session is gone: every access token names a session whose key is missing, so every
token is refused (30005) and everyone logs in again — the loss fails closed, never reviving a
session that was logged out. Hence Redis runs with persistence in production (deploy/compose.yml;
docs/OPERATIONS.md), and tests/integration/test_outages.py shows what a loss looks like.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time

from common import auth
from common.config import Config
from common.errors import AppError, Code

REFRESH = re.compile(r"rt1\.([1-9][0-9]{0,18})\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})")

# KEYS: session, version. ARGV: user id, presented hash, new hash, ttl ms.
# Returns 1 rotated (and the version), 0 unknown/expired/revoked, -1 reuse (the session is deleted).
_ROTATE = """
local rec = redis.call('GET', KEYS[1])
if not rec then return {0, 0} end
local uid, ver, hash = string.match(rec, '^(%d+)|(%d+)|(%x+)$')
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if uid ~= ARGV[1] or tonumber(ver) < current then
  redis.call('DEL', KEYS[1])
  return {0, 0}
end
if hash ~= ARGV[2] then
  redis.call('DEL', KEYS[1])
  return {-1, 0}
end
redis.call('SET', KEYS[1], uid .. '|' .. ver .. '|' .. ARGV[3], 'PX', ARGV[4])
return {1, tonumber(ver)}
"""


def _version_key(cfg: Config, user_id: int) -> str:
    return cfg.redis_key("tv", user_id)


def _session_key(cfg: Config, sid: str) -> str:
    return cfg.redis_key("rt", sid)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _pair(r, cfg: Config, user_id: int, sid: str, version: int, now: float) -> dict:
    """Store the session's new secret and hand out an access token and a refresh token."""
    secret = secrets.token_urlsafe(32)
    r.set(_session_key(cfg, sid), f"{user_id}|{version}|{_digest(secret)}",
          px=cfg.jwt.refresh_ttl_seconds * 1000)
    return _tokens(cfg, user_id, sid, version, secret, now)


def _tokens(cfg: Config, user_id: int, sid: str, version: int, secret: str, now: float) -> dict:
    return {"token": auth.issue_token(user_id, cfg.jwt, now, version=version, sid=sid),
            "expires_in": cfg.jwt.ttl_seconds,
            "refresh_token": f"rt1.{user_id}.{sid}.{secret}",
            "refresh_expires_in": cfg.jwt.refresh_ttl_seconds}


def start(r, cfg: Config, user_id: int, now: float | None = None) -> dict:
    """A new session for a user who just proved who they are (login, password change)."""
    version = int(r.get(_version_key(cfg, user_id)) or 0)
    return _pair(r, cfg, user_id, secrets.token_hex(16), version, time.time() if now is None else now)


def refresh(r, cfg: Config, refresh_token, now: float | None = None) -> dict:
    """Rotate a session's refresh token: a new access token and refresh token, or 30005.

    A refresh token that was already used revokes its whole session (see the module docstring).
    """
    match = REFRESH.fullmatch(refresh_token) if isinstance(refresh_token, str) else None
    if match is None:
        raise AppError(Code.INVALID_TOKEN, "not a refresh token")
    user_id, sid, secret = int(match[1]), match[2], match[3]
    new_secret = secrets.token_urlsafe(32)
    status, version = r.eval(_ROTATE, 2, _session_key(cfg, sid), _version_key(cfg, user_id),
                             str(user_id), _digest(secret), _digest(new_secret),
                             cfg.jwt.refresh_ttl_seconds * 1000)
    if status == -1:
        raise AppError(Code.INVALID_TOKEN, "refresh token reused; the session is revoked, log in again")
    if status != 1:
        raise AppError(Code.INVALID_TOKEN, "the session has ended; log in again")
    return _tokens(cfg, user_id, sid, int(version), new_secret, time.time() if now is None else now)


def end(r, cfg: Config, claims: dict) -> None:
    """Log out one session: its refresh token and every access token naming it stop working."""
    sid = claims.get("sid")
    if sid:
        r.delete(_session_key(cfg, sid))


def end_all(r, cfg: Config, user_id: int) -> int:
    """Log out everywhere: every token of the user issued so far stops working. The new version."""
    return int(r.incr(_version_key(cfg, user_id)))


def check(r, cfg: Config, claims: dict) -> None:
    """Refuse (30005) an access token whose version was revoked or whose session has ended."""
    refusal = revoked_among(r, cfg, [claims])[0]
    if refusal is not None:
        raise refusal


def revoked_among(r, cfg: Config, claims_list: list[dict]) -> list[AppError | None]:
    """For each token's claims, its refusal (30005) when its version was revoked or its session
    has ended, else None: every token checked with one MGET."""
    keys: list[str] = []
    for claims in claims_list:
        keys.append(_version_key(cfg, int(claims["sub"])))
        if claims.get("sid"):
            keys.append(_session_key(cfg, claims["sid"]))
    values = iter(r.mget(keys)) if keys else iter(())
    refusals: list[AppError | None] = []
    for claims in claims_list:
        version = next(values)
        session = next(values) if claims.get("sid") else ""
        if int(claims.get("ver", 0)) < int(version or 0):
            refusals.append(AppError(Code.INVALID_TOKEN, "the token was revoked"))
        elif session is None:
            refusals.append(AppError(Code.INVALID_TOKEN, "the session has ended"))
        else:
            refusals.append(None)
    return refusals


def revoked(r, cfg: Config, claims: dict) -> bool:
    """Whether a socket authenticated with these claims must now be closed (the gateway asks when
    it is told of a revocation)."""
    try:
        check(r, cfg, claims)
    except AppError:
        return True
    return False
