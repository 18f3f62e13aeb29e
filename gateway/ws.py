"""The WebSocket endpoint ``/ws`` and this gateway's live connections.

Writes never wait. Every frame of a connection goes through its :class:`SocketWriter`: the caller writes
it at once when the kernel takes it whole (the common case: one ``send`` call, no queue, no
greenlet); otherwise it, and every later frame, waits in a bounded backlog that one short-lived
greenlet writes out in order. So a slow reader never blocks the inbox or other clients, and a
client whose backlog fills is disconnected instead of growing memory. Data frames are framed here
(server frames are unmasked, so a push to many connections is framed once) rather than by
wsproto. What each client frame does is gateway/frames.py's; the frames themselves and the close
codes are common/protocol.py's; this module is transport only.

Two simple-websocket 1.1.0 traps are handled by :class:`SafeServer`: its ``socket.send`` can write a
partial frame to a slow reader (upstream issue #45) — the outbox only ever writes whole frames in
order; and a negotiated per-message deflate keeps a zlib context per socket (~90 KB), so
compression is not offered (chat frames are small JSON).

A browser's upgrade is refused (HTTP 403, 10004) unless its ``Origin`` is the gateway's own or in
``app.allowed_origins`` (:func:`check_origin`).

Each client frame is handled under a correlation id of its own (common/logs.py). While the gateway
drains (``Gateway.drain``) no frame is handled and no new socket stays open: each is closed with
1012 (Service Restart).

:func:`init_app` adds the route to an app, and installs :class:`SafeServer` as the server class
flask-sock builds (it has no option for that: it calls its module's ``Server``).
"""
from __future__ import annotations

import collections
import logging
import socket
import struct
import threading
import time
import uuid

import flask_sock
import gevent
import peewee as pw
import redis
import simple_websocket
from flask import current_app, request
from wsproto.events import AcceptConnection, Ping
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from common import accounts, logs, presence, protocol, sessions, validate
from common.errors import AppError, Code
from common.models import now_ms
from common.protocol import (CLOSE_AUTH_FAILED, CLOSE_AUTH_TIMEOUT, CLOSE_FLOODING, CLOSE_SERVER_ERROR,
                             CLOSE_SERVICE_RESTART, CLOSE_TOKEN_REVOKED, CLOSE_TRY_AGAIN, FLOODING_REASON,
                             RESTART_REASON, REVOKED_REASON)
from common.ratelimit import Bucket, Rate
from gateway import frames, metrics

logger = logging.getLogger(__name__)

sock = flask_sock.Sock()
AUTH_TIMEOUT_S = 10
# A socket whose refused frames exceed this many times its frame budget within the budget's period is
# closed with 1008 (each refused frame still costs a parse and an answer).
FLOOD_FACTOR = 4
RECEIVE_POLL_S = 30
SERVER_OPTIONS = {"ping_interval": 25, "max_message_size": 64 * 1024}
DEFAULT_BACKLOG = 256


def ws_frame(text: str | bytes) -> bytes:
    """One unfragmented server-to-client text frame (RFC 6455 §5.2; servers do not mask)."""
    payload = text.encode() if isinstance(text, str) else text
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class SlowReader(ConnectionError):
    """The peer stopped reading and its backlog is full: the socket was shut down."""


