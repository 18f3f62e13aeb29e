"""The one store of messages: every message row and every ``conversation.last_seq`` is written by
:func:`_store_batch` (tests/unit/test_one_store.py keeps it so), through :func:`store_messages` (the
send function's batches) or :func:`store_system` (membership events, stored by the gateway).

Every conversation has its own gap-free ``seq``, assigned in the same transaction that stores the
message (``UPDATE conversation SET last_seq = last_seq + n`` locks the row); ``(conversation_id,
seq)`` is unique. ``msg_id`` (client-generated) is unique too: storing a message twice returns the
first.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import peewee as pw

import common.chat.prepared as prepared
from common.chat.changes import Changes, needs_checks
from common.chat.members import pair_key, private_conversation
from common.chat.reads import message_view
from common.chat.prepared import Statement
from common.chat.rules import SYSTEM
from common.config import ChatConfig
from common.errors import AppError, Code
from common.models import Block, Conversation, ConversationMember as Member, Mention, Message, Reaction, User, db, now_ms


@dataclass(frozen=True)
class Stored:
    message: Message
    conversation: Conversation
    created: bool  # False: this msg_id was stored before (a resend or a redelivery)
    quoted: Message | None = None  # the message a new reply quotes

    def view(self) -> dict:
        """The message's wire form, with its quote when it is a new reply."""
        quotes = {self.quoted.msg_id: self.quoted} if self.quoted is not None else None
        return message_view(self.message, self.conversation, quotes)


def store_messages(sends: list[tuple[int, dict]], rules: ChatConfig = ChatConfig()) -> list[Stored | AppError]:
    """Authorize and store a batch of validated sends ``(sender_id, fields)``, in order: the one
    store of every message (a single send is a batch of one).

    A fixed number of statements: the messages of a batch get consecutive seqs per conversation
    in one transaction, and each sender's read cursor moves to their own last message (what you
    sent is not unread for you). Each send gets its :class:`Stored` (``created`` False for a resend
    of a stored msg_id: the same seq again) or its AppError (40002, 40003, 30001, 10002, 10006, and
    for what names other messages or users, common/chat/changes.py's). ``rules``: the
    configuration's ``chat`` section (edit and recall windows).
    """
    results: list[Stored | AppError | None] = [None] * len(sends)
    convs = _send_conversations(sends, results)
    try:
        # Optimistic: almost every send is new, so no lookup first; the unique msg_id says if not.
        return _store_batch(sends, convs, list(results), {}, rules)
    except pw.IntegrityError:
        # A resend or a redelivery (or a concurrent writer): nothing was stored. Again, knowing
        # which msg_ids are stored already.
        ids = [fields["msg_id"] for (_, fields), r in zip(sends, results) if r is None]
        known = {m.msg_id: m for m in Message.select().where(Message.msg_id.in_(ids))}
        return _store_batch(sends, convs, results, known, rules)


def _store_batch(sends, convs, results, known: dict[str, Message],
                 rules: ChatConfig = ChatConfig()) -> list[Stored | AppError]:
    new: list[Message] = []
    # The sends that name other messages or users (most do not): checked in order as they are stored.
    checked = {i for i, ((_, f), r) in enumerate(zip(sends, results)) if r is None and needs_checks(f)}
    checks = Changes(rules, [(*sends[i], convs[i]) for i in sorted(checked)], known) if checked else None
    for i, ((sender_id, fields), conv) in enumerate(zip(sends, convs)):
        if results[i] is not None:
            continue
        existing = known.get(fields["msg_id"])
        if existing is None:
            # Every column set, so that insert_many's rows all have the same keys.
            message = Message(msg_id=fields["msg_id"], conversation_id=conv.id, sender_id=sender_id,
                              content_type=fields["content_type"], content=fields["content"],
                              created_at=now_ms(), target_msg_id=fields.get("target_msg_id"),
                              reply_to_msg_id=fields.get("reply_to_msg_id"), mentions=None,
                              edited_at=None, state="")
            refused = checks.check(message, fields, conv) if i in checked else None
            if refused is not None:
                results[i] = refused
                continue
            known[message.msg_id] = message  # the same msg_id again in this batch is a resend
            new.append(message)
            results[i] = Stored(message, conv, True, checks.replied.get(message.msg_id) if checks else None)
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
            prepared.execute(*_seq_statement(counts))
            last = dict(prepared.execute(*_last_seqs_statement(conv_ids)).fetchall())
            next_seq = {cid: last[cid] - counts[cid] + 1 for cid in conv_ids}
            for message in new:
                message.seq = next_seq[message.conversation_id]
                next_seq[message.conversation_id] += 1
            for start in range(0, len(new), INSERT_CHUNK):
                prepared.execute(*_insert_statement(new[start:start + INSERT_CHUNK]))
            own = {(m.conversation_id, m.sender_id): m.seq for m in new}  # seqs ascend: the last wins
            prepared.execute(*_own_read_statement(own))
            if checks is not None:
                _write_changes(checks)
    return results


# The store's batch statements (blocks, seq move, last seqs, insert, senders' read cursors) are
# rendered once per shape (common/chat/prepared.py); the two reads were a further ~12 % of the send
# function's time at 200 msg/s.
INSERT_CHUNK = 500
_COLUMNS = tuple(field for field in Message._meta.sorted_fields if not field.primary_key)


