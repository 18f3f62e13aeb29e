"""Request/reply over Kafka and Redis: the envelope both sides agree on.

The gateway produces ``{"request_id", "reply_to", "deadline_ms", "body"}`` to a function's topic and
waits on its own Redis channel (``reply_to``) for ``{"type": "reply", "request_id", "ok", "data" |
"error"}``. ``deadline_ms`` is when the work must be committed by: the gateway waits
:data:`REPLY_MARGIN_MS` longer, for the reply to travel back. A function drops a request whose
deadline has passed, and rolls back work that would commit after it: the caller has already been
told (or is about to be told) it timed out (10008), so the work must not take effect later.
"""
from __future__ import annotations

from common.errors import AppError

REPLY_MARGIN_MS = 250


class Expired(Exception):
    """The request's deadline passed before its work could be committed; nothing was stored."""


def ok(request_id: str, data) -> dict:
    return {"type": "reply", "request_id": request_id, "ok": True, "data": data}


def error(request_id: str, exc: AppError) -> dict:
    return {"type": "reply", "request_id": request_id, "ok": False, "error": exc.to_dict()}


def result(reply: dict):
    """The data of a reply, or raise the AppError it carries."""
    if reply.get("ok"):
        return reply.get("data")
    raise AppError.from_dict(reply.get("error") or {})