class SocketWriter:
    """The socket every frame of one connection is written through: whole frames, in order,
    without ever waiting (see the module docstring). Under gevent only: the direct write relies on
    gevent's non-waiting ``send(..., timeout=0.0)`` and on greenlets not preempting each other."""

    def __init__(self, sock, limit: int = DEFAULT_BACKLOG):
        self._sock = sock
        self.limit = limit
        self._backlog: collections.deque[bytes] | None = None  # created for slow readers only
        self._writer = None

    def send(self, data: bytes) -> int:
        if self._writer is None:
            try:
                sent = self._sock.send(data, 0, timeout=0.0)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return sent
            data = data[sent:]
            self._backlog = collections.deque()
            self._writer = gevent.spawn(self._drain)
        elif len(self._backlog) >= self.limit:
            self.abort()
            raise SlowReader(f"{len(self._backlog)} frames waiting")
        self._backlog.append(data)
        return len(data)

    def _drain(self) -> None:
        try:
            while self._backlog:
                self._sock.sendall(self._backlog.popleft())
        except OSError:
            pass
        finally:
            self._writer = self._backlog = None

    def abort(self) -> None:
        """Drop the connection at once, without the closing handshake a stuck reader cannot take:
        the client sees it end (1006) and, on reconnecting, catches up by sync."""
        if self._backlog:
            self._backlog.clear()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # also wakes a writer blocked in sendall
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _NotStarted:
    """Stands in for simple-websocket's reader thread: :meth:`SafeServer.receive` reads in the
    route's own greenlet instead, so an idle connection costs one greenlet, not two."""

    name = "inline-reader"

    def __init__(self, target=None):
        pass

    def start(self) -> None:
        pass


