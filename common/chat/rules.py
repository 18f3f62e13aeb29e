"""The rules of a client's input to chat (pure: no database): a send, paging, seq parameters, and
the Kafka key that keeps a conversation on one partition."""
from __future__ import annotations

from common.errors import AppError, Code

MAX_CONTENT = 8000
MAX_PAGE = 200
SYSTEM = "system"  # the content type of membership events; clients cannot send it


def _int_field(payload: dict, name: str, required: bool = True):
    value = payload.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AppError(Code.INVALID_PARAMS, f"{name} must be a positive integer", field=name)
    return value


def validate_send(payload) -> dict:
    """A client's ``send``: ``{msg_id, to_user_id | group_id, content, content_type?}``."""
    if not isinstance(payload, dict):
        raise AppError(Code.INVALID_PARAMS, "payload must be an object")
    msg_id = payload.get("msg_id")
    if not isinstance(msg_id, str) or not 1 <= len(msg_id) <= 64:
        raise AppError(Code.INVALID_PARAMS, "msg_id must be a string of 1-64 characters", field="msg_id")
    has_user, has_group = payload.get("to_user_id") is not None, payload.get("group_id") is not None
    if has_user == has_group:
        raise AppError(Code.INVALID_PARAMS, "give exactly one of to_user_id and group_id",
                       field="to_user_id")
    content = payload.get("content")
    if not isinstance(content, str) or not content or len(content) > MAX_CONTENT:
        raise AppError(Code.INVALID_PARAMS, f"content must be a string of 1-{MAX_CONTENT} characters",
                       field="content")
    content_type = payload.get("content_type", "text")
    if not isinstance(content_type, str) or not 1 <= len(content_type) <= 16 or content_type == SYSTEM:
        raise AppError(Code.INVALID_PARAMS, "content_type must be a short string other than 'system'",
                       field="content_type")
    return {"msg_id": msg_id, "to_user_id": _int_field(payload, "to_user_id", has_user),
            "group_id": _int_field(payload, "group_id", has_group), "content": content,
            "content_type": content_type}


def route_key(sender_id: int, to_user_id: int | None, group_id: int | None) -> str:
    """The Kafka key of a send: one per conversation, so a conversation stays on one partition."""
    if group_id is not None:
        return f"g{group_id}"
    low, high = sorted((sender_id, to_user_id))
    return f"p{low}:{high}"


def page_limit(raw, default: int = 50) -> int:
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise AppError(Code.INVALID_PARAMS, "limit must be an integer", field="limit") from None
    if not 1 <= value <= MAX_PAGE:
        raise AppError(Code.INVALID_PARAMS, f"limit must be 1-{MAX_PAGE}", field="limit")
    return value


def seq_param(raw, name: str, default: int | None = None) -> int | None:
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise AppError(Code.INVALID_PARAMS, f"{name} must be an integer", field=name) from None
    if value < 0:
        raise AppError(Code.INVALID_PARAMS, f"{name} must not be negative", field=name)
    return value
