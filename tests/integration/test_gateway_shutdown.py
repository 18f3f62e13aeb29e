"""Gateway shutdown as an operator's rollout does it: SIGTERM to gunicorn's master (what `podman
stop` and Kubernetes send), with clients on the socket.

The gateway closes every socket with 1012 (Service Restart), answers /readyz 503 while it drains and
exits 0 in about a second (gunicorn would otherwise wait its 20 s graceful timeout for the open
sockets). Under a steady load, a rolling restart of both gateways loses no acknowledged message:
clients move to the other gateway, sync and resend what is unacknowledged with the same msg_id.
"""
from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import uuid

import simple_websocket

from common.models import Message, db
from tests import wsclient
from tests.integration.conftest import wait_for
from tests.integration.test_messaging import Client, make_users, mid

WS_ERRORS = (OSError, simple_websocket.ConnectionError, simple_websocket.ConnectionClosed)


def _ws_url(api, token: str) -> str:
    return api.base.replace("http://", "ws://") + f"/ws?token={token}"


def _terminate(api) -> tuple[int, float]:
    """SIGTERM to the gateway's gunicorn master; its exit status and how long it took."""
    started = time.monotonic()
    api.proc.signal(signal.SIGTERM)
    status = api.proc.popen.wait(timeout=60)
    return status, time.monotonic() - started


def _while_draining(api, token: str) -> tuple[int | None, int | None]:
    """/readyz's status and a new socket's close code, or None where the gateway no longer
    accepts connections (its listener closes within a second of SIGTERM)."""
    try:
        readyz = api.call("GET", "/readyz")[0]
    except (urllib.error.URLError, OSError):
        readyz = None
    try:
        ws = wsclient.connect(_ws_url(api, token))
        try:
            ws.receive(timeout=5)
            new_socket = -1  # it was served
        except simple_websocket.ConnectionClosed:
            new_socket = ws.close_reason
    except WS_ERRORS:
        new_socket = None
    return readyz, new_socket


def test_sigterm_closes_every_socket_with_1012_and_exits_within_seconds(cfg, procs):
    procs.function("send")
    procs.function("deliver")
    gw = procs.gateway()
    users = make_users(cfg, 4)
    clients = [Client(gw, user) for user in users]
    msg = mid()
    clients[0].send("send", {"msg_id": msg, "to_user_id": users[1].id, "content": "before the restart"})
    assert clients[0].expect("message_ack")["msg_id"] == msg
    assert gw.call("GET", "/healthz")[0] == 200 and gw.call("GET", "/readyz")[0] == 200

    started = time.monotonic()
    gw.proc.signal(signal.SIGTERM)
    codes = [client.close_code(timeout=30) for client in clients]
    closed_s = time.monotonic() - started
    readyz, new_socket = _while_draining(gw, users[0].token)
    status = gw.proc.popen.wait(timeout=60)
    exited_s = time.monotonic() - started
    print(f"SIGTERM with {len(clients)} sockets open: all closed after {closed_s:.2f} s, exit {status} after "
          f"{exited_s:.2f} s; during the drain /readyz answered {readyz}, a new socket got {new_socket} "
          "(None: no longer accepting)")
    assert codes == [1012] * len(clients)
    assert all("reconnect" in client.ws.close_message for client in clients)
    assert readyz in (503, None) and new_socket in (1012, None)
    assert status == 0 and exited_s < 5, gw.proc.log()[-3000:]
    assert "drained in" in gw.proc.log()


INTERVAL_S = 0.25  # each client sends four messages a second
BURST = 5  # and, just before each SIGTERM, five at once: some are in flight while the gateway drains


