"""Chat load: private messages over WebSocket (or HTTP) at a target rate, checked for loss, with latencies.

    python -m tests.load.chat_load [--url http://127.0.0.1:8080] [--pairs 50] [--rate 500]
                                   [--duration 20] [--out results/chat_load.json] [--plot PATH]
                                   [--http [--connections 256]]

Against a running system (`make dev`; start it with PASSWORD_ITERATIONS=1000 so registering the
load users is quick). Registers ``2 × pairs`` users, connects each once, then sends private
messages round-robin across the pairs at ``rate`` per second for ``duration`` seconds: open loop,
each message goes when it is due whatever the answers to the ones before, and every latency counts
from that due time (how late the tool itself was is reported as ``late_ms``). For every message it
records the ack time and the recipient's receive time, and splits the ack's latency at the
``server_ts`` the ack carries (the send function's clock when it stored the message: ``stages_ms``
``to_stored`` and ``stored_to_ack``; same machine, millisecond resolution); afterwards it
reconnects every recipient and syncs its conversation to check that every acked message is stored
once, in seq order.

With ``--http`` each message is sent as ``POST /api/v1/messages`` instead of a ``send`` frame (the
path bots and simple integrations use), over at most ``--connections`` keep-alive connections
(tests/load/rawhttp.py; a request waits for a free one, and that wait counts in its latency); its
ack is the answer, a refusal the answer's code, no answer at all an outcome unknown. The first
user of each pair only sends, without a socket (as a bot does: a sender's other sockets would get
each message too); the second receives on its socket and sends the read receipts. The checks are
the same.

With ``--warmup S`` the messages due in the first S seconds are sent and checked like the others
but left out of the latency figures (``ack_ms``, ``stages_ms``, ``e2e_ms``; ``timed`` counts the
rest): a run starts with every user's first messages on a cold system, and over a short run those
decide the p99, not the rate being measured.

Bounded: it stops after the duration plus a drain of at most ``--drain`` seconds (30; it ends
once every send is acked or refused and every acked message received). While sending and draining
it samples the CPU and memory of the system's processes (the gateway, each function, Kafka, Redis,
MariaDB and itself; see tests/load/procstats.py): the progress line shows the busiest, the JSON
their CPU % over the run and peak and end RSS. The JSON also keeps a
per-second timeline (sent, delivered, e2e p50/p99 by send second) to compare runs by.
Prints progress each second and a summary; writes everything to ``--out`` as JSON and a latency
plot to ``--plot`` (default: ``--out`` with ``.png``; ``--plot ''`` for none; needs matplotlib from
requirements-bench.txt, and is skipped with a notice without it).
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import simple_websocket  # noqa: E402

from tests import wsclient  # noqa: E402
from tests.load import history as history_mod, procstats, rawhttp  # noqa: E402
from tests.load.stats import percentiles  # noqa: E402
from tests.load.users import register_users  # noqa: E402


def next_frame(ws, timeout: float, what: str) -> dict:
    """The next frame, or TimeoutError naming what did not come (receive gives None then)."""
    text = ws.receive(timeout=timeout)
    if text is None:
        raise TimeoutError(f"no {what} within {timeout:g} s")
    return json.loads(text)


class Peer:
    """One user with one socket; its reader records acks and received messages, and every
    operation in ``history`` (tests/load/history.py). It marks every ``read_every``-th message it
    receives as read, so that its peer's receipts (read cursors) are in the history too. Without
    ``connect`` it has no socket: a client that only sends over HTTP."""

    def __init__(self, ws_url: str, user_id: int, token: str, acks: dict, received: dict,
                 history: history_mod.History | None = None, read_every: int = 4, connect: bool = True):
        self.user_id, self.token, self.ws_url = user_id, token, ws_url
        self.acks, self.received = acks, received
        self.history = history or history_mod.History()
        self.read_every = read_every
        self.duplicates = 0  # pushes of a msg_id this peer already had (allowed: at-least-once)
        self.pushes = 0
        self.stored_at: dict[str, int | None] = {}  # msg_id → its ack's server_ts (ms)
        self.errors: list[dict] = []
        self.ws = self.reader = None
        self.conn = f"http-{user_id}"
        if not connect:
            return
        self.ws = wsclient.connect(f"{ws_url}?token={token}")
        first = next_frame(self.ws, 10, "auth_ok")
        assert first["type"] == "auth_ok", first
        self.conn = first["payload"].get("conn_id") or f"u{user_id}"
        self.reader = gevent.spawn(self._read)

    def _read(self):
        try:
            while True:
                text = self.ws.receive()
                now = time.time()
                frame = json.loads(text)
                kind, payload = frame["type"], frame["payload"]
                if kind == "message_ack":
                    self.acked(self.conn, payload, now)
                elif kind == "message":
                    self.history.push(self.conn, payload["msg_id"], payload["conversation_id"], payload["seq"])
                    if (self.user_id, payload["msg_id"]) in self.received:
                        self.duplicates += 1
                    self.received.setdefault((self.user_id, payload["msg_id"]), now)
                    self.pushes += 1
                    if self.read_every and self.pushes % self.read_every == 0:
                        self.ws.send(json.dumps({"type": "ack", "payload": {
                            "conversation_id": payload["conversation_id"], "seq": payload["seq"],
                            "ack_type": "read"}}))
                elif kind == "receipt":
                    self.history.receipt(self.conn, payload["conversation_id"], payload["user_id"], payload["seq"])
                elif kind == "error":
                    self.history.error(self.conn, payload.get("ref"), payload.get("code"))
                    self.errors.append(payload)
        except (simple_websocket.ConnectionClosed, TypeError):
            return

    def acked(self, conn: str, ack: dict, now: float) -> None:
        self.history.ack(conn, ack["msg_id"], ack["conversation_id"], ack["seq"])
        self.acks.setdefault(ack["msg_id"], (now, ack["seq"], ack["conversation_id"]))
        self.stored_at.setdefault(ack["msg_id"], ack.get("server_ts"))

    def send(self, msg_id: str, to_user_id: int, content: str) -> None:
        self.history.send(self.conn, msg_id)
        self.ws.send(json.dumps({"type": "send", "payload": {"msg_id": msg_id, "to_user_id": to_user_id,
                                                             "content": content}}))

    def send_http(self, pool: rawhttp.Pool, msg_id: str, to_user_id: int, content: str) -> None:
        """The same send as ``POST /api/v1/messages`` (in a greenlet of its own: it waits for the
        answer). Recorded in the history under an HTTP client of this user's, ``http-<user id>``."""
        conn = f"http-{self.user_id}"
        self.history.send(conn, msg_id)
        body = json.dumps({"msg_id": msg_id, "to_user_id": to_user_id, "content": content}).encode()
        try:
            answer = pool.post("/api/v1/messages", body, self.token)
        except (OSError, rawhttp.ProtocolError) as exc:
            # No answer: stored or not, nobody knows (code None; history.AMBIGUOUS_CODES).
            self.history.error(conn, msg_id, None)
            self.errors.append({"ref": msg_id, "code": None, "message": type(exc).__name__})
            return
        now = time.time()
        if answer.resent:
            self.history.send(conn, msg_id)
        try:
            envelope = json.loads(answer.body)
        except ValueError:  # not the gateway's envelope (a proxy's page?): what happened is unknown
            envelope = {"message": f"HTTP {answer.status}, not JSON"}
        if answer.status == 200 and envelope.get("code") == 0:
            self.acked(conn, envelope["data"], now)
        else:
            self.history.error(conn, msg_id, envelope.get("code"))
            self.errors.append({"ref": msg_id, "code": envelope.get("code"), "message": envelope.get("message")})

    def close(self):
        if self.ws is None:
            return
        self.reader.kill()
        try:
            self.ws.close()
        except Exception:
            pass


