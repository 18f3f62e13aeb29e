"""Conversations and who belongs to them: the private conversation of a pair, groups, membership
(the authorization every read and write starts from), and the member lists delivery fans out to."""
from __future__ import annotations

import peewee as pw

from common.errors import AppError, Code
from common.models import Block, Conversation, ConversationMember as Member, User, db


def pair_key(user_a: int, user_b: int) -> str:
    return f"{min(user_a, user_b)}:{max(user_a, user_b)}"


def private_conversation(user_a: int, user_b: int) -> Conversation:
    """The one private conversation of a pair, created on first use (idempotent)."""
    low, high = sorted((user_a, user_b))
    key = pair_key(low, high)
    conv = Conversation.get_or_none(Conversation.private_key == key)
    if conv is None:
        with db.atomic():
            Conversation.insert(type=Conversation.PRIVATE, private_key=key).on_conflict_ignore().execute()
            conv = Conversation.get(Conversation.private_key == key)
            Member.insert_many([{"conversation_id": conv.id, "user_id": u} for u in (low, high)]
                               ).on_conflict_ignore().execute()
    return conv


def group(group_id: int) -> Conversation:
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
    """Who sees ``user_id``'s presence: the members of their groups, and their private chats'
    peers once ``user_id`` wrote there (a stranger's unsolicited message is not enough); never
    someone they blocked."""
    mine = (Member.select(Member.conversation_id)
            .join(Conversation, on=(Conversation.id == Member.conversation_id))
            .where((Member.user_id == user_id) & ((Conversation.type == Conversation.GROUP) | Member.wrote)))
    blocked = Block.select(Block.blocked_id).where(Block.user_id == user_id)
    query = (Member.select(Member.user_id).distinct()
             .where(Member.conversation_id.in_(mine) & (Member.user_id != user_id)
                    & Member.user_id.not_in(blocked)))
    return [m.user_id for m in query]


def block(user_id: int, other_id: int, blocked: bool) -> dict:
    """Block or unblock ``other_id`` for ``user_id`` (idempotent)."""
    if other_id == user_id:
        raise AppError(Code.INVALID_PARAMS, "you cannot block yourself", field="user_id")
    if not User.select().where(User.id == other_id).exists():
        raise AppError(Code.USER_NOT_FOUND)
    if blocked:
        Block.insert(user_id=user_id, blocked_id=other_id).on_conflict_ignore().execute()
    else:
        Block.delete().where((Block.user_id == user_id) & (Block.blocked_id == other_id)).execute()
    return {"user_id": other_id, "blocked": blocked}


def blocked_ids(user_id: int) -> list[int]:
    return [b for (b,) in Block.select(Block.blocked_id).where(Block.user_id == user_id).order_by(Block.id).tuples()]
