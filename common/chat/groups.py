"""Groups: create, read, members, and administration. Every change is a ``system`` message in the
group's seq stream (common/chat/store.py ``store_system``), so clients see it in order with the
chat: ``group_created``, ``members_added``, ``member_removed``, ``member_left``, ``group_updated``,
``role_changed``, ``owner_changed``, ``member_muted``, ``group_dissolved``.

Who may: the owner and admins add and remove members, edit the name, topic and avatar, and mute
members; the owner alone promotes and demotes admins, hands the group on and dissolves it. A
dissolved group stays readable by its members and takes no more messages or changes (40008).
"""
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


def create_group(owner_id: int, name, member_ids, max_members: int = MAX_GROUP) -> tuple[Conversation, Stored]:
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 64:
        raise AppError(Code.INVALID_PARAMS, "name must be 1-64 characters", field="name")
    if not isinstance(member_ids, list):
        raise AppError(Code.INVALID_PARAMS, "member_ids must be a list", field="member_ids")
    ids = [u for u in _existing_users(member_ids) if u != owner_id]
    if len(ids) + 1 > max_members:
        raise AppError(Code.INVALID_PARAMS, f"a group has at most {max_members} members", field="member_ids")
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
    return {"group_id": conv.id, "conversation_id": conv.id, "name": conv.name, "topic": conv.topic,
            "avatar": conv.avatar, "owner_id": conv.owner_id, "last_seq": conv.last_seq,
            "created_at": conv.created_at, "dissolved_at": conv.dissolved_at,
            "member_count": Member.select().where(Member.conversation_id == conv.id).count()}


def get_group(user_id: int, group_id: int) -> Conversation:
    conv = group(group_id)
    membership(conv.id, user_id)
    return conv


def group_members(user_id: int, group_id: int) -> list[dict]:
    conv = get_group(user_id, group_id)
    return [{"user_id": m.user_id, "role": m.role, "joined_at": m.joined_at, "muted_until": m.muted_until}
            for m in Member.select().where(Member.conversation_id == conv.id).order_by(Member.id)]


def _managed(actor_id: int, group_id: int, roles=(Member.OWNER, Member.ADMIN)) -> tuple[Conversation, Member]:
    """The group and the actor's membership, if the actor's role may change it (10004)."""
    conv = group(group_id)
    actor = membership(conv.id, actor_id)
    if conv.dissolved_at:
        raise AppError(Code.GROUP_DISSOLVED)
    if actor.role not in roles:
        raise AppError(Code.FORBIDDEN, "only the owner" + (" or an admin" if Member.ADMIN in roles else "")
                       + " can do this")
    return conv, actor


def add_members(actor_id: int, group_id: int, user_ids, max_members: int = MAX_GROUP) -> Stored | None:
    conv, _ = _managed(actor_id, group_id)
    if not isinstance(user_ids, list) or not user_ids:
        raise AppError(Code.INVALID_PARAMS, "user_ids must be a non-empty list", field="user_ids")
    ids = _existing_users(user_ids)
    present = set(member_ids(conv.id))
    new = [u for u in ids if u not in present]
    if not new:
        return None
    if len(present) + len(new) > max_members:
        raise AppError(Code.INVALID_PARAMS, f"a group has at most {max_members} members", field="user_ids")
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
    if conv.dissolved_at:
        raise AppError(Code.GROUP_DISSOLVED)
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


def update_group(actor_id: int, group_id: int, changes: dict) -> Stored | None:
    """Rename the group, or set its topic or avatar (owner or admin); None when nothing changed."""
    conv, _ = _managed(actor_id, group_id)
    changed = {k: v for k, v in changes.items() if getattr(conv, k) != v}
    if not changed:
        return None
    with db.atomic():
        Conversation.update(**changed).where(Conversation.id == conv.id).execute()
        return store_system(conv, actor_id, "group_updated", **changed)


def set_role(actor_id: int, group_id: int, user_id: int, role: str) -> Stored | None:
    """Promote a member to admin or demote an admin (the owner only); None when already so."""
    conv, _ = _managed(actor_id, group_id, roles=(Member.OWNER,))
    target = membership(conv.id, user_id)
    if target.role == Member.OWNER:
        raise AppError(Code.FORBIDDEN, "the owner's role changes only by handing the group on")
    if target.role == role:
        return None
    with db.atomic():
        Member.update(role=role).where(Member.id == target.id).execute()
        return store_system(conv, actor_id, "role_changed", user_id=user_id, role=role)


def transfer_ownership(actor_id: int, group_id: int, user_id: int) -> Stored:
    """Hand the group on to another member (the owner only), who becomes its owner; the old
    owner stays on as an admin."""
    conv, actor = _managed(actor_id, group_id, roles=(Member.OWNER,))
    target = membership(conv.id, user_id)
    if target.user_id == actor_id:
        raise AppError(Code.INVALID_PARAMS, "you own this group already", field="user_id")
    with db.atomic():
        Member.update(role=Member.ADMIN).where(Member.id == actor.id).execute()
        Member.update(role=Member.OWNER).where(Member.id == target.id).execute()
        Conversation.update(owner_id=user_id).where(Conversation.id == conv.id).execute()
        return store_system(conv, actor_id, "owner_changed", user_id=user_id)


def mute_member(actor_id: int, group_id: int, user_id: int, until_ms: int) -> Stored:
    """Mute a member until ``until_ms`` (0: unmute), owner or admin; a muted member's sends are
    refused (40009). The owner cannot be muted, nor an admin by an admin."""
    conv, actor = _managed(actor_id, group_id)
    target = membership(conv.id, user_id)
    if target.role == Member.OWNER or (target.role == Member.ADMIN and actor.role != Member.OWNER):
        raise AppError(Code.FORBIDDEN, "only the owner mutes admins; no one mutes the owner")
    with db.atomic():
        Member.update(muted_until=until_ms).where(Member.id == target.id).execute()
        return store_system(conv, actor_id, "member_muted", user_id=user_id, until=until_ms)


def dissolve(actor_id: int, group_id: int) -> Stored:
    """End the group (the owner only): its members keep reading it; nothing more is sent to it."""
    conv, _ = _managed(actor_id, group_id, roles=(Member.OWNER,))
    with db.atomic():
        stored = store_system(conv, actor_id, "group_dissolved")
        Conversation.update(dissolved_at=stored.message.created_at).where(Conversation.id == conv.id).execute()
    return stored