class SyncRefused(Exception):
    """A sync answered with an ``error`` frame: its code and message."""


def sync_all(ws_url: str, token: str, conversation_id: int,
             history: history_mod.History | None = None) -> list[dict]:
    """Every message of a conversation, paged through ``sync`` on a fresh connection (recorded in
    ``history`` as one complete read). SyncRefused when the gateway answers with an error (e.g.
    20001: it could not read the database), at once rather than after the 30 s wait for an answer."""
    ws = wsclient.connect(f"{ws_url}?token={token}")
    conn = next_frame(ws, 10, "auth_ok")["payload"].get("conn_id", "sync")
    messages, after = [], 0
    while True:
        ws.send(json.dumps({"type": "sync", "payload": {"conversation_id": conversation_id,
                                                        "after_seq": after, "limit": 200}}))
        while True:
            frame = next_frame(ws, 30, "sync answer")
            if frame["type"] == "sync":
                break
            if frame["type"] == "error" and frame["payload"].get("ref") == "sync":
                ws.close()
                raise SyncRefused(frame["payload"].get("code"), frame["payload"].get("message"))
        page = frame["payload"]
        messages += page["messages"]
        if not page["has_more"] or not page["messages"]:
            break
        after = page["messages"][-1]["seq"]
    ws.close()
    if history is not None:
        history.sync(conn, conversation_id, 0, [(m["seq"], m["msg_id"]) for m in messages], complete=True)
    return messages


