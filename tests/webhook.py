"""A real HTTP receiver on loopback for notification webhooks (tests only): it records every POST
and answers with the statuses it is told, in turn (then 200)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    def __init__(self, statuses=()):
        self.statuses = list(statuses)   # answered in turn, then 200
        self.requests: list[dict] = []   # {status, headers, body} of every POST, in order
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append({"status": status, "headers": dict(self.headers), "body": body})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/push"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        """The notifications of every POST answered 2xx."""
        with self.lock:
            return [n for r in self.requests if r["status"] < 300 for n in r["body"]["notifications"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """A receiver for one test (import it into a test module to use it)."""
    receiver = Receiver()
    yield receiver
    receiver.close()