def _blocked_pairs(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The ``(sender, recipient)`` pairs of which either has blocked the other (one query)."""
    if not pairs:
        return set()
    both = sorted({p for a, b in pairs for p in ((a, b), (b, a))})
    found = set(prepared.execute(*_blocks_statement(both)).fetchall())
    return {(a, b) for a, b in pairs if (a, b) in found or (b, a) in found}


def _blocks_statement(pairs: list[tuple[int, int]]) -> Statement:
    """The blocks among ``(user, blocked)`` pairs."""
    return (("blocked", len(pairs)),
            lambda: Block.select(Block.user_id, Block.blocked_id).where(
                pw.Tuple(Block.user_id, Block.blocked_id).in_(pairs)),
            [v for pair in pairs for v in pair])


def _last_seqs_statement(conv_ids: list[int]) -> Statement:
    """Each conversation's last_seq, after the batch moved it."""
    return (("last", len(conv_ids)),
            lambda: Conversation.select(Conversation.id, Conversation.last_seq).where(Conversation.id.in_(conv_ids)),
            list(conv_ids))


def _seq_statement(counts: dict[int, int]) -> Statement:
    """Each conversation's last_seq moved on by its number of new messages (the row lock that
    makes seqs gap-free)."""
    conv_ids = sorted(counts)
    return (("seq", len(conv_ids)),
            lambda: Conversation.update(last_seq=Conversation.last_seq + pw.Case(
                Conversation.id, [(c, counts[c]) for c in conv_ids])).where(Conversation.id.in_(conv_ids)),
            [v for c in conv_ids for v in (c, counts[c])] + conv_ids)


def _insert_statement(messages: list[Message]) -> Statement:
    rows = [m.__data__ for m in messages]
    return (("insert", len(rows)), lambda: Message.insert_many(rows),
            [field.db_value(row.get(field.name)) for row in rows for field in _COLUMNS])


def _own_read_statement(own: dict[tuple[int, int], int]) -> Statement:
    """Each sender's read cursor to their own last message, and ``wrote`` set."""
    pairs = list(own)
    return (("own", len(pairs)),
            lambda: Member.update(read_seq=pw.Case(None, [((Member.conversation_id == c) & (Member.user_id == u),
                                                           own[c, u]) for c, u in pairs]), wrote=True)
            .where(pw.Tuple(Member.conversation_id, Member.user_id).in_(pairs)),
            [v for c, u in pairs for v in (c, u, own[c, u])] + [Member.wrote.db_value(True)]
            + [v for pair in pairs for v in pair])


def _write_changes(checks: Changes) -> None:
    """What the batch's events did to earlier messages, in the transaction that stores them."""
    for msg_id, columns in checks.updates.items():
        Message.update(**columns).where(Message.msg_id == msg_id).execute()
    if checks.wiped:  # a recalled or deleted message's text is gone from its edits too
        (Message.update(content="").where(Message.target_msg_id.in_(list(checks.wiped))
                                          & (Message.content_type == "edit")).execute())
    if checks.reacted:
        Reaction.insert_many([{"msg_id": m, "user_id": u, "emoji": e, "created_at": now_ms()}
                              for m, u, e in checks.reacted]).on_conflict_ignore().execute()
    for msg_id, user_id, emoji in checks.unreacted:
        Reaction.delete().where((Reaction.msg_id == msg_id) & (Reaction.user_id == user_id)
                                & (Reaction.emoji == emoji)).execute()
    if checks.mentioned:
        Mention.insert_many([{"conversation_id": m.conversation_id, "seq": m.seq, "user_id": u}
                             for m, users in checks.mentioned for u in users]).on_conflict_ignore().execute()


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


def forget_cached_conversations() -> None:
    """Drop the cache of private conversations (for a process whose database was replaced: tests)."""
    _private_cache.clear()


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
    pairs = {(s, f["to_user_id"]) for s, f in sends if f["group_id"] is None}
    by_key = _private_conversations({pair_key(*pair) for pair in pairs})
    blocked = _blocked_pairs(pairs)
    group_ids = {f["group_id"] for _, f in sends if f["group_id"] is not None}
    groups, muted_until = {}, {}
    if group_ids:
        groups = {c.id: c for c in Conversation.select().where(
            Conversation.id.in_(group_ids) & (Conversation.type == Conversation.GROUP))}
        senders = {s for s, f in sends if f["group_id"] is not None}
        muted_until = {(c, u): until for c, u, until in Member.select(
            Member.conversation_id, Member.user_id, Member.muted_until).where(
            Member.conversation_id.in_(list(groups) or [0]) & Member.user_id.in_(senders)).tuples()}
    now = now_ms()
    convs: list[Conversation | None] = []
    for i, (sender_id, fields) in enumerate(sends):
        conv = None
        try:
            group_id, to_user_id = fields["group_id"], fields["to_user_id"]
            if group_id is not None:
                conv = groups.get(group_id)
                if conv is None:
                    raise AppError(Code.GROUP_NOT_FOUND)
                if (group_id, sender_id) not in muted_until:
                    raise AppError(Code.NOT_GROUP_MEMBER)
                if conv.dissolved_at:
                    raise AppError(Code.GROUP_DISSOLVED)
                if muted_until[group_id, sender_id] > now:
                    raise AppError(Code.MEMBER_MUTED, f"muted until {muted_until[group_id, sender_id]}")
            else:
                if (sender_id, to_user_id) in blocked:
                    raise AppError(Code.BLOCKED)
                conv = by_key.get(pair_key(sender_id, to_user_id))
                if conv is None:  # a first message (or a bad recipient)
                    conv = _first_private(sender_id, to_user_id, fields["msg_id"])
                    by_key[conv.private_key] = conv
        except AppError as exc:
            results[i], conv = exc, None
        convs.append(conv)
    return convs


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
    conv = Conversation.get_or_none(Conversation.private_key == pair_key(sender_id, to_user_id))
    if conv is None or existing.conversation_id != conv.id or existing.sender_id != sender_id:
        raise AppError(Code.CONFLICT, "msg_id already used for another message", field="msg_id")
    return conv
