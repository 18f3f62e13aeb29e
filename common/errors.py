"""The one error-code table of PingMe.

Every surface uses these numbers: the HTTP envelope, WebSocket ``error`` frames, dead-letter records
and log lines. Ranges: 0 success, 1xxxx general, 2xxxx infrastructure, 3xxxx accounts,
4xxxx conversations, 5xxxx Kafka pipeline. Extend a range; never reuse a number.
"""
from __future__ import annotations

from enum import IntEnum, unique


@unique  # a reused number would otherwise become a silent alias of the first
class Code(IntEnum):
    """An error code with its default message and HTTP status."""

    def __new__(cls, value: int, message: str, http_status: int):
        member = int.__new__(cls, value)
        member._value_ = value
        member.message = message
        member.http_status = http_status
        return member

    SUCCESS = (0, "success", 200)

    SERVER_ERROR = (10001, "server error", 500)
    INVALID_PARAMS = (10002, "invalid parameters", 400)
    UNAUTHORIZED = (10003, "unauthorized", 401)
    FORBIDDEN = (10004, "forbidden", 403)
    NOT_FOUND = (10005, "not found", 404)
    CONFLICT = (10006, "conflict", 409)
    TOO_MANY_REQUESTS = (10007, "too many requests", 429)
    TIMEOUT = (10008, "the request timed out; try again", 504)
    METHOD_NOT_ALLOWED = (10009, "method not allowed", 405)
    UPGRADE_REQUIRED = (10010, "this path is a WebSocket: send an upgrade request", 426)
    PAYLOAD_TOO_LARGE = (10011, "the request body is too large", 413)
    REQUEST_TIMEOUT = (10012, "the request body did not arrive in time", 408)

    DATABASE_ERROR = (20001, "database error", 503)
    CACHE_ERROR = (20002, "cache error", 503)
    MESSAGE_PROCESSING_ERROR = (20003, "message processing error", 500)
    WEBSOCKET_ERROR = (20004, "websocket error", 500)

    USER_NOT_FOUND = (30001, "user not found", 404)
    USER_EXISTS = (30002, "username already taken", 409)
    INVALID_PASSWORD = (30003, "invalid username or password", 401)
    TOKEN_EXPIRED = (30004, "token expired", 401)
    INVALID_TOKEN = (30005, "invalid token", 401)

    CONVERSATION_NOT_FOUND = (40001, "conversation not found", 404)
    GROUP_NOT_FOUND = (40002, "group not found", 404)
    NOT_GROUP_MEMBER = (40003, "not a member of this conversation", 403)
    MESSAGE_NOT_FOUND = (40004, "no such message in this conversation", 404)
    NOT_MESSAGE_SENDER = (40005, "only its sender may change this message", 403)
    CHANGE_WINDOW_PASSED = (40006, "the time to change this message has passed", 403)
    MESSAGE_GONE = (40007, "the message was recalled or deleted", 409)
    GROUP_DISSOLVED = (40008, "the group was dissolved", 410)
    MEMBER_MUTED = (40009, "a group admin muted you in this group", 403)
    BLOCKED = (40010, "you cannot message this user", 403)

    KAFKA_ERROR = (50001, "message pipeline error", 503)
    UNMARSHAL_FAILED = (50002, "event could not be decoded", 400)
    PERSIST_FAILED = (50003, "event could not be stored", 503)
    DELIVERY_FAILED = (50004, "event could not be delivered (the notification webhook did not take it)", 503)
    CONSUMER_GROUP_ERROR = (50005, "consumer group error", 503)
    RETRY_EXHAUSTED = (50006, "retries exhausted; event sent to the dead-letter queue", 503)
    DLQ_SEND_FAILED = (50007, "dead-letter hand-off failed", 503)
    PRODUCER_ERROR = (50008, "message pipeline unavailable", 503)


# Kept from the table of the system PingMe replaced, so its number is never reused, but never sent:
# a storage failure is 20001 (50006 once its retries are exhausted). docs/PROTOCOL.md marks it reserved.
RESERVED = frozenset({Code.PERSIST_FAILED})

class AppError(Exception):
    """A failure with a code from the table, safe to show to a client.

    ``field`` names the offending input for 10002. The message must never contain a password,
    a token or a message body: it reaches clients and logs.
    """

    def __init__(self, code: Code, message: str | None = None, *, field: str | None = None):
        self.code = code
        self.message = message or code.message
        self.field = field
        super().__init__(f"{int(code)} {self.message}")

    def to_dict(self) -> dict:
        body = {"code": int(self.code), "message": self.message}
        if self.field:
            body["field"] = self.field
        return body

    @classmethod
    def from_dict(cls, body: dict) -> "AppError":
        """Rebuild an error that crossed a process boundary (a function's reply)."""
        try:
            code = Code(int(body["code"]))
        except (KeyError, TypeError, ValueError):
            code = Code.SERVER_ERROR
        return cls(code, body.get("message"), field=body.get("field"))
