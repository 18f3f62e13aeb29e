"""send by name: a send event in, the stored message and its ack and deliver event out."""
import json
import logging
import threading

import pytest

from common import bus, chat, protocol, rpc
from common.errors import Code
from common.models import Conversation, ConversationMember as Member, Message
from functions import send
from functions.api import Emit, Invalid, Publish
from functions.runtime import Worker
from tests.unit.functions.conftest import make_event, make_user
from tests.unit.test_runtime import TP, FakeConsumer, FakeProducer, FakeRedis, FakeTime, Record


def make_send_event(**overrides):
    value = {"msg_id": "m-1", "sender_id": 1, "to_user_id": 2, "content": "hello",
             "content_type": "text", "reply_to": "t:gw:g1", "conn_id": "c1", **overrides}
    return make_event("t.send", {k: v for k, v in value.items() if v is not None})


@pytest.fixture
def users(database):
    return make_user("alice"), make_user("bob")


def test_a_message_is_stored_with_seq_1_then_acknowledged_and_handed_to_delivery(ctx, users):
    alice, bob = users
    outputs = send.handle(make_send_event(sender_id=alice, to_user_id=bob), ctx)
    [row] = Message.select()
    conv = Conversation.get_by_id(row.conversation_id)
    assert (row.msg_id, row.seq, row.sender_id, row.content, conv.last_seq) == ("m-1", 1, alice, "hello", 1)
    message = {"msg_id": "m-1", "conversation_id": conv.id, "seq": 1, "from_user_id": alice,
               "content": "hello", "content_type": "text", "server_ts": row.created_at, "to_user_id": bob}
    assert outputs == [
        Emit("t.deliver", {"kind": "message", "message": message, "origin_conn": "c1"}, key=str(conv.id)),
        Publish("t:gw:g1", protocol.push(["c1"], protocol.frame("message_ack", {
            "msg_id": "m-1", "conversation_id": conv.id, "seq": 1, "server_ts": row.created_at}))),
    ]


def pushed(publish: Publish) -> tuple[list[str], dict]:
    """The connections a push is for, and its frame decoded."""
    assert publish.value["type"] == "push"
    return publish.value["conns"], json.loads(publish.value["text"])


def test_a_resent_message_is_stored_once_and_gets_the_same_outputs_again(ctx, users):
    alice, bob = users
    first = send.handle(make_send_event(sender_id=alice, to_user_id=bob), ctx)
    again = send.handle(make_send_event(sender_id=alice, to_user_id=bob), ctx)
    assert again == first
    assert Message.select().count() == 1


def test_a_batch_numbers_a_conversation_in_order_and_leaves_an_invalid_event_to_handle(ctx, users):
    alice, bob = users
    events = [make_send_event(msg_id="m-1", sender_id=alice, to_user_id=bob),
              make_send_event(msg_id="m-x", sender_id=None),  # no sender: can never succeed
              make_send_event(msg_id="m-2", sender_id=bob, to_user_id=alice, conn_id=None, request_id="r-2")]
    results = send.handle_batch(events, ctx)
    assert results[1] is None
    conns, ack = pushed(results[0][1])  # to a socket: a message_ack frame
    assert (conns, ack["type"], ack["payload"]["seq"]) == (["c1"], "message_ack", 1)
    answer = results[2][1].value  # to a waiting HTTP request: an rpc reply
    assert (answer["type"], answer["request_id"], rpc.result(answer)["seq"]) == ("reply", "r-2", 2)
    assert [(m.msg_id, m.seq) for m in Message.select().order_by(Message.seq)] == [("m-1", 1), ("m-2", 2)]
    with pytest.raises(Invalid) as raised:
        send.handle(events[1], ctx)
    assert raised.value.code == Code.UNMARSHAL_FAILED


@pytest.mark.parametrize("overrides, code, field", [
    ({"content": ""}, Code.INVALID_PARAMS, "content"),
    ({"to_user_id": 999}, Code.USER_NOT_FOUND, None),
    ({"to_user_id": None, "group_id": 77}, Code.GROUP_NOT_FOUND, None),
])
def test_a_send_that_cannot_be_stored_is_answered_with_its_code_and_stores_nothing(ctx, users, overrides,
                                                                                   code, field):
    alice, _ = users
    [reply] = send.handle(make_send_event(sender_id=alice, **overrides), ctx)
    conns, frame = pushed(reply)
    assert (reply.channel, conns, frame["type"]) == ("t:gw:g1", ["c1"], "error")
    error = frame["payload"]
    assert (error["code"], error["ref"], error.get("field")) == (int(code), "m-1", field)
    assert Message.select().count() == 0


def test_a_send_given_up_on_tells_its_sender(ctx, users):
    alice, bob = users
    outputs = send.on_dead_letter(make_send_event(sender_id=alice, to_user_id=bob), Code.RETRY_EXHAUSTED, ctx)
    assert outputs == [Publish("t:gw:g1", protocol.push(["c1"], protocol.frame("error", {
        "code": 50006, "message": Code.RETRY_EXHAUSTED.message, "ref": "m-1"})))]
    assert Message.select().count() == 0