class Chatter(threading.Thread):
    """One user's client as an app should behave: sends to its peer at a steady pace; on a close it
    reconnects to another gateway, syncs its conversation from the last seq it has and resends
    every unacknowledged message with the same msg_id. After the load, a retry timer resends what
    is still unacknowledged (a 50008 answer) every 2 s."""

    def __init__(self, user, peer_id: int, gateways: list, first: int):
        super().__init__(daemon=True)
        self.user, self.peer_id, self.gateways, self.index = user, peer_id, gateways, first
        self.unacked: dict[str, str] = {}   # msg_id → content, in send order
        self.acked: dict[str, int] = {}     # msg_id → seq
        self.have: set[int] = set()         # seqs of the conversation this client has seen
        self.conversation_id = None
        self.sent = self.resent = 0
        self.closes: list[int | None] = []
        self.errors: list[int] = []
        self.sending, self.finish, self.done = True, threading.Event(), threading.Event()
        self.burst = threading.Event()  # send BURST messages at once (set just before a SIGTERM)
        self.failure = None
        self.ws = None

    def last_seq(self) -> int:
        """The last seq up to which this client has every message."""
        seq = 0
        while seq + 1 in self.have:
            seq += 1
        return seq

    def run(self) -> None:
        try:
            self._until_recovered(lambda: None, leaving=self.index - 1)  # its first gateway first
            next_send = last_resend = time.monotonic()
            while not self.finish.is_set():
                now = time.monotonic()
                if self.sending and (now >= next_send or self.burst.is_set()):
                    next_send = now + INTERVAL_S
                    for _ in range(BURST if self.burst.is_set() else 1):
                        msg_id = str(uuid.uuid4())
                        self.unacked[msg_id] = f"message {self.sent} of {self.user.id}"
                        self.sent += 1
                        self._send(msg_id)
                    self.burst.clear()
                elif not self.sending and self.unacked and now - last_resend > 2:
                    last_resend = now
                    self._resend()
                try:
                    text = self.ws.receive(timeout=0.05)
                except simple_websocket.ConnectionClosed:
                    self._recover()
                    continue
                if text:
                    self._on_frame(json.loads(text))
            self._until_recovered(self._sync)  # the final resync
        except Exception as exc:  # reported by the test
            self.failure = repr(exc)
        finally:
            self.done.set()

    def _send(self, msg_id: str) -> None:
        try:
            self.ws.send(json.dumps({"type": "send", "payload": {
                "msg_id": msg_id, "to_user_id": self.peer_id, "content": self.unacked[msg_id]}}))
        except WS_ERRORS:
            pass  # unacknowledged: resent after the reconnect

    def _resend(self) -> None:
        for msg_id in list(self.unacked):
            self.resent += 1
            self._send(msg_id)

    def _on_frame(self, frame: dict):
        kind, payload = frame["type"], frame["payload"]
        if kind == "message_ack":
            self.unacked.pop(payload["msg_id"], None)
            self.acked[payload["msg_id"]] = payload["seq"]
            self.have.add(payload["seq"])
            self.conversation_id = payload["conversation_id"]
        elif kind == "message":
            self.have.add(payload["seq"])
            self.conversation_id = payload["conversation_id"]
        elif kind == "sync":
            self.have.update(m["seq"] for m in payload["messages"])
        elif kind == "error":
            self.errors.append(payload["code"])
        return kind, payload

    def _connect(self, index: int) -> None:
        ws = wsclient.connect(_ws_url(self.gateways[index], self.user.token))
        while True:
            text = ws.receive(timeout=10)  # ConnectionClosed when that gateway is draining
            if text is None:
                ws.close()
                raise simple_websocket.ConnectionError(f"no auth_ok from gateway {index} in 10 s")
            if self._on_frame(json.loads(text))[0] == "auth_ok":
                break
        self.ws, self.index = ws, index

    def _recover(self) -> None:
        self.closes.append(self.ws.close_reason)
        self._until_recovered(lambda: (self._sync(), self._resend()))

    def _until_recovered(self, then, leaving: int | None = None) -> None:
        """(Re)connect, to a gateway other than ``leaving`` (the current one) first, and run
        ``then``; again while connections close or are refused."""
        deadline = time.monotonic() + 60
        index = self.index if leaving is None else leaving
        while True:
            try:
                if self.ws is None or not self.ws.connected:
                    index = (index + 1) % len(self.gateways)
                    self._connect(index)
                then()
                return
            except WS_ERRORS:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _sync(self) -> None:
        """Sync the conversation from the last seq this client has until nothing more comes."""
        while self.conversation_id is not None:
            self.ws.send(json.dumps({"type": "sync", "payload": {
                "conversation_id": self.conversation_id, "after_seq": self.last_seq(), "limit": 200}}))
            deadline = time.monotonic() + 15
            while True:
                text = self.ws.receive(timeout=max(deadline - time.monotonic(), 0.01))
                if text is None:
                    raise simple_websocket.ConnectionError("no sync answer in 15 s")
                kind, payload = self._on_frame(json.loads(text))
                if kind == "sync":
                    break
            if not payload["has_more"]:
                return


