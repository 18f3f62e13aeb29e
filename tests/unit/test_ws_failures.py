"""How the gateway answers a frame it cannot serve and how a failing socket is closed: a sync while
the database is down is an error frame 20001 (the socket stays open), an outage ends a socket with
1013, anything unexpected with 1011 (logged with its traceback) — never 1000."""
import json
import logging
from types import SimpleNamespace

import peewee as pw
import pytest
import redis

from common.models import db
from common.ratelimit import ALLOWED


class Conn:
    user_id, conn_id, bucket, abuse = 5, "c5", None, None


@pytest.fixture
def database_down(tmp_path):
    db.initialize(pw.SqliteDatabase(str(tmp_path / "no-such-dir" / "x.db")))  # cannot be opened
    yield
    db.initialize(None)


def test_a_sync_while_the_database_is_down_is_20001_and_the_socket_stays(database_down, caplog):
    from gateway import frames
    gw = SimpleNamespace(limiter=SimpleNamespace(check=lambda *hits: ALLOWED))
    replies = frames.handle(json.dumps({"type": "sync", "payload": {"conversation_id": 3}}), Conn(), gw)
    assert [json.loads(r) for r in replies] == [{"type": "error", "payload": {
        "code": 20001, "message": "database unavailable; try again later", "ref": "sync", "conversation_id": 3}}]
    assert "sync frame of conn c5 not served code=20001: OperationalError" in caplog.text


def test_a_database_error_is_logged_with_its_server_error_number(monkeypatch, caplog):
    # 1054 (unknown column: the schema lacks a migration) and 2013 (server gone) need different
    # fixes; the log line tells them apart without quoting the server's message.
    from gateway import frames

    def unknown_column(payload, conn, gw):
        raise pw.OperationalError(1054, "Unknown column 't1.wrote' in 'SELECT'")
    monkeypatch.setitem(frames.HANDLERS, "sync", unknown_column)
    gw = SimpleNamespace(limiter=SimpleNamespace(check=lambda *hits: ALLOWED))
    replies = frames.handle(json.dumps({"type": "sync", "payload": {"conversation_id": 3}}), Conn(), gw)
    assert json.loads(replies[0])["payload"]["code"] == 20001
    assert "sync frame of conn c5 not served code=20001: OperationalError 1054" in caplog.text
    assert "wrote" not in caplog.text


@pytest.mark.parametrize("exc, code", [
    (redis.ConnectionError("down"), 1013), (pw.OperationalError("gone"), 1013), (pw.InterfaceError("x"), 1013),
    (ValueError("bug"), 1011), (RecursionError(), 1011), (KeyError("k"), 1011)])
def test_the_close_code_of_a_failure(exc, code, caplog):
    from gateway import ws
    with caplog.at_level(logging.ERROR):
        assert ws._failure_close(exc)[0] == code
    record = caplog.records[-1]
    if code == 1011:
        assert "unexpected error" in record.getMessage() and record.exc_info[1] is exc
    else:
        assert "unavailable" in record.getMessage() and record.exc_info is None
