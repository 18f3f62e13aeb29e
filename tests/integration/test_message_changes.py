"""Edit, recall, delete, reactions, replies and mentions in the one store, on MariaDB: each change is
an event with its own seq, the target is kept in its current state, and every refusal changes
nothing (issue 14). The live path (frames, pushes, a second device, sync) is in
tests/integration/test_chat_features.py."""
import dataclasses
import json
import uuid

import pytest

from common import accounts, chat
from common.config import ChatConfig
from common.errors import AppError, Code
from common.models import Conversation, Message, Reaction, db

RULES = ChatConfig()


def _users(cfg, n):
    tag = uuid.uuid4().hex[:6]
    return [accounts.register(accounts.validate_registration({"username": f"mc{tag}{i}",
                                                              "password": "change-password"}), None, cfg).id
            for i in range(n)]


def _to(to=None, group=None):
    return {"to_user_id": to} if to is not None else {"group_id": group}


def send(sender, content="hi", rules=RULES, **extra):
    """Store one send; its Stored or AppError."""
    payload = {"msg_id": uuid.uuid4().hex, "content": content, **extra}
    (result,) = chat.store_messages([(sender, chat.validate_send(payload))], rules)
    return result


def change(sender, kind, target, rules=RULES, **payload):
    payload = {"msg_id": uuid.uuid4().hex, "target_msg_id": target, **payload}
    (result,) = chat.store_messages([(sender, chat.validate_change(kind, payload))], rules)
    return result


def row(msg_id):
    return Message.get(Message.msg_id == msg_id)


def snapshot(conversation_id):
    """Everything stored about a conversation: to assert that a refusal changed nothing."""
    messages = [m.__data__.copy() for m in Message.select().where(Message.conversation_id == conversation_id)
                .order_by(Message.seq)]
    reactions = sorted(Reaction.select(Reaction.msg_id, Reaction.user_id, Reaction.emoji).tuples())
    return messages, reactions, Conversation.get_by_id(conversation_id).last_seq


def refused(result, code):
    assert isinstance(result, AppError), result
    assert result.code == code, result
    return True


@pytest.fixture
def pair(cfg):
    with db.connection_context():
        yield _users(cfg, 2)


def test_an_edit_is_an_event_with_its_own_seq_and_the_message_is_kept_as_edited(pair):
    a, b = pair
    original = send(a, "helo", **_to(b))
    edit = change(a, "edit", original.message.msg_id, content="hello", **_to(b))
    assert (original.message.seq, edit.message.seq) == (1, 2)
    target = row(original.message.msg_id)
    assert (target.content, target.edited_at) == ("hello", edit.message.created_at)
    view = edit.view()
    assert (view["content_type"], view["target_msg_id"], view["content"]) == ("edit", original.message.msg_id,
                                                                              "hello")
    history = chat.history(b, original.conversation.id, None, 50)["messages"]
    assert [(m["seq"], m["content_type"], m["content"], "edited_at" in m) for m in history] == [
        (1, "text", "hello", True), (2, "edit", "hello", False)]


def test_a_recall_empties_the_message_and_its_edits_in_the_database(pair):
    a, b = pair
    original = send(a, "secret", **_to(b))
    change(a, "edit", original.message.msg_id, content="secret, edited", **_to(b))
    recall = change(a, "recall", original.message.msg_id, **_to(b))
    assert recall.message.seq == 3
    rows = list(Message.select().where(Message.conversation_id == original.conversation.id).order_by(Message.seq))
    assert [(m.content_type, m.content, m.state) for m in rows] == [
        ("text", "", "recalled"), ("edit", "", ""), ("recall", "", "")]
    assert not Message.select().where(Message.content.contains("secret")).exists()
    view = chat.sync(b, original.conversation.id, 0, 50)["messages"][0]
    assert (view["state"], view["content"]) == ("recalled", "")


