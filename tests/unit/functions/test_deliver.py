"""deliver by name: a deliver event in, one push per gateway holding a recipient out (and a read
cursor moved for an ack)."""
import dataclasses
import json

import pytest

from common import chat, presence
from common.config import NotifyConfig
from common.errors import Code
from common.models import ConversationMember
from functions import deliver
from functions.api import Emit, Invalid, Publish
from tests.unit.functions.conftest import NOW, make_event, make_user


def make_deliver_event(**value):
    return make_event("t.deliver", value)


@pytest.fixture
def chat_of_two(database):
    """alice and bob with one stored message from alice; alice on gateway g1 (conns a1, a2),
    bob on g2 (conn b1)."""
    alice, bob = make_user("alice"), make_user("bob")
    [stored] = chat.store_messages([(alice, chat.validate_send({"msg_id": "m-1", "to_user_id": bob,
                                                                "content": "hi"}))])
    return alice, bob, chat.message_view(stored.message, stored.conversation)


def online(ctx, user_id, conn_id, gateway_id):
    presence.connect(ctx.redis, ctx.config, user_id, conn_id, gateway_id, NOW)


def frame(type_, payload):
    return json.dumps({"type": type_, "payload": payload}, separators=(",", ":"), ensure_ascii=False)


def test_a_message_is_pushed_to_every_connection_of_both_members_but_the_one_it_came_from(ctx, chat_of_two):
    alice, bob, message = chat_of_two
    online(ctx, alice, "a1", "g1"), online(ctx, alice, "a2", "g1"), online(ctx, bob, "b1", "g2")
    outputs = deliver.handle(make_deliver_event(kind="message", message=message, origin_conn="a1"), ctx)
    text = frame("message", message)
    assert sorted(outputs, key=lambda p: p.channel) == [
        Publish("t:gw:g1", {"type": "push", "conns": ["a2"], "text": text}),
        Publish("t:gw:g2", {"type": "push", "conns": ["b1"], "text": text})]


def test_nobody_online_means_no_publish(ctx, chat_of_two):
    _, _, message = chat_of_two
    assert deliver.handle(make_deliver_event(kind="message", message=message), ctx) == []


def test_a_read_ack_moves_the_cursor_once_and_tells_the_other_member(ctx, chat_of_two):
    alice, bob, message = chat_of_two
    online(ctx, alice, "a1", "g1")
    ack = make_deliver_event(kind="ack", conversation_id=message["conversation_id"], user_id=bob, seq=1,
                             ack_type="read")
    receipt = {"conversation_id": message["conversation_id"], "user_id": bob, "seq": 1, "ack_type": "read"}
    assert deliver.handle(ack, ctx) == [Publish("t:gw:g1", {"type": "push", "conns": ["a1"],
                                                            "text": frame("receipt", receipt)})]
    member = ConversationMember.get(conversation_id=message["conversation_id"], user_id=bob)
    assert member.read_seq == 1
    assert deliver.handle(ack, ctx) == []  # already there: the cursor never moves twice


def test_a_batch_shares_its_lookups_and_leaves_an_invalid_event_to_handle(ctx, chat_of_two):
    alice, bob, message = chat_of_two
    online(ctx, bob, "b1", "g2")
    events = [make_deliver_event(kind="message", message=message),
              make_deliver_event(kind="nonsense"),
              make_deliver_event(kind="typing", conversation_id=message["conversation_id"], user_id=alice)]
    results = deliver.handle_batch(events, ctx)
    assert results[1] is None
    assert [p.value["text"] for p in results[0] + results[2]] == [
        frame("message", message),
        frame("typing", {"conversation_id": message["conversation_id"], "user_id": alice})]
    with pytest.raises(Invalid) as raised:
        deliver.handle(events[1], ctx)
    assert raised.value.code == Code.UNMARSHAL_FAILED


def test_a_message_for_an_offline_recipient_goes_to_notify_and_none_for_an_online_one(ctx, chat_of_two):
    alice, bob, message = chat_of_two
    event = make_deliver_event(kind="message", message=message, origin_conn="a1")
    assert not [o for o in deliver.handle(event, ctx) if not isinstance(o, Publish)]  # notifications off
    ctx.config = dataclasses.replace(ctx.config, notify=NotifyConfig(webhook_url="http://127.0.0.1:9/hook"))
    [notify] = [o for o in deliver.handle(event, ctx) if isinstance(o, Emit)]  # bob (and alice) offline
    assert (notify.topic, notify.key) == ("t.notify", str(message["conversation_id"]))
    assert notify.value == {"msg_id": "m-1", "conversation_id": message["conversation_id"], "seq": 1,
                            "from_user_id": alice, "recipients": [bob]}  # never its sender; no preview
    online(ctx, bob, "b1", "g2")
    assert not [o for o in deliver.handle(event, ctx) if isinstance(o, Emit)]


def test_a_notification_preview_only_when_the_deployment_enables_it(ctx, chat_of_two):
    alice, bob, message = chat_of_two
    ctx.config = dataclasses.replace(ctx.config, notify=NotifyConfig(webhook_url="http://x.test/h", previews=True))
    [notify] = deliver.handle(make_deliver_event(kind="message", message=message), ctx)
    assert notify.value["preview"] == "hi"
