"""The gateway's socket path: frames built like wsproto's, written whole and in order, slow readers cut off."""
import gevent
import pytest
from gevent import socket
from wsproto.frame_protocol import FrameProtocol

from gateway.ws import SocketWriter, SlowReader, ws_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_ws_frame_matches_wsproto(size):
    text = "é" * (size // 2) + "x" * (size % 2)
    assert ws_frame(text) == FrameProtocol(client=False, extensions=[]).send_data(text, fin=True)


def _read_frames(sock, count):
    """Read ``count`` unmasked server frames; return their payloads."""
    buf, out = b"", []
    while len(out) < count:
        chunk = sock.recv(1 << 16)
        assert chunk, "connection closed early"
        buf += chunk
        while len(buf) >= 2:
            size, offset = buf[1] & 0x7F, 2
            if size == 126:
                size, offset = int.from_bytes(buf[2:4], "big"), 4
            elif size == 127:
                size, offset = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < offset + size:
                break
            out.append(buf[offset:offset + size].decode())
            buf = buf[offset + size:]
    return out


def test_frames_a_reader_cannot_take_yet_wait_in_order_without_blocking_the_writer():
    server, client = socket.socketpair()
    writer = SocketWriter(server, limit=10_000)
    frames = [f"frame {i} " + "x" * 4000 for i in range(400)]  # ~1.6 MB: more than the socket buffers
    with gevent.Timeout(2):  # send() never waits for the reader
        for text in frames:
            writer.send(ws_frame(text))
    assert writer._writer is not None and writer._backlog  # the rest waits for the reader
    reader = gevent.spawn(_read_frames, client, len(frames))
    assert reader.get(timeout=10) == frames
    gevent.sleep(0)
    assert writer._writer is None and not writer._backlog


def test_a_full_backlog_drops_the_connection():
    server, client = socket.socketpair()
    writer = SocketWriter(server, limit=5)
    big = ws_frame("y" * 60_000)
    with pytest.raises(SlowReader):
        for _ in range(200):
            writer.send(big)
    gevent.sleep(0.1)
    client.settimeout(5)
    received = b""
    while chunk := client.recv(1 << 20):  # the reader gets what was written, then end of stream
        received += chunk
    assert 0 < len(received) < 200 * len(big)
