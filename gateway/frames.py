"""What the gateway does with each client frame (docs/PROTOCOL.md has the wire format; the frames
are built by common/protocol.py).

``handle(text, conn, gw)`` returns the frames to answer with; sends, acks and typing are handed to
the pipeline (their answers arrive later through the inbox). Any bad frame is answered with an
``error`` frame ``{code, message, ref}`` and the connection stays open.
"""
from __future__ import annotations

import json
import logging

from common import chat, logs
from common.errors import AppError, Code
from common.models import db, now_ms
from common.protocol import error as error_frame, frame
from gateway import metrics

logger = logging.getLogger(__name__)


def handle(text, conn, gw) -> list[str]:
    try:
        message = json.loads(text)
        kind, payload = message["type"], message.get("payload") or {}
        if not isinstance(kind, str) or not isinstance(payload, dict):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        metrics.FRAMES_IN["invalid"].inc()
        return [error_frame(AppError(Code.INVALID_PARAMS, 'a frame is JSON {"type": ..., "payload": {...}}'), None)]
    metrics.frame_in(kind)
    handler = HANDLERS.get(kind)
    if handler is None:
        return [error_frame(AppError(Code.INVALID_PARAMS, f"unknown frame type {kind!r}"), kind)]
    try:
        return handler(payload, conn, gw)
    except AppError as exc:
        ref = payload.get("msg_id") if kind == "send" and isinstance(payload.get("msg_id"), str) else kind
        return [error_frame(exc, ref)]


def on_ping(payload, conn, gw):
    return [frame("pong", {"server_ts": now_ms()})]


def on_send(payload, conn, gw):
    fields = chat.validate_send(payload)
    event = {**fields, "sender_id": conn.user_id, "conn_id": conn.conn_id}
    key = chat.route_key(conn.user_id, fields["to_user_id"], fields["group_id"])

    cid = logs.current_cid()

    def failed(_exc):
        with logs.correlation(cid):
            logger.warning("send %s of conn %s not handed to Kafka code=%d", fields["msg_id"], conn.conn_id,
                           Code.PRODUCER_ERROR)
        conn.push(error_frame(AppError(Code.PRODUCER_ERROR), fields["msg_id"]))
    gw.produce("send", event, key, on_error=failed, reply=True)
    # msg_id → cid: how an operator finds the correlation id of a message a user asks about.
    logger.debug("send %s from user %d conn %s handed on", fields["msg_id"], conn.user_id, conn.conn_id)
    return []


def _conversation_id(payload, required=True):
    value = payload.get("conversation_id")
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AppError(Code.INVALID_PARAMS, "conversation_id must be a positive integer", field="conversation_id")
    return value


def on_ack(payload, conn, gw):
    conversation_id = _conversation_id(payload)
    seq, ack_type = payload.get("seq"), payload.get("ack_type", "delivered")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise AppError(Code.INVALID_PARAMS, "seq must be a non-negative integer", field="seq")
    if ack_type not in ("delivered", "read"):
        raise AppError(Code.INVALID_PARAMS, "ack_type is delivered or read", field="ack_type")
    gw.produce("deliver", {"kind": "ack", "conversation_id": conversation_id, "user_id": conn.user_id,
                           "seq": seq, "ack_type": ack_type}, str(conversation_id))
    return []


def on_typing(payload, conn, gw):
    conversation_id = _conversation_id(payload)
    gw.produce("deliver", {"kind": "typing", "conversation_id": conversation_id, "user_id": conn.user_id},
               str(conversation_id))
    return []


def on_sync(payload, conn, gw):
    conversation_id = _conversation_id(payload, required=False)
    limit = chat.page_limit(payload.get("limit"))
    with db.connection_context():
        if conversation_id is None:
            result = chat.offline(conn.user_id, chat.seq_param(payload.get("cursor"), "cursor", 0), limit)
        else:
            result = chat.sync(conn.user_id, conversation_id,
                               chat.seq_param(payload.get("after_seq"), "after_seq", 0), limit)
    return [frame("sync", result)]


def on_auth(payload, conn, gw):
    raise AppError(Code.INVALID_PARAMS, "already authenticated")


HANDLERS = {"ping": on_ping, "send": on_send, "ack": on_ack, "typing": on_typing, "sync": on_sync,
            "auth": on_auth}
