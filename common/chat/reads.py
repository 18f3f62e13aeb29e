"""What a member reads: the wire form of a message, history, sync, offline messages and the
conversation list (membership checked first)."""
from __future__ import annotations

import json

import peewee as pw

from common.chat.changes import quote
from common.chat.members import membership
from common.chat.rules import EVENTS
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, HiddenMessage, Mention, Message, Reaction


def message_view(message: Message, conv: Conversation, quotes: dict[str, Message] | None = None,
                 reactions: dict[str, list[dict]] | None = None) -> dict:
    """The wire form of a message (push, sync, history), in its current state. ``quotes``: the
    messages replied to, by msg_id; ``reactions``: each message's reactions for the reader."""
    view = {"msg_id": message.msg_id, "conversation_id": message.conversation_id, "seq": message.seq,
            "from_user_id": message.sender_id, "content": message.content,
            "content_type": message.content_type, "server_ts": message.created_at}
    if conv.type == Conversation.GROUP:
        view["group_id"] = conv.id
    else:
        low, high = (int(x) for x in conv.private_key.split(":"))
        view["to_user_id"] = high if message.sender_id == low else low
    # The optional parts only where they apply: most messages are plain.
    if message.target_msg_id:
        view["target_msg_id"] = message.target_msg_id
    if message.reply_to_msg_id:
        view["reply_to_msg_id"] = message.reply_to_msg_id
        if quotes is not None:
            view["reply_to"] = quote(quotes.get(message.reply_to_msg_id))
    if message.mentions:
        view["mentions"] = json.loads(message.mentions)
    if message.edited_at:
        view["edited_at"] = message.edited_at
    if message.state:
        view["state"] = message.state
    if reactions and message.msg_id in reactions:
        view["reactions"] = reactions[message.msg_id]
    return view


def ack_view(message: Message) -> dict:
    return {"msg_id": message.msg_id, "conversation_id": message.conversation_id,
            "seq": message.seq, "server_ts": message.created_at}


def _views(messages, convs: dict[int, Conversation], user_id: int) -> list[dict]:
    """The views of a page of messages for ``user_id``: without the ones they deleted for
    themselves, with the quotes of replies and the reactions (one query each)."""
    if not messages:
        return []
    hidden = {row.message_id for row in HiddenMessage.select(HiddenMessage.message_id).where(
        (HiddenMessage.user_id == user_id) & HiddenMessage.message_id.in_([m.id for m in messages]))}
    messages = [m for m in messages if m.id not in hidden]
    replied = {m.reply_to_msg_id for m in messages if m.reply_to_msg_id}
    quotes = {q.msg_id: q for q in Message.select().where(Message.msg_id.in_(list(replied)))} if replied else {}
    reactions: dict[str, dict[str, dict]] = {}
    plain = [m.msg_id for m in messages if m.content_type not in EVENTS]
    if plain:
        for msg_id, emoji, reactor in (Reaction.select(Reaction.msg_id, Reaction.emoji, Reaction.user_id)
                                       .where(Reaction.msg_id.in_(plain)).order_by(Reaction.id).tuples()):
            entry = reactions.setdefault(msg_id, {}).setdefault(emoji, {"emoji": emoji, "count": 0, "me": False})
            entry["count"] += 1
            entry["me"] = entry["me"] or reactor == user_id
    summaries = {msg_id: list(by_emoji.values()) for msg_id, by_emoji in reactions.items()}
    return [message_view(m, convs[m.conversation_id], quotes, summaries) for m in messages]


def views(messages, user_id: int) -> list[dict]:
    """The views of messages of any conversations (see :func:`_views`)."""
    ids = {m.conversation_id for m in messages}
    convs = {c.id: c for c in Conversation.select().where(Conversation.id.in_(ids))} if ids else {}
    return _views(messages, convs, user_id)


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
    return {"messages": _views(rows, {conv.id: conv}, user_id), "has_more": has_more}


