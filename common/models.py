"""Peewee models and the database binding.

Models bind late through :data:`db` (a ``DatabaseProxy``); :func:`init_db` points it at SQLite (the
embedded default of the local run) or a pooled MySQL/MariaDB database. Under gevent Peewee keeps one
connection per greenlet: wrap each unit of work in ``db.connection_context()``.

Times are integer milliseconds since the epoch (UTC), the same unit as Kafka timestamps.
"""
from __future__ import annotations

import time
from pathlib import Path

import peewee as pw
from playhouse.pool import PooledMySQLDatabase
from playhouse.shortcuts import ReconnectMixin

from common.config import REPO_ROOT, DbConfig

db = pw.DatabaseProxy()


def now_ms() -> int:
    return int(time.time() * 1000)


class BaseModel(pw.Model):
    class Meta:
        database = db
        legacy_table_names = False


def username_key(username: str) -> str:
    """The form usernames are compared in: ASCII letters folded to lower case (the username rule
    allows only ASCII, so "Alice" and "alice" are one name on every engine). Anything else is
    left as it is and so matches no stored name."""
    return username.lower() if username.isascii() else username


class User(BaseModel):
    id = pw.BigAutoField()
    username = pw.CharField(max_length=32)  # as the user typed it
    username_key = pw.CharField(max_length=32, unique=True)  # username_key(username): unique, compared
    password_hash = pw.CharField(max_length=200)
    email = pw.CharField(max_length=254, null=True)
    nickname = pw.CharField(max_length=64, default="")
    avatar = pw.CharField(max_length=512, default="")
    # The gateway request that created the row: a redelivered register request is answered with
    # success instead of "username taken" (idempotency of the register function).
    register_request_id = pw.CharField(max_length=64, null=True, unique=True)
    created_at = pw.BigIntegerField(default=now_ms)
    updated_at = pw.BigIntegerField(default=now_ms)

    def public(self) -> dict:
        return {"id": self.id, "username": self.username, "email": self.email,
                "nickname": self.nickname, "avatar": self.avatar, "created_at": self.created_at}


class Conversation(BaseModel):
    PRIVATE = "private"
    GROUP = "group"

    id = pw.BigAutoField()
    type = pw.CharField(max_length=8)
    name = pw.CharField(max_length=64, default="")
    owner_id = pw.BigIntegerField(null=True)
    # "<low user id>:<high user id>" for private chats, so a pair has exactly one conversation.
    private_key = pw.CharField(max_length=48, null=True, unique=True)
    last_seq = pw.BigIntegerField(default=0)
    created_at = pw.BigIntegerField(default=now_ms)
    topic = pw.CharField(max_length=256, default="")   # groups
    avatar = pw.CharField(max_length=512, default="")  # groups
    dissolved_at = pw.BigIntegerField(null=True)       # a dissolved group is read-only


class ConversationMember(BaseModel):
    """Membership plus the member's cursors: delivered and read seq only move forward."""

    OWNER, ADMIN, MEMBER = "owner", "admin", "member"

    id = pw.BigAutoField()
    conversation_id = pw.BigIntegerField()
    user_id = pw.BigIntegerField(index=True)
    role = pw.CharField(max_length=8, default=MEMBER)
    delivered_seq = pw.BigIntegerField(default=0)
    read_seq = pw.BigIntegerField(default=0)
    joined_at = pw.BigIntegerField(default=now_ms)
    muted_until = pw.BigIntegerField(default=0)  # a group admin muted this member: no sends until then
    notifications_muted = pw.BooleanField(default=False)  # the member muted the conversation: no push
    # The member has sent something here. A private chat's peer sees your presence only once you
    # wrote in it: one unsolicited message does not make its sender your contact.
    wrote = pw.BooleanField(default=False)

    class Meta:
        indexes = ((("conversation_id", "user_id"), True),)


class Message(BaseModel):
    """A message, or an event that changes one (``content_type`` edit, recall, delete, reaction:
    ``target_msg_id`` names the message), each with its own seq. A message is kept in its current
    state: an edit rewrites ``content`` and sets ``edited_at``; a recall or a delete empties it (and
    the edit events' copies) and sets ``state``."""

    RECALLED, DELETED = "recalled", "deleted"

    id = pw.BigAutoField()
    msg_id = pw.CharField(max_length=64, unique=True)  # client-generated idempotency key
    conversation_id = pw.BigIntegerField()
    seq = pw.BigIntegerField()
    sender_id = pw.BigIntegerField()
    content_type = pw.CharField(max_length=16, default="text")
    content = pw.TextField()
    created_at = pw.BigIntegerField(default=now_ms)
    target_msg_id = pw.CharField(max_length=64, null=True, index=True)  # of an event
    reply_to_msg_id = pw.CharField(max_length=64, null=True)
    mentions = pw.TextField(null=True)  # JSON list of user ids; [0] is @all
    edited_at = pw.BigIntegerField(null=True)
    state = pw.CharField(max_length=8, default="")  # "", recalled, deleted

    class Meta:
        indexes = ((("conversation_id", "seq"), True),)


