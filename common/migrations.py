"""Schema migrations: :func:`migrate` brings any database to the models' shape.

A fresh database gets the current shape from the models; these steps bring an existing one to the
same shape, and each is written to converge: it looks at the schema first and does nothing when
its change is already there, so running ``migrate()`` again is always safe.

* :func:`upgrade_existing` (before the tables are created): changes to tables that already exist.
  - usernames compare case-insensitively on every engine (``user.username_key``, unique). Names
    that an older SQLite database held twice in different cases keep the oldest account's name; the
    later accounts are renamed ``<name>-<id>`` (logged), so every account can still log in.
  - columns a model gained since (each nullable or with a default), with their indexes.
* :func:`exact_keys` (after): on MySQL/MariaDB, ``message.msg_id``, ``user.username_key`` and the
  columns that name a message or an emoji compare byte for byte (a binary collation without
  trailing-space padding). The server's default collations are case-, accent- and
  trailing-space-insensitive, which merged distinct messages (and would merge distinct emoji).
* :func:`search_index` (after): the full-text index message search uses (common/chat/search.py):
  an InnoDB ``FULLTEXT`` index on MySQL/MariaDB; on SQLite an FTS5 table over ``message.content``
  kept in step by triggers (filled from the existing rows when it is made).
"""
from __future__ import annotations

import logging

import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate as apply

from common.models import MODELS, User, db, username_key

logger = logging.getLogger(__name__)


def migrate() -> list[str]:
    """Bring the schema up to date (safe to run again): upgrade tables an older version created,
    create missing tables and indexes, then fix column collations; return the table names."""
    with db.connection_context():
        upgrade_existing(db)
        db.create_tables(MODELS, safe=True)
        exact_keys(db)
        search_index(db)
    return [m._meta.table_name for m in MODELS]

# Binary and NO PAD ("a" != "a "): MariaDB's name first, then MySQL 8's.
BINARY_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
EXACT_COLUMNS = (("message", "msg_id", 64, False), ("user", "username_key", 32, False),
                 ("message", "target_msg_id", 64, True), ("message", "reply_to_msg_id", 64, True),
                 ("reaction", "msg_id", 64, False), ("reaction", "emoji", 64, False))


def _real(database):
    return database.obj if isinstance(database, pw.DatabaseProxy) else database


def upgrade_existing(database) -> None:
    database = _real(database)
    if "user" in database.get_tables() and \
            "username_key" not in {c.name for c in database.get_columns("user")}:
        _add_username_key(database)
    _add_new_columns(database)


def _add_new_columns(database) -> None:
    """Columns a model gained since its table was made (each nullable or with a default, so old
    rows stay valid), with their indexes."""
    tables = set(database.get_tables())
    migrator = SchemaMigrator.from_database(database)
    for model in MODELS:
        table = model._meta.table_name
        if table not in tables:
            continue
        existing = {c.name for c in database.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in existing:
                continue
            if not field.null and field.default is None:
                raise RuntimeError(f"{table}.{field.column_name}: a new column needs null=True or a default")
            apply(migrator.add_column(table, field.column_name, field))  # and its index, if it has one
            logger.info("migration: %s.%s added", table, field.column_name)
            if (table, field.column_name) == ("conversation_member", "wrote"):
                database.execute_sql(  # who has written where, from the messages already stored
                    "UPDATE conversation_member SET wrote = 1 WHERE EXISTS (SELECT 1 FROM message "
                    "WHERE message.conversation_id = conversation_member.conversation_id "
                    "AND message.sender_id = conversation_member.user_id)")


def _add_username_key(database) -> None:
    migrator = SchemaMigrator.from_database(database)
    apply(migrator.add_column("user", "username_key", pw.CharField(max_length=32, null=True)))
    taken: set[str] = set()
    with database.atomic():
        for user_id, name in User.select(User.id, User.username).order_by(User.id).tuples():
            new_name, n = name, 0
            while username_key(new_name) in taken:
                n += 1
                suffix = f"-{user_id}" + (f"-{n}" if n > 1 else "")
                new_name = name[:32 - len(suffix)] + suffix
            if new_name != name:
                logger.warning("migration: user %d renamed to %r (its name differs from an older "
                               "account's only by case)", user_id, new_name)
            taken.add(username_key(new_name))
            User.update(username=new_name, username_key=username_key(new_name)).where(User.id == user_id).execute()
    for index in database.get_indexes("user"):
        if index.columns == ["username"]:
            apply(migrator.drop_index("user", index.name))
    apply(migrator.add_index("user", ("username_key",), True))
    logger.info("migration: usernames now compare case-insensitively (user.username_key)")


def exact_keys(database) -> None:
    database = _real(database)
    if not isinstance(database, pw.MySQLDatabase):
        return  # SQLite compares text byte for byte already
    available = {row[0] for row in database.execute_sql(
        "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN (%s, %s)",
        BINARY_COLLATIONS)}
    collation = next((c for c in BINARY_COLLATIONS if c in available), None)
    if collation is None:
        raise RuntimeError(f"the database server has none of the collations {BINARY_COLLATIONS}")
    for table, column, length, nullable in EXACT_COLUMNS:
        row = database.execute_sql(
            "SELECT COLLATION_NAME, IS_NULLABLE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
            (table, column)).fetchone()
        if row is not None and (row[0] != collation or row[1] != ("YES" if nullable else "NO")):
            database.execute_sql(f"ALTER TABLE `{table}` MODIFY `{column}` VARCHAR({length}) "
                                 f"CHARACTER SET utf8mb4 COLLATE {collation} {'NULL' if nullable else 'NOT NULL'}")
            logger.info("migration: %s.%s now compares byte for byte (%s)", table, column, collation)


FULLTEXT_INDEX = "message_content_fulltext"
SQLITE_FTS_SETUP = (
    "CREATE VIRTUAL TABLE message_fts USING fts5(content, content='message', content_rowid='id')",
    "INSERT INTO message_fts(message_fts) VALUES ('rebuild')",
    "CREATE TRIGGER message_fts_insert AFTER INSERT ON message BEGIN "
    "INSERT INTO message_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER message_fts_delete AFTER DELETE ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER message_fts_update AFTER UPDATE OF content ON message BEGIN "
    "INSERT INTO message_fts(message_fts, rowid, content) VALUES ('delete', old.id, old.content); "
    "INSERT INTO message_fts(rowid, content) VALUES (new.id, new.content); END",
)


def search_index(database) -> None:
    database = _real(database)
    if isinstance(database, pw.MySQLDatabase):
        if not any(i.name == FULLTEXT_INDEX for i in database.get_indexes("message")):
            database.execute_sql(f"ALTER TABLE `message` ADD FULLTEXT INDEX `{FULLTEXT_INDEX}` (`content`)")
            logger.info("migration: message.content has a full-text index")
    elif "message_fts" not in database.get_tables():
        with database.atomic():
            for statement in SQLITE_FTS_SETUP:
                database.execute_sql(statement)
        logger.info("migration: message_fts (FTS5) made over message.content")
