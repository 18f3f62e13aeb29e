"""notify — push notifications for recipients with no live connection, posted to a webhook.

Input: topic ``<ns>.notify``, key = conversation id, from deliver (only when ``notify.webhook_url``
is set): ``{msg_id, conversation_id, seq, from_user_id, group_id?, recipients: [user_id, ...],
preview?}``, one per message with offline recipients.
Output: one ``POST`` to ``notify.webhook_url`` per event, ``Content-Type: application/json``,
``Idempotency-Key: <msg_id>``, body ``{notifications: [{id, user_id, conversation_id, group_id?,
seq, msg_id, from_user_id, preview?}]}`` — the shape a push gateway for FCM/APNs or a bot takes.
Recipients who muted the conversation get none (an event left with no one posts nothing).
Idempotency: at least once. Each notification's ``id`` (``<msg_id>:<user_id>``) is the key the
receiver dedupes on: a retried post carries the same ids.
Errors: the webhook unreachable, timing out, answering 5xx or 429 → retried with backoff
(50004), then dead-lettered (50006); any other 4xx → dead-lettered at once (50004: the webhook
refuses it; fix the webhook or its URL, then replay). A bad event → 50002.
"""
import json
import logging
import urllib.error
import urllib.request

from common.errors import Code
from common.models import ConversationMember as Member
from functions.api import Invalid, Spec, Transient

SPEC = Spec(max_records=50)  # each event is an HTTP round trip: a poll is at most this many
logger = logging.getLogger(__name__)


def _check(e: dict) -> list[int]:
    recipients = e.get("recipients")
    ints = [e.get(k) for k in ("conversation_id", "seq", "from_user_id")]
    if not isinstance(e.get("msg_id"), str) or not isinstance(recipients, list) or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in [*ints, *recipients]):
        raise Invalid(Code.UNMARSHAL_FAILED, "notify event needs msg_id, conversation_id, seq, from_user_id, "
                                             "recipients")
    return recipients


def notifications(e: dict, recipients: list[int]) -> list[dict]:
    common = {k: e[k] for k in ("conversation_id", "group_id", "seq", "msg_id", "from_user_id", "preview")
              if e.get(k) is not None}
    return [{"id": f"{e['msg_id']}:{user_id}", "user_id": user_id, **common} for user_id in recipients]


def handle(event, ctx):
    e = event.value
    recipients = _check(e)
    muted = {u for (u,) in Member.select(Member.user_id).where(
        (Member.conversation_id == e["conversation_id"]) & Member.user_id.in_(recipients)
        & Member.notifications_muted).tuples()} if recipients else set()
    wanted = [u for u in recipients if u not in muted]
    if not wanted or not ctx.config.notify.webhook_url:
        return []
    post(ctx.config.notify, e["msg_id"], {"notifications": notifications(e, wanted)})
    return []


def post(cfg, key: str, body: dict) -> None:
    """POST ``body`` to the webhook; Transient (retry) or Invalid (DLQ) when it is not taken."""
    request = urllib.request.Request(cfg.webhook_url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_ms / 1000) as response:
            response.read()
    except urllib.error.HTTPError as err:
        if err.code >= 500 or err.code == 429:
            raise Transient(Code.DELIVERY_FAILED, f"webhook answered {err.code}") from None
        raise Invalid(Code.DELIVERY_FAILED, f"webhook refused the notification: {err.code}") from None
    except (urllib.error.URLError, OSError) as err:  # refused, unreachable, timed out
        raise Transient(Code.DELIVERY_FAILED, f"webhook unreachable: {type(getattr(err, 'reason', err)).__name__}") \
            from None
