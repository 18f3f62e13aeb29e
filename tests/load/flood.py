"""Floods of issue 13, measured from the other users' side.

    python -m tests.load.flood --url http://127.0.0.1:8080 [--seconds 15] [--json out.json]

1. Login flood: ``--attackers`` threads guess one account's password as fast as they can from one
   client address; meanwhile other users log in one after another (each from an address of its
   own). Reported: the other users' login latency before and during the flood, and what the
   attacker got (401 wrong password, 429 refused).
2. WebSocket frame flood: one client writes bursts of ``--burst`` ``send`` frames as fast as it can
   (the issue's 2,000 in under half a second); meanwhile one user sends another a message every
   50 ms. Reported: that pair's message latency (send → the peer's ``message`` frame) before and
   during the flood, and how many of the attacker's frames were acknowledged or refused (10007).

Client addresses travel in ``X-Forwarded-For``: start the gateway with ``TRUSTED_PROXIES=127.0.0.1``
(without it every client is 127.0.0.1 and shares the per-address budgets). The numbers in
docs/SECURITY.md come from this tool; the gateway and the functions ran as `make bench-dev` does
but with the default rate limits and password cost.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

from tests.load import rawws


def _addr() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


class Http:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80

    def post(self, path: str, body: dict, addr: str, token: str | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        headers = {"Content-Type": "application/json", "X-Forwarded-For": addr}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()


def register(api: Http, password: str = "correct horse") -> dict:
    name = "fl" + uuid.uuid4().hex[:10]
    status, body = api.post("/api/v1/auth/register", {"username": name, "password": password}, _addr())
    if status != 201:
        raise RuntimeError(f"register: {status} {body}")
    return {"id": body["data"]["id"], "username": name, "password": password}


def login(api: Http, user: dict, addr: str | None = None) -> tuple[int, float, dict]:
    started = time.perf_counter()
    status, body = api.post("/api/v1/auth/login", {"username": user["username"], "password": user["password"]},
                            addr or _addr())
    return status, time.perf_counter() - started, body


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def login_flood(api: Http, seconds: float, attackers: int, control: bool = False) -> dict:
    """With ``control``, the attackers send the cheapest request there is (GET /healthz) instead: what
    any flood of that many requests costs the other users on this machine (the noise floor)."""
    victim = register(api)
    others = [register(api) for _ in range(12)]  # each logs in a few times: under its account's budget

    def others_login(until: float) -> list[float]:
        latencies = []
        while time.monotonic() < until:
            status, took, body = login(api, others[len(latencies) % len(others)])
            time.sleep(0.25)  # people log in now and then, not in a loop
            if status != 200:
                raise RuntimeError(f"another user's login failed: {status} {body}")
            latencies.append(took)
        return latencies

    before = others_login(time.monotonic() + seconds / 2)
    outcomes: Counter = Counter()
    stop = threading.Event()
    attacker_addr = _addr()

    def attack():
        while not stop.is_set():
            if control:
                conn = http.client.HTTPConnection(api.host, api.port, timeout=60)
                conn.request("GET", "/healthz", headers={"X-Forwarded-For": attacker_addr})
                status = conn.getresponse().status
                conn.close()
            else:
                status, _, _ = login(api, {**victim, "password": "wrong horse " + uuid.uuid4().hex[:6]}, attacker_addr)
            outcomes[status] += 1

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the flood build up
    during = others_login(time.monotonic() + seconds)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    return {"others_before": summary(before), "others_during": summary(during),
            "attacker": {str(k): v for k, v in sorted(outcomes.items())}, "attackers": attackers}


def ws(url: str, token: str) -> rawws.RawWebSocket:
    sock = rawws.connect(url.replace("http://", "ws://") + f"/ws?token={token}")
    if json.loads(sock.receive(timeout=10))["type"] != "auth_ok":
        raise RuntimeError("no auth_ok")
    return sock


def frame_flood(api: Http, url: str, seconds: float, burst: int) -> dict:
    sender, peer, attacker, target = (register(api) for _ in range(4))
    tokens = {}
    for name, user in (("sender", sender), ("peer", peer), ("attacker", attacker)):
        status, _, body = login(api, user)
        tokens[name] = body["data"]["token"]
    s_ws, p_ws, a_ws = ws(url, tokens["sender"]), ws(url, tokens["peer"]), ws(url, tokens["attacker"])
    sent_at: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (sent at, latency)
    stop = threading.Event()

    def read_peer():
        while not stop.is_set():
            try:
                for raw in p_ws.recv_messages():
                    msg_id = rawws.msg_id_of(raw)
                    if msg_id and rawws.frame_type(raw) == b"message":
                        at = sent_at.get(msg_id.decode())
                        if at is not None:
                            latencies.append((at, time.perf_counter() - at))
            except (rawws.Closed, OSError):
                return

    def drain_sender():
        while not stop.is_set():
            try:
                s_ws.recv_messages()
            except (rawws.Closed, OSError):
                return

    outcomes: Counter = Counter()

    def read_attacker():
        sock = a_ws
        while not stop.is_set():
            try:
                for raw in sock.recv_messages():
                    kind = rawws.frame_type(raw)
                    if kind == b"error":
                        outcomes["error " + str(json.loads(raw)["payload"]["code"])] += 1
                    elif kind:
                        outcomes[kind.decode()] += 1
            except (rawws.Closed, OSError):
                return

    for target_fn in (read_peer, drain_sender, read_attacker):
        threading.Thread(target=target_fn, daemon=True).start()

    def send_every(until: float):
        while time.monotonic() < until:
            msg_id = uuid.uuid4().hex
            sent_at[msg_id] = time.perf_counter()
            s_ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": msg_id, "to_user_id": peer["id"],
                                                                    "content": "hello"}}))
            time.sleep(0.05)

    t0 = time.perf_counter()
    send_every(time.monotonic() + seconds / 2)
    flood_started = time.perf_counter()
    flood_until = time.monotonic() + seconds
    bursts, burst_seconds = 0, []

    def flood():
        nonlocal bursts, a_ws
        while time.monotonic() < flood_until:
            started = time.perf_counter()
            try:
                for _ in range(burst):
                    a_ws.send_text(json.dumps({"type": "send", "payload": {"msg_id": uuid.uuid4().hex,
                                                                           "to_user_id": target["id"], "content": "x" * 100}}))
            except OSError:  # closed for flooding (1008): it connects again, as an attacker would
                outcomes["closed"] += 1
                a_ws = ws(url, tokens["attacker"])
                threading.Thread(target=read_attacker, daemon=True).start()
            burst_seconds.append(time.perf_counter() - started)
            bursts += 1
            time.sleep(1.0)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    send_every(flood_until)
    flooder.join()
    time.sleep(3.0)  # late messages still count
    stop.set()
    for sock in (s_ws, p_ws, a_ws):
        sock.close()
    before = [lat for at, lat in latencies if t0 <= at < flood_started]
    during = [lat for at, lat in latencies if at >= flood_started]
    lost = len(sent_at) - len(latencies)
    return {"pair_before": summary(before), "pair_during": summary(during), "pair_not_delivered": lost,
            "attacker_frames": bursts * burst, "attacker_burst_s": round(max(burst_seconds or [0]), 2),
            "attacker_answers": dict(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--attackers", type=int, default=16)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    api = Http(args.url)
    result = {"login_flood": login_flood(api, args.seconds, args.attackers),
              "request_flood_control": login_flood(api, args.seconds, args.attackers, control=True),
              "frame_flood": frame_flood(api, args.url, args.seconds, args.burst)}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
