"""Conversations and messages: validation, authorization, seq assignment, reads and cursors.

Used by the send and deliver functions and by the gateway's read endpoints. Every conversation has
its own gap-free ``seq``; it is assigned in the same transaction that stores the message
(``UPDATE conversation SET last_seq = last_seq + 1`` locks the row), and ``(conversation_id, seq)``
is unique. ``msg_id`` (client-generated) is unique too: storing a message twice returns the first.
Membership changes are stored as ``system`` messages, so clients see them in seq order with the chat.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import peewee as pw

from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, Message, User, db, now_ms

MAX_CONTENT = 8000
MAX_PAGE = 200
MAX_GROUP = 2000
SYSTEM = "system"


# -- validation (pure) -----------------------------------------------------------------------

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


# -- conversations ---------------------------------------------------------------------------

def _pair_key(user_a: int, user_b: int) -> str:
    return f"{min(user_a, user_b)}:{max(user_a, user_b)}"


def private_conversation(user_a: int, user_b: int) -> Conversation:
    """The one private conversation of a pair, created on first use (idempotent)."""
    low, high = sorted((user_a, user_b))
    key = _pair_key(low, high)
    conv = Conversation.get_or_none(Conversation.private_key == key)
    if conv is None:
        with db.atomic():
            Conversation.insert(type=Conversation.PRIVATE, private_key=key).on_conflict_ignore().execute()
            conv = Conversation.get(Conversation.private_key == key)
            Member.insert_many([{"conversation_id": conv.id, "user_id": u} for u in (low, high)]
                               ).on_conflict_ignore().execute()
    return conv


def _group(group_id: int) -> Conversation:
    conv = Conversation.get_or_none((Conversation.id == group_id) & (Conversation.type == Conversation.GROUP))
    if conv is None:
        raise AppError(Code.GROUP_NOT_FOUND)
    return conv


def membership(conversation_id: int, user_id: int) -> Member:
    member = Member.get_or_none((Member.conversation_id == conversation_id) & (Member.user_id == user_id))
    if member is None:
        if not Conversation.select().where(Conversation.id == conversation_id).exists():
            raise AppError(Code.CONVERSATION_NOT_FOUND)
        raise AppError(Code.NOT_GROUP_MEMBER)
    return member


def _first_private(sender_id: int, to_user_id: int, msg_id: str) -> Conversation:
    """The conversation of a pair's first message, created only when that message will be stored
    (30001, 10002 and 10006 create nothing)."""
    if to_user_id == sender_id:
        raise AppError(Code.INVALID_PARAMS, "cannot send a private message to yourself", field="to_user_id")
    if not User.select().where(User.id == to_user_id).exists():
        raise AppError(Code.USER_NOT_FOUND)
    existing = Message.get_or_none(Message.msg_id == msg_id)
    if existing is None:
        return private_conversation(sender_id, to_user_id)
    # Stored already: this message's own first store (a redelivery that raced it, its
    # conversation created since this batch looked), or another message's msg_id.
    conv = Conversation.get_or_none(Conversation.private_key == _pair_key(sender_id, to_user_id))
    if conv is None or existing.conversation_id != conv.id or existing.sender_id != sender_id:
        raise AppError(Code.CONFLICT, "msg_id already used for another message", field="msg_id")
    return conv


def member_ids(conversation_id: int) -> list[int]:
    return [m.user_id for m in Member.select(Member.user_id).where(Member.conversation_id == conversation_id)]


def members_of(conversation_ids) -> dict[int, list[int]]:
    """``{conversation_id: [user_id, ...]}`` for many conversations in one query."""
    members: dict[int, list[int]] = {cid: [] for cid in conversation_ids}
    if members:
        for cid, uid in (Member.select(Member.conversation_id, Member.user_id)
                         .where(Member.conversation_id.in_(list(members))).tuples()):
            members[cid].append(uid)
    return members


def contact_ids(user_id: int) -> list[int]:
    """Everyone who shares a conversation with ``user_id`` (who watches their presence)."""
    mine = Member.select(Member.conversation_id).where(Member.user_id == user_id)
    query = (Member.select(Member.user_id).distinct()
             .where(Member.conversation_id.in_(mine) & (Member.user_id != user_id)))
    return [m.user_id for m in query]


# -- messages --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stored:
    message: Message
    conversation: Conversation
    created: bool  # False: this msg_id was stored before (a resend or a redelivery)


def store_messages(sends: list[tuple[int, dict]]) -> list[Stored | AppError]:
    """Authorize and store a batch of validated sends ``(sender_id, fields)``, in order: the one
    store of every message (a single send is a batch of one).

    A fixed number of statements: the messages of a batch get consecutive seqs per conversation
    in one transaction, and each sender's read cursor moves to their own last message (what you
    sent is not unread for you). Each send gets its :class:`Stored` (``created`` False for a resend
    of a stored msg_id: the same seq again) or its AppError (40002, 40003, 30001, 10002, 10006).
    """
    results: list[Stored | AppError | None] = [None] * len(sends)
    convs = _send_conversations(sends, results)
    try:
        # Optimistic: almost every send is new, so no lookup first; the unique msg_id says if not.
        return _store_batch(sends, convs, list(results), {})
    except pw.IntegrityError:
        # A resend or a redelivery (or a concurrent writer): nothing was stored. Again, knowing
        # which msg_ids are stored already.
        ids = [fields["msg_id"] for (_, fields), r in zip(sends, results) if r is None]
        known = {m.msg_id: m for m in Message.select().where(Message.msg_id.in_(ids))}
        return _store_batch(sends, convs, results, known)


def _store_batch(sends, convs, results, known: dict[str, Message]) -> list[Stored | AppError]:
    new: list[Message] = []
    for i, ((sender_id, fields), conv) in enumerate(zip(sends, convs)):
        if results[i] is not None:
            continue
        existing = known.get(fields["msg_id"])
        if existing is None:
            message = Message(msg_id=fields["msg_id"], conversation_id=conv.id, sender_id=sender_id,
                              content_type=fields["content_type"], content=fields["content"],
                              created_at=now_ms())
            known[message.msg_id] = message  # the same msg_id again in this batch is a resend
            new.append(message)
            results[i] = Stored(message, conv, True)
        elif existing.sender_id != sender_id or existing.conversation_id != conv.id:
            results[i] = AppError(Code.CONFLICT, "msg_id already used for another message", field="msg_id")
        else:
            results[i] = Stored(existing, conv, False)
    if new:
        counts: dict[int, int] = {}
        for message in new:
            counts[message.conversation_id] = counts.get(message.conversation_id, 0) + 1
        with db.atomic():
            conv_ids = sorted(counts)
            (Conversation.update(last_seq=Conversation.last_seq + pw.Case(Conversation.id, list(counts.items())))
             .where(Conversation.id.in_(conv_ids)).execute())
            last = dict(Conversation.select(Conversation.id, Conversation.last_seq)
                        .where(Conversation.id.in_(conv_ids)).tuples())
            next_seq = {cid: last[cid] - counts[cid] + 1 for cid in conv_ids}
            for message in new:
                message.seq = next_seq[message.conversation_id]
                next_seq[message.conversation_id] += 1
            rows = [message.__data__ for message in new]
            for start in range(0, len(rows), 500):
                Message.insert_many(rows[start:start + 500]).execute()
            own = {(m.conversation_id, m.sender_id): m.seq for m in new}  # seqs ascend: the last wins
            own_seq = pw.Case(None, [((Member.conversation_id == c) & (Member.user_id == u), seq)
                                     for (c, u), seq in own.items()])
            (Member.update(read_seq=own_seq)
             .where(pw.Tuple(Member.conversation_id, Member.user_id).in_(list(own))).execute())
    return results


def store_system(conv: Conversation, actor_id: int, event: str, **details) -> Stored:
    """Store a membership event as a ``system`` message of ``conv``, through the same store."""
    body = json.dumps({"event": event, "by": actor_id, **details}, separators=(",", ":"))
    fields = {"msg_id": f"sys-{uuid.uuid4().hex}", "content_type": SYSTEM, "content": body}
    (stored,) = _store_batch([(actor_id, fields)], [conv], [None], {})
    return stored


# Private conversations never change once created (only their last_seq, which is not read from
# here): the send function keeps the ones it has seen, and saves a query per batch.
_private_cache: dict[str, Conversation] = {}
PRIVATE_CACHE_SIZE = 100_000


def _private_conversations(keys: set[str]) -> dict[str, Conversation]:
    found = {key: _private_cache[key] for key in keys if key in _private_cache}
    missing = keys - found.keys()
    if missing:
        if len(_private_cache) > PRIVATE_CACHE_SIZE:
            _private_cache.clear()
        for conv in Conversation.select().where(Conversation.private_key.in_(missing)):
            found[conv.private_key] = _private_cache[conv.private_key] = conv
    return found


def _send_conversations(sends, results) -> list[Conversation | None]:
    """The conversation of each send (one query per kind); errors go into ``results``."""
    pairs = {_pair_key(s, f["to_user_id"]) for s, f in sends if f["group_id"] is None}
    by_key = _private_conversations(pairs)
    group_ids = {f["group_id"] for _, f in sends if f["group_id"] is not None}
    groups, members = {}, set()
    if group_ids:
        groups = {c.id: c for c in Conversation.select().where(
            Conversation.id.in_(group_ids) & (Conversation.type == Conversation.GROUP))}
        senders = {s for s, f in sends if f["group_id"] is not None}
        members = set(Member.select(Member.conversation_id, Member.user_id).where(
            Member.conversation_id.in_(list(groups) or [0]) & Member.user_id.in_(senders)).tuples())
    convs: list[Conversation | None] = []
    for i, (sender_id, fields) in enumerate(sends):
        conv = None
        try:
            group_id, to_user_id = fields["group_id"], fields["to_user_id"]
            if group_id is not None:
                conv = groups.get(group_id)
                if conv is None:
                    raise AppError(Code.GROUP_NOT_FOUND)
                if (group_id, sender_id) not in members:
                    raise AppError(Code.NOT_GROUP_MEMBER)
            else:
                conv = by_key.get(_pair_key(sender_id, to_user_id))
                if conv is None:  # a first message (or a bad recipient)
                    conv = _first_private(sender_id, to_user_id, fields["msg_id"])
                    by_key[conv.private_key] = conv
        except AppError as exc:
            results[i], conv = exc, None
        convs.append(conv)
    return convs


def message_view(message: Message, conv: Conversation) -> dict:
    """The wire form of a message (push, sync, history)."""
    view = {"msg_id": message.msg_id, "conversation_id": message.conversation_id, "seq": message.seq,
            "from_user_id": message.sender_id, "content": message.content,
            "content_type": message.content_type, "server_ts": message.created_at}
    if conv.type == Conversation.GROUP:
        view["group_id"] = conv.id
    else:
        low, high = (int(x) for x in conv.private_key.split(":"))
        view["to_user_id"] = high if message.sender_id == low else low
    return view


def ack_view(message: Message) -> dict:
    return {"msg_id": message.msg_id, "conversation_id": message.conversation_id,
            "seq": message.seq, "server_ts": message.created_at}


def _views(messages, convs: dict[int, Conversation]) -> list[dict]:
    return [message_view(m, convs[m.conversation_id]) for m in messages]


def history(user_id: int, conversation_id: int, before_seq: int | None, limit: int) -> dict:
    """Messages before ``before_seq`` (default: the newest), ascending, with ``has_more``."""
    membership(conversation_id, user_id)
    conv = Conversation.get_by_id(conversation_id)
    query = Message.select().where(Message.conversation_id == conversation_id)
    if before_seq is not None:
        query = query.where(Message.seq < before_seq)
    rows = list(query.order_by(Message.seq.desc()).limit(limit + 1))
    has_more = len(rows) > limit
    rows = sorted(rows[:limit], key=lambda m: m.seq)
    return {"messages": _views(rows, {conv.id: conv}), "has_more": has_more}


def sync(user_id: int, conversation_id: int, after_seq: int, limit: int) -> dict:
    """Messages after ``after_seq`` in seq order, paged: the truth behind every push."""
    membership(conversation_id, user_id)
    conv = Conversation.get_by_id(conversation_id)
    rows = list(Message.select().where((Message.conversation_id == conversation_id) & (Message.seq > after_seq))
                .order_by(Message.seq).limit(limit + 1))
    return {"conversation_id": conversation_id, "messages": _views(rows[:limit], {conv.id: conv}),
            "has_more": len(rows) > limit}


def offline(user_id: int, cursor: int, limit: int) -> dict:
    """Everything past the user's delivered cursor in every conversation, paged by message id.

    ``cursor`` is opaque to clients (the last row id returned); pass ``next_cursor`` back.
    """
    rows = list(Message.select(Message)
                .join(Member, on=(Member.conversation_id == Message.conversation_id))
                .where((Member.user_id == user_id) & (Message.seq > Member.delivered_seq) & (Message.id > cursor))
                .order_by(Message.id).limit(limit + 1))
    page = rows[:limit]
    convs = {c.id: c for c in Conversation.select().where(Conversation.id.in_({m.conversation_id for m in page}))}
    return {"messages": _views(page, convs), "has_more": len(rows) > limit,
            "next_cursor": page[-1].id if page else cursor}


def conversations(user_id: int) -> list[dict]:
    """The user's conversations with ``last_seq``, ``read_seq``, ``unread_count``, last message."""
    members = list(Member.select().where(Member.user_id == user_id))
    if not members:
        return []
    convs = {c.id: c for c in Conversation.select().where(Conversation.id.in_([m.conversation_id for m in members]))}
    last = {}
    for m in Message.select().where(pw.Tuple(Message.conversation_id, Message.seq).in_(
            [(c.id, c.last_seq) for c in convs.values() if c.last_seq])):
        last[m.conversation_id] = m
    result = []
    for member in members:
        conv = convs[member.conversation_id]
        item = {"conversation_id": conv.id, "type": conv.type, "name": conv.name,
                "last_seq": conv.last_seq, "read_seq": member.read_seq,
                "delivered_seq": member.delivered_seq,
                "unread_count": max(conv.last_seq - member.read_seq, 0),
                "last_message": message_view(last[conv.id], conv) if conv.id in last else None}
        if conv.type == Conversation.PRIVATE:
            low, high = (int(x) for x in conv.private_key.split(":"))
            item["peer_id"] = high if user_id == low else low
        else:
            item["group_id"] = conv.id
        result.append(item)
    result.sort(key=lambda i: (i["last_message"] or {}).get("server_ts", 0), reverse=True)
    return result


