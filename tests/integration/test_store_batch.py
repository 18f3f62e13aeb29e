"""The send function's batch store on MariaDB: the same results as storing one by one."""
import json
import uuid

from common import accounts, chat
from common.errors import AppError, Code
from common.models import Conversation, ConversationMember, Message, db


def _users(cfg, n):
    tag = uuid.uuid4().hex[:6]
    return [accounts.register(accounts.validate_registration({"username": f"sb{tag}{i}",
                                                              "password": "batch-password"}), None, cfg).id
            for i in range(n)]


def _send(sender, msg_id, to=None, group=None, content="hi"):
    payload = {"msg_id": msg_id, "content": content}
    payload.update({"to_user_id": to} if to is not None else {"group_id": group})
    return sender, chat.validate_send(payload)


def test_batch_assigns_consecutive_seqs_and_answers_each_send_like_one_by_one(cfg):
    with db.connection_context():
        a, b, c, outsider = _users(cfg, 4)
        group, _ = chat.create_group(a, "batch", [b, c])           # seq 1: group_created
        known = chat.private_conversation(a, c)
        chat.store_messages([_send(a, "sb-old", to=c, content="earlier")])  # seq 1 of a↔c
        m = uuid.uuid4().hex[:8]
        sends = [
            _send(a, f"{m}-1", to=b),            # first message of a↔b: conversation created
            _send(b, f"{m}-2", to=a),
            _send(a, f"{m}-3", group=group.id),
            _send(a, "sb-old", to=c),            # a resend: same message, not stored again
            _send(outsider, f"{m}-4", group=group.id),
            _send(a, f"{m}-5", group=999999999),
            _send(a, f"{m}-6", to=999999999),
            _send(b, f"{m}-1", to=a),            # msg_id reused by another sender
            _send(a, f"{m}-1", to=b),            # the same message twice in one batch
            _send(c, f"{m}-7", group=group.id),
            _send(a, f"{m}-8", to=a),            # to yourself
        ]
        results = chat.store_messages(sends)

    def seq(i):
        assert not isinstance(results[i], AppError), results[i]
        return results[i].conversation.id, results[i].message.seq

    pair = results[0].conversation
    assert pair.private_key == f"{min(a, b)}:{max(a, b)}"
    assert [seq(0), seq(1)] == [(pair.id, 1), (pair.id, 2)]
    assert [seq(2), seq(9)] == [(group.id, 2), (group.id, 3)]
    assert seq(3) == (known.id, 1) and results[3].created is False
    assert seq(8) == (pair.id, 1) and results[8].created is False
    codes = {i: results[i].code for i in (4, 5, 6, 7, 10)}
    assert codes == {4: Code.NOT_GROUP_MEMBER, 5: Code.GROUP_NOT_FOUND, 6: Code.USER_NOT_FOUND,
                     7: Code.CONFLICT, 10: Code.INVALID_PARAMS}
    with db.connection_context():
        stored = {(msg.conversation_id, msg.seq): msg.msg_id
                  for msg in Message.select().where(Message.conversation_id.in_([pair.id, group.id, known.id]))}
        assert Conversation.get_by_id(pair.id).last_seq == 2
        assert Conversation.get_by_id(group.id).last_seq == 3
    assert stored[(pair.id, 1)] == f"{m}-1" and stored[(pair.id, 2)] == f"{m}-2"
    assert stored[(group.id, 2)] == f"{m}-3" and stored[(group.id, 3)] == f"{m}-7"
    assert sorted(k for k in stored if k[0] == known.id) == [(known.id, 1)]


def test_msg_ids_differing_only_by_case_accent_or_trailing_space_are_distinct_messages(cfg):
    # MariaDB's default collation once merged these: the second got the first's seq and ack.
    with db.connection_context():
        a, b = _users(cfg, 2)
        m = uuid.uuid4().hex[:8]
        ids = [f"{m}-e", f"{m}-E", f"{m}-\u00e9", f"{m}-e "]
        results = chat.store_messages([_send(a, msg_id, to=b, content=f"body {i}")
                                       for i, msg_id in enumerate(ids)])
        assert [r.created for r in results] == [True] * 4
        assert len({r.message.seq for r in results}) == 4
        rows = {row.msg_id: row.content for row in Message.select().where(Message.msg_id.startswith(m))}
        assert rows == {msg_id: f"body {i}" for i, msg_id in enumerate(ids)}


