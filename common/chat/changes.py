"""What a send says about other messages and users, checked before it is stored.

Events that change an earlier message — ``edit``, ``recall``, ``delete`` (for everyone), ``react``,
``unreact`` — are messages of their own (their own seq; ``target_msg_id`` names the message), and
a plain message may reply to another (``reply_to_msg_id``) and mention members (``mentions``; user
0 is ``@all``). :class:`Changes` authorizes each against the conversation as it is and as the
earlier sends of the same batch leave it, in order, and collects what the store then writes in the
same transaction (common/chat/store.py): the target's new state, reactions, mention rows.

Rules (docs/PROTOCOL.md): the target is a message (not a system message or an event) of the same
conversation (40004) that is not recalled or deleted (40007); edit and recall are its sender's
(40005) within ``chat.edit_window_s`` / ``chat.recall_window_s`` of its sending (40006); delete is
its sender's or a group owner's or admin's (40005); anyone in the conversation reacts, once per
emoji (a second ``react`` or an ``unreact`` of nothing: 10006). Mentioned users must be members
(10002, field ``mentions``); ``@all`` is for a group's owner and admins (10004).
"""
from __future__ import annotations

import json

from common.chat.rules import EVENTS, SYSTEM
from common.config import ChatConfig
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, Message, Reaction, now_ms

QUOTE_CHARS = 100
_NOT_CONTENT = (SYSTEM, *EVENTS)


def needs_checks(fields: dict) -> bool:
    """Whether a send names other messages or users (most do not, and cost nothing here)."""
    return fields["content_type"] in EVENTS or "reply_to_msg_id" in fields or "mentions" in fields


class Changes:
    def __init__(self, rules: ChatConfig, items: list[tuple[int, dict, Conversation]], batch: dict[str, Message]):
        """``items``: the sends to check, as ``(sender_id, fields, conversation)``; ``batch``: the
        messages of this batch by msg_id, as the store adds them (a target may be one of them)."""
        self.rules = rules
        self.batch = batch
        named = {f.get("target_msg_id") or f.get("reply_to_msg_id") for _, f, _ in items} - {None}
        self.stored = {m.msg_id: m for m in Message.select().where(Message.msg_id.in_(list(named)))} if named else {}
        self.reactions = set(Reaction.select(Reaction.msg_id, Reaction.user_id, Reaction.emoji).where(
            Reaction.msg_id.in_(list(named)) & Reaction.user_id.in_(list({s for s, _, _ in items}))
        ).tuples()) if any(f["content_type"] in ("react", "unreact") for _, f, _ in items) else set()
        self._members: dict[int, dict[int, str]] = {}
        # What the store writes: a target's new columns by msg_id; the targets whose edit events
        # lose their text; reactions added and removed; (message, mentioned user ids).
        self.updates: dict[str, dict] = {}
        self.wiped: set[str] = set()
        self.reacted: list[tuple[str, int, str]] = []
        self.unreacted: list[tuple[str, int, str]] = []
        self.mentioned: list[tuple[Message, list[int]]] = []
        self.replied: dict[str, Message] = {}  # a reply's msg_id -> the message it quotes

    def _roles(self, conv: Conversation) -> dict[int, str]:
        """``{user_id: role}`` of a conversation's members (read once per batch)."""
        if conv.id not in self._members:
            self._members[conv.id] = dict(Member.select(Member.user_id, Member.role)
                                          .where(Member.conversation_id == conv.id).tuples())
        return self._members[conv.id]

    def _target(self, msg_id: str, conv: Conversation) -> Message:
        target = self.batch.get(msg_id) or self.stored.get(msg_id)
        if target is None or target.conversation_id != conv.id or target.content_type in _NOT_CONTENT:
            raise AppError(Code.MESSAGE_NOT_FOUND, field="target_msg_id")
        if target.state:
            raise AppError(Code.MESSAGE_GONE)
        return target

    def check(self, message: Message, fields: dict, conv: Conversation) -> AppError | None:
        """Authorize one send (``message`` is its row, not stored yet); on success its effects are
        collected and the batch's view of its target changes with it."""
        try:
            kind = fields["content_type"]
            if kind in EVENTS:
                self._change(kind, message, self._target(fields["target_msg_id"], conv), conv)
                return None
            if "reply_to_msg_id" in fields:
                try:
                    self.replied[message.msg_id] = self._target(fields["reply_to_msg_id"], conv)
                except AppError as exc:
                    raise AppError(exc.code, field="reply_to_msg_id") from None
            if "mentions" in fields:
                self._mentions(message, fields["mentions"], conv)
        except AppError as exc:
            return exc
        return None

    def _change(self, kind: str, event: Message, target: Message, conv: Conversation) -> None:
        sender = event.sender_id
        if kind in ("edit", "recall"):
            if sender != target.sender_id:
                raise AppError(Code.NOT_MESSAGE_SENDER)
            window = self.rules.edit_window_s if kind == "edit" else self.rules.recall_window_s
            if now_ms() - target.created_at > window * 1000:
                raise AppError(Code.CHANGE_WINDOW_PASSED, f"a message can be {kind}ed up to {window} s after sending")
        if kind == "edit":
            target.content, target.edited_at = event.content, event.created_at
            self.updates[target.msg_id] = {"content": target.content, "edited_at": target.edited_at}
        elif kind in ("recall", "delete"):
            if kind == "delete" and sender != target.sender_id and \
                    self._roles(conv).get(sender) not in (Member.OWNER, Member.ADMIN):
                raise AppError(Code.NOT_MESSAGE_SENDER, "only its sender or a group owner or admin may delete it")
            target.content, target.state = "", Message.RECALLED if kind == "recall" else Message.DELETED
            self.updates[target.msg_id] = {"content": "", "state": target.state}
            self.wiped.add(target.msg_id)
        else:
            key = (target.msg_id, sender, event.content)
            if (key in self.reactions) == (kind == "react"):
                raise AppError(Code.CONFLICT, "you reacted with this emoji already" if kind == "react"
                               else "you have not reacted with this emoji", field="emoji")
            if kind == "react":
                self.reactions.add(key)
                self.reacted.append(key)
            else:
                self.reactions.discard(key)
                self.unreacted.append(key)

    def _mentions(self, message: Message, mentions: list[int], conv: Conversation) -> None:
        if conv.type == Conversation.PRIVATE:
            members = {int(u): Member.MEMBER for u in conv.private_key.split(":")}
        else:
            members = self._roles(conv)
        if 0 in mentions:
            if conv.type == Conversation.PRIVATE:
                raise AppError(Code.INVALID_PARAMS, "@all is for groups", field="mentions")
            if members.get(message.sender_id) not in (Member.OWNER, Member.ADMIN):
                raise AppError(Code.FORBIDDEN, "only a group's owner or admins may mention everyone")
        elif any(u not in members for u in mentions):
            raise AppError(Code.INVALID_PARAMS, "mentions must name members of the conversation", field="mentions")
        message.mentions = json.dumps(mentions)
        self.mentioned.append((message, mentions))


def quote(target: Message | None) -> dict | None:
    """The short quote a reply carries: the target as it is now."""
    if target is None:
        return None
    return {"msg_id": target.msg_id, "from_user_id": target.sender_id, "content": target.content[:QUOTE_CHARS],
            **({"state": target.state} if target.state else {})}