def move_cursor(user_id: int, conversation_id: int, seq: int, ack_type: str) -> int | None:
    """Move the delivered or read cursor forward (never back, never past the conversation's last
    seq); the seq it moved to, or None when it did not move.

    Reading implies delivery, so a read ack moves both.
    """
    conv = Conversation.get_or_none(Conversation.id == conversation_id)
    if conv is None:
        raise AppError(Code.CONVERSATION_NOT_FOUND)
    seq = min(seq, conv.last_seq)
    where = (Member.conversation_id == conversation_id) & (Member.user_id == user_id)
    moved = Member.update(delivered_seq=seq).where(where & (Member.delivered_seq < seq)).execute()
    if ack_type == "read":
        moved = Member.update(read_seq=seq).where(where & (Member.read_seq < seq)).execute()
    return seq if moved else None


# -- groups ----------------------------------------------------------------------------------

def _existing_users(user_ids) -> list[int]:
    ids = list(dict.fromkeys(user_ids))
    if any(isinstance(u, bool) or not isinstance(u, int) for u in ids):
        raise AppError(Code.INVALID_PARAMS, "user ids must be integers", field="member_ids")
    found = {u.id for u in User.select(User.id).where(User.id.in_(ids))} if ids else set()
    missing = [u for u in ids if u not in found]
    if missing:
        raise AppError(Code.USER_NOT_FOUND, f"no such user: {missing[0]}")
    return ids