def test_a_recall_after_its_window_is_refused_and_changes_nothing(pair):
    a, b = pair
    original = send(a, "too late", **_to(b))
    before = snapshot(original.conversation.id)
    assert refused(change(a, "recall", original.message.msg_id, rules=dataclasses.replace(RULES, recall_window_s=0),
                          **_to(b)), Code.CHANGE_WINDOW_PASSED)
    assert snapshot(original.conversation.id) == before
    Message.update(created_at=Message.created_at - 121_000).where(
        Message.msg_id == original.message.msg_id).execute()  # sent 2 min 1 s ago
    before = snapshot(original.conversation.id)
    assert refused(change(a, "recall", original.message.msg_id, **_to(b)), Code.CHANGE_WINDOW_PASSED)
    assert refused(change(a, "edit", original.message.msg_id, rules=dataclasses.replace(RULES, edit_window_s=120),
                          content="x", **_to(b)), Code.CHANGE_WINDOW_PASSED)
    assert snapshot(original.conversation.id) == before
    assert not isinstance(change(a, "edit", original.message.msg_id, content="still editable", **_to(b)), AppError)


def test_only_the_sender_edits_or_recalls_and_nothing_changes_a_recalled_message(pair):
    a, b = pair
    original = send(a, "mine", **_to(b))
    before = snapshot(original.conversation.id)
    assert refused(change(b, "edit", original.message.msg_id, content="yours?", **_to(a)), Code.NOT_MESSAGE_SENDER)
    assert refused(change(b, "recall", original.message.msg_id, **_to(a)), Code.NOT_MESSAGE_SENDER)
    assert refused(change(b, "delete", original.message.msg_id, **_to(a)), Code.NOT_MESSAGE_SENDER)
    assert snapshot(original.conversation.id) == before
    change(a, "recall", original.message.msg_id, **_to(b))
    before = snapshot(original.conversation.id)
    for kind, extra in (("edit", {"content": "again"}), ("recall", {}), ("react", {"emoji": "👍"})):
        assert refused(change(a, kind, original.message.msg_id, **extra, **_to(b)), Code.MESSAGE_GONE)
    assert snapshot(original.conversation.id) == before


def test_a_change_of_a_message_of_another_conversation_or_of_an_event_is_not_found(cfg):
    with db.connection_context():
        a, b, c = _users(cfg, 3)
        elsewhere = send(a, "to c", **_to(c))
        here = send(a, "to b", **_to(b))
        edit = change(a, "edit", here.message.msg_id, content="to b!", **_to(b))
        before = snapshot(here.conversation.id)
        assert refused(change(a, "edit", elsewhere.message.msg_id, content="x", **_to(b)), Code.MESSAGE_NOT_FOUND)
        assert refused(change(a, "recall", edit.message.msg_id, **_to(b)), Code.MESSAGE_NOT_FOUND)
        assert refused(change(a, "recall", "no-such-message", **_to(b)), Code.MESSAGE_NOT_FOUND)
        reply = send(a, "re", reply_to_msg_id=elsewhere.message.msg_id, **_to(b))
        assert refused(reply, Code.MESSAGE_NOT_FOUND) and reply.field == "reply_to_msg_id"
        assert snapshot(here.conversation.id) == before


def test_a_group_admin_deletes_a_members_message_for_everyone(cfg):
    with db.connection_context():
        owner, member, other = _users(cfg, 3)
        group, _ = chat.create_group(owner, "moderated", [member, other])
        spam = send(member, "spam", **_to(group=group.id))
        assert refused(change(other, "delete", spam.message.msg_id, **_to(group=group.id)), Code.NOT_MESSAGE_SENDER)
        deleted = change(owner, "delete", spam.message.msg_id, **_to(group=group.id))
        assert (deleted.message.content_type, row(spam.message.msg_id).state, row(spam.message.msg_id).content) == \
               ("delete", "deleted", "")


def test_a_reaction_added_twice_is_stored_once_and_history_counts_it(pair):
    a, b = pair
    original = send(a, "react to me", **_to(b))
    msg_id = original.message.msg_id
    first = change(b, "react", msg_id, emoji="👍", **_to(a))
    before = snapshot(original.conversation.id)
    assert refused(change(b, "react", msg_id, emoji="👍", **_to(a)), Code.CONFLICT)
    assert snapshot(original.conversation.id) == before
    change(a, "react", msg_id, emoji="👍", **_to(b))
    change(a, "react", msg_id, emoji="🎉", **_to(b))
    assert first.message.seq == 2
    [message] = [m for m in chat.history(b, original.conversation.id, None, 50)["messages"] if m["msg_id"] == msg_id]
    assert message["reactions"] == [{"emoji": "👍", "count": 2, "me": True}, {"emoji": "🎉", "count": 1, "me": False}]
    change(b, "unreact", msg_id, emoji="👍", **_to(a))
    assert refused(change(b, "unreact", msg_id, emoji="👍", **_to(a)), Code.CONFLICT)
    assert sorted(Reaction.select(Reaction.user_id, Reaction.emoji).where(Reaction.msg_id == msg_id).tuples()) == \
           sorted([(a, "👍"), (a, "🎉")])


