"""The WebSocket endpoint ``/ws`` and this gateway's live connections.

One connection = the route's receive loop + one writer with a bounded queue. Everything sent to a
client goes through its queue, so a slow reader never blocks the inbox or other clients; a client
whose queue fills is disconnected instead of growing memory. Frame logic lives in
gateway/frames.py; this module is transport only.

Two simple-websocket 1.1.0 traps are handled by :class:`SafeServer`: its ``socket.send`` can write a
partial frame to a slow reader (upstream issue #45), so every write is a locked ``sendall``; and a
negotiated per-message deflate keeps a zlib context per socket (~90 KB), so compression is not
offered (chat frames are small JSON).
"""
from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
import uuid

import flask_sock
import simple_websocket
from flask import current_app, request
from wsproto.events import AcceptConnection

from common import auth, presence
from common.errors import AppError, Code
from common.models import now_ms
from gateway.app import sock

logger = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10
RECEIVE_POLL_S = 30
CLOSE_AUTH_FAILED = 4001
CLOSE_AUTH_TIMEOUT = 4002
SERVER_OPTIONS = {"ping_interval": 25, "max_message_size": 64 * 1024}


class _SendAllSocket:
    """A socket whose ``send`` writes everything, one writer at a time."""

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, data):
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class SafeServer(simple_websocket.Server):
    def handshake(self):
        self.sock = _SendAllSocket(self.sock)
        accept = self.ws.send

        def send_without_deflate(event):
            if isinstance(event, AcceptConnection):
                event = AcceptConnection(subprotocol=event.subprotocol, extensions=[],
                                         extra_headers=event.extra_headers)
            return accept(event)

        self.ws.send = send_without_deflate
        super().handshake()


# flask-sock builds `Server(environ, **SOCK_SERVER_OPTIONS)` from its module namespace.
flask_sock.Server = SafeServer


def frame(kind: str, payload: dict) -> str:
    return json.dumps({"type": kind, "payload": payload}, separators=(",", ":"), ensure_ascii=False)


class Connection:
    """One authenticated socket: ``push`` queues a frame, the writer sends it."""

    def __init__(self, ws, user_id: int, limit: int, conn_id: str | None = None):
        self.ws = ws
        self.user_id = user_id
        self.conn_id = conn_id or uuid.uuid4().hex[:16]
        self._queue: queue.Queue = queue.Queue(maxsize=limit)
        self.closed = False
        self._writer = threading.Thread(target=self._write, name=f"ws-writer-{self.conn_id}", daemon=True)
        self._writer.start()

    def push(self, text: str) -> bool:
        if self.closed:
            return False
        try:
            self._queue.put_nowait(text)
            return True
        except queue.Full:
            logger.warning("conn %s user %d too slow (%d frames queued); disconnecting",
                           self.conn_id, self.user_id, self._queue.qsize())
            self.abort()
            return False

    def abort(self) -> None:
        """Drop the connection at once, without the closing handshake a stuck reader cannot take.

        The client sees the connection end (1006) and, on reconnecting, catches up by sync.
        """
        self.closed = True
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the writer blocked in sendall
        except OSError:
            pass

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Stop the writer and close with the WebSocket handshake (from the route only)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        try:
            self.ws.close(reason=code, message=reason)
        except Exception:  # already closed by the peer
            pass

    def _write(self) -> None:
        while True:
            text = self._queue.get()
            if text is None or not self.ws.connected:
                return
            try:
                self.ws.send(text)
            except (simple_websocket.ConnectionClosed, OSError):
                self.closed = True
                return


class Hub:
    """This gateway's connections, their presence heartbeats and the pushes addressed to them."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.conns: dict[str, Connection] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._heartbeat, name="presence-heartbeat", daemon=True).start()

    def add(self, conn: Connection) -> bool:
        """Register a connection; True when its user just came online."""
        self.conns[conn.conn_id] = conn
        gw = self.gateway
        return presence.connect(gw.redis, gw.cfg, conn.user_id, conn.conn_id, gw.cfg.app.gateway_id, now_ms())

    def remove(self, conn: Connection) -> bool:
        """Forget a connection; True when it was its user's last one anywhere."""
        self.conns.pop(conn.conn_id, None)
        conn.close()
        return presence.disconnect(self.gateway.redis, self.gateway.cfg, conn.user_id, conn.conn_id, now_ms())

    def on_message(self, message: dict) -> None:
        """A message on this gateway's channel that is not a reply to a waiting HTTP request."""
        kind = message.get("type")
        if kind == "push":
            text = message.get("text") or ""
            for conn_id in message.get("conns") or ():
                conn = self.conns.get(conn_id)
                if conn is not None:
                    conn.push(text)
        elif kind in ("ack", "error") and message.get("conn_id"):
            conn = self.conns.get(message["conn_id"])
            if conn is not None:
                if kind == "ack":
                    conn.push(frame("message_ack", message.get("data") or {}))
                else:
                    conn.push(frame("error", message.get("error") or {}))
        else:
            logger.warning("gateway channel: unexpected message type %r", kind)

    def _heartbeat(self) -> None:
        while not self._stop.wait(presence.HEARTBEAT_S):
            live = [(c.user_id, c.conn_id) for c in list(self.conns.values()) if not c.closed]
            if not live:
                continue
            try:
                presence.refresh(self.gateway.redis, self.gateway.cfg, live, self.gateway.cfg.app.gateway_id, now_ms())
            except Exception as exc:  # Redis down: connections expire unless a later beat lands
                logger.error("presence heartbeat failed code=%d: %s", Code.CACHE_ERROR, type(exc).__name__)


def _authenticate(ws, cfg) -> int | None:
    """The user id from ``?token=`` or a first ``auth`` frame within 10 s; None after closing."""
    token = request.args.get("token")
    if not token:
        deadline = time.monotonic() + AUTH_TIMEOUT_S
        text = ws.receive(timeout=AUTH_TIMEOUT_S)
        if text is None or time.monotonic() > deadline:
            ws.send(frame("auth_fail", {"code": int(Code.UNAUTHORIZED), "message": "no auth frame within 10 s"}))
            ws.close(reason=CLOSE_AUTH_TIMEOUT, message="authentication timeout")
            return None
        try:
            first = json.loads(text)
            token = first["payload"]["token"] if first.get("type") == "auth" else None
        except (ValueError, TypeError, KeyError, AttributeError):
            token = None
    try:
        return auth.verify_token(token or "", cfg.jwt)
    except AppError as exc:
        ws.send(frame("auth_fail", {"code": int(exc.code), "message": exc.message}))
        ws.close(reason=CLOSE_AUTH_FAILED, message=exc.message)
        return None


@sock.route("/ws")
def websocket(ws):
    from gateway import frames

    gw = current_app.extensions["pingme"]
    user_id = _authenticate(ws, gw.cfg)
    if user_id is None:
        return
    conn = Connection(ws, user_id, gw.cfg.app.ws_queue_limit)
    came_online = gw.hub.add(conn)
    conn.push(frame("auth_ok", {"user_id": user_id, "conn_id": conn.conn_id}))
    if came_online:
        gw.announce_presence(user_id, True)
    try:
        while not conn.closed:
            text = ws.receive(timeout=RECEIVE_POLL_S)
            if text is None:
                continue
            for reply in frames.handle(text, conn, gw):
                conn.push(reply)
    finally:
        if gw.hub.remove(conn):
            gw.announce_presence(user_id, False)
