"""What the gateway does with each client frame (docs/PROTOCOL.md has the wire format; the frames
are built by common/protocol.py).

``handle(text, conn, gw)`` returns the frames to answer with; sends, acks and typing are handed to
the pipeline (their answers arrive later through the inbox). Any bad frame is answered with an
``error`` frame ``{code, message, ref}`` and the connection stays open: a frame is decoded and
checked whole by common/validate.py first (10002 naming the field), then charged to the
connection's own budget and, for ``send``, ``typing`` and ``sync``, to the user's across every
gateway (10007 with ``retry_after_ms``: common/ratelimit.py). A ``sync`` while the database is
down is answered 20001 (sync again later). Anything else that fails ends the socket with 1011.
"""
from __future__ import annotations

import logging

import peewee as pw

from common import chat, logs, validate
from common.errors import AppError, Code
from common.models import db, now_ms
from common.protocol import error as error_frame, frame
from common.ratelimit import Decision, RateLimited
from gateway import metrics

logger = logging.getLogger(__name__)


# The user's shared budget each frame type is charged to (besides the connection's own).
USER_LIMITS = {"send": "ws_send_user", "typing": "ws_typing_user", "sync": "ws_sync_user",
               **{kind: "ws_send_user" for kind in chat.EVENTS}}


def parse(text) -> tuple[str, dict]:
    """``(type, payload)`` of a client frame, or 10002: JSON text (not binary), checked whole, a
    string type, and a payload that is an object (absent or null: ``{}``)."""
    if not isinstance(text, str):
        raise validate.invalid("frames are JSON text, not binary")
    message = validate.obj(validate.parse_json(text), "frame")
    kind, payload = message.get("type"), message.get("payload")
    if not isinstance(kind, str):
        raise validate.invalid('a frame is JSON {"type": ..., "payload": {...}}', "type")
    return kind, validate.obj({} if payload is None else payload, "payload")


def handle(text, conn, gw) -> list[str]:
    try:
        kind, payload = parse(text)
    except AppError as exc:
        metrics.FRAMES_IN["invalid"].inc()
        return [error_frame(exc, None)]
    metrics.frame_in(kind)
    if kind not in HANDLERS:
        return [error_frame(validate.invalid(f"unknown frame type {kind[:32]!r}", "type"), kind[:64])]
    try:
        _charge(kind, conn, gw)
        return HANDLERS[kind](payload, conn, gw)
    except AppError as exc:
        sends = kind == "send" or kind in chat.EVENTS
        ref = payload.get("msg_id") if sends and isinstance(payload.get("msg_id"), str) else kind
        return [error_frame(exc, ref, _conversation_of(kind, payload))]
    except (pw.OperationalError, pw.InterfaceError) as exc:
        # The server's error number, not its message (which may quote data): 2003/2013 the server
        # is away, 1054 a column the code expects and the schema lacks (a migration not run).
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else ""
        logger.error("%s frame of conn %s not served code=%d: %s %s", kind, conn.conn_id, Code.DATABASE_ERROR,
                     type(exc).__name__, errno)
        return [error_frame(AppError(Code.DATABASE_ERROR, "database unavailable; try again later"), kind,
                            _conversation_of(kind, payload))]


def _conversation_of(kind: str, payload: dict) -> int | None:
    """The conversation a refused ``sync`` asked for, so that the client knows which one to sync
    again (a well-formed id only: a 10002 about the id itself names the field instead)."""
    cid = payload.get("conversation_id") if kind == "sync" else None
    return cid if type(cid) is int and 1 <= cid <= validate.INT64_MAX else None


def _charge(kind: str, conn, gw) -> None:
    """The connection's own budget first (in memory: a flood costs no Redis call), then the user's."""
    if conn.bucket is not None:
        wait = conn.bucket.take(now_ms())
        if wait:
            metrics.rate_limited("ws_connection")
            if conn.abuse is not None and conn.abuse.take(now_ms()):
                conn.flooding = True  # refused more than FLOOD_FACTOR times its budget: the route closes it
            raise RateLimited(Decision(False, wait, "ws_connection"))
    rule = USER_LIMITS.get(kind)
    if rule is not None:
        decision = gw.limiter.check((rule, conn.user_id))
        if not decision.allowed:
            metrics.rate_limited(rule)
            raise RateLimited(decision)


def on_ping(payload, conn, gw):
    return [frame("pong", {"server_ts": now_ms()})]


def on_send(payload, conn, gw):
    _hand_on(chat.validate_send(payload), conn, gw)
    return []


def on_change(kind):
    """``edit``, ``recall``, ``delete``, ``react``, ``unreact``: through the send function like a
    send (docs/PROTOCOL.md "Chat features"), but a delete for oneself, answered here."""
    def handler(payload, conn, gw):
        if kind == "delete" and validate.choice(payload, "scope", ("everyone", "me"), "everyone") == "me":
            with db.connection_context():
                return [frame("hidden", chat.hide(conn.user_id, validate.text(payload, "target_msg_id", max_len=64)))]
        _hand_on(chat.validate_change(kind, payload), conn, gw)
        return []
    return handler


def _hand_on(fields: dict, conn, gw) -> None:
    """Produce a send (or a change) for the send function, whose ack or error comes back later."""
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


def _conversation_id(payload, required=True):
    return validate.integer(payload, "conversation_id", required=required)


def on_ack(payload, conn, gw):
    conversation_id = _conversation_id(payload)
    seq = validate.integer(payload, "seq", minimum=0)
    ack_type = validate.choice(payload, "ack_type", ("delivered", "read"), "delivered")
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
    limit = validate.integer(payload, "limit", required=False, minimum=1, maximum=chat.MAX_PAGE, default=50)
    with db.connection_context():
        if conversation_id is None:
            result = chat.offline(conn.user_id, validate.integer(payload, "cursor", required=False, minimum=0,
                                                                 default=0), limit)
        else:
            result = chat.sync(conn.user_id, conversation_id,
                               validate.integer(payload, "after_seq", required=False, minimum=0, default=0), limit)
    return [frame("sync", result)]


def on_auth(payload, conn, gw):
    raise AppError(Code.INVALID_PARAMS, "already authenticated")


HANDLERS = {"ping": on_ping, "send": on_send, "ack": on_ack, "typing": on_typing, "sync": on_sync,
            "auth": on_auth, **{kind: on_change(kind) for kind in chat.EVENTS}}
