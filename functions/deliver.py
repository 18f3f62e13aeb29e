"""deliver — fan an event out to the live connections of its recipients, one publish per gateway.

Input: topic ``<ns>.deliver``, key = conversation id (or user id for presence). Kinds:
  * ``message`` ``{message, origin_conn?, also_notify?}``: to every member's connections except the
    one it was sent from (the sender's other devices get it too);
  * ``typing`` ``{conversation_id, user_id}``: to the other members, never stored;
  * ``ack`` ``{conversation_id, user_id, seq, ack_type}``: moves the member's cursor forward; a read
    that moved it is sent to the other members as a ``receipt``;
  * ``presence`` ``{user_id, online, last_seen}``: to everyone who shares a conversation with them.
Output: on each gateway's channel, ``{type: "push", conns: [conn_id, ...], frame}``. Nothing is
broadcast to gateways without recipients. Push is a hint: clients that miss it catch up by seq sync.
Idempotency: a redelivered event pushes the same frame again (clients dedupe by msg_id / seq);
cursors only move forward. Errors: an unknown kind or shape is invalid (50002, DLQ); Redis or
database outages are retried.
"""
from common import bus, chat, presence
from common.errors import AppError, Code
from functions.runtime import Invalid, Publish

MAX_RECORDS = 500


def _fields(e: dict, *names):
    values = [e.get(name) for name in names]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise Invalid(Code.UNMARSHAL_FAILED, f"deliver event needs integer {', '.join(names)}")
    return values


def plan(e: dict) -> tuple[list[int], dict | None, str | None]:
    """Recipients, frame and the connection to skip for one deliver event (database reads only,
    plus the cursor move of an ack)."""
    kind = e.get("kind")
    if kind == "message":
        message = e.get("message")
        if not isinstance(message, dict):
            raise Invalid(Code.UNMARSHAL_FAILED, "message event without message")
        (conversation_id,) = _fields(message, "conversation_id")
        recipients = chat.member_ids(conversation_id) + list(e.get("also_notify") or [])
        return recipients, {"type": "message", "payload": message}, e.get("origin_conn")
    if kind in ("typing", "ack"):
        conversation_id, user_id = _fields(e, "conversation_id", "user_id")
        try:
            chat.membership(conversation_id, user_id)
            if kind == "ack":
                (seq,) = _fields(e, "seq")
                moved = chat.move_cursor(user_id, conversation_id, seq, e.get("ack_type", "delivered"))
                if not (moved and e.get("ack_type") == "read"):
                    return [], None, None
        except AppError:
            return [], None, None  # not (or no longer) a member: nothing to tell anyone
        others = [u for u in chat.member_ids(conversation_id) if u != user_id]
        if kind == "typing":
            return others, {"type": "typing", "payload": {"conversation_id": conversation_id, "user_id": user_id}}, None
        payload = {"conversation_id": conversation_id, "user_id": user_id, "seq": e["seq"], "ack_type": "read"}
        return others, {"type": "receipt", "payload": payload}, None
    if kind == "presence":
        (user_id,) = _fields(e, "user_id")
        payload = {"user_id": user_id, "online": bool(e.get("online")), "last_seen": e.get("last_seen")}
        return chat.contact_ids(user_id), {"type": "presence", "payload": payload}, None
    raise Invalid(Code.UNMARSHAL_FAILED, f"unknown deliver kind {kind!r}")


def handle(event, ctx):
    recipients, frame, skip_conn = plan(event.value)
    if not recipients:
        return []
    connections = presence.lookup(ctx.redis, ctx.config, recipients, ctx.now_ms())
    return [Publish(bus.gateway_channel(ctx.config, gateway_id), {"type": "push", "conns": conns, "frame": frame})
            for gateway_id, conns in presence.group_by_gateway(connections, skip_conn).items()]