def create_group(owner_id: int, name, member_ids) -> tuple[Conversation, Stored]:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        raise AppError(Code.INVALID_PARAMS, "name must be 1-64 characters", field="name")
    if not isinstance(member_ids, list):
        raise AppError(Code.INVALID_PARAMS, "member_ids must be a list", field="member_ids")
    ids = [u for u in _existing_users(member_ids) if u != owner_id]
    if len(ids) + 1 > MAX_GROUP:
        raise AppError(Code.INVALID_PARAMS, f"a group has at most {MAX_GROUP} members", field="member_ids")
    with db.atomic():
        conv = Conversation.create(type=Conversation.GROUP, name=name.strip(), owner_id=owner_id)
        rows = [{"conversation_id": conv.id, "user_id": owner_id, "role": Member.OWNER}]
        rows += [{"conversation_id": conv.id, "user_id": u, "role": Member.MEMBER} for u in ids]
        for start in range(0, len(rows), 500):
            Member.insert_many(rows[start:start + 500]).on_conflict_ignore().execute()
        stored = store_system(conv, owner_id, "group_created", name=conv.name, user_ids=[owner_id, *ids])
    conv.last_seq = stored.message.seq
    return conv, stored


def group_view(conv: Conversation) -> dict:
    return {"group_id": conv.id, "conversation_id": conv.id, "name": conv.name,
            "owner_id": conv.owner_id, "last_seq": conv.last_seq, "created_at": conv.created_at,
            "member_count": Member.select().where(Member.conversation_id == conv.id).count()}