def test_rolling_restart_of_both_gateways_under_load_loses_no_acknowledged_message(cfg, procs):
    procs.function("send")
    procs.function("deliver")
    gateways = [procs.gateway(), procs.gateway()]
    users = make_users(cfg, 8)
    # Pairs talk to each other, one on each gateway.
    chatters = [Chatter(user, users[i ^ 1].id, gateways, i % 2) for i, user in enumerate(users)]
    for chatter in chatters:
        chatter.start()

    def acked() -> int:
        return sum(len(c.acked) for c in chatters)

    def failures() -> list:
        return [c.failure for c in chatters if c.failure]

    wait_for(lambda: acked() >= 60 or failures(), timeout=30, what="steady load")
    exits = []
    for i in (0, 1):  # one after the other, as a rollout does
        for chatter in chatters:
            chatter.burst.set()
        status, seconds = _terminate(gateways[i])
        exits.append((status, round(seconds, 2)))
        gateways[i] = procs.gateway()  # its replacement (a new port, as a new pod gets a new address)
        before = acked()
        wait_for(lambda: acked() >= before + 60 or failures(), timeout=60, what="load after the restart")
    for chatter in chatters:
        chatter.sending = False
    wait_for(lambda: all(not c.unacked for c in chatters) or failures(), timeout=60,
             what="every message acknowledged")
    for chatter in chatters:
        chatter.finish.set()
    for chatter in chatters:
        assert chatter.done.wait(60)
        if chatter.ws is not None:
            chatter.ws.close()
    assert not failures(), failures()

    sent = {msg_id: chatter for chatter in chatters for msg_id in chatter.acked}
    with db.connection_context():
        rows = list(Message.select().where(Message.sender_id.in_([u.id for u in users])))
    stored: dict[str, list] = {}
    for row in rows:
        stored.setdefault(row.msg_id, []).append(row)
    lost = [m for m in sent if m not in stored]
    duplicates = [m for m, copies in stored.items() if len(copies) > 1]
    by_conversation: dict[int, list[int]] = {}
    for row in rows:
        by_conversation.setdefault(row.conversation_id, []).append(row.seq)
    total_sent = sum(c.sent for c in chatters)
    closes = [code for c in chatters for code in c.closes]
    print(f"rolling restart: exits {exits}; {total_sent} sent, {len(sent)} acked, "
          f"{sum(len(c) == 1 for c in stored.values())} stored once, {len(lost)} lost, {len(duplicates)} duplicates; "
          f"{len(closes)} closes {sorted(set(closes))}, {sum(c.resent for c in chatters)} resends, "
          f"errors {sorted(set(code for c in chatters for code in c.errors))}")
    assert exits == [(0, s) for _, s in exits] and all(s < 5 for _, s in exits)
    assert len(sent) == total_sent and not lost and not duplicates and len(rows) == total_sent
    assert all(c.acked[m] == stored[m][0].seq for c in chatters for m in c.acked)  # a resend got its first seq
    assert all(sorted(seqs) == list(range(1, len(seqs) + 1)) for seqs in by_conversation.values())
    # Every client was moved at least once, always with 1012, and resynced to its conversation's end.
    assert all(c.closes for c in chatters) and set(closes) == {1012}
    assert all(c.last_seq() == len(by_conversation[c.conversation_id]) for c in chatters)
    assert set(code for c in chatters for code in c.errors) <= {50008}