def sample_each_second(sampler: procstats.Sampler) -> None:
    """Keep sampling where no progress line does (a quiet run, the drain)."""
    while True:
        gevent.sleep(0.2)
        if sampler.seconds_since_sample() >= 1:
            sampler.tick()


def timeline(send_times: list[float], samples: list[tuple]) -> list[dict]:
    """Per whole second of send time (s since start): messages sent, delivered, and e2e p50/p99."""
    seconds: dict[int, dict] = {}
    for sent_at in send_times:
        seconds.setdefault(int(sent_at), {"sent": 0, "e2e": []})["sent"] += 1
    for sent_at, e2e, *_ in samples:
        seconds[int(sent_at)]["e2e"].append(e2e)
    rows = []
    for second, bucket in sorted(seconds.items()):
        summary = percentiles(bucket["e2e"])
        rows.append({"t": second, "sent": bucket["sent"], "delivered": len(bucket["e2e"]),
                     "e2e_p50": summary.get("p50"), "e2e_p99": summary.get("p99")})
    return rows


def write_plot(path: Path, samples: list[tuple], title: str) -> bool:
    try:
        from tests.load import plot
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements-bench.txt): no plot", flush=True)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    plot.plot_latency(path, samples, title)
    return True


def run(url: str, pairs: int, rate: float, duration: float, quiet: bool = False,
        plot: Path | None = None, drain: float = 30, history_path: Path | None = None,
        read_every: int = 4, http: bool = False, connections: int = 256, warmup: float = 0) -> dict:
    ws_url = url.replace("http://", "ws://") + "/ws"
    users = register_users(url, 2 * pairs, "load")
    acks: dict = {}
    received: dict = {}
    history = history_mod.History()
    # Over WebSocket both users of a pair send and receive; over HTTP the first only sends (no
    # socket: a bot), so that no push goes back to its sender's other device, the second receives.
    peers = [Peer(ws_url, uid, token, acks, received, history, read_every, connect=not (http and i % 2 == 0))
             for i, (uid, token) in enumerate(users)]
    routes = [(peers[2 * i], peers[2 * i + 1]) for i in range(pairs)]
    if not http:
        routes += [(b, a) for a, b in routes]
    sent: dict[str, tuple[float, int]] = {}  # msg_id → (due time, recipient)
    late: list[float] = []  # how late each send left, ms after its due time
    pool = rawhttp.Pool(url, size=connections) if http else None

    sampler = procstats.Sampler(procstats.local_port(url))
    sampler.start()
    sampling = gevent.spawn(sample_each_second, sampler)
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
        sent[msg_id] = (due, recipient.user_id)
        late.append((time.time() - due) * 1000)
        if http:
            gevent.spawn(sender.send_http, pool, msg_id, recipient.user_id, f"load message {n}")
        else:
            sender.send(msg_id, recipient.user_id, f"load message {n}")
        if not quiet and time.time() >= next_report:
            next_report += 1
            sampler.tick()
            print(f"  t={time.time() - started:5.1f}s sent={len(sent)} acked={len(acks)} "
                  f"delivered={len(received)}  {sampler.brief()}", flush=True)
    send_seconds = time.time() - started
    drain_deadline = time.time() + drain

    def drained() -> bool:  # every send acked or refused, every acked message received
        refused = {e.get("ref") for p in peers for e in p.errors}
        return all(m in acks or m in refused for m in sent) and \
            all((r, m) in received for m, (_, r) in sent.items() if m in acks)

    while time.time() < drain_deadline and not drained():
        gevent.sleep(0.05)
    finished = time.time()
    sampling.kill()
    sampler.stop()

    # The latency figures leave out the messages due in the first ``warmup`` seconds (all checked).
    timed = {m: (t, r) for m, (t, r) in sent.items() if t >= started + warmup}
    ack_ms = [(acks[m][0] - t) * 1000 for m, (t, _) in timed.items() if m in acks]
    stored_at = {m: ts for p in peers for m, ts in p.stored_at.items() if ts is not None}
    to_stored_ms = [stored_at[m] - t * 1000 for m, (t, _) in timed.items() if m in stored_at]
    stored_to_ack_ms = [acks[m][0] * 1000 - stored_at[m] for m in timed if m in stored_at and m in acks]
    delivered = {m: (received[(r, m)] - t) * 1000 for m, (t, r) in sent.items() if (r, m) in received}
    e2e_ms = [delivered[m] for m in timed if m in delivered]
    not_delivered = [m for m in sent if m in acks and m not in delivered]
    samples = [(t - started, delivered[m], (acks[m][0] - t) * 1000 if m in acks else None)
               for m, (t, _) in sent.items() if m in delivered]
    errors = [e for p in peers for e in p.errors]
    # A 50008 (or a timeout) is "not known to be accepted": the broker may have taken the send after
    # all, and its ack then follows (PROTOCOL.md). Such a send counts as acked, not refused.
    refused_ids = {e.get("ref") for e in errors} & set(sent)
    duplicates = sum(p.duplicates for p in peers)
    for peer in peers:
        peer.close()
    if pool is not None:
        pool.close()

    # Reconnect and sync: every acked message stored once, in seq order, in its conversation.
    by_conversation: dict[int, set] = {}
    for msg_id, (_, _, conversation_id) in acks.items():
        by_conversation.setdefault(conversation_id, set()).add(msg_id)
    sync_problems = 0
    tokens = dict(users)
    for conversation_id, expected in by_conversation.items():
        recipient = sent[next(iter(expected))][1]
        try:
            messages = sync_all(ws_url, tokens[recipient], conversation_id, history)
        except (TimeoutError, SyncRefused, simple_websocket.ConnectionClosed) as exc:
            print(f"sync of conversation {conversation_id} failed: {exc!r}", file=sys.stderr)
            sync_problems += 1
            continue
        seqs = [m["seq"] for m in messages]
        ids = [m["msg_id"] for m in messages]
        if seqs != list(range(1, len(seqs) + 1)) or len(ids) != len(set(ids)) or not expected <= set(ids):
            sync_problems += 1

    result = {
        "transport": "http" if http else "ws",
        "pairs": pairs, "target_rate": rate, "duration_s": duration, "sent": len(sent),
        "acked": len(acks), "delivered": len(delivered), "acked_not_delivered": len(not_delivered),
        "warmup_s": warmup, "timed": len(timed),
        "errors": len(errors), "error_codes": sorted({e.get("code") for e in errors}),
        "refused": len(refused_ids - set(acks)), "refused_then_acked": len(refused_ids & set(acks)),
        "duplicate_pushes": duplicates,
        "sync_conversations": len(by_conversation), "sync_problems": sync_problems,
        "send_rate": round(len(sent) / send_seconds, 1),
        "delivered_rate": round(len(delivered) / max(finished - started, 1e-9), 1),
        "ack_ms": percentiles(ack_ms), "e2e_ms": percentiles(e2e_ms),
        "stages_ms": {"to_stored": percentiles(to_stored_ms), "stored_to_ack": percentiles(stored_to_ack_ms)},
        "late_ms": percentiles(late),
        "lost": len(sent) - len(delivered),
        "run_s": round(finished - started, 2),
        "processes_scope": sampler.scope,
        "processes": sampler.report(),
        "timeline": timeline([t - started for t, _ in sent.values()], samples),
        # The operation history's verdict (tests/load/history.py): what the checks above count,
        # and conflicts, phantoms and read cursors besides.
        "checker": history_mod.check(history.ops).summary(),
    }
    if http:
        result["http_connections"] = {"limit": connections, "opened": pool.opened}
    if history_path is not None:
        history.write(history_path)
        result["history"] = str(history_path)
    if plot is not None:
        title = (f"chat_load{' over HTTP' if http else ''}: {pairs} pairs, {rate:g} msg/s for {duration:g} s; sent {len(sent)}, "
                 f"lost {result['lost']}; e2e p50 {result['e2e_ms'].get('p50')} ms, p99 {result['e2e_ms'].get('p99')} ms")
        if write_plot(plot, samples, title):
            result["plot"] = str(plot)
    return result


