"""Structured logs of a real conversation: the gateway and the register, login, send and deliver
functions as separate processes with LOG_FORMAT=json and LOG_LEVEL=DEBUG (common/logs.py).

What an operator relies on: every line is one JSON object; one message's correlation id is found
in the gateway's, send's and deliver's logs; message bodies, passwords and tokens are in none."""
from __future__ import annotations

import json
import uuid

from tests.integration.conftest import wait_for
from tests.integration.test_messaging import Client, User_


def _lines(proc) -> list[dict]:
    """Every line of a process's log as JSON (a line that is not JSON fails the test)."""
    lines = []
    for number, line in enumerate(proc.log().splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"{proc.name} log line {number} is not JSON: {line[:300]}") from None
    return lines


def test_json_logs_follow_one_message_and_never_show_bodies_passwords_or_tokens(procs):
    env = {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    functions = {name: procs.function(name, **env) for name in ("register", "login", "send", "deliver")}
    gw = procs.gateway(**env)
    secret = "pw-" + uuid.uuid4().hex        # the password
    body = "body-" + uuid.uuid4().hex        # the message text
    users = []
    for _ in range(2):
        name = "j" + uuid.uuid4().hex[:10]
        status, reply = gw.call("POST", "/api/v1/auth/register", {"username": name, "password": secret})
        assert status == 201, reply
        status, reply = gw.call("POST", "/api/v1/auth/login", {"username": name, "password": secret})
        assert status == 200, reply
        users.append(User_(reply["data"]["user"]["id"], reply["data"]["token"]))
    alice, bob = users
    a, b = Client(gw, alice), Client(gw, bob)
    msg_id = str(uuid.uuid4())
    a.send("send", {"msg_id": msg_id, "to_user_id": bob.id, "content": body})
    assert a.expect("message_ack")["msg_id"] == msg_id
    assert b.expect("message")["msg_id"] == msg_id
    a.close(), b.close()

    gateway = procs.procs[-1]
    # The gateway names the message's correlation id when it hands the send on.
    cid = wait_for(lambda: next((line.get("cid") for line in _lines(gateway)
                                 if msg_id in line["message"]), None), what="the gateway's line for the send")
    for name in ("send", "deliver"):  # its events carried it through the pipeline
        wait_for(lambda: any(line.get("cid") == cid for line in _lines(functions[name])),
                 what=f"cid {cid} in {name}'s log")
    for proc in procs.procs:
        lines = _lines(proc)
        assert lines and all({"time", "level", "process", "pid", "logger", "message"} <= set(line) for line in lines)
    print(f"cid {cid} of message {msg_id}: " + ", ".join(
        f"{proc.name} {sum(line.get('cid') == cid for line in _lines(proc))} lines" for proc in procs.procs))

    for proc in procs.procs:  # stopped: everything they wrote, shutdown included
        proc.stop()
    for proc in procs.procs:
        text = proc.log()
        for name, value in (("message body", body), ("password", secret), ("token", alice.token),
                            ("token", bob.token)):
            assert value not in text, f"{name} in {proc.name}'s log"
