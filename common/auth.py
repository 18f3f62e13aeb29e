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
    a string when present); raise 30004 (expired) or 30005 (anything else)."""
    if not isinstance(token, str) or not token:
        raise AppError(Code.INVALID_TOKEN, "missing token")
    try:
        # Expiry is checked here against the caller's clock so tests and replays can pass `now`.
        claims = jwt.decode(token, cfg.secret, algorithms=["HS256"], issuer=cfg.issuer,
                            options={"require": ["sub", "iat", "exp", "iss"], "verify_exp": False})
        if int(claims["exp"]) <= (time.time() if now is None else now):
            raise jwt.ExpiredSignatureError
    except jwt.ExpiredSignatureError:
        raise AppError(Code.TOKEN_EXPIRED) from None
    except jwt.PyJWTError:
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
