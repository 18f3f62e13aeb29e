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
members), one cursor move for all its acks and one presence lookup (``handle_batch``).
Idempotency: a redelivered event pushes the same frame again (clients dedupe by msg_id / seq);
cursors only move forward. Errors: an unknown kind or shape is invalid (50002, DLQ); Redis or
database outages are retried.
"""
from common import bus, chat, presence, protocol
from common.errors import Code
from functions.api import Emit, Invalid, Publish, Spec

SPEC = Spec(max_records=500)


def _fields(e: dict, *names):
    if not _are_ints(e, *names):
        raise Invalid(Code.UNMARSHAL_FAILED, f"deliver event needs integer {', '.join(names)}")
    return [e[name] for name in names]


def _private_pair(message: dict) -> list[int] | None:
    """A private conversation's members, from the message itself (they never change)."""
    pair = [message.get("from_user_id"), message.get("to_user_id")]
    return pair if message.get("group_id") is None and all(isinstance(u, int) for u in pair) else None


def _members(message: dict, conversation_id: int, members: dict[int, list[int]] | None) -> list[int]:
    pair = _private_pair(message)
    return pair if pair is not None else _members_of(conversation_id, members)


Plan = tuple[list[int], tuple[str, dict] | None, str | None]  # recipients, (frame type, payload), conn to skip


def apply(e: dict, members: dict[int, list[int]] | None = None,
          cursors: dict[tuple[int, int], tuple] | None = None) -> Plan:
    """Apply one deliver event — its only write is an ack's cursor move — and say who gets which
    frame (and which connection to skip). ``members``: conversation members already read, if any;
    ``cursors``: where a batch's acks moved the cursors (:func:`chat.move_cursors`), taken by the
    first ack of each pair (the rest of its acks in the batch have nothing more to tell)."""
    kind = e.get("kind")
    if kind == "message":
        message = e.get("message")
        if not isinstance(message, dict):
            raise Invalid(Code.UNMARSHAL_FAILED, "message event without message")
        (conversation_id,) = _fields(message, "conversation_id")
        recipients = _members(message, conversation_id, members) + list(e.get("also_notify") or [])
        return recipients, ("message", message), e.get("origin_conn")
    if kind == "ack":
        conversation_id, user_id, seq = _fields(e, "conversation_id", "user_id", "seq")
        if cursors is None:
            cursors = chat.move_cursors([(conversation_id, user_id, seq, e.get("ack_type", "delivered"))])
        _, read_to = cursors.pop((conversation_id, user_id), (None, None))
        if read_to is None:
            return [], None, None  # nothing moved (or not a member): nothing to tell anyone
        # The seq the cursor moved to, which is never past the conversation's last message.
        payload = {"conversation_id": conversation_id, "user_id": user_id, "seq": read_to, "ack_type": "read"}
        others = [u for u in _members_of(conversation_id, members) if u != user_id]
        return others, ("receipt", payload), None
    if kind == "typing":
        conversation_id, user_id = _fields(e, "conversation_id", "user_id")
        current = _members_of(conversation_id, members)
        if user_id not in current:
            return [], None, None  # not (or no longer) a member: nothing to tell anyone
        return [u for u in current if u != user_id], ("typing", {"conversation_id": conversation_id,
                                                                 "user_id": user_id}), None
    if kind == "presence":
        (user_id,) = _fields(e, "user_id")
        payload = {"user_id": user_id, "online": bool(e.get("online")), "last_seen": e.get("last_seen")}
        return chat.contact_ids(user_id), ("presence", payload), None
    raise Invalid(Code.UNMARSHAL_FAILED, f"unknown deliver kind {kind!r}")


def _members_of(conversation_id: int, members: dict[int, list[int]] | None) -> list[int]:
    known = (members or {}).get(conversation_id)
    return chat.member_ids(conversation_id) if known is None else known


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
    """A poll's events with one membership query for the group messages, typing and read acks, and
    one cursor move for all its acks (a busy conversation's acks come many to a poll)."""
    values = [e.value for e in events]
    acks = [(v["conversation_id"], v["user_id"], v["seq"], v.get("ack_type", "delivered")) for v in values
            if v.get("kind") == "ack" and _are_ints(v, "conversation_id", "user_id", "seq")]
    cursors = chat.move_cursors(acks)
    conversation_ids = {v["message"].get("conversation_id") for v in values
                        if v.get("kind") == "message" and isinstance(v.get("message"), dict)
                        and _private_pair(v["message"]) is None}
    conversation_ids |= {v.get("conversation_id") for v in values if v.get("kind") == "typing"}
    conversation_ids |= {pair[0] for pair, (_, read_to) in cursors.items() if read_to is not None}
    members = chat.members_of([c for c in conversation_ids if _is_int(c)])
    plans: list = []
    for value in values:
        try:
            plans.append(apply(value, members, cursors))
        except Invalid:
            plans.append(None)  # left to handle(), which dead-letters it
    published = iter(pushes([p for p in plans if p is not None], ctx))
    return [None if p is None else next(published) for p in plans]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _are_ints(e: dict, *names) -> bool:
    return all(_is_int(e.get(name)) for name in names)
