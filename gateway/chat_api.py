"""The HTTP API of the chat features beyond sending and reading (docs/PROTOCOL.md): changes to a
message (edit, recall, delete, reactions), who read a message, message search, muting a
conversation's notifications, group administration, blocking, and the user directory's search.

Changes to a message go through the send function like a send (same idempotency by ``msg_id``, the
same ack, the same rate limit); the rest is served here from the database. The rules live in
common/chat (and common/accounts.py for the directory); this module only maps HTTP onto them.
"""
from __future__ import annotations

from flask import Blueprint, g, request

from common import accounts, chat, rpc, validate
from common.models import ConversationMember as Member, db
from gateway.http import ID, announce, current_gateway, envelope, json_body, limit, page_limit, require_user, with_db

bp = Blueprint("chat_api", __name__)
ACTIONS = ("edit", "recall", "delete", "react", "unreact")


@bp.post("/api/v1/messages/<target_msg_id>/<action>")
@require_user
def change_message(target_msg_id, action):
    """``edit`` ``{msg_id, to_user_id | group_id, content}``, ``recall``, ``delete`` (``scope``:
    ``everyone``, the default, or ``me``), ``react`` / ``unreact`` ``{…, emoji}``."""
    if action not in ACTIONS:
        raise validate.invalid(f"action is one of {', '.join(ACTIONS)}", "action")
    body = json_body()
    if action == "delete" and validate.choice(body, "scope", ("everyone", "me"), "everyone") == "me":
        with db.connection_context():
            return envelope(chat.hide(g.user_id, validate.text({"target_msg_id": target_msg_id}, "target_msg_id",
                                                                max_len=64)))
    fields = chat.validate_change(action, {**body, "target_msg_id": target_msg_id})
    limit(("ws_send_user", g.user_id))
    key = chat.route_key(g.user_id, fields["to_user_id"], fields["group_id"])
    return envelope(rpc.result(current_gateway().request("send", {**fields, "sender_id": g.user_id}, key)))


@bp.get(f"/api/v1/conversations/<{ID}:conversation_id>/messages/<{ID}:seq>/readers")
@require_user
@with_db
def message_readers(conversation_id, seq):
    return envelope(chat.readers(g.user_id, conversation_id, seq, page_limit(),
                                 validate.query_int(request.args.get("after"), "after", default=0)))


@bp.get("/api/v1/messages/search")
@require_user
@with_db
def search_messages():
    query = validate.text(dict(request.args), "q", max_len=200)
    before = validate.query_int(request.args.get("before"), "before", minimum=1)
    return envelope(chat.search(g.user_id, query, page_limit(), before))


@bp.put(f"/api/v1/conversations/<{ID}:conversation_id>/notifications")
@require_user
@with_db
def mute_notifications(conversation_id):
    muted = _flag(json_body(), "muted")
    member = chat.membership(conversation_id, g.user_id)
    Member.update(notifications_muted=muted).where(Member.id == member.id).execute()
    return envelope({"conversation_id": conversation_id, "muted": muted})


@bp.patch(f"/api/v1/groups/<{ID}:group_id>")
@require_user
@with_db
def update_group(group_id):
    body = json_body()
    changes = {name: value for name, value in (
        ("name", validate.text(body, "name", required=False, max_len=64)),
        ("topic", validate.text(body, "topic", required=False, min_len=0, max_len=256)),
        ("avatar", validate.text(body, "avatar", required=False, min_len=0, max_len=512))) if value is not None}
    if not changes:
        raise validate.invalid("give name, topic or avatar", "name")
    announce(chat.update_group(g.user_id, group_id, changes))
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.put(f"/api/v1/groups/<{ID}:group_id>/members/<{ID}:user_id>/role")
@require_user
@with_db
def set_role(group_id, user_id):
    role = validate.choice(json_body(), "role", (Member.ADMIN, Member.MEMBER))
    announce(chat.set_role(g.user_id, group_id, user_id, role))
    return envelope({"group_id": group_id, "user_id": user_id, "role": role})


@bp.put(f"/api/v1/groups/<{ID}:group_id>/members/<{ID}:user_id>/mute")
@require_user
@with_db
def mute_member(group_id, user_id):
    until = validate.integer(json_body(), "until_ms", minimum=0)
    announce(chat.mute_member(g.user_id, group_id, user_id, until))
    return envelope({"group_id": group_id, "user_id": user_id, "muted_until": until})


@bp.post(f"/api/v1/groups/<{ID}:group_id>/owner")
@require_user
@with_db
def transfer_ownership(group_id):
    announce(chat.transfer_ownership(g.user_id, group_id, validate.integer(json_body(), "user_id")))
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.delete(f"/api/v1/groups/<{ID}:group_id>")
@require_user
@with_db
def dissolve_group(group_id):
    announce(chat.dissolve(g.user_id, group_id))
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.get("/api/v1/blocks")
@require_user
@with_db
def list_blocks():
    return envelope({"user_ids": chat.blocked_ids(g.user_id)})


@bp.put(f"/api/v1/blocks/<{ID}:user_id>")
@require_user
@with_db
def block_user(user_id):
    return envelope(chat.block(g.user_id, user_id, True))


@bp.delete(f"/api/v1/blocks/<{ID}:user_id>")
@require_user
@with_db
def unblock_user(user_id):
    return envelope(chat.block(g.user_id, user_id, False))


@bp.get("/api/v1/users/search")
@require_user
@with_db
def search_users():
    limit(("directory_user", g.user_id))
    prefix = validate.text(dict(request.args), "q", max_len=64)
    return envelope(accounts.search(prefix, page_limit(), validate.query_int(request.args.get("after"), "after", default=0)))


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise validate.invalid(f"{name} must be true or false", name)
    return value
