"""The rules of a client's input to chat (pure: no database): a send, a change to a message (edit,
recall, delete, react, unreact), paging, seq parameters, and the Kafka key that keeps a
conversation on one partition."""
from __future__ import annotations

import unicodedata

from common import validate
from common.errors import AppError, Code

MAX_CONTENT = 8000
MAX_PAGE = 200
SYSTEM = "system"  # the content type of membership events; clients cannot send it


# The content types of events that change an earlier message (``target_msg_id``): each is sent
# with its own frame, never as a send's content_type.
EVENTS = ("edit", "recall", "delete", "react", "unreact")
MAX_MENTIONS = 50
MAX_EMOJI = 10  # code points: a single emoji with its modifiers and joiners


def _address(payload: dict) -> dict:
    """``msg_id`` (the client's idempotency key) and the conversation: ``to_user_id`` or ``group_id``."""
    msg_id = validate.text(payload, "msg_id", max_len=64)
    has_user, has_group = payload.get("to_user_id") is not None, payload.get("group_id") is not None
    if has_user == has_group:
        raise validate.invalid("give exactly one of to_user_id and group_id", "to_user_id")
    return {"msg_id": msg_id, "to_user_id": validate.integer(payload, "to_user_id", required=has_user),
            "group_id": validate.integer(payload, "group_id", required=has_group)}


def validate_send(payload) -> dict:
    """A client's ``send``: ``{msg_id, to_user_id | group_id, content, content_type?,
    reply_to_msg_id?, mentions?, mention_all?}``."""
    payload = validate.obj(payload, "payload")
    fields = _address(payload)
    content_type = validate.text(payload, "content_type", required=False, max_len=16, default="text")
    if content_type == SYSTEM or content_type in EVENTS:
        raise validate.invalid(f"content_type {content_type!r} is not for a send", "content_type")
    mention_all = payload.get("mention_all", False)
    if not isinstance(mention_all, bool):
        raise validate.invalid("mention_all must be true or false", "mention_all")
    mentions = [0] if mention_all else validate.id_list(payload, "mentions", max_items=MAX_MENTIONS)
    reply_to = validate.text(payload, "reply_to_msg_id", required=False, max_len=64)
    fields.update(content=validate.text(payload, "content", max_len=MAX_CONTENT), content_type=content_type)
    # The optional parts only when given: most sends are plain, and their events stay small.
    if reply_to is not None:
        fields["reply_to_msg_id"] = reply_to
    if mentions:
        fields["mentions"] = mentions
    return fields


def _emoji(payload: dict) -> str:
    """One emoji: 1-10 code points, none of them ASCII, a space or an invisible control (the zero
    width joiner of a composed emoji excepted). Which emoji exist is the client's to show."""
    emoji = validate.text(payload, "emoji", max_len=MAX_EMOJI)
    for ch in emoji:
        if ch.isascii() or ch.isspace() or (unicodedata.category(ch) in ("Cc", "Cf") and ch != "\u200d"):
            raise validate.invalid("emoji must be one emoji (no letters, digits, spaces or controls)", "emoji")
    return emoji


def validate_change(kind: str, payload) -> dict:
    """A client's ``edit`` ``{…, target_msg_id, content}``, ``recall``/``delete`` ``{…,
    target_msg_id}`` or ``react``/``unreact`` ``{…, target_msg_id, emoji}``, addressed like a send."""
    payload = validate.obj(payload, "payload")
    fields = _address(payload)
    if kind == "edit":
        content = validate.text(payload, "content", max_len=MAX_CONTENT)
    elif kind in ("react", "unreact"):
        content = _emoji(payload)
    else:
        content = ""
    return {**fields, "content": content, "content_type": kind,
            "target_msg_id": validate.text(payload, "target_msg_id", max_len=64)}


def validate_event(e: dict) -> dict:
    """A send event as the send function gets it: a send or a change, by its content_type."""
    kind = e.get("content_type")
    if kind in ("react", "unreact"):
        return validate_change(kind, {**e, "emoji": e.get("content")})  # the emoji travels as content
    if kind in EVENTS:
        return validate_change(kind, e)
    return validate_send(e)


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