class SafeServer(simple_websocket.Server):
    def __init__(self, environ, **options):
        options.setdefault("thread_class", _NotStarted)
        super().__init__(environ, **options)
        self.environ = None  # the request keeps it; the connection does not need its own reference
        self._next_ping = time.monotonic() + (self.ping_interval or 0)

    def handshake(self):
        self.sock = SocketWriter(self.sock)
        accept = self.ws.send

        def send_without_deflate(event):
            if isinstance(event, AcceptConnection):
                event = AcceptConnection(subprotocol=event.subprotocol, extensions=[],
                                         extra_headers=event.extra_headers)
            return accept(event)

        self.ws.send = send_without_deflate
        super().handshake()
        # The open connection needs only wsproto's frame layer; dropping the handshake's h11
        # machinery saves ~2 KB per socket.
        if self.ws.connection is not None:
            self.ws = self.ws.connection

    def receive(self, timeout=None):
        """The next message, or None after ``timeout`` seconds; ConnectionClosed once closed.
        Reads the socket itself, answers pings, and sends a ping every ``ping_interval`` (closing
        with 1008 when the previous one got no pong), as simple-websocket's thread would."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.connected and not self.input_buffer:
            now = time.monotonic()
            if self.ping_interval and now >= self._next_ping:
                self._ping()
                continue
            waits = [t - now for t in (deadline, self._next_ping if self.ping_interval else None) if t is not None]
            if waits and min(waits) <= 0:
                return None
            with gevent.Timeout(min(waits) if waits else None, False):
                try:
                    data = self.sock.recv(self.receive_bytes)
                    if not data:
                        raise ConnectionResetError("end of stream")
                    self.ws.receive_data(data)
                    self.connected = self._handle_events()
                except (OSError, LocalProtocolError):
                    self.connected = False
        if self.input_buffer:
            return self.input_buffer.pop(0)
        self.sock.close()
        raise simple_websocket.ConnectionClosed(self.close_reason, self.close_message)

    def _ping(self) -> None:
        self._next_ping = time.monotonic() + self.ping_interval
        if not self.pong_received:
            self.close(reason=CloseReason.POLICY_VIOLATION, message="Ping/Pong timeout")
            return
        self.pong_received = False
        try:
            self.sock.send(self.ws.send(Ping()))
        except OSError:
            self.connected = False


class Connection:
    """One authenticated socket of this gateway."""

    def __init__(self, ws, user_id: int, limit: int = DEFAULT_BACKLOG, conn_id: str | None = None,
                 claims: dict | None = None, rate=None):
        self.ws = ws
        self.user_id = user_id
        self.conn_id = conn_id or uuid.uuid4().hex[:16]
        self.closed = False
        # The token it authenticated with (common/sessions.py: re-checked when the user's tokens are
        # revoked) and its own frame budget (ratelimit.ws_connection; None: not limited).
        self.claims = claims or {"sub": str(user_id)}
        self.bucket = Bucket(rate) if rate is not None else None
        # Refused frames have a budget too: FLOOD_FACTOR times the frame budget per period. A client
        # that spends it (it keeps sending after 10007) is closed with 1008.
        self.abuse = Bucket(Rate(rate.count * FLOOD_FACTOR, rate.period_s)) if rate is not None else None
        self.flooding = False
        ws.sock.limit = limit

    def push(self, text: str) -> bool:
        if self.push_frame(ws_frame(text)):
            metrics.frames_out(text)
            return True
        return False

    def push_frame(self, data: bytes) -> bool:
        """Write (or queue) an already framed message; False when the connection is gone."""
        if self.closed or not self.ws.connected:
            return False
        try:
            self.ws.sock.send(data)
            return True
        except SlowReader as exc:
            metrics.SLOW_READER_DROPS.inc()
            logger.warning("conn %s user %d too slow (%s); disconnecting", self.conn_id, self.user_id, exc)
        except OSError:
            pass
        self.closed = True
        return False

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with the WebSocket handshake (from the route only)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.ws.close(reason=code, message=reason)
        except Exception:  # already closed by the peer
            pass


class Hub:
    """This gateway's connections, their presence heartbeats and the pushes addressed to them."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.conns: dict[str, Connection] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._heartbeat, name="presence-heartbeat", daemon=True).start()

    def stop(self) -> None:
        """End the presence heartbeat (the gateway is closing)."""
        self._stop.set()

    def add(self, conn: Connection) -> bool:
        """Register a connection; True when its user just came online."""
        self.conns[conn.conn_id] = conn
        metrics.WS_OPENED.inc()
        gw = self.gateway
        return presence.connect(gw.redis, gw.cfg, conn.user_id, conn.conn_id, gw.cfg.app.gateway_id, now_ms())

    def remove(self, conn: Connection) -> bool:
        """Forget a connection; True when it was its user's last one anywhere."""
        if self.conns.pop(conn.conn_id, None) is not None:
            metrics.WS_CLOSED.inc()
        conn.close()
        return presence.disconnect(self.gateway.redis, self.gateway.cfg, conn.user_id, conn.conn_id, now_ms())

    def reply_channel_lost(self) -> None:
        """The inbox lost its subscription: acks and errors published until it is back are gone,
        so every client is told to reconnect and resend what is unacknowledged."""
        logger.warning("reply channel lost code=%d: closing %d connections with %d", Code.CACHE_ERROR,
                       len(self.conns), CLOSE_TRY_AGAIN)
        self.close_all(CLOSE_TRY_AGAIN, "reply channel lost; reconnect and resend")

    def close_all(self, code: int, reason: str) -> None:
        """Start the closing handshake of every connection (their routes end when it completes)."""
        for conn in list(self.conns.values()):
            conn.close(code, reason)

    def drop_all(self) -> int:
        """Shut down the sockets of the connections still here (their peers did not answer a close);
        return how many."""
        conns = list(self.conns.values())
        for conn in conns:
            conn.ws.sock.abort()
        return len(conns)

    def on_message(self, message: dict) -> None:
        """A message on this gateway's channel that is not a reply to a waiting HTTP request: a
        frame for some of its connections (common/protocol.py ``push``), or a user's tokens revoked
        (``revoke``)."""
        if message.get("type") == "revoke":
            self.revoke(message.get("user_id"))
            return
        if message.get("type") != "push":
            logger.warning("gateway channel: unexpected message type %r", message.get("type"))
            return
        text = message.get("text") or ""
        data, pushed = ws_frame(text), 0
        for conn_id in message.get("conns") or ():
            conn = self.conns.get(conn_id)
            if conn is not None and conn.push_frame(data):
                pushed += 1
        metrics.frames_out(text, pushed)

    def revoke(self, user_id) -> int:
        """Close (4003) every socket of ``user_id`` whose token is no longer good; how many."""
        conns = [c for c in list(self.conns.values()) if c.user_id == user_id and not c.closed]
        gw, closed = self.gateway, 0
        for conn in conns:
            if sessions.revoked(gw.redis, gw.cfg, conn.claims):
                metrics.TOKENS_REVOKED_CLOSES.inc()
                logger.info("conn %s of user %d closed code=%d: token revoked", conn.conn_id, user_id,
                            CLOSE_TOKEN_REVOKED)
                conn.close(CLOSE_TOKEN_REVOKED, REVOKED_REASON)
                closed += 1
        return closed

    def _heartbeat(self) -> None:
        while not self._stop.wait(presence.HEARTBEAT_S):
            live = [(c.user_id, c.conn_id) for c in list(self.conns.values()) if not c.closed]
            if not live:
                continue
            try:
                presence.refresh(self.gateway.redis, self.gateway.cfg, live, self.gateway.cfg.app.gateway_id, now_ms())
            except Exception as exc:  # Redis down: connections expire unless a later beat lands
                logger.error("presence heartbeat failed code=%d: %s", Code.CACHE_ERROR, type(exc).__name__)


