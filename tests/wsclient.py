"""A WebSocket test client: simple-websocket's Client with its handshake race fixed.

simple-websocket 1.1.0's client handshake stops at the first wsproto event (the 101 accept). Frames
the server sent right behind the accept in the same TCP read (PingMe's ``auth_ok``) stay buffered in
wsproto until more bytes arrive, so the client would wait forever for a frame it already has. We
hand those leftover events on before the reader thread starts. (Browsers and other clients are not
affected; it is a bug of this client library.)
"""
import simple_websocket


class Client(simple_websocket.Client):
    def handshake(self):
        super().handshake()
        if not self._handle_events():
            self.connected = False


def connect(url: str) -> Client:
    return Client(url)