def test_usernames_are_unique_in_any_letter_case_and_kept_as_typed(cfg):
    with db.connection_context():
        name = f"Case{uuid.uuid4().hex[:6]}"
        user = accounts.register(accounts.validate_registration({"username": name, "password": "pw-123456"}),
                                 None, cfg)
        assert user.username == name
        try:
            accounts.register(accounts.validate_registration({"username": name.lower(), "password": "other-pw1"}),
                              None, cfg)
            raise AssertionError("a name differing only by case was registered")
        except AppError as exc:
            assert exc.code == Code.USER_EXISTS
        logged_in = accounts.login({"username": name.upper(), "password": "pw-123456"}, cfg)
        assert logged_in["user"]["username"] == name
        try:
            accounts.login({"username": name + " ", "password": "pw-123456"}, cfg)
            raise AssertionError("a trailing space matched the name")
        except AppError as exc:
            assert exc.code == Code.INVALID_PASSWORD


def test_own_messages_are_not_unread_and_cursors_stop_at_the_last_message(cfg):
    with db.connection_context():
        a, b = _users(cfg, 2)
        m = uuid.uuid4().hex[:8]
        (first,) = chat.store_messages([_send(a, f"{m}-1", to=b)])
        conv_id = first.conversation.id
        unread = {c["conversation_id"]: c["unread_count"] for c in chat.conversations(a)}
        assert unread[conv_id] == 0                                   # the sender's own message
        assert {c["conversation_id"]: c["unread_count"] for c in chat.conversations(b)}[conv_id] == 1
        assert chat.move_cursors([(conv_id, b, 2 ** 62, "read")]) == {(conv_id, b): (1, 1)}  # to the last seq
        assert chat.move_cursors([(conv_id, b, 1, "read")]) == {(conv_id, b): (None, None)}  # never back, never twice
        group, _ = chat.create_group(a, "own", [b])
        assert group.last_seq == 1                                    # group_created is seq 1
        assert {c["conversation_id"]: c["unread_count"] for c in chat.conversations(a)}[group.id] == 0


def test_a_batch_of_acks_moves_each_cursor_once_to_its_highest_seq(cfg):
    """A deliver batch's acks: per member, the highest delivered and read seqs count (read implies
    delivered); an outsider's ack and an ack for no conversation move nothing."""
    with db.connection_context():
        a, b, outsider = _users(cfg, 3)
        m = uuid.uuid4().hex[:8]
        stored = chat.store_messages([_send(a, f"{m}-{i}", to=b) for i in range(4)])
        conv_id = stored[0].conversation.id
        moved = chat.move_cursors([(conv_id, b, 1, "delivered"), (conv_id, b, 3, "delivered"),
                                   (conv_id, b, 2, "read"), (conv_id, b, 1, "read"),
                                   (conv_id, outsider, 4, "read"), (2 ** 62, b, 1, "read")])
        assert moved == {(conv_id, b): (3, 2), (conv_id, outsider): (None, None), (2 ** 62, b): (None, None)}
        member = ConversationMember.get(conversation_id=conv_id, user_id=b)
        assert (member.delivered_seq, member.read_seq) == (3, 2)
        assert chat.move_cursors([(conv_id, b, 4, "read")]) == {(conv_id, b): (4, 4)}
        assert not ConversationMember.select().where((ConversationMember.conversation_id == conv_id)
                                                     & (ConversationMember.user_id == outsider)).exists()


def test_a_refused_first_message_creates_no_conversation(cfg):
    with db.connection_context():
        a, b, c = _users(cfg, 3)
        m = uuid.uuid4().hex[:8]
        chat.store_messages([_send(a, f"{m}-1", to=b)])
        (refused,) = chat.store_messages([_send(c, f"{m}-1", to=b)])   # msg_id of another message
        assert isinstance(refused, AppError) and refused.code == Code.CONFLICT
        assert chat.conversations(c) == []


def test_a_redelivered_first_message_that_raced_its_store_gets_its_ack_again(cfg, monkeypatch):
    # Two send workers hold the same first message (a redelivery after a rebalance): the second
    # looked for the pair's conversation before the first created it and stored the message.
    with db.connection_context():
        a, b = _users(cfg, 2)
        msg_id = uuid.uuid4().hex
        (first,) = chat.store_messages([_send(a, msg_id, to=b)])
        monkeypatch.setattr(chat.store, "_private_conversations", lambda keys: {})
        (again,) = chat.store_messages([_send(a, msg_id, to=b)])
        assert not isinstance(again, AppError), again
        assert (again.created, again.message.seq, again.conversation.id) == (False, 1, first.conversation.id)
        (other,) = chat.store_messages([_send(b, msg_id, to=a)])   # the pair's other member: not theirs
        assert isinstance(other, AppError) and other.code == Code.CONFLICT


def test_an_owner_who_leaves_hands_the_group_on(cfg):
    with db.connection_context():
        owner, first, second = _users(cfg, 3)
        group, _ = chat.create_group(owner, "heirs", [first, second])
        left = chat.remove_member(owner, group.id, owner)
        assert json.loads(left.message.content)["new_owner_id"] == first
        assert Conversation.get_by_id(group.id).owner_id == first
        chat.add_members(first, group.id, [owner])                    # the new owner can manage it