class Mention(BaseModel):
    """Who a message mentions (user 0: everyone), for the conversation list's unread mentions."""

    id = pw.BigAutoField()
    conversation_id = pw.BigIntegerField()
    seq = pw.BigIntegerField()
    user_id = pw.BigIntegerField()

    class Meta:
        indexes = ((("user_id", "conversation_id", "seq"), True),)


class Reaction(BaseModel):
    """One user's emoji on one message."""

    id = pw.BigAutoField()
    msg_id = pw.CharField(max_length=64)  # the message's
    user_id = pw.BigIntegerField()
    emoji = pw.CharField(max_length=64)
    created_at = pw.BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("msg_id", "user_id", "emoji"), True),)


class HiddenMessage(BaseModel):
    """A message one user deleted for themselves: not an event of the conversation."""

    id = pw.BigAutoField()
    user_id = pw.BigIntegerField()
    message_id = pw.BigIntegerField()
    created_at = pw.BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("user_id", "message_id"), True),)


class Block(BaseModel):
    """``user_id`` blocked ``blocked_id``: no private messages between them, no presence for them."""

    id = pw.BigAutoField()
    user_id = pw.BigIntegerField()
    blocked_id = pw.BigIntegerField(index=True)
    created_at = pw.BigIntegerField(default=now_ms)

    class Meta:
        indexes = ((("user_id", "blocked_id"), True),)


class DeadLetter(BaseModel):
    """An event the pipeline gave up on, kept with its raw bytes for inspection and replay."""

    id = pw.BigAutoField()
    # Where the dead letter itself sits in the DLQ topic: storing is idempotent on this.
    dlq_topic = pw.CharField(max_length=200)
    dlq_partition = pw.IntegerField()
    dlq_offset = pw.BigIntegerField()
    origin_topic = pw.CharField(max_length=200)
    origin_partition = pw.IntegerField(null=True)
    origin_offset = pw.BigIntegerField(null=True)
    key = pw.BlobField(null=True)
    value = pw.BlobField(null=True)
    code = pw.IntegerField(index=True)
    error = pw.TextField(default="")
    attempts = pw.IntegerField(default=0)
    first_failed_at = pw.BigIntegerField(null=True)
    last_failed_at = pw.BigIntegerField(null=True)
    created_at = pw.BigIntegerField(default=now_ms)
    replayed_at = pw.BigIntegerField(null=True)

    class Meta:
        indexes = ((("dlq_topic", "dlq_partition", "dlq_offset"), True),)

    @classmethod
    def depth_by_code(cls) -> dict[int, int]:
        """Dead letters not yet replayed, by error code (the DLQ depth metric)."""
        query = (cls.select(cls.code, pw.fn.COUNT(cls.id).alias("n"))
                 .where(cls.replayed_at.is_null()).group_by(cls.code))
        return {row.code: row.n for row in query}


MODELS = (User, Conversation, ConversationMember, Message, Mention, Reaction, HiddenMessage, Block,
          DeadLetter)


class MySQLDatabase(ReconnectMixin, PooledMySQLDatabase):
    """Pooled MySQL/MariaDB that reconnects once when the server dropped a connection (a restart,
    an idle timeout); only outside a transaction, so no write is silently lost."""


def make_database(cfg: DbConfig) -> pw.Database:
    if cfg.engine == "sqlite":
        path = Path(cfg.path)
        if not path.is_absolute():
            path = REPO_ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL + busy timeout: the gateway and every function process share the file.
        return pw.SqliteDatabase(str(path), pragmas={"journal_mode": "wal", "busy_timeout": 10000,
                                                     "foreign_keys": 1})
    return MySQLDatabase(
        cfg.name, host=cfg.host, port=cfg.port, user=cfg.username, password=cfg.password,
        charset="utf8mb4", max_connections=cfg.max_connections, stale_timeout=300, timeout=10,
        connect_timeout=5, init_command="SET sql_mode='STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'")


def init_db(cfg: DbConfig) -> pw.Database:
    """Bind the models to the configured database and return it."""
    database = make_database(cfg)
    db.initialize(database)
    return database
