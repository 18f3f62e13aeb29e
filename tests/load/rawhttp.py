"""A minimal HTTP/1.1 client for load tools: keep-alive connections pooled, raw sockets.

    from tests.load import rawhttp
    pool = rawhttp.Pool("http://127.0.0.1:8080", size=64)
    answer = pool.post("/api/v1/messages", b'{"...": 1}', token="...")  # .status .body .headers .resent

Only what a load tool needs against the gateway (RFC 9112): ``POST`` with a ``Content-Length``
body and an optional bearer token; responses framed by ``Content-Length`` (every gateway answer
is), or by the end of the connection. ``Connection: close`` is honoured. No TLS, no chunked
bodies. A pooled connection the server closed while it was idle (gunicorn's ``keepalive``) fails
on the next request before any byte of an answer arrives; :meth:`Pool.post` then sends the request
once more on a new connection and says so (``Answer.resent``): the caller's request must be safe to send
twice (a PingMe send is, by its ``msg_id``).

Plain ``socket``: under gevent (``monkey.patch_all()`` before importing this module) it is
cooperative, and the pool's semaphore is gevent's. It is cheaper per request than ``http.client``,
so the load tool is less of the load it measures.
"""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RECV_SIZE = 64 * 1024
MAX_HEAD = 16 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 this client can read."""


class Closed(ConnectionError):
    """The connection ended before a whole answer arrived (``started``: some of it had)."""

    def __init__(self, started: bool):
        super().__init__("connection closed " + ("mid-answer" if started else "before an answer"))
        self.started = started


@dataclass
class Answer:
    status: int
    body: bytes
    resent: bool = False  # the request went twice (its first connection had been closed while idle)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, host: str, port: int, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.requests = 0

    def request(self, raw: bytes) -> tuple[Answer, bool]:
        """Send one whole request; its answer, and whether the connection may be used again."""
        self.requests += 1
        self.sock.sendall(raw)
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                raise ProtocolError("response head too long")
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise Closed(started=bool(buf))
            buf += chunk
        lines = buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        if "transfer-encoding" in headers:
            raise ProtocolError("chunked responses are not supported")
        keep = parts[0] == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
        length = int(headers.get("content-length", -1))
        rest = buf[end + 4:]
        if length < 0:  # framed by the end of the connection
            while chunk := self.sock.recv(RECV_SIZE):
                rest += chunk
            self.buf = b""
            return Answer(int(parts[1]), rest, headers=headers), False
        while len(rest) < length:
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise Closed(started=True)
            rest += chunk
        self.buf = rest[length:]
        return Answer(int(parts[1]), rest[:length], headers=headers), keep

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Pool:
    """At most ``size`` connections to one server; a request waits for a free one."""

    def __init__(self, url: str, size: int = 64, timeout: float = 30.0):
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs, not {url!r}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.host_header = parts.netloc.encode()
        self.timeout = timeout
        self._idle: list[Connection] = []
        self._slots = threading.BoundedSemaphore(size)
        self.opened = 0

    def _raw(self, method: str, path: str, body: bytes, token: str | None) -> bytes:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host_header,
                b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
        if token:
            head.append(b"Authorization: Bearer " + token.encode())
        return b"\r\n".join(head) + b"\r\n\r\n" + body

    def _connect(self) -> Connection:
        self.opened += 1
        return Connection(self.host, self.port, self.timeout)

    def post(self, path: str, body: bytes, token: str | None = None) -> Answer:
        """The answer (``resent`` when an idle connection had been closed by the server and the
        request went again on a new one). OSError or :class:`Closed` when there is no answer (the
        request may or may not have been acted on)."""
        raw = self._raw("POST", path, body, token)
        with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is not None:
                try:
                    return self._finish(conn, raw)
                except (Closed, ConnectionResetError, BrokenPipeError) as exc:
                    conn.close()
                    if isinstance(exc, Closed) and exc.started:
                        raise
                answer = self._finish(self._connect(), raw)
                answer.resent = True
                return answer
            return self._finish(self._connect(), raw)

    def _finish(self, conn: Connection, raw: bytes) -> Answer:
        try:
            answer, keep = conn.request(raw)
        except BaseException:
            conn.close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
