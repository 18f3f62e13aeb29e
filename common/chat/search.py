"""Message search in the conversations a user belongs to, newest first, one function for both
engines: MariaDB/MySQL's InnoDB ``FULLTEXT`` index in production, SQLite's FTS5 table in the local
run (both made by common/migrations.py ``search_index``).

A query is words; a message matches when it has every word (a word also matches as the start of a
longer one). Only messages are found, not system messages or the events that change them, and
never a recalled or deleted message (its text is gone from the database and the index) nor one the user deleted for themselves.
"""
from __future__ import annotations

import re

import peewee as pw

from common.chat.reads import views
from common.chat.rules import EVENTS, SYSTEM
from common.errors import AppError, Code
from common.models import ConversationMember as Member, HiddenMessage, Message, db

MAX_WORDS = 8
_WORD = re.compile(r"\w+")


def _words(query: str) -> list[str]:
    words = _WORD.findall(query)[:MAX_WORDS]
    if not words:
        raise AppError(Code.INVALID_PARAMS, "the query needs at least one word", field="q")
    return words


def _matching(words: list[str]) -> pw.Expression:
    """The engine's full-text condition on ``message``: every word, as a prefix."""
    database = db.obj
    if isinstance(database, pw.MySQLDatabase):
        return pw.NodeList((pw.SQL("MATCH("), Message.content, pw.SQL(") AGAINST (%s IN BOOLEAN MODE)",
                                                                        [" ".join(f"+{w}*" for w in words)])), glue="")
    # FTS5: each word quoted (no query syntax), prefix-matched, all required.
    return Message.id.in_(pw.SQL("(SELECT rowid FROM message_fts WHERE message_fts MATCH ?)",
                                 [" ".join('"' + w.replace('"', '""') + '"*' for w in words)]))


def search(user_id: int, query: str, limit: int, before_id: int | None = None) -> dict:
    """``{messages: [view], has_more, next_before}``: pass ``next_before`` back for the next page."""
    mine = Member.select(Member.conversation_id).where(Member.user_id == user_id)
    hidden = HiddenMessage.select(HiddenMessage.message_id).where(HiddenMessage.user_id == user_id)
    where = (_matching(_words(query)) & Message.conversation_id.in_(mine)
             & Message.content_type.not_in([SYSTEM, *EVENTS]) & Message.id.not_in(hidden))
    if before_id is not None:
        where &= Message.id < before_id
    rows = list(Message.select().where(where).order_by(Message.id.desc()).limit(limit + 1))
    page = rows[:limit]
    return {"messages": views(page, user_id), "has_more": len(rows) > limit,
            "next_before": page[-1].id if page else before_id}
