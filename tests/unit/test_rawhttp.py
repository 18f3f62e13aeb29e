"""The load tools' raw HTTP client against a scripted server on loopback: keep-alive reuse, answers
split across reads or sharing one, ``Connection: close``, a connection the server closed while idle
(sent again once, and said so), and a connection lost mid-answer (not sent again)."""
import socket
import threading

import pytest

from tests.load import rawhttp


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


class Server:
    """Accepts connections and runs ``script(conn, index)`` for each in a thread; records every
    request head it reads (the caller's ``read_request``)."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.accepted = 0
        self.script = script
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.script, args=(self, conn, self.accepted), daemon=True).start()

    def read_request(self, conn) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += conn.recv(4096)
        self.requests.append(head + b"\r\n\r\n" + body)
        return body

    def close(self):
        self.listener.close()


@pytest.fixture
def served():
    servers = []

    def start(script):
        servers.append(Server(script))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def echo_forever(server, conn, _index):
    with conn:
        while (body := server.read_request(conn)) is not None:
            reply = answer(b'{"echo":' + body + b"}")
            conn.sendall(reply[:7])  # a head split across reads
            conn.sendall(reply[7:])


def got(answer: rawhttp.Answer) -> tuple:
    return answer.status, answer.body, answer.resent


def test_requests_reuse_one_keep_alive_connection(served):
    server = served(echo_forever)
    pool = rawhttp.Pool(server.url, size=4)
    for n in range(3):
        answer = pool.post("/api/v1/messages", str(n).encode(), token="tok")
        assert got(answer) == (200, b'{"echo":%d}' % n, False)
        assert answer.headers["content-type"] == "application/json"
    assert server.accepted == 1 and pool.opened == 1
    head = server.requests[0]
    assert head.startswith(b"POST /api/v1/messages HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer tok\r\n" in head and b"\r\nContent-Length: 1\r\n" in head
    assert head.endswith(b"\r\n\r\n0")


def test_two_answers_in_one_read_are_kept_apart(served):
    def pipelined(server, conn, _index):
        with conn:
            server.read_request(conn)
            conn.sendall(answer(b"[1]") + answer(b"[2]", "409 Conflict"))  # the second before it is asked
            server.read_request(conn)
    server = served(pipelined)
    pool = rawhttp.Pool(server.url)
    assert got(pool.post("/a", b"{}")) == (200, b"[1]", False)
    assert got(pool.post("/b", b"{}")) == (409, b"[2]", False)


def test_connection_close_is_honoured(served):
    def closing(server, conn, _index):
        with conn:
            server.read_request(conn)
            conn.sendall(answer(b"{}", extra=b"Connection: close\r\n"))
    server = served(closing)
    pool = rawhttp.Pool(server.url)
    assert pool.post("/", b"{}").status == 200
    assert pool.post("/", b"{}").status == 200
    assert server.accepted == 2 and pool.opened == 2


def test_an_idle_connection_closed_by_the_server_is_sent_again_once(served):
    def one_then_idle_close(server, conn, index):
        with conn:
            server.read_request(conn)
            conn.sendall(answer(b'"%d"' % index))
            if index == 1:  # gunicorn's keepalive ran out: closed without answering the next one
                conn.recv(4096)
                return
            echo_forever(server, conn, index)
    server = served(one_then_idle_close)
    pool = rawhttp.Pool(server.url)
    assert got(pool.post("/", b"1")) == (200, b'"1"', False)
    assert got(pool.post("/", b"2")) == (200, b'"2"', True)
    assert server.accepted == 2


def test_an_answer_cut_short_is_not_sent_again(served):
    def half_answer(server, conn, _index):
        with conn:
            server.read_request(conn)
            conn.sendall(answer(b"{}"))
            server.read_request(conn)  # on the reused connection: the server got it, and acted
            conn.sendall(answer(b'{"long": "answer"}')[:-5])
    server = served(half_answer)
    pool = rawhttp.Pool(server.url)
    assert got(pool.post("/", b"{}")) == (200, b"{}", False)
    with pytest.raises(rawhttp.Closed) as caught:
        pool.post("/", b"{}")
    assert caught.value.started
    assert server.accepted == 1 and len(server.requests) == 2


def test_an_answer_without_length_ends_with_the_connection(served):
    def unframed(server, conn, _index):
        with conn:
            server.read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    server = served(unframed)
    pool = rawhttp.Pool(server.url)
    assert got(pool.post("/", b"{}")) == (200, b"all of it", False)
    assert got(pool.post("/", b"{}")) == (200, b"all of it", False)
    assert server.accepted == 2
