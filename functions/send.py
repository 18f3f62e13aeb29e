"""send — authorize, sequence and store a message, then acknowledge it and hand it to delivery.

Input: topic ``<ns>.send``, key = the conversation's route key (``p<low>:<high>`` or ``g<group>``,
so one partition orders a conversation). Value: ``{msg_id, sender_id, to_user_id | group_id,
content, content_type, reply_to_msg_id?, mentions?, target_msg_id?, reply_to, conn_id? |
request_id?, session?}`` from a gateway: a message, or a change to one (``content_type`` edit, recall,
delete, react, unreact with ``target_msg_id``; common/chat/changes.py), stored the same way.
Outputs, only after the message is stored with its seq:
  * ``<ns>.deliver`` ``{kind: "message", message, origin_conn}``, key = conversation id;
  * on the sender's gateway channel ``reply_to``, the ack ``{msg_id, conversation_id, seq,
    server_ts}``: to a socket (``conn_id``) as a ``message_ack`` frame (common/protocol.py
    ``push``), to a waiting HTTP request (``request_id``) as common/rpc.py's reply.
A poll's sends are stored together (``handle_batch``: one transaction, a fixed number of
statements), with the same outputs as one by one. An HTTP send carries its token's ``session``
(``{sid, ver}``): the gateway checked the token's signature and expiry, and the batch's sessions are
checked here, with one Redis read for the whole batch (common/sessions.py ``revoked_among``); a
send whose token was revoked is refused with 30005 and not stored. (A socket's token is checked when
it connects, and the socket is closed when it is revoked.)
Idempotency: ``msg_id``. A resent or redelivered message is stored once and re-emits the same ack
and deliver event (same seq), so a crash between the commit and the produce heals itself.
Errors are answered the same way (an ``error`` frame whose ``ref`` is the msg_id, or an rpc error):
10002 bad field, 10006 msg_id reused, 30005 token revoked (an HTTP send's), 30001 unknown recipient, 40002 unknown group,
40003 not a member, 40004-40010 (changes, replies, muted, dissolved, blocked). A database or Redis outage pauses the function until it ends (the runtime's
back-pressure); a send that keeps failing while they answer is retried, then dead-lettered, and
its sender gets an error with that code (50006) and the msg_id (``on_dead_letter``).
"""
from common import chat, protocol, rpc, sessions
from common.errors import AppError, Code
from functions.api import Emit, Invalid, Publish, Spec

SPEC = Spec(max_records=500)


def reply(e: dict, result) -> Publish:
    """The sender's answer: the ack's data, or the AppError, to its socket or its HTTP request."""
    failed = isinstance(result, AppError)
    if e.get("request_id"):
        body = rpc.error(e["request_id"], result) if failed else rpc.ok(e["request_id"], result)
    else:
        text = protocol.error(result, e.get("msg_id")) if failed else protocol.frame("message_ack", result)
        body = protocol.push([e.get("conn_id")], text)
    return Publish(e["reply_to"], body)


def _check(e: dict) -> None:
    if not isinstance(e.get("sender_id"), int) or not isinstance(e.get("reply_to"), str):
        raise Invalid(Code.UNMARSHAL_FAILED, "send event without sender_id or reply_to")


def _outputs(e: dict, result, ctx) -> list:
    if isinstance(result, AppError):
        return [reply(e, result)]
    deliver = {"kind": "message", "message": result.view(), "origin_conn": e.get("conn_id")}
    return [Emit(ctx.topic("deliver"), deliver, key=str(result.conversation.id)),
            reply(e, chat.ack_view(result.message))]


def handle(event, ctx):
    _check(event.value)  # Invalid: the runtime dead-letters it
    return handle_batch([event], ctx)[0]


def handle_batch(events, ctx):
    """A poll's sends stored in one transaction (see chat.store_messages); same outputs as handle."""
    results: list = [None] * len(events)
    sends, positions = [], []
    refusals = _revoked_sessions(events, ctx)
    for i, event in enumerate(events):
        e = event.value
        try:
            _check(e)
            if refusals.get(i) is not None:
                raise refusals[i]
            sends.append((e["sender_id"], chat.validate_event(e)))
            positions.append(i)
        except Invalid:
            continue  # left to handle(), which dead-letters it
        except AppError as exc:
            results[i] = _outputs(e, exc, ctx)
    for i, result in zip(positions, chat.store_messages(sends, ctx.config.chat) if sends else ()):
        results[i] = _outputs(events[i].value, result, ctx)
    return results


def _revoked_sessions(events, ctx) -> dict:
    """{position: its 30005} of the sends whose token was revoked, among those that name their
    token's session (HTTP sends), checked with one Redis read."""
    named = [(i, e.value) for i, e in enumerate(events)
             if isinstance(e.value, dict) and isinstance(e.value.get("session"), dict)
             and isinstance(e.value.get("sender_id"), int)]
    checked = []
    for i, e in named:
        sid, ver = e["session"].get("sid"), e["session"].get("ver", 0)
        if (sid is None or isinstance(sid, str)) and isinstance(ver, int):
            checked.append((i, {"sub": str(e["sender_id"]), "sid": sid, "ver": ver}))
    if not checked:
        return {}
    refusals = sessions.revoked_among(ctx.redis, ctx.config, [claims for _, claims in checked])
    return {i: refusal for (i, _), refusal in zip(checked, refusals)}


def on_dead_letter(event, code: Code, ctx):
    """A send given up on: its sender learns the message was not stored, and may send it again."""
    e = event.value
    if not isinstance(e.get("reply_to"), str) or not isinstance(e.get("msg_id"), str):
        return []
    return _outputs(e, AppError(code), ctx)