def sync(user_id: int, conversation_id: int, after_seq: int, limit: int) -> dict:
    """Messages after ``after_seq`` in seq order, paged: the truth behind every push."""
    membership(conversation_id, user_id)
    conv = Conversation.get_by_id(conversation_id)
    rows = list(Message.select().where((Message.conversation_id == conversation_id) & (Message.seq > after_seq))
                .order_by(Message.seq).limit(limit + 1))
    return {"conversation_id": conversation_id, "messages": _views(rows[:limit], {conv.id: conv}, user_id),
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
    return {"messages": views(page, user_id), "has_more": len(rows) > limit,
            "next_cursor": page[-1].id if page else cursor}


def conversations(user_id: int) -> list[dict]:
    """The user's conversations with ``last_seq``, ``read_seq``, ``unread_count``,
    ``unread_mentions`` and the last message."""
    members = list(Member.select().where(Member.user_id == user_id))
    if not members:
        return []
    convs = {c.id: c for c in Conversation.select().where(Conversation.id.in_([m.conversation_id for m in members]))}
    last = {}
    for m in Message.select().where(pw.Tuple(Message.conversation_id, Message.seq).in_(
            [(c.id, c.last_seq) for c in convs.values() if c.last_seq])):
        last[m.conversation_id] = m
    # Mentions of this user (or of everyone: user 0) past their read cursor, per conversation.
    mentions = dict(Mention.select(Mention.conversation_id, pw.fn.COUNT(Mention.id))
                    .join(Member, on=(Member.conversation_id == Mention.conversation_id))
                    .where((Member.user_id == user_id) & Mention.user_id.in_([user_id, 0])
                           & (Mention.seq > Member.read_seq))
                    .group_by(Mention.conversation_id).tuples())
    private = [c.id for c in convs.values() if c.type == Conversation.PRIVATE]
    peer_read = dict(Member.select(Member.conversation_id, Member.read_seq).where(
        Member.conversation_id.in_(private) & (Member.user_id != user_id)).tuples()) if private else {}
    result = []
    for member in members:
        conv = convs[member.conversation_id]
        item = {"conversation_id": conv.id, "type": conv.type, "name": conv.name,
                "last_seq": conv.last_seq, "read_seq": member.read_seq,
                "delivered_seq": member.delivered_seq,
                "unread_count": max(conv.last_seq - member.read_seq, 0),
                "unread_mentions": mentions.get(conv.id, 0),
                "last_message": message_view(last[conv.id], conv) if conv.id in last else None}
        if conv.type == Conversation.PRIVATE:
            low, high = (int(x) for x in conv.private_key.split(":"))
            item["peer_id"] = high if user_id == low else low
            item["peer_read_seq"] = peer_read.get(conv.id, 0)
        else:
            item["group_id"] = conv.id
        result.append(item)
    result.sort(key=lambda i: (i["last_message"] or {}).get("server_ts", 0), reverse=True)
    return result


def readers(user_id: int, conversation_id: int, seq: int, limit: int, after_user: int = 0) -> dict:
    """Who has read the message at ``seq``: the members other than its sender whose read cursor
    has reached it, by user id, paged (``after_user``: the last ``user_id`` of the page before)."""
    membership(conversation_id, user_id)
    message = Message.get_or_none((Message.conversation_id == conversation_id) & (Message.seq == seq))
    if message is None:
        raise AppError(Code.MESSAGE_NOT_FOUND, field="seq")
    rows = list(Member.select(Member.user_id, Member.read_seq).where(
        (Member.conversation_id == conversation_id) & (Member.read_seq >= seq)
        & (Member.user_id != message.sender_id) & (Member.user_id > after_user))
        .order_by(Member.user_id).limit(limit + 1).tuples())
    page = rows[:limit]
    return {"conversation_id": conversation_id, "seq": seq,
            "readers": [{"user_id": u, "read_seq": r} for u, r in page],
            "has_more": len(rows) > limit, "next_after": page[-1][0] if page else after_user}
