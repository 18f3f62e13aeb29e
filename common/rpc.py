"""Request/reply over Kafka and Redis: the envelope both sides agree on.

The gateway produces ``{"request_id", "reply_to", "deadline_ms", "body"}`` to a function's topic and
waits on its own Redis channel (``reply_to``) for ``{"type": "reply", "request_id", "ok", "data" |
"error"}``. A function drops a request whose deadline has passed: the caller has already been told
it timed out (10008), so doing the work later would only surprise it.
"""
from __future__ import annotations

from common.errors import AppError


def ok(request_id: str, data) -> dict:
    return {"type": "reply", "request_id": request_id, "ok": True, "data": data}


def error(request_id: str, exc: AppError) -> dict:
    return {"type": "reply", "request_id": request_id, "ok": False, "error": exc.to_dict()}


def result(reply: dict):
    """The data of a reply, or raise the AppError it carries."""
    if reply.get("ok"):
        return reply.get("data")
    raise AppError.from_dict(reply.get("error") or {})