def get_group(user_id: int, group_id: int) -> Conversation:
    conv = _group(group_id)
    membership(conv.id, user_id)
    return conv


def group_members(user_id: int, group_id: int) -> list[dict]:
    conv = get_group(user_id, group_id)
    return [{"user_id": m.user_id, "role": m.role, "joined_at": m.joined_at}
            for m in Member.select().where(Member.conversation_id == conv.id).order_by(Member.id)]


def add_members(actor_id: int, group_id: int, user_ids) -> Stored | None:
    conv = _group(group_id)
    if membership(conv.id, actor_id).role not in (Member.OWNER, Member.ADMIN):
        raise AppError(Code.FORBIDDEN, "only the owner or an admin can add members")
    if not isinstance(user_ids, list) or not user_ids:
        raise AppError(Code.INVALID_PARAMS, "user_ids must be a non-empty list", field="user_ids")
    ids = _existing_users(user_ids)
    present = set(member_ids(conv.id))
    new = [u for u in ids if u not in present]
    if not new:
        return None
    if len(present) + len(new) > MAX_GROUP:
        raise AppError(Code.INVALID_PARAMS, f"a group has at most {MAX_GROUP} members", field="user_ids")
    with db.atomic():
        # New members start with cursors at the current seq: offline sync does not replay the past.
        base = Conversation.select(Conversation.last_seq).where(Conversation.id == conv.id).scalar()
        Member.insert_many([{"conversation_id": conv.id, "user_id": u, "delivered_seq": base,
                             "read_seq": base} for u in new]).on_conflict_ignore().execute()
        return store_system(conv, actor_id, "members_added", user_ids=new)