def print_processes(processes: dict, seconds: float) -> None:
    print(f"processes (CPU % of one core over the {seconds:.1f} s of sending and draining; RSS MB peak / end):")
    for label, entry in processes.items():
        end = "gone" if entry["rss_mb_end"] is None else f"{entry['rss_mb_end']:.1f}"
        print(f"  {label:<12} {entry['cpu_pct']:6.1f}%  {entry['rss_mb_peak']:8.1f} / {end}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--out", default="results/chat_load.json")
    parser.add_argument("--drain", type=float, default=30,
                        help="seconds to wait after sending for the last acks and messages")
    parser.add_argument("--plot", help="latency plot PNG (default: --out with .png; '' for none)")
    parser.add_argument("--history", help="write the operation history here (JSON lines; tests/load/history.py)")
    parser.add_argument("--read-every", type=int, default=4,
                        help="mark every Nth received message read (its sender gets a receipt); 0: none")
    parser.add_argument("--warmup", type=float, default=0,
                        help="seconds at the start whose messages are left out of the latency figures")
    parser.add_argument("--http", action="store_true",
                        help="send with POST /api/v1/messages instead of WebSocket send frames")
    parser.add_argument("--connections", type=int, default=256,
                        help="with --http: keep-alive connections at most (a send waits for a free one)")
    args = parser.parse_args()
    if not (1 <= args.pairs <= 5000 and 0 < args.rate <= 20000 and 0 < args.duration <= 600
            and 0 <= args.drain <= 600 and 1 <= args.connections <= 5000 and 0 <= args.warmup < args.duration):
        parser.error("pairs 1-5000, rate up to 20000/s, duration and drain up to 600 s, connections 1-5000, "
                     "warmup shorter than the duration")
    out = Path(args.out)
    plot = out.with_suffix(".png") if args.plot is None else (Path(args.plot) if args.plot else None)
    result = run(args.url, args.pairs, args.rate, args.duration, plot=plot, drain=args.drain,
                 history_path=Path(args.history) if args.history else None, read_every=args.read_every,
                 http=args.http, connections=args.connections, warmup=args.warmup)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("processes", "timeline")}, indent=2))
    print_processes(result["processes"], result["run_s"])
    print(f"timeline: {len(result['timeline'])} seconds; results written to {out}")
    print(f"history checker: {json.dumps(result['checker'])}")
    os._exit(0 if result["lost"] == 0 and result["sync_problems"] == 0 and result["checker"]["ok"] else 1)


if __name__ == "__main__":
    main()
