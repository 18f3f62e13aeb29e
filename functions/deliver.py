"""deliver — fan an event out to the live connections of its recipients, one publish per gateway.

Input: topic ``<ns>.deliver``, key = conversation id (or user id for presence). Kinds:
  * ``message`` ``{message, origin_conn?, also_notify?}``: to every member's connections except the
    one it was sent from (the sender's other devices get it too);
  * ``typing`` ``{conversation_id, user_id}``: to the other members, never stored;
  * ``ack`` ``{conversation_id, user_id, seq, ack_type}``: moves the member's cursor forward; a read
    that moved it is sent to the other members as a ``receipt``;
  * ``presence`` ``{user_id, online, last_seen}``: to everyone who shares a conversation with them.
Output: on each gateway's channel, a ``push`` of the frame (common/protocol.py) to its connections,
the frame JSON-encoded once for all its recipients. Nothing is
broadcast to gateways without recipients. Push is a hint: clients that miss it catch up by seq sync.
With ``notify.webhook_url`` set, a message with recipients who have no live connection (its sender
aside) also goes to ``<ns>.notify`` for them (functions/notify.py), key = conversation id.
A poll's events share one membership query (none for private messages: the message names both
members) and one presence lookup (``handle_batch``).
Idempotency: a redelivered event pushes the same frame again (clients dedupe by msg_id / seq);
cursors only move forward. Errors: an unknown kind or shape is invalid (50002, DLQ); Redis or
database outages are retried.
"""
from common import bus, chat, presence, protocol
from common.errors import AppError, Code
from functions.api import Emit, Invalid, Publish, Spec

SPEC = Spec(max_records=500)


def _fields(e: dict, *names):
    values = [e.get(name) for name in names]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise Invalid(Code.UNMARSHAL_FAILED, f"deliver event needs integer {', '.join(names)}")
    return values


def _private_pair(message: dict) -> list[int] | None:
    """A private conversation's members, from the message itself (they never change)."""
    pair = [message.get("from_user_id"), message.get("to_user_id")]
    return pair if message.get("group_id") is None and all(isinstance(u, int) for u in pair) else None


def _members(message: dict, conversation_id: int, members: dict[int, list[int]] | None) -> list[int]:
    pair = _private_pair(message)
    if pair is not None:
        return pair
    known = (members or {}).get(conversation_id)
    return chat.member_ids(conversation_id) if known is None else known


Plan = tuple[list[int], tuple[str, dict] | None, str | None]  # recipients, (frame type, payload), conn to skip


def apply(e: dict, members: dict[int, list[int]] | None = None) -> Plan:
    """Apply one deliver event — its only write is an ack's cursor move — and say who gets which
    frame (and which connection to skip). ``members``: conversation members already read, if any."""
    kind = e.get("kind")
    if kind == "message":
        message = e.get("message")
        if not isinstance(message, dict):
            raise Invalid(Code.UNMARSHAL_FAILED, "message event without message")
        (conversation_id,) = _fields(message, "conversation_id")
        recipients = _members(message, conversation_id, members) + list(e.get("also_notify") or [])
        return recipients, ("message", message), e.get("origin_conn")
    if kind in ("typing", "ack"):
        conversation_id, user_id = _fields(e, "conversation_id", "user_id")
        try:
            chat.membership(conversation_id, user_id)
            if kind == "ack":
                (seq,) = _fields(e, "seq")
                seq = chat.move_cursor(user_id, conversation_id, seq, e.get("ack_type", "delivered"))
                if seq is None or e.get("ack_type") != "read":
                    return [], None, None
        except AppError:
            return [], None, None  # not (or no longer) a member: nothing to tell anyone
        others = [u for u in chat.member_ids(conversation_id) if u != user_id]
        if kind == "typing":
            return others, ("typing", {"conversation_id": conversation_id, "user_id": user_id}), None
        # The seq the cursor moved to, which is never past the conversation's last message.
        payload = {"conversation_id": conversation_id, "user_id": user_id, "seq": seq, "ack_type": "read"}
        return others, ("receipt", payload), None
    if kind == "presence":
        (user_id,) = _fields(e, "user_id")
        payload = {"user_id": user_id, "online": bool(e.get("online")), "last_seen": e.get("last_seen")}
        return chat.contact_ids(user_id), ("presence", payload), None
    raise Invalid(Code.UNMARSHAL_FAILED, f"unknown deliver kind {kind!r}")


def pushes(plans: list[Plan], ctx) -> list[list[Publish | Emit]]:
    """The publishes of each plan, with one presence lookup for all their recipients; and for a
    message, a notify event for its recipients with no live connection (when notifications are on)."""
    everyone = [user_id for recipients, _, _ in plans for user_id in recipients]
    online = presence.lookup(ctx.redis, ctx.config, everyone, ctx.now_ms()) if everyone else {}
    results = []
    for recipients, frame, skip_conn in plans:
        connections = {u: online[u] for u in recipients if u in online}
        text = protocol.frame(*frame) if connections else ""
        outputs = [Publish(bus.gateway_channel(ctx.config, gateway_id), protocol.push(conns, text))
                   for gateway_id, conns in presence.group_by_gateway(connections, skip_conn).items()]
        if frame is not None and frame[0] == "message" and ctx.config.notify.webhook_url:
            outputs += _notify(frame[1], [u for u in recipients if u not in online], ctx)
        results.append(outputs)
    return results


def _notify(message: dict, offline: list[int], ctx) -> list[Emit]:
    """The notify event of a message for its offline recipients (not its sender; not for system
    messages or the events that change a message)."""
    offline = [u for u in dict.fromkeys(offline) if u != message.get("from_user_id")]
    if not offline or message.get("content_type") in (chat.SYSTEM, *chat.EVENTS):
        return []
    event = {k: message.get(k) for k in ("msg_id", "conversation_id", "seq", "from_user_id", "group_id")
             if message.get(k) is not None}
    event["recipients"] = offline
    if ctx.config.notify.previews:
        event["preview"] = message.get("content", "")[:100]
    return [Emit(ctx.topic("notify"), event, key=str(message["conversation_id"]))]


def handle(event, ctx):
    return pushes([apply(event.value)], ctx)[0]


def handle_batch(events, ctx):
    conversation_ids = {e.value["message"].get("conversation_id") for e in events
                        if e.value.get("kind") == "message" and isinstance(e.value.get("message"), dict)
                        and _private_pair(e.value["message"]) is None}
    members = chat.members_of([c for c in conversation_ids if isinstance(c, int)])
    plans: list = []
    for event in events:
        try:
            plans.append(apply(event.value, members))
        except Invalid:
            plans.append(None)  # left to handle(), which dead-letters it
    published = iter(pushes([p for p in plans if p is not None], ctx))
    return [None if p is None else next(published) for p in plans]
