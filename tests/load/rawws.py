"""A minimal raw-socket WebSocket client for load tools that must receive tens of thousands of
frames per second without becoming the bottleneck themselves.

    from tests.load import rawws
    ws = rawws.connect("ws://127.0.0.1:8080/ws?token=...")
    ws.send_text('{"type":"ping","payload":{}}')
    for payload in ws.recv_messages():   # blocks for one socket read; bytes of each text message
        ...

Only what a PingMe client needs (RFC 6455): the HTTP Upgrade handshake done by hand (bytes that
arrive behind the 101 in the same read are kept, PingMe sends ``auth_ok`` right behind it),
unmasked server frames with 7-, 16- and 64-bit lengths, fragmented messages, text/binary/close/
ping/pong. Pings are answered with a masked pong; a close is answered and ends the socket. Frames
the client sends are masked, as clients must. No extensions (PingMe offers no per-message deflate)
and no TLS.

Plain ``socket``: under gevent (``monkey.patch_all()`` before importing this module) it is
cooperative. :func:`msg_id_of` and :func:`frame_type` read a PingMe frame's fields with
``bytes.find`` so the hot path needs no ``json.loads``.
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading
from collections import deque
from urllib.parse import urlsplit

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV_SIZE = 64 * 1024       # per connection (allocated up front)
MAX_HEADER = 16 * 1024
MAX_MESSAGE = 16 * 1024 * 1024


class ProtocolError(Exception):
    """The server broke the WebSocket protocol (or the handshake failed)."""


class Closed(Exception):
    """The connection ended: a close frame (``code``) or end of stream (``code`` 1006)."""

    def __init__(self, code: int = 1006, reason: str = ""):
        super().__init__(f"websocket closed {code} {reason}".strip())
        self.code, self.reason = code, reason


# --- framing ----------------------------------------------------------------------------------


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, mask_key: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; masked with ``mask_key`` when given (a client always gives one)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask_key is not None else 0
    if n < 126:
        header = struct.pack("!BB", first, bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if mask_key is None:
        return header + payload
    return header + mask_key + mask(payload, mask_key)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame with a fresh random key, as a client sends it."""
    return encode_frame(opcode, payload, os.urandom(4))


class FrameParser:
    """Incremental parser: :meth:`feed` bytes in any split, get back every complete frame.

    Returns ``(opcode, payload)`` per frame; fragments of a data message are joined and returned
    once, with the first fragment's opcode. Control frames may arrive between fragments.
    """

    def __init__(self, max_message: int = MAX_MESSAGE):
        self.buf = bytearray()
        self.max_message = max_message
        self._fragments: list[bytes] = []
        self._fragment_op = 0

    def feed(self, data) -> list[tuple[int, bytes]]:
        buf = self.buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, start = b1 & 0x7F, pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,), start = struct.unpack_from("!Q", buf, pos + 2), pos + 10
            if length > self.max_message:
                raise ProtocolError(f"frame of {length} bytes")
            key = None
            if b1 & 0x80:  # servers must not mask; tolerated so the parser is symmetric
                if size - start < 4:
                    break
                key, start = bytes(buf[start:start + 4]), start + 4
            end = start + length
            if end > size:
                break
            payload = bytes(buf[start:end])
            if key is not None:
                payload = mask(payload, key)
            pos = end
            self._frame(b0 & 0x80, b0 & 0x0F, payload, out)
        if pos:
            del buf[:pos]
        return out

    def _frame(self, fin: int, opcode: int, payload: bytes, out: list) -> None:
        if opcode >= OP_CLOSE:  # control frames are never fragmented
            out.append((opcode, payload))
        elif opcode == OP_CONT:
            if not self._fragments:
                raise ProtocolError("continuation without a first fragment")
            self._fragments.append(payload)
            if fin:
                out.append((self._fragment_op, b"".join(self._fragments)))
                self._fragments = []
        elif self._fragments:
            raise ProtocolError("new data frame inside a fragmented message")
        elif fin:
            out.append((opcode, payload))
        else:
            self._fragments, self._fragment_op = [payload], opcode


def close_code(payload: bytes) -> tuple[int, str]:
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return 1005, ""


# --- PingMe frame fields without json.loads ---------------------------------------------------

_TYPE_PREFIX = b'{"type":"'
_MSG_ID_KEY = b'"msg_id":"'


