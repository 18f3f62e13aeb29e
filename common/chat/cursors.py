"""Read and delivered cursors: where each member is in a conversation."""
from __future__ import annotations

from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member


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
