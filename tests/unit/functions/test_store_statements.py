"""The message path's statements are rendered by peewee once per shape and reused with parameters
the code lists itself (common/chat/prepared.py): those parameters must be exactly the ones peewee's
own rendering of the same statement takes, for every statement a real batch executes — the store's
(sends to new and known private conversations, a group, and an edit) and the deliver function's
cursor moves."""
from __future__ import annotations

import pytest

from common import chat
from common.chat import prepared
from tests.unit.functions.conftest import make_user


@pytest.fixture
def executed(database, monkeypatch):
    """Every prepared statement executed, as (peewee's params, the listed params)."""
    seen = []
    real = prepared.execute

    def compare(key, query, params):
        seen.append((query().sql()[1], params))
        return real(key, query, params)
    monkeypatch.setattr(prepared, "execute", compare)
    return seen


def _send(sender, msg_id, *, to=None, group=None, content="hi", **extra):
    return sender, {"msg_id": msg_id, "content": content, "content_type": "text", "to_user_id": to,
                    "group_id": group, **extra}


def test_the_store_passes_each_statement_the_parameters_peewee_would(executed):
    a, b, c = (make_user(name) for name in ("ann", "ben", "cat"))
    group, _ = chat.create_group(a, "g", [b, c])
    results = chat.store_messages([_send(a, "m1", to=b), _send(b, "m2", to=a), _send(a, "m3", to=c),
                                   _send(c, "m4", group=group.id), _send(a, "m5", to=b)])
    assert all(isinstance(r, chat.Stored) for r in results), results
    edit = chat.store_messages([_send(a, "e1", to=b, content="m1 again", content_type="edit",
                                      target_msg_id="m1")])
    assert isinstance(edit[0], chat.Stored), edit
    assert len(executed) >= 12  # group creation's system message, two batches: blocks, seq, last seqs, insert, own read
    for rendered, listed in executed:
        assert listed == rendered
    assert [m.seq for m in (r.message for r in results)] == [1, 2, 1, 2, 3]  # m4 after the group's own


def test_cursor_moves_pass_each_statement_the_parameters_peewee_would(executed):
    a, b = make_user("ann"), make_user("ben")
    stored = chat.store_messages([_send(a, f"m{i}", to=b) for i in range(3)])
    conv = stored[0].conversation.id
    executed.clear()
    moved = chat.move_cursors([(conv, b, 2, "delivered"), (conv, b, 1, "read"), (conv, a, 9, "read")])
    # the sender has read its own messages already (the store moved that cursor), not "delivered"
    assert moved == {(conv, b): (2, 1), (conv, a): (3, None)}
    assert len(executed) == 4  # one read of every cursor concerned, then one move each
    for rendered, listed in executed:
        assert listed == rendered
    assert chat.move_cursors([(conv, b, 1, "read")]) == {(conv, b): (None, None)}  # never back
