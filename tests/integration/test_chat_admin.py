"""Group administration, blocking, read-by-whom and message search on MariaDB (issue 14): every
change is a system message in the seq stream, and every refusal has its code and changes nothing."""
import json
import uuid

import pytest

from common import chat
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember as Member, Message, db
from tests.integration.test_message_changes import _to, _users, change, refused, send, snapshot


def events(conversation_id):
    return [json.loads(m.content)["event"] for m in Message.select().where(
        (Message.conversation_id == conversation_id) & (Message.content_type == chat.SYSTEM)).order_by(Message.seq)]


def role(group_id, user_id):
    return Member.get((Member.conversation_id == group_id) & (Member.user_id == user_id)).role


@pytest.fixture
def team(cfg):
    with db.connection_context():
        owner, admin, member = _users(cfg, 3)
        group, _ = chat.create_group(owner, "team", [admin, member])
        chat.set_role(owner, group.id, admin, Member.ADMIN)
        yield group.id, owner, admin, member


def test_ownership_transfer_then_leave(team):
    group, owner, admin, member = team
    before = snapshot(group)
    with pytest.raises(AppError) as raised:
        chat.transfer_ownership(admin, group, member)
    assert raised.value.code == Code.FORBIDDEN and snapshot(group) == before
    chat.transfer_ownership(owner, group, member)
    assert (role(group, member), role(group, owner)) == (Member.OWNER, Member.ADMIN)
    assert Conversation.get_by_id(group).owner_id == member
    left = chat.remove_member(owner, group, owner)
    assert "new_owner_id" not in json.loads(left.message.content)  # the group had its owner already
    assert events(group) == ["group_created", "role_changed", "owner_changed", "member_left"]
    assert chat.group_view(Conversation.get_by_id(group))["member_count"] == 2


def test_admins_rename_and_mute_the_owner_alone_promotes(team):
    group, owner, admin, member = team
    chat.update_group(admin, group, {"name": "renamed", "topic": "launch"})
    assert chat.update_group(admin, group, {"name": "renamed"}) is None  # nothing changed: no event
    before = snapshot(group)
    for attempt in (lambda: chat.set_role(admin, group, member, Member.ADMIN),
                    lambda: chat.update_group(member, group, {"name": "mine"}),
                    lambda: chat.mute_member(member, group, admin, 2 ** 40),
                    lambda: chat.mute_member(admin, group, owner, 2 ** 40),
                    lambda: chat.dissolve(admin, group)):
        with pytest.raises(AppError) as raised:
            attempt()
        assert raised.value.code == Code.FORBIDDEN
    assert snapshot(group) == before
    view = chat.group_view(Conversation.get_by_id(group))
    assert (view["name"], view["topic"]) == ("renamed", "launch")


def test_a_muted_member_cannot_send_until_unmuted(team):
    group, owner, admin, member = team
    chat.mute_member(admin, group, member, 2 ** 42)
    before = snapshot(group)
    assert refused(send(member, "let me speak", **_to(group=group)), Code.MEMBER_MUTED)
    assert snapshot(group) == before
    chat.mute_member(admin, group, member, 0)
    assert not isinstance(send(member, "thanks", **_to(group=group)), AppError)


def test_a_dissolved_group_stays_readable_and_takes_nothing_more(team):
    group, owner, admin, member = team
    said = send(member, "before the end", **_to(group=group))
    chat.dissolve(owner, group)
    before = snapshot(group)
    assert refused(send(member, "after the end", **_to(group=group)), Code.GROUP_DISSOLVED)
    with pytest.raises(AppError) as raised:
        chat.add_members(owner, group, [admin])
    assert raised.value.code == Code.GROUP_DISSOLVED
    assert snapshot(group) == before
    assert said.message.msg_id in {m["msg_id"] for m in chat.history(member, group, None, 50)["messages"]}


def test_a_group_has_at_most_the_configured_members(cfg):
    with db.connection_context():
        owner, *others = _users(cfg, 4)
        with pytest.raises(AppError) as raised:
            chat.create_group(owner, "small", others, max_members=3)
        assert raised.value.field == "member_ids"
        group, _ = chat.create_group(owner, "small", others[:2], max_members=3)
        with pytest.raises(AppError):
            chat.add_members(owner, group.id, [others[2]], max_members=3)


def test_a_blocked_user_cannot_start_or_continue_a_private_chat(cfg):
    with db.connection_context():
        a, b, c = _users(cfg, 3)
        first = send(a, "hello", **_to(b))
        assert a not in chat.contact_ids(b)  # an unsolicited message does not show b's presence to a...
        send(b, "who is this?", **_to(a))
        assert a in chat.contact_ids(b)  # ...b's answer does...
        chat.block(b, a, True)
        before = snapshot(first.conversation.id)
        assert refused(send(a, "still there?", **_to(b)), Code.BLOCKED)
        assert refused(send(b, "and back", **_to(a)), Code.BLOCKED)  # the blocker neither, until unblocking
        assert snapshot(first.conversation.id) == before
        chat.block(c, a, True)
        assert refused(send(a, "hi c", **_to(c)), Code.BLOCKED)
        assert not Conversation.select().where(Conversation.private_key == f"{min(a, c)}:{max(a, c)}").exists()
        assert a not in chat.contact_ids(b)  # ...until b blocks a
        chat.block(b, a, False)
        assert not isinstance(send(a, "friends again", **_to(b)), AppError)
        assert chat.blocked_ids(b) == []


def test_read_by_whom_after_three_members_read(cfg):
    with db.connection_context():
        sender, *readers = _users(cfg, 5)
        group, _ = chat.create_group(sender, "readers", readers)
        message = send(sender, "read me", **_to(group=group.id)).message
        for reader in readers[:3]:
            chat.move_cursors([(group.id, reader, message.seq, "read")])
        page = chat.readers(readers[3], group.id, message.seq, 2)
        assert [r["user_id"] for r in page["readers"]] == sorted(readers[:3])[:2] and page["has_more"]
        rest = chat.readers(readers[3], group.id, message.seq, 2, page["next_after"])
        assert [r["user_id"] for r in rest["readers"]] == sorted(readers[:3])[2:] and not rest["has_more"]
        with pytest.raises(AppError) as raised:
            chat.readers(readers[0], group.id, message.seq + 100, 10)
        assert raised.value.code == Code.MESSAGE_NOT_FOUND


def test_search_finds_a_word_in_my_conversations_only_and_never_a_recalled_message(cfg):
    with db.connection_context():
        a, b, c = _users(cfg, 3)
        word = "zq" + uuid.uuid4().hex[:8]
        mine = send(a, f"the {word} plan", **_to(b))
        send(a, f"{word} elsewhere", **_to(c))             # a conversation b is not in
        recalled = send(b, f"oops {word}", **_to(a))
        change(b, "recall", recalled.message.msg_id, **_to(a))
        found = chat.search(b, word, 10)
        assert [m["msg_id"] for m in found["messages"]] == [mine.message.msg_id]
        assert [m["msg_id"] for m in chat.search(b, word[:6], 10)["messages"]] == [mine.message.msg_id]  # a prefix
        with pytest.raises(AppError) as raised:
            chat.search(b, "  !! ", 10)
        assert raised.value.field == "q"