def test_emoji_that_differ_only_in_bytes_are_two_reactions(pair):
    """MariaDB's default collation compares many emoji as equal; the reaction table's is binary."""
    a, b = pair
    original = send(a, "x", **_to(b))
    for emoji in ("😀", "😃", "👍", "👍🏽"):
        assert not isinstance(change(b, "react", original.message.msg_id, emoji=emoji, **_to(a)), AppError)
    assert Reaction.select().where(Reaction.msg_id == original.message.msg_id).count() == 4


def test_a_reply_carries_a_quote_of_its_target_as_it_is_now(pair):
    a, b = pair
    original = send(a, "first words " * 20, **_to(b))
    reply = send(b, "an answer", reply_to_msg_id=original.message.msg_id, **_to(a))
    quote = reply.view()["reply_to"]
    assert (quote["msg_id"], quote["from_user_id"], len(quote["content"])) == (original.message.msg_id, a, 100)
    change(a, "recall", original.message.msg_id, **_to(b))
    [_, replied, _] = chat.history(a, original.conversation.id, None, 50)["messages"]
    assert replied["reply_to"] == {"msg_id": original.message.msg_id, "from_user_id": a, "content": "",
                                   "state": "recalled"}


def test_mentions_name_members_only_and_count_as_unread_until_read(cfg):
    with db.connection_context():
        owner, member, outsider = _users(cfg, 3)
        group, _ = chat.create_group(owner, "mentions", [member])
        to = _to(group=group.id)
        before = snapshot(group.id)
        assert refused(send(owner, "hey", mentions=[outsider], **to), Code.INVALID_PARAMS)
        assert refused(send(member, "all!", mention_all=True, **to), Code.FORBIDDEN)
        assert snapshot(group.id) == before
        first = send(owner, "@member look", mentions=[member], **to)
        send(owner, "@all meeting", mention_all=True, **to)
        assert json.loads(row(first.message.msg_id).mentions) == [member]

        def unread(user):
            return next(c["unread_mentions"] for c in chat.conversations(user) if c["conversation_id"] == group.id)
        assert (unread(member), unread(owner)) == (2, 0)
        chat.move_cursors([(group.id, member, first.message.seq, "read")])
        assert unread(member) == 1


def test_delete_for_me_hides_the_message_for_one_user_only(pair):
    a, b = pair
    kept, hidden = send(a, "kept", **_to(b)), send(a, "hidden", **_to(b))
    assert chat.hide(b, hidden.message.msg_id)["scope"] == "me"
    assert chat.hide(b, hidden.message.msg_id)["scope"] == "me"  # again: the same
    seen = {m["msg_id"] for m in chat.history(b, kept.conversation.id, None, 50)["messages"]}
    assert seen == {kept.message.msg_id}
    assert {m["msg_id"] for m in chat.sync(a, kept.conversation.id, 0, 50)["messages"]} == \
           {kept.message.msg_id, hidden.message.msg_id}
    assert row(hidden.message.msg_id).content == "hidden"  # still there for the sender


def test_an_edit_in_the_same_batch_as_its_message_applies_in_order(pair):
    a, b = pair
    first = {"msg_id": uuid.uuid4().hex, "content": "draft", **_to(b)}
    edit = {"msg_id": uuid.uuid4().hex, "target_msg_id": first["msg_id"], "content": "final", **_to(b)}
    react = {"msg_id": uuid.uuid4().hex, "target_msg_id": first["msg_id"], "emoji": "✅", **_to(a)}
    results = chat.store_messages([(a, chat.validate_send(first)), (a, chat.validate_change("edit", edit)),
                                   (b, chat.validate_change("react", react))], RULES)
    assert [r.message.seq for r in results] == [1, 2, 3]
    assert (row(first["msg_id"]).content, row(first["msg_id"]).edited_at is not None) == ("final", True)
    again = chat.store_messages([(a, chat.validate_change("edit", edit))], RULES)[0]
    assert (again.created, again.message.seq) == (False, 2)  # a resent edit: the same event, not applied twice
