"""The test client's handshake fix: a frame sent in the same TCP write as the 101 is received."""
import base64
import hashlib
import socket
import threading

import pytest
import simple_websocket

from tests import wsclient


def _server_sending_a_frame_with_the_accept(listener):
    conn, _ = listener.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    payload = b'{"type":"auth_ok"}'
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + bytes([0x81, len(payload)]) + payload)
    threading.Event().wait(3)
    conn.close()


@pytest.mark.parametrize("client, received", [(wsclient.Client, True), (simple_websocket.Client, False)])
def test_frame_behind_the_accept_is_not_lost(client, received):
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_server_sending_a_frame_with_the_accept, args=(listener,), daemon=True).start()
    ws = client(f"ws://127.0.0.1:{listener.getsockname()[1]}/ws")
    got = ws.receive(timeout=1)
    assert (got == '{"type":"auth_ok"}') is received  # the library's own client misses it
    listener.close()
