"""The WebSocket wire protocol in one place (docs/PROTOCOL.md is its contract): the frame types each
side sends, how a server frame is written, the close codes, and the one message a function
publishes to reach sockets on a gateway's channel.

Server frames are compact JSON that starts with its type, ``{"type":"…","payload":{…}}``: the
gateway counts frames by type without decoding them (gateway/metrics.py). Whoever builds a frame —
the gateway, deliver, send — builds it here, so a frame type that is not in the protocol cannot be
written.

A function reaches sockets with :func:`push` on the gateway's channel; it answers a waiting HTTP
request with common/rpc.py's reply. A gateway that revoked a user's tokens tells the others with
:func:`revoke`. Those are the only kinds of message on the channel.
"""
from __future__ import annotations

import json

from common.errors import AppError

CLIENT_FRAMES = ("auth", "ping", "send", "ack", "typing", "sync", "edit", "recall", "delete", "react", "unreact")
SERVER_FRAMES = ("auth_ok", "auth_fail", "pong", "message_ack", "message", "receipt", "sync", "typing",
                 "presence", "error", "hidden")

# Close codes (RFC 6455 and the 4xxx range applications own).
CLOSE_AUTH_FAILED = 4001   # the token was refused (auth_fail says why)
CLOSE_AUTH_TIMEOUT = 4002  # no auth frame in time
# The socket's token was revoked (logout, logout everywhere, password change, a reused refresh
# token): log in (or refresh) again before reconnecting; a reconnect with the same token is refused.
CLOSE_TOKEN_REVOKED = 4003
REVOKED_REASON = "token revoked; log in again"
# "Policy Violation": the client kept sending far past its frame budget (ratelimit.ws_connection)
# after being told 10007; reconnect later and slow down. (Also a missed pong.)
CLOSE_FLOODING = 1008
FLOODING_REASON = "too many frames past the rate limit; slow down"
# "Unexpected condition": a server error (logged); reconnect as for 1013.
CLOSE_SERVER_ERROR = 1011
# "Service Restart": this gateway is shutting down (SIGTERM). Reconnect, maybe to another gateway,
# sync from the last seq, resend every unacknowledged message with the same msg_id.
CLOSE_SERVICE_RESTART = 1012
RESTART_REASON = "gateway restarting; reconnect, sync and resend unacknowledged messages"
# "Try Again Later": the gateway cannot answer right now (it lost its Redis reply channel, or a
# dependency is down); reconnect with backoff and resend every unacknowledged message (same msg_id).
CLOSE_TRY_AGAIN = 1013


def frame(kind: str, payload: dict) -> str:
    """The text of one server frame."""
    if kind not in SERVER_FRAMES:
        raise ValueError(f"{kind!r} is not a server frame type (common/protocol.py SERVER_FRAMES)")
    return json.dumps({"type": kind, "payload": payload}, separators=(",", ":"), ensure_ascii=False)


def error(exc: AppError, ref, conversation_id: int | None = None) -> str:
    """An ``error`` frame ``{code, message, field?, ref, conversation_id?}``: ``ref`` is the
    offending ``msg_id``, or the frame type; ``field`` names the offending input of a 10002;
    ``conversation_id`` the conversation of a refused ``sync``."""
    payload = {**exc.to_dict(), "ref": ref}
    if conversation_id is not None:
        payload["conversation_id"] = conversation_id
    return frame("error", payload)


def auth_fail(exc: AppError) -> str:
    return frame("auth_fail", exc.to_dict())


def revoke(user_id: int) -> dict:
    """The channel message that makes a gateway re-check the tokens of a user's sockets and close
    those revoked (common/sessions.py) with :data:`CLOSE_TOKEN_REVOKED`."""
    return {"type": "revoke", "user_id": user_id}


def push(conns: list[str], text: str) -> dict:
    """The channel message that writes one frame's ``text`` to these connections of a gateway."""
    return {"type": "push", "conns": list(conns), "text": text}
