"""Statements of the message path rendered by peewee once per shape and run again with new
parameters. peewee renders a query value by value, on every execution: for the send function's
batch statements that was about 40 % of its time at 500 msg/s, for the deliver function's cursor
updates a third of its database time at 200 msg/s (py-spy). A statement is given as its shape (what
decides its SQL text: the statement and its number of rows), a function that builds the peewee
query, and the parameters in the order its rendering takes them
(tests/unit/functions/test_store_statements.py compares them with peewee's own).
"""
from __future__ import annotations

from collections.abc import Callable

import peewee as pw

from common.models import db

Statement = tuple[tuple, Callable[[], pw.Query], list]
_rendered: dict[tuple, str] = {}
MAX_SHAPES = 4096


def execute(key: tuple, query: Callable[[], pw.Query], params: list):
    """Run the statement (rendered by ``query`` for the first of its shape ``key`` on this kind of
    database); its cursor (``fetchall()`` for a select's rows, ``rowcount`` for a write's)."""
    key = (type(db.obj), *key)
    sql = _rendered.get(key)
    if sql is None:
        if len(_rendered) > MAX_SHAPES:
            _rendered.clear()
        sql = _rendered[key] = query().sql()[0]
    return db.execute_sql(sql, params)
