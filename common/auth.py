"""Password hashing and JWT tokens.

Passwords are stored as ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (standard library, no native
build); the iteration count is the login cost and is read back from each hash, so raising it later
keeps old hashes valid. Access tokens are HS256 JWTs with ``sub`` (user id as a string), ``iat``,
``exp``, ``iss``, and, when issued for a session (common/sessions.py), ``sid`` (the session) and
``ver`` (the user's token version then). Whether a session or version was revoked is for
common/sessions.py to say (it needs Redis); this module checks signature, issuer and expiry only.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import time

import jwt

from common.config import JwtConfig
from common.errors import AppError, Code

_ALGORITHM = "pbkdf2_sha256"
_ID = re.compile(r"[1-9][0-9]{0,18}")
_SID = re.compile(r"[0-9a-f]{32}")


def hash_password(password: str, iterations: int) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join((_ALGORITHM, str(iterations), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    try:
        algorithm, iterations, salt, digest = stored.split("$")
        if algorithm != _ALGORITHM:
            return False
        candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(candidate, _unb64(digest))


def issue_token(user_id: int, cfg: JwtConfig, now: float | None = None, *, version: int | None = None,
                sid: str | None = None) -> str:
    issued = int(time.time() if now is None else now)
    # jti: every token issued is a different string, even two for one session in one second (a
    # refresh right after the login would otherwise hand back the very token it replaces).
    claims = {"sub": str(user_id), "iat": issued, "exp": issued + cfg.ttl_seconds, "iss": cfg.issuer,
              "jti": secrets.token_urlsafe(12)}
    if sid is not None:
        claims.update(sid=sid, ver=int(version or 0))
    return jwt.encode(claims, cfg.secret, algorithm="HS256")


def verify_token(token: str, cfg: JwtConfig, now: float | None = None) -> int:
    """Return the user id of a valid token; raise 30004 (expired) or 30005 (anything else)."""
    return int(decode_token(token, cfg, now)["sub"])


def decode_token(token: str, cfg: JwtConfig, now: float | None = None) -> dict:
    """The claims of a valid token (``sub`` a positive integer string, ``ver`` an integer, ``sid``
    a string when present); raise 30004 (expired) or 30005 (anything else).

    A token that passed the signature and claim checks once is remembered (:func:`_verified`, the
    last :data:`VERIFIED_TOKENS` of them): a client that sends with one token many times pays for
    the HMAC and PyJWT's parsing once (they were an eighth of the gateway's CPU per HTTP send).
    Expiry is checked on every call, against the caller's clock, so tests and replays can pass
    ``now``; a token that fails is never remembered."""
    if not isinstance(token, str) or not token:
        raise AppError(Code.INVALID_TOKEN, "missing token")
    claims = _verified(token, cfg.secret, cfg.issuer)
    if int(claims["exp"]) <= (time.time() if now is None else now):
        raise AppError(Code.TOKEN_EXPIRED)
    return dict(claims)


VERIFIED_TOKENS = 4096


@functools.lru_cache(maxsize=VERIFIED_TOKENS)
def _verified(token: str, secret: str, issuer: str) -> dict:
    """The claims of a token whose signature, issuer and claim shapes are good (not its expiry);
    AppError 30005 otherwise (exceptions are not cached). Callers must not change the dict."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=issuer,
                            options={"require": ["sub", "iat", "exp", "iss"], "verify_exp": False})
        int(claims["exp"])
    except (jwt.PyJWTError, TypeError, ValueError):
        raise AppError(Code.INVALID_TOKEN) from None
    sub, ver, sid = claims["sub"], claims.get("ver", 0), claims.get("sid")
    if not (isinstance(sub, str) and _ID.fullmatch(sub) and isinstance(ver, int) and not isinstance(ver, bool)
            and (sid is None or (isinstance(sid, str) and _SID.fullmatch(sid)))):
        raise AppError(Code.INVALID_TOKEN)
    return claims


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)
