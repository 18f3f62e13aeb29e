"""What is each member's own in a conversation: the delivered and read cursors, and the messages
they deleted for themselves (not events of the conversation: no one else is told)."""
from __future__ import annotations

import peewee as pw

import common.chat.prepared as prepared
from common.chat.members import membership
from common.chat.prepared import Statement
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, HiddenMessage, Message


Ack = tuple[int, int, int, str]  # conversation id, user id, seq, ack type ("delivered" | "read")


def move_cursors(acks: list[Ack]) -> dict[tuple[int, int], tuple[int | None, int | None]]:
    """Move delivered and read cursors forward for many acks at once (a deliver batch's): per
    ``(conversation_id, user_id)`` only its acks' highest seqs count, read implying delivered, and
    never past the conversation's last seq. One query reads every cursor concerned; a cursor that
    moves costs one conditional UPDATE (forward only, so a concurrent writer is never undone), each
    its own transaction: holding one member row while waiting for another deadlocked with the
    send function's transaction, which locks its senders' member rows (seen at 500 msg/s).

    Returns, per pair, the seqs its delivered and read cursors moved to (None: not moved — already
    there, or not a member of that conversation, or no such conversation).
    """
    wanted: dict[tuple[int, int], list[int]] = {}  # pair -> [delivered, read]
    for conversation_id, user_id, seq, ack_type in acks:
        want = wanted.setdefault((conversation_id, user_id), [0, 0])
        want[0] = max(want[0], seq)
        if ack_type == "read":
            want[1] = max(want[1], seq)
    moved: dict[tuple[int, int], tuple[int | None, int | None]] = {pair: (None, None) for pair in wanted}
    if not wanted:
        return moved
    for conversation_id, user_id, delivered, read, last_seq in prepared.execute(*_cursors_statement(list(wanted))):
        to_delivered, to_read = (min(seq, last_seq) for seq in wanted[conversation_id, user_id])
        delivered_to = read_to = None
        if to_delivered > delivered and prepared.execute(
                *_forward_statement(Member.delivered_seq, conversation_id, user_id, to_delivered)).rowcount:
            delivered_to = to_delivered
        if to_read > read and prepared.execute(
                *_forward_statement(Member.read_seq, conversation_id, user_id, to_read)).rowcount:
            read_to = to_read
        moved[conversation_id, user_id] = (delivered_to, read_to)
    return moved


def _cursors_statement(pairs: list[tuple[int, int]]) -> Statement:
    """Each pair's delivered and read cursors and its conversation's last seq."""
    return (("cursors", len(pairs)),
            lambda: Member.select(Member.conversation_id, Member.user_id, Member.delivered_seq, Member.read_seq,
                                  Conversation.last_seq)
            .join(Conversation, on=(Conversation.id == Member.conversation_id))
            .where(pw.Tuple(Member.conversation_id, Member.user_id).in_(pairs)),
            [v for pair in pairs for v in pair])


def _forward_statement(cursor: pw.Field, conversation_id: int, user_id: int, seq: int) -> Statement:
    """One member's ``cursor`` (delivered_seq or read_seq) moved to ``seq``, forward only."""
    return (("forward", cursor.name),
            lambda: Member.update({cursor: seq}).where(
                (Member.conversation_id == conversation_id) & (Member.user_id == user_id) & (cursor < seq)),
            [seq, conversation_id, user_id, seq])


def hide(user_id: int, msg_id: str) -> dict:
    """Delete a message for ``user_id`` only: history, sync and offline messages leave it out for
    them from now on (idempotent). Any member may, for any message of their conversations."""
    message = Message.get_or_none(Message.msg_id == msg_id)
    if message is None:
        raise AppError(Code.MESSAGE_NOT_FOUND, field="target_msg_id")
    try:
        membership(message.conversation_id, user_id)
    except AppError:
        raise AppError(Code.MESSAGE_NOT_FOUND, field="target_msg_id") from None  # not theirs to know of
    HiddenMessage.insert(user_id=user_id, message_id=message.id).on_conflict_ignore().execute()
    return {"target_msg_id": msg_id, "conversation_id": message.conversation_id, "scope": "me"}
