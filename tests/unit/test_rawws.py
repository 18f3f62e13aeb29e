"""The load tools' raw WebSocket client: frame parsing, masking, the handshake and control frames,
checked against fixed bytes (the examples of RFC 6455 section 5.7 where there is one)."""
import socket
import threading

import pytest

from tests.load import rawws

HELLO = bytes([0x81, 0x05]) + b"Hello"                                        # RFC 6455 5.7
HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
PING_HELLO = bytes([0x89, 0x05]) + b"Hello"


def test_mask_matches_the_rfc_example_and_is_its_own_inverse():
    key = bytes([0x37, 0xFA, 0x21, 0x3D])
    assert rawws.mask(b"Hello", key) == HELLO_MASKED[6:]
    assert rawws.mask(HELLO_MASKED[6:], key) == b"Hello"
    assert rawws.mask(b"", key) == b""
    data = bytes(range(256)) * 3 + b"\x00\x00\x01"  # leading zeros and a length not divisible by 4
    assert rawws.mask(rawws.mask(data, b"\x00\xff\x10\x01"), b"\x00\xff\x10\x01") == data
    assert rawws.mask(data, b"\x00\x00\x00\x00") == data


def test_encode_frame_masked_and_unmasked():
    assert rawws.encode_frame(rawws.OP_TEXT, b"Hello") == HELLO
    assert rawws.encode_frame(rawws.OP_TEXT, b"Hello", bytes([0x37, 0xFA, 0x21, 0x3D])) == HELLO_MASKED
    frame = rawws.client_frame(rawws.OP_TEXT, b"Hello")
    assert frame[:2] == b"\x81\x85" and len(frame) == 11  # clients always mask
    assert rawws.mask(frame[6:], frame[2:6]) == b"Hello"


@pytest.mark.parametrize("length, header", [
    (125, bytes([0x82, 125])),
    (126, bytes([0x82, 126, 0x00, 126])),
    (256, bytes([0x82, 126, 0x01, 0x00])),                       # RFC 6455 5.7: 256 bytes
    (65535, bytes([0x82, 126, 0xFF, 0xFF])),
    (65536, bytes([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0])),          # RFC 6455 5.7: 64 KiB
])
def test_length_forms(length, header):
    payload = bytes(i % 251 for i in range(length))
    assert rawws.encode_frame(rawws.OP_BINARY, payload) == header + payload
    assert rawws.FrameParser().feed(header + payload) == [(rawws.OP_BINARY, payload)]
    masked = rawws.encode_frame(rawws.OP_BINARY, payload, b"\x01\x02\x03\x04")
    assert masked[1] & 0x80 and rawws.FrameParser().feed(masked) == [(rawws.OP_BINARY, payload)]


def test_parser_reads_unmasked_and_masked_frames():
    assert rawws.FrameParser().feed(HELLO) == [(rawws.OP_TEXT, b"Hello")]
    assert rawws.FrameParser().feed(HELLO_MASKED) == [(rawws.OP_TEXT, b"Hello")]


def test_several_frames_in_one_read():
    big = b"x" * 300
    data = HELLO + PING_HELLO + bytes([0x81, 126, 0x01, 0x2C]) + big + bytes([0x81, 0x00])
    parser = rawws.FrameParser()
    assert parser.feed(data) == [(rawws.OP_TEXT, b"Hello"), (rawws.OP_PING, b"Hello"),
                                 (rawws.OP_TEXT, big), (rawws.OP_TEXT, b"")]
    assert parser.buf == bytearray()


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 9, 10, 11, 100, 310])
def test_frame_split_across_reads(cut):
    big = bytes([0x81, 127, 0, 0, 0, 0, 0, 0, 0x01, 0x2C]) + b"y" * 300  # 64-bit form, 300 bytes
    data = big + HELLO
    parser = rawws.FrameParser()
    first = parser.feed(data[:cut])
    second = parser.feed(data[cut:])
    assert first + second == [(rawws.OP_TEXT, b"y" * 300), (rawws.OP_TEXT, b"Hello")]
    assert parser.buf == bytearray()


def test_byte_by_byte_feed():
    data = HELLO + bytes([0x82, 126, 0x00, 0x80]) + b"z" * 128 + HELLO_MASKED
    parser = rawws.FrameParser()
    frames = [f for i in range(len(data)) for f in parser.feed(data[i:i + 1])]
    assert frames == [(rawws.OP_TEXT, b"Hello"), (rawws.OP_BINARY, b"z" * 128), (rawws.OP_TEXT, b"Hello")]