def _first_frame_token(text) -> str:
    """The token of a first ``auth`` frame ("" for anything else: refused as a missing token)."""
    if not isinstance(text, str):
        return ""
    try:
        first = validate.parse_json(text, max_bytes=4096)
    except AppError:
        return ""
    payload = first.get("payload") if isinstance(first, dict) and first.get("type") == "auth" else None
    token = payload.get("token") if isinstance(payload, dict) else None
    return token if isinstance(token, str) else ""


def _authenticate(ws, gw) -> dict | None:
    """The claims of the token from ``?token=`` or a first ``auth`` frame within 10 s (revoked
    tokens refused: common/sessions.py); None after closing (4001, 4002)."""
    token = request.args.get("token")
    if not token:
        deadline = time.monotonic() + AUTH_TIMEOUT_S
        text = ws.receive(timeout=AUTH_TIMEOUT_S)
        if text is None or time.monotonic() > deadline:
            ws.send(metrics.counted(protocol.auth_fail(AppError(Code.UNAUTHORIZED, "no auth frame within 10 s"))))
            ws.close(reason=CLOSE_AUTH_TIMEOUT, message="authentication timeout")
            return None
        token = _first_frame_token(text)
    try:
        return accounts.authenticate_claims(token, gw.cfg, gw.redis)
    except AppError as exc:
        ws.send(metrics.counted(protocol.auth_fail(exc)))
        ws.close(reason=CLOSE_AUTH_FAILED, message=exc.message)
        return None


def init_app(app) -> None:
    """Serve ``/ws`` on ``app`` with :class:`SafeServer`."""
    flask_sock.Server = SafeServer  # flask-sock builds `Server(environ, **SOCK_SERVER_OPTIONS)`
    app.config["SOCK_SERVER_OPTIONS"] = dict(SERVER_OPTIONS)
    sock.init_app(app)


@sock.route("/ws")
def websocket(ws):
    """Every way this ends is a WebSocket close with a documented code, never an HTTP answer
    written into the upgraded socket."""
    gw = current_app.extensions["pingme"]
    try:
        if gw.draining:
            ws.close(reason=CLOSE_SERVICE_RESTART, message=RESTART_REASON)
            return
        if not gw.inbox.connected:
            ws.close(reason=CLOSE_TRY_AGAIN, message="reply channel unavailable; reconnect later")
            return
        _serve(ws, gw)
    except simple_websocket.ConnectionClosed:
        raise  # flask-sock ends the request quietly
    except Exception as exc:
        _close_quietly(ws, *_failure_close(exc))