def remove_member(actor_id: int, group_id: int, user_id: int) -> Stored:
    """Kick a member (owner or admin; never the owner) or leave. An owner who leaves hands the
    group on to its longest-standing admin, else its longest-standing member (``new_owner_id`` in
    the ``member_left`` event), so a group never lacks someone who can manage it."""
    conv = _group(group_id)
    actor = membership(conv.id, actor_id)
    target = membership(conv.id, user_id)
    if actor_id != user_id:
        if actor.role not in (Member.OWNER, Member.ADMIN) or target.role == Member.OWNER:
            raise AppError(Code.FORBIDDEN, "only the owner or an admin can remove other members")
    with db.atomic():
        Member.delete().where(Member.id == target.id).execute()
        if actor_id != user_id:
            return store_system(conv, actor_id, "member_removed", user_ids=[user_id])
        details = {}
        if target.role == Member.OWNER:
            heir = (Member.select().where(Member.conversation_id == conv.id)
                    .order_by(pw.Case(None, [(Member.role == Member.ADMIN, 0)], 1), Member.id).first())
            if heir is not None:
                Member.update(role=Member.OWNER).where(Member.id == heir.id).execute()
                Conversation.update(owner_id=heir.user_id).where(Conversation.id == conv.id).execute()
                details["new_owner_id"] = heir.user_id
        return store_system(conv, actor_id, "member_left", user_ids=[user_id], **details)
