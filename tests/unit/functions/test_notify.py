"""notify by name, against a real HTTP receiver on loopback: one POST per event with an id per
notification, none for a recipient who muted the conversation, and the webhook's failures routed
as the runtime expects (5xx, 429, unreachable: retry; another 4xx: DLQ)."""
import dataclasses

import pytest

from common import chat
from common.config import NotifyConfig
from common.errors import Code
from common.models import ConversationMember as Member
from functions import notify
from functions.api import Invalid, Transient
from tests.unit.functions.conftest import make_event, make_user
from tests.webhook import Receiver, receiver  # noqa: F401 (a fixture)


@pytest.fixture
def group(database):
    owner, a, b = make_user("owner"), make_user("anna"), make_user("ben")
    conv, _ = chat.create_group(owner, "g", [a, b])
    return conv.id, owner, a, b


def with_webhook(ctx, url, **options):
    ctx.config = dataclasses.replace(ctx.config, notify=NotifyConfig(webhook_url=url, **options))
    return ctx


def event(conversation_id, sender, recipients, **extra):
    return make_event("t.notify", {"msg_id": "m-7", "conversation_id": conversation_id, "seq": 7,
                                   "group_id": conversation_id, "from_user_id": sender,
                                   "recipients": recipients, **extra})


def test_one_post_per_event_with_an_id_per_notification(ctx, receiver, group):
    conv, owner, a, b = group
    assert notify.handle(event(conv, owner, [a, b]), with_webhook(ctx, receiver.url)) == []
    [request] = receiver.requests
    assert request["headers"]["Idempotency-Key"] == "m-7"
    assert request["body"]["notifications"] == [
        {"id": f"m-7:{u}", "user_id": u, "conversation_id": conv, "group_id": conv, "seq": 7, "msg_id": "m-7",
         "from_user_id": owner} for u in (a, b)]


def test_a_recipient_who_muted_the_conversation_is_not_notified(ctx, receiver, group):
    conv, owner, a, b = group
    Member.update(notifications_muted=True).where((Member.conversation_id == conv) & (Member.user_id == a)).execute()
    notify.handle(event(conv, owner, [a, b]), with_webhook(ctx, receiver.url))
    assert [n["user_id"] for n in receiver.accepted()] == [b]
    Member.update(notifications_muted=True).where(Member.conversation_id == conv).execute()
    notify.handle(event(conv, owner, [a, b]), ctx)
    assert len(receiver.requests) == 1  # everyone muted: nothing posted


@pytest.mark.parametrize("status, failure", [(500, Transient), (503, Transient), (429, Transient),
                                             (400, Invalid), (404, Invalid)])
def test_the_webhooks_refusals_are_retried_or_dead_lettered(ctx, group, status, failure):
    conv, owner, a, _ = group
    receiver = Receiver([status])
    try:
        with pytest.raises(failure) as raised:
            notify.handle(event(conv, owner, [a]), with_webhook(ctx, receiver.url))
        assert raised.value.code == Code.DELIVERY_FAILED
    finally:
        receiver.close()


def test_an_unreachable_webhook_is_retried(ctx, group):
    conv, owner, a, _ = group
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there now
    with pytest.raises(Transient) as raised:
        notify.handle(event(conv, owner, [a]), with_webhook(ctx, url, timeout_ms=500))
    assert raised.value.code == Code.DELIVERY_FAILED


def test_a_bad_event_is_invalid(ctx, group):
    with pytest.raises(Invalid) as raised:
        notify.handle(make_event("t.notify", {"msg_id": "m", "recipients": ["x"]}), ctx)
    assert raised.value.code == Code.UNMARSHAL_FAILED
