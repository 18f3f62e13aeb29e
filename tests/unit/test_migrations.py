"""Migrating an older SQLite database (the embedded default of the local run) to the current schema."""
import peewee as pw
import pytest

from common import accounts
from common.config import DbConfig
from common.models import MODELS, ConversationMember, Message, User, db, init_db
from common.migrations import migrate


@pytest.fixture
def old_sqlite(tmp_path):
    """A database in the shape before usernames compared case-insensitively: ``user.username``
    unique byte for byte, no ``username_key``, so it could hold ``Alice`` and ``alice``."""
    init_db(DbConfig(engine="sqlite", path=str(tmp_path / "old.db"), host="", port=0, username="",
                     password="", name="", max_connections=1))
    with db.connection_context():
        db.create_tables(MODELS)
        db.execute_sql('DROP INDEX "user_username_key"')
        db.execute_sql('ALTER TABLE "user" DROP COLUMN "username_key"')
        db.execute_sql('CREATE UNIQUE INDEX "user_username" ON "user" ("username")')
        for name in ("Alice", "bob", "alice", "ALICE"):
            db.execute_sql('INSERT INTO "user" (username, password_hash, nickname, avatar, created_at, '
                           'updated_at) VALUES (?, ?, ?, ?, 0, 0)', (name, "x", name, ""))
    yield db
    db.close()
    db.initialize(None)


def test_case_duplicates_are_renamed_and_names_become_case_insensitive(old_sqlite):
    migrate()
    migrate()  # converges: a second run changes nothing
    with db.connection_context():
        users = {u.id: u.username for u in User.select().order_by(User.id)}
        assert list(users.values()) == ["Alice", "bob", "alice-3", "ALICE-4"]  # the oldest keeps its name
        assert {name: accounts._by_name(name.upper()).id for name in users.values()} == \
               {name: uid for uid, name in users.items()}
        with pytest.raises(pw.IntegrityError), db.atomic():
            User.create(username="BOB", username_key="bob", password_hash="x")


def test_a_message_table_from_before_edits_and_replies_gains_their_columns(tmp_path):
    """A database made before messages could be edited, recalled or replied to: migrate() adds the
    columns (old rows keep their content, with no state), their index, and the new tables."""
    init_db(DbConfig(engine="sqlite", path=str(tmp_path / "old.db"), host="", port=0, username="",
                     password="", name="", max_connections=1))
    try:
        with db.connection_context():
            db.execute_sql('CREATE TABLE "message" ("id" INTEGER NOT NULL PRIMARY KEY, "msg_id" VARCHAR(64) '
                           'NOT NULL, "conversation_id" INTEGER NOT NULL, "seq" INTEGER NOT NULL, "sender_id" '
                           'INTEGER NOT NULL, "content_type" VARCHAR(16) NOT NULL, "content" TEXT NOT NULL, '
                           '"created_at" INTEGER NOT NULL)')
            db.execute_sql('INSERT INTO "message" VALUES (1, \'m-1\', 7, 1, 3, \'text\', \'hello\', 5)')
        migrate()
        migrate()  # converges
        with db.connection_context():
            old = Message.get(Message.msg_id == "m-1")
            assert (old.content, old.state, old.edited_at, old.target_msg_id) == ("hello", "", None, None)
            assert any(i.columns == ["target_msg_id"] for i in db.get_indexes("message"))
            assert {"mention", "reaction", "hidden_message"} <= set(db.get_tables())
    finally:
        db.close()
        db.initialize(None)


def test_who_has_written_where_is_filled_in_from_the_stored_messages(tmp_path):
    """conversation_member.wrote (presence: a private peer is a contact once you wrote) added to an
    older database is set for the members who have a message there, and only for them."""
    init_db(DbConfig(engine="sqlite", path=str(tmp_path / "old.db"), host="", port=0, username="",
                     password="", name="", max_connections=1))
    try:
        with db.connection_context():
            db.create_tables(MODELS)
            db.execute_sql('ALTER TABLE "conversation_member" DROP COLUMN "wrote"')
            for user in (3, 4):
                db.execute_sql('INSERT INTO "conversation_member" (conversation_id, user_id, role, delivered_seq, '
                               'read_seq, joined_at, muted_until, notifications_muted) VALUES (7, ?, '
                               "'member', 0, 0, 0, 0, 0)", (user,))
            Message.create(msg_id="m-1", conversation_id=7, seq=1, sender_id=3, content="hi")
        migrate()
        with db.connection_context():
            assert dict(ConversationMember.select(ConversationMember.user_id, ConversationMember.wrote)
                        .order_by(ConversationMember.user_id).tuples()) == {3: True, 4: False}
    finally:
        db.close()
        db.initialize(None)