def _failure_close(exc: Exception) -> tuple[int, str]:
    """The close code and reason for an error that ends a socket, logged: 1013 for an outage of
    Redis or the database (reconnect later), 1011 for anything else (a bug, with its traceback)."""
    if isinstance(exc, redis.RedisError):
        logger.error("websocket closed code=%d: redis unavailable (%s)", Code.CACHE_ERROR, type(exc).__name__)
        return CLOSE_TRY_AGAIN, "redis unavailable; reconnect later"
    if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
        logger.error("websocket closed code=%d: database unavailable (%s)", Code.DATABASE_ERROR,
                     type(exc).__name__)
        return CLOSE_TRY_AGAIN, "database unavailable; reconnect later"
    logger.error("websocket closed code=%d: unexpected error", Code.WEBSOCKET_ERROR, exc_info=exc)
    return CLOSE_SERVER_ERROR, "server error"


def origin_allowed(origin: str, host: str, allowed: tuple[str, ...]) -> bool:
    """A browser page's ``Origin`` may open ``/ws`` when it is listed in ``app.allowed_origins``
    (``*``: any) or is the gateway's own origin: its host[:port] is the request's ``Host``."""
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return True
    scheme, sep, netloc = origin.partition("://")
    default_port = {"http": ":80", "https": ":443"}.get(scheme)
    host = host.strip().lower()
    return bool(sep and netloc and default_port) and \
        netloc.removesuffix(default_port) == host.removesuffix(default_port)


@sock.bp.before_request
def check_origin():
    """Refuse the upgrade (403, 10004) to a page of another origin: a browser sends its page's
    ``Origin``, and a socket opened by a foreign page would act as its user. Clients that are not
    browsers send no ``Origin`` and are not checked."""
    origin = request.headers.get("Origin")
    if origin is None or origin_allowed(origin, request.host, current_app.config["PINGME"].app.allowed_origins):
        return
    logger.warning("websocket upgrade refused code=%d: origin %.100r is not allowed for host %.100r",
                   Code.FORBIDDEN, origin, request.host)
    raise AppError(Code.FORBIDDEN, "this origin may not open the WebSocket (app.allowed_origins)")


def _close_quietly(ws, code: int, reason: str) -> None:
    try:
        ws.close(reason=code, message=reason)
    except Exception:  # the peer is already gone
        pass


def _serve(ws, gw) -> None:
    claims = _authenticate(ws, gw)
    if claims is None:
        return
    user_id = int(claims["sub"])
    rl = gw.cfg.ratelimit
    conn = Connection(ws, user_id, gw.cfg.app.ws_queue_limit, claims=claims,
                      rate=rl.ws_connection if rl.enabled else None)
    try:
        if gw.hub.add(conn):
            gw.announce_presence(user_id, True)
        if gw.draining:  # it began while this socket authenticated
            conn.close(CLOSE_SERVICE_RESTART, RESTART_REASON)
        conn.push(protocol.frame("auth_ok", {"user_id": user_id, "conn_id": conn.conn_id}))
        while not conn.closed:
            text = ws.receive(timeout=RECEIVE_POLL_S)
            if text is None or gw.draining:  # a frame after the drain began is the client's to resend
                continue
            with logs.correlation(logs.new_cid()):  # one correlation id per client frame
                for reply in frames.handle(text, conn, gw):
                    conn.push(reply)
            if conn.flooding:
                logger.info("conn %s of user %d closed code=%d: flooding past its frame budget", conn.conn_id,
                            user_id, CLOSE_FLOODING)
                conn.close(CLOSE_FLOODING, FLOODING_REASON)
            # A burst of frames read in one go is handled without waiting for the socket: let the
            # other connections' greenlets run between two frames (a flood must not stall them).
            gevent.sleep(0)
    except simple_websocket.ConnectionClosed:
        raise
    except Exception as exc:  # closed here with its code: the close in `finally` would say 1000
        conn.close(*_failure_close(exc))
    finally:
        try:
            if gw.hub.remove(conn):
                gw.announce_presence(user_id, False)
        except redis.RedisError:  # its presence entry expires by itself
            pass