def frame_type(data: bytes) -> bytes | None:
    """The ``type`` of a compact PingMe frame (the gateway writes ``{"type":"...",``), or None when
    the frame does not start that way (then use json.loads)."""
    if not data.startswith(_TYPE_PREFIX):
        return None
    end = data.find(b'"', 9)
    return data[9:end] if end > 0 else None


def msg_id_of(data: bytes) -> bytes | None:
    """The first ``"msg_id":"..."`` value of a frame. Inside a JSON string every quote is escaped,
    so this key cannot match text in a message's content; msg ids with escapes are not supported
    (load tools use UUIDs)."""
    at = data.find(_MSG_ID_KEY)
    if at < 0:
        return None
    at += len(_MSG_ID_KEY)
    end = data.find(b'"', at)
    return data[at:end] if end > 0 else None


# --- the client -------------------------------------------------------------------------------


def handshake_request(host: str, target: str, key: str) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def check_handshake(head: bytes, key: str) -> None:
    """Raise ProtocolError unless ``head`` (the response headers) accepts our upgrade."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise ProtocolError(f"handshake refused: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise ProtocolError("bad Sec-WebSocket-Accept")


class RawWebSocket:
    """One client connection. Not for concurrent readers; writes are single ``sendall`` calls."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"", recv_size: int = RECV_SIZE):
        self.sock = sock
        self.parser = FrameParser()
        self._rbuf = bytearray(recv_size)
        self._view = memoryview(self._rbuf)
        self._pending: deque[bytes] = deque()
        self._write_lock = threading.Lock()  # the sender and a pong may write at the same time
        self.closed = False
        self.close_status: tuple[int, str] = (1006, "")
        if leftover:
            self._pending.extend(self._handle(self.parser.feed(leftover)))

    # sending
    def send_text(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self._write(client_frame(OP_TEXT, data))

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            self.sock.sendall(frame)

    def close(self, code: int = 1000) -> None:
        """Send a close frame (best effort) and close the socket; no waiting for the answer."""
        if self.closed:
            return
        self.closed = True
        try:
            self._write(client_frame(OP_CLOSE, struct.pack("!H", code)))
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    # receiving
    def recv_messages(self) -> list[bytes]:
        """Every text/binary message of one socket read (blocks for the read; may return [] when
        the read held only control frames or part of a frame). Raises :class:`Closed` once the
        connection has ended and everything before the end was returned; a socket timeout (see
        :meth:`receive`) propagates and leaves the connection open."""
        if self._pending:
            out = list(self._pending)
            self._pending.clear()
            return out
        if self.closed:
            raise Closed(*self.close_status)
        try:
            n = self.sock.recv_into(self._rbuf)
        except socket.timeout:
            raise
        except OSError as exc:
            self.closed = True
            raise Closed(1006, str(exc)) from None
        if n == 0:
            self.closed = True
            raise Closed(1006, "end of stream")
        return self._handle(self.parser.feed(self._view[:n]))

    def receive(self, timeout: float | None = None) -> bytes:
        """The next message (for the slow paths: handshake, auth_ok, sync); :class:`Closed` once
        every message before the server's close was returned."""
        if not self.closed:
            self.sock.settimeout(timeout)
        try:
            while not self._pending:
                self._pending.extend(self.recv_messages())
        finally:
            if not self.closed:  # a close read with the message has closed the socket already
                self.sock.settimeout(None)
        return self._pending.popleft()

    def _handle(self, frames: list[tuple[int, bytes]]) -> list[bytes]:
        out = []
        for opcode, payload in frames:
            if opcode == OP_TEXT or opcode == OP_BINARY:
                out.append(payload)
            elif opcode == OP_PING:
                try:
                    self._write(client_frame(OP_PONG, payload))
                except OSError:  # the connection is going; the next read says so
                    pass
            elif opcode == OP_CLOSE:  # answer it; the messages before it are returned, the next call raises
                code, reason = close_code(payload)
                self.close(code if code not in (1005, 1006) else 1000)
                self.close_status = (code, reason)
                break
        return out


def connect(url: str, timeout: float = 10.0, recv_size: int = RECV_SIZE) -> RawWebSocket:
    """Open ``ws://host:port/path?query``: TCP, the Upgrade handshake, and any frames that came
    with the 101."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError("only ws:// URLs")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(handshake_request(parts.netloc, target, key))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ProtocolError("connection closed during the handshake")
            data += chunk
            if len(data) > MAX_HEADER:
                raise ProtocolError("handshake response too large")
        head, _, leftover = data.partition(b"\r\n\r\n")
        check_handshake(head, key)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return RawWebSocket(sock, leftover, recv_size)
