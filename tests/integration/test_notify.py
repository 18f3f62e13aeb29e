"""Push notifications end to end (issue 14): the send, deliver, retry and notify functions as
processes on real Kafka, a gateway, and a real HTTP receiver on loopback as the webhook. A message
for an offline recipient is posted to the webhook with its notification id; none for an online
one; and when the receiver fails (500) and then recovers, the notification arrives through the
retry function: nothing lost, accepted once."""
import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_messaging import Client, make_users, mid
from tests.webhook import receiver  # noqa: F401 (a fixture)


@pytest.fixture
def notifying(procs, receiver):
    env = {"NOTIFY_WEBHOOK_URL": receiver.url, "RETRY_INITIAL_BACKOFF_MS": "200"}
    for name in ("send", "deliver", "retry", "notify"):
        procs.function(name, **env)
    return procs.gateway(**env)


def test_an_offline_recipient_is_notified_an_online_one_is_not_and_a_failing_webhook_is_retried(
        cfg, notifying, receiver):
    alice, bob, carol = make_users(cfg, 3)
    bob_online = Client(notifying, bob)
    try:
        receiver.statuses[:] = [500, 500]  # the push gateway fails twice, then takes it
        to_carol = mid()
        status, body = notifying.call("POST", "/api/v1/messages", {"msg_id": to_carol, "to_user_id": carol.id,
                                                                   "content": "are you there?"}, alice.token)
        assert status == 200, body
        wait_for(lambda: receiver.accepted(), timeout=30, what="the notification to be taken")
        [notification] = receiver.accepted()
        assert (notification["id"], notification["user_id"], notification["from_user_id"]) == \
               (f"{to_carol}:{carol.id}", carol.id, alice.id)
        assert "preview" not in notification  # previews are off by default: no message text leaves
        assert [r["status"] for r in receiver.requests] == [500, 500, 200]
        assert {r["headers"]["Idempotency-Key"] for r in receiver.requests} == {to_carol}

        to_bob = mid()
        status, _ = notifying.call("POST", "/api/v1/messages", {"msg_id": to_bob, "to_user_id": bob.id,
                                                                "content": "hi bob"}, alice.token)
        assert status == 200
        bob_online.expect("message", where=lambda m: m["msg_id"] == to_bob)
        # bob got his push, so deliver had handled his message (a notify event would have been emitted
        # with it); a later one for carol arriving leaves his time to have been posted too
        status, _ = notifying.call("POST", "/api/v1/messages", {"msg_id": mid(), "to_user_id": carol.id,
                                                                "content": "again"}, alice.token)
        assert status == 200
        wait_for(lambda: len(receiver.accepted()) == 2, timeout=30, what="the second notification")
        assert bob.id not in {n["user_id"] for n in receiver.accepted()}
    finally:
        bob_online.close()
