"""Groups: create, read, add and remove members. Every membership change is a ``system`` message in
the group's seq stream (common/chat/store.py ``store_system``), so clients see it in order with
the chat."""
from __future__ import annotations

import peewee as pw

from common.chat.members import group, member_ids, membership
from common.chat.store import Stored, store_system
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, User, db

MAX_GROUP = 2000


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
    conv = group(group_id)
    membership(conv.id, user_id)
    return conv


def group_members(user_id: int, group_id: int) -> list[dict]:
    conv = get_group(user_id, group_id)
    return [{"user_id": m.user_id, "role": m.role, "joined_at": m.joined_at}
            for m in Member.select().where(Member.conversation_id == conv.id).order_by(Member.id)]


def add_members(actor_id: int, group_id: int, user_ids) -> Stored | None:
    conv = group(group_id)
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
    conv = group(group_id)
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
