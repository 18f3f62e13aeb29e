"""What is each member's own in a conversation: the delivered and read cursors, and the messages
they deleted for themselves (not events of the conversation: no one else is told)."""
from __future__ import annotations

from common.errors import AppError, Code
from common.chat.members import membership
from common.models import Conversation, ConversationMember as Member, HiddenMessage, Message


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