def test_system_messages_and_sends_interleaved_in_a_group_share_one_gap_free_seq(ctx, users):
    """The gateway's membership events (chat.create_group / add_members / remove_member) and the
    send function's batches number one conversation through the one store: 1, 2, 3, ... in the
    order they happened, whichever side stored them (PROTOCOL: membership changes are in the seq
    stream; POST /groups answers last_seq 1)."""
    alice, bob = users
    carol, dave = make_user("carol"), make_user("dave")
    group, created = chat.create_group(alice, "four", [bob, carol])
    seqs = [("group_created", created.message.seq)]
    assert chat.group_view(group)["last_seq"] == 1

    def sent(*senders):
        events = [make_send_event(msg_id=f"m-{n}-{s}", sender_id=s, to_user_id=None, group_id=group.id)
                  for n, s in enumerate(senders, start=len(seqs))]
        return [("send", pushed(outputs[1])[1]["payload"]["seq"]) for outputs in send.handle_batch(events, ctx)]

    seqs += sent(alice)
    seqs.append(("members_added", chat.add_members(alice, group.id, [dave]).message.seq))
    seqs += sent(bob, dave)
    seqs.append(("member_left", chat.remove_member(carol, group.id, carol).message.seq))
    seqs += [("send", pushed(send.handle(make_send_event(msg_id="m-last", sender_id=alice, to_user_id=None,
                                                  group_id=group.id), ctx)[1])[1]["payload"]["seq"])]
    assert seqs == [("group_created", 1), ("send", 2), ("members_added", 3), ("send", 4), ("send", 5),
                    ("member_left", 6), ("send", 7)]
    rows = list(Message.select().where(Message.conversation_id == group.id).order_by(Message.seq))
    assert [(m.seq, m.content_type) for m in rows] == [(1, "system"), (2, "text"), (3, "system"), (4, "text"),
                                                       (5, "text"), (6, "system"), (7, "text")]
    assert Conversation.get_by_id(group.id).last_seq == 7
    # what dave sent at 5 is read for him: the same store moved his cursor
    assert Member.get((Member.conversation_id == group.id) & (Member.user_id == dave)).read_seq == 5


def test_a_send_whose_retries_are_exhausted_is_dead_lettered_and_its_sender_told(file_database, cfg, caplog):
    """Through the runtime: on the last allowed attempt the store fails while the database answers
    (the runtime reconnects to check, hence a database file here, not memory): one warning line,
    the event in the DLQ with 50006, an error reply to its sender."""
    alice, bob = make_user("alice"), make_user("bob")
    file_database.execute_sql('DROP TABLE "message"')  # every store fails from now on
    attempt = cfg.kafka.retry_max_attempts
    value = make_send_event(sender_id=alice, to_user_id=bob).raw
    record = Record("t.send", 0, 7, b"p1:2", value, [(bus.H_ATTEMPT, str(attempt).encode())], 0)
    stop = threading.Event()
    stop.set()
    time = FakeTime()
    worker = Worker("send", send, cfg, FakeConsumer([{TP: [record]}]), FakeProducer(), FakeRedis(), stop,
                    clock=time.now_ms, monotonic=time.monotonic)
    with caplog.at_level(logging.WARNING, logger="functions.runtime"):
        assert worker.run_once() == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"function send event t.send/0@7 attempt={attempt} code=20001: OperationalError: no such table: message"]
    [(topic, dead, key, headers)] = worker.producer.sent
    assert (topic, dead, key, headers[bus.H_ERROR_CODE]) == ("t.dlq", value, b"p1:2", b"50006")
    assert headers[bus.H_ERROR] == b"20001 OperationalError: no such table: message"
    [(channel, published)] = worker.redis.published
    assert channel == "t:gw:g1" and bus.decode(published) == protocol.push(["c1"], protocol.frame("error", {
        "code": 50006, "message": Code.RETRY_EXHAUSTED.message, "ref": "m-1"}))


def test_an_edit_through_the_function_is_acknowledged_and_handed_to_delivery_as_an_event(ctx, users):
    """On the local run's SQLite: the edit gets its own seq and ack, and deliver gets the event (the
    target's new text and name) for the other devices; a recall by the other member is refused."""
    alice, bob = users
    send.handle(make_send_event(msg_id="m-1", sender_id=alice, to_user_id=bob), ctx)
    outputs = send.handle(make_send_event(msg_id="e-1", sender_id=alice, to_user_id=bob, content="hello!",
                                          content_type="edit", target_msg_id="m-1"), ctx)
    deliver, ack = outputs
    event = deliver.value["message"]
    assert (event["seq"], event["content_type"], event["target_msg_id"], event["content"]) == (2, "edit", "m-1",
                                                                                               "hello!")
    assert pushed(ack)[1]["payload"]["seq"] == 2
    assert Message.get(Message.msg_id == "m-1").content == "hello!"
    [refusal] = send.handle(make_send_event(msg_id="r-1", sender_id=bob, to_user_id=alice, content="",
                                            content_type="recall", target_msg_id="m-1"), ctx)
    assert pushed(refusal)[1]["payload"]["code"] == Code.NOT_MESSAGE_SENDER
    assert Message.get(Message.msg_id == "m-1").state == ""


def test_a_reaction_through_the_function_carries_its_emoji_as_content(ctx, users):
    alice, bob = users
    send.handle(make_send_event(msg_id="m-1", sender_id=alice, to_user_id=bob), ctx)
    deliver, ack = send.handle(make_send_event(msg_id="r-1", sender_id=bob, to_user_id=alice, content="🎉",
                                               content_type="react", target_msg_id="m-1"), ctx)
    assert (deliver.value["message"]["content_type"], deliver.value["message"]["content"]) == ("react", "🎉")
    assert pushed(ack)[1]["type"] == "message_ack"