def test_fragmented_message_with_a_ping_between():
    data = bytes([0x01, 0x03]) + b"Hel" + PING_HELLO + bytes([0x80, 0x02]) + b"lo"  # RFC 6455 5.7
    assert rawws.FrameParser().feed(data) == [(rawws.OP_PING, b"Hello"), (rawws.OP_TEXT, b"Hello")]


def test_protocol_errors():
    with pytest.raises(rawws.ProtocolError):
        rawws.FrameParser().feed(bytes([0x80, 0x01]) + b"x")   # continuation without a start
    with pytest.raises(rawws.ProtocolError):
        rawws.FrameParser(max_message=10).feed(bytes([0x81, 11]))


def test_fields_without_json():
    frame = (b'{"type":"message","payload":{"msg_id":"4f1c-aa","conversation_id":7,"seq":3,'
             b'"content":"say \\"msg_id\\":\\"fake\\""}}')
    assert rawws.frame_type(frame) == b"message"
    assert rawws.msg_id_of(frame) == b"4f1c-aa"
    assert rawws.msg_id_of(b'{"type":"message","payload":{"content":"\\"msg_id\\":\\"x\\"","msg_id":"m2"}}') == b"m2"
    assert rawws.frame_type(b'{"type":"message_ack","payload":{}}') == b"message_ack"
    assert rawws.frame_type(b'{ "type": "message"}') is None
    assert rawws.msg_id_of(b'{"type":"pong","payload":{}}') is None


def test_handshake_accept_key():
    assert rawws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
    ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    rawws.check_handshake(ok, "dGhlIHNhbXBsZSBub25jZQ==")
    with pytest.raises(rawws.ProtocolError):
        rawws.check_handshake(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0", "dGhlIHNhbXBsZSBub25jZQ==")
    with pytest.raises(rawws.ProtocolError):
        rawws.check_handshake(ok.replace(b"s3pP", b"AAAA"), "dGhlIHNhbXBsZSBub25jZQ==")


def _serve_once(listener, after_accept: bytes, received: list):
    conn, _ = listener.accept()
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    received.append(request)
    key = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key"))
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + rawws.accept_key(key).encode() + b"\r\n\r\n" + after_accept)
    pong = rawws.FrameParser()
    got = []
    conn.settimeout(5)
    while len(got) < 2:  # the pong, then the client's text frame
        chunk = conn.recv(4096)
        if not chunk:
            break
        got += pong.feed(chunk)
    received.append(got)
    conn.sendall(bytes([0x88, 0x02, 0x03, 0xE8]))  # close 1000
    conn.close()


def test_connect_keeps_frames_behind_the_101_answers_pings_and_sees_the_close():
    listener = socket.create_server(("127.0.0.1", 0))
    received: list = []
    behind = bytes([0x81, 0x12]) + b'{"type":"auth_ok"}' + PING_HELLO  # same write as the 101
    server = threading.Thread(target=_serve_once, args=(listener, behind, received), daemon=True)
    server.start()
    port = listener.getsockname()[1]
    ws = rawws.connect(f"ws://127.0.0.1:{port}/ws?token=abc")
    assert ws.receive(timeout=5) == b'{"type":"auth_ok"}'
    ws.send_text('{"type":"ping","payload":{}}')
    with pytest.raises(rawws.Closed) as closed:
        while True:
            ws.recv_messages()
    server.join(5)
    listener.close()
    request, frames = received
    assert request.startswith(b"GET /ws?token=abc HTTP/1.1\r\n") and b"Sec-WebSocket-Version: 13" in request
    assert frames == [(rawws.OP_PONG, b"Hello"), (rawws.OP_TEXT, b'{"type":"ping","payload":{}}')]
    assert closed.value.code == 1000 and ws.closed


def test_receive_timeout_keeps_the_connection_and_messages_before_a_close_are_returned():
    ours, theirs = socket.socketpair()
    ws = rawws.RawWebSocket(ours, leftover=HELLO[:3])   # part of a frame came with the 101
    with pytest.raises(socket.timeout):
        ws.receive(timeout=0.05)
    assert not ws.closed
    theirs.sendall(HELLO[3:] + HELLO + bytes([0x88, 0x02, 0x0F, 0xA1]) + HELLO)  # close 4001 between
    assert ws.recv_messages() == [b"Hello", b"Hello"]
    assert ws.closed and ws.close_status == (4001, "")
    with pytest.raises(rawws.Closed) as closed:
        ws.recv_messages()
    assert closed.value.code == 4001
    echo = rawws.FrameParser().feed(theirs.recv(100))
    assert echo == [(rawws.OP_CLOSE, b"\x0f\xa1")]   # the close was answered, masked
    theirs.close()
