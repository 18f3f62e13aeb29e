"""Chat load: private messages over WebSocket at a target rate, checked for loss, with latencies.

    python -m tests.load.chat_load [--url http://127.0.0.1:8080] [--pairs 50] [--rate 500]
                                   [--duration 20] [--out results/chat_load.json]

Against a running system (`make dev`; start it with PASSWORD_ITERATIONS=1000 so registering the
load users is quick). Registers ``2 × pairs`` users, connects each once, then sends private
messages round-robin across the pairs at ``rate`` per second for ``duration`` seconds. For every
message it records the send time, the ack time and the recipient's receive time; afterwards it
reconnects every recipient and syncs its conversation to check that every acked message is stored
once, in seq order. Bounded: it stops after the duration plus a drain of at most 30 s.
Prints progress each second and a summary; writes everything to ``--out`` as JSON.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import simple_websocket  # noqa: E402

from tests import wsclient  # noqa: E402


def post(url: str, body: dict, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(p):
        return round(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))], 2)
    return {"count": len(ordered), "p50": pick(50), "p95": pick(95), "p99": pick(99),
            "max": round(ordered[-1], 2), "mean": round(sum(ordered) / len(ordered), 2)}


class Peer:
    """One user with one socket; its reader records acks and received messages."""

    def __init__(self, ws_url: str, user_id: int, token: str, acks: dict, received: dict):
        self.user_id, self.token, self.ws_url = user_id, token, ws_url
        self.acks, self.received = acks, received
        self.duplicates = 0  # pushes of a msg_id this peer already had (allowed: at-least-once)
        self.ws = wsclient.connect(f"{ws_url}?token={token}")
        first = json.loads(self.ws.receive(timeout=10))
        assert first["type"] == "auth_ok", first
        self.errors: list[dict] = []
        self.reader = gevent.spawn(self._read)

    def _read(self):
        try:
            while True:
                text = self.ws.receive()
                now = time.time()
                frame = json.loads(text)
                kind, payload = frame["type"], frame["payload"]
                if kind == "message_ack":
                    self.acks.setdefault(payload["msg_id"], (now, payload["seq"], payload["conversation_id"]))
                elif kind == "message":
                    if (self.user_id, payload["msg_id"]) in self.received:
                        self.duplicates += 1
                    self.received.setdefault((self.user_id, payload["msg_id"]), now)
                elif kind == "error":
                    self.errors.append(payload)
        except (simple_websocket.ConnectionClosed, TypeError):
            return

    def send(self, msg_id: str, to_user_id: int, content: str) -> None:
        self.ws.send(json.dumps({"type": "send", "payload": {"msg_id": msg_id, "to_user_id": to_user_id,
                                                             "content": content}}))

    def close(self):
        self.reader.kill()
        try:
            self.ws.close()
        except Exception:
            pass


def sync_all(ws_url: str, token: str, conversation_id: int) -> list[dict]:
    """Every message of a conversation, paged through ``sync`` on a fresh connection."""
    ws = wsclient.connect(f"{ws_url}?token={token}")
    json.loads(ws.receive(timeout=10))
    messages, after = [], 0
    while True:
        ws.send(json.dumps({"type": "sync", "payload": {"conversation_id": conversation_id,
                                                        "after_seq": after, "limit": 200}}))
        while True:
            frame = json.loads(ws.receive(timeout=30))
            if frame["type"] == "sync":
                break
        page = frame["payload"]
        messages += page["messages"]
        if not page["has_more"] or not page["messages"]:
            break
        after = page["messages"][-1]["seq"]
    ws.close()
    return messages


def run(url: str, pairs: int, rate: float, duration: float, quiet: bool = False) -> dict:
    ws_url = url.replace("http://", "ws://") + "/ws"
    prefix = "load" + uuid.uuid4().hex[:6]
    users = []
    for i in range(2 * pairs):
        creds = {"username": f"{prefix}{i}", "password": "load-password"}
        post(url + "/api/v1/auth/register", creds)
        login = post(url + "/api/v1/auth/login", creds)["data"]
        users.append((login["user"]["id"], login["token"]))
    acks: dict = {}
    received: dict = {}
    peers = [Peer(ws_url, uid, token, acks, received) for uid, token in users]
    routes = [(peers[2 * i], peers[2 * i + 1]) for i in range(pairs)]
    routes += [(b, a) for a, b in routes]
    sent: dict[str, tuple[float, int]] = {}  # msg_id → (send time, recipient)

    started = time.time()
    total = int(rate * duration)
    next_report = started + 1
    for n in range(total):
        due = started + n / rate
        delay = due - time.time()
        if delay > 0:
            gevent.sleep(delay)
        sender, recipient = routes[n % len(routes)]
        msg_id = str(uuid.uuid4())
        sent[msg_id] = (time.time(), recipient.user_id)
        sender.send(msg_id, recipient.user_id, f"load message {n}")
        if not quiet and time.time() >= next_report:
            next_report += 1
            print(f"  t={time.time() - started:5.1f}s sent={len(sent)} acked={len(acks)} "
                  f"delivered={len(received)}", flush=True)
    send_seconds = time.time() - started
    drain_deadline = time.time() + 30
    while time.time() < drain_deadline and (len(acks) < len(sent) or len(received) < len(sent)):
        gevent.sleep(0.05)
    finished = time.time()

    ack_ms = [(acks[m][0] - t) * 1000 for m, (t, _) in sent.items() if m in acks]
    e2e_ms = [(received[(r, m)] - t) * 1000 for m, (t, r) in sent.items() if (r, m) in received]
    not_delivered = [m for m, (t, r) in sent.items() if m in acks and (r, m) not in received]
    errors = [e for p in peers for e in p.errors]
    duplicates = sum(p.duplicates for p in peers)
    for peer in peers:
        peer.close()

    # Reconnect and sync: every acked message stored once, in seq order, in its conversation.
    by_conversation: dict[int, set] = {}
    for msg_id, (_, _, conversation_id) in acks.items():
        by_conversation.setdefault(conversation_id, set()).add(msg_id)
    sync_problems = 0
    tokens = dict(users)
    for conversation_id, expected in by_conversation.items():
        recipient = sent[next(iter(expected))][1]
        messages = sync_all(ws_url, tokens[recipient], conversation_id)
        seqs = [m["seq"] for m in messages]
        ids = [m["msg_id"] for m in messages]
        if seqs != list(range(1, len(seqs) + 1)) or len(ids) != len(set(ids)) or not expected <= set(ids):
            sync_problems += 1

    result = {
        "pairs": pairs, "target_rate": rate, "duration_s": duration, "sent": len(sent),
        "acked": len(acks), "delivered": len(e2e_ms), "acked_not_delivered": len(not_delivered),
        "errors": len(errors), "error_codes": sorted({e.get("code") for e in errors}),
        "duplicate_pushes": duplicates,
        "sync_conversations": len(by_conversation), "sync_problems": sync_problems,
        "send_rate": round(len(sent) / send_seconds, 1),
        "delivered_rate": round(len(e2e_ms) / max(finished - started, 1e-9), 1),
        "ack_ms": percentiles(ack_ms), "e2e_ms": percentiles(e2e_ms),
        "lost": len(sent) - len(e2e_ms),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--out", default="results/chat_load.json")
    args = parser.parse_args()
    if not (1 <= args.pairs <= 5000 and 0 < args.rate <= 20000 and 0 < args.duration <= 600):
        parser.error("pairs 1-5000, rate up to 20000/s, duration up to 600 s")
    result = run(args.url, args.pairs, args.rate, args.duration)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results written to {out}")
    os._exit(0 if result["lost"] == 0 and result["sync_problems"] == 0 else 1)


if __name__ == "__main__":
    main()
