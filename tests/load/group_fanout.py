"""Group fan-out: deliveries per second into one large group with every member online.

    python -m tests.load.group_fanout [--url http://127.0.0.1:8080] [--members 500] [--rate 100]
                                      [--duration 10] [--out results/group_fanout.json]
                                      [--pids PID,PID...]

Against a running system (start it with PASSWORD_ITERATIONS=1000 so registering is quick).
Registers and logs in ``members`` users (20 at a time), connects each once with the raw client of
tests/load/rawws.py (50 at a time; a Python WebSocket library could not read 50,000+ frames/s), and
only then has the first user create a group with all the others: the users share no conversation
before that, so connecting causes no presence traffic (connecting 500 members of an existing group
would push ~125,000 presence frames). Every member must receive the ``group_created`` system
message before the run starts (the fan-out path is warm and every socket is addressable).

Then the first member sends group messages at ``rate`` per second for ``duration`` seconds over
its socket; every other member records each push: one receive per (member, msg_id), the latency
from the send, duplicates. A delivery is one message arriving at one member's socket;
deliveries/s = messages/s × members that got them. The sender has one device, so it gets acks but
never its own message (docs/PROTOCOL.md: pushes go to the sender's *other* connections).
After the sends it drains for at most 30 s (less if everything arrived or nothing moved for 10 s),
closes every socket, then reconnects 3 random members and syncs the group to check that every
acked message is stored exactly once, in seq order, with the seq of its ack.

Prints progress each second and a summary; writes everything to ``--out`` as JSON. ``--pids``
adds the CPU use of those processes (e.g. the gunicorn worker) over the send window and drain; the
tool's own CPU is always reported. Exit code 0 only if nothing is missing and the sync check
passed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from array import array  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from tests.load import rawws  # noqa: E402
from tests.load.users import post, register_users  # noqa: E402

try:
    from tests.load.stats import percentiles  # noqa: E402
except ImportError:  # older tree: the helper still lives in chat_load
    from tests.load.chat_load import percentiles  # noqa: E402

CONNECT_CONCURRENCY = 50
MAX_DRAIN_S = 30
STALL_S = 10
SYNC_MEMBERS = 3
LATENCY_SAMPLES = 5_000_000   # per-delivery latencies kept (reservoir beyond; 20 MB as floats)
# The presence events of connecting are handled by `deliver` asynchronously; one handled after
# the group exists would go to every member (up to members² frames). Let them pass first.
PRESENCE_SETTLE_S = 3
CHECK_EVERY = 997             # every Nth push per member is also parsed with json.loads
MESSAGE_PREFIX = b'{"type":"message",'


# --- setup: users, sockets, the group ---------------------------------------------------------


def create_group(url: str, owner_token: str, member_ids: list[int]) -> dict:
    body = {"name": "fanout bench", "member_ids": member_ids}
    return post(url + "/api/v1/groups", body, owner_token)["data"]


# --- recording --------------------------------------------------------------------------------


class Recorder:
    """Everything measured, in flat arrays indexed by message number (memory: a few bytes per
    message plus one float per kept delivery latency)."""

    def __init__(self, msg_ids: list[str], recipients: int):
        total = len(msg_ids)
        self.msg_ids = msg_ids
        self.index = {m.encode(): n for n, m in enumerate(msg_ids)}
        self.recipients = recipients
        self.sent_at = array("d", bytes(8 * total))      # monotonic send time (0 = not sent)
        self.acked_at = array("d", bytes(8 * total))
        self.ack_seq = array("q", bytes(8 * total))
        self.received = array("I", bytes(4 * total))     # members that got message n (once each)
        self.last_at = array("d", bytes(8 * total))      # when the last of them got it
        self.latencies = array("f")                      # ms, one per delivery (reservoir if huge)
        self.deliveries = 0
        self.duplicates = 0
        self.unknown = 0           # pushes of messages this run did not send (group_created)
        self.sample_checks = 0
        self.sample_errors: list[str] = []
        self.first_receive = 0.0
        self.last_receive = 0.0
        self.acks = 0
        self.sent_count = 0
        self.self_echo = 0         # the sender's own messages pushed back to its only socket
        self.errors: list[dict] = []
        self.other_frames: dict[str, int] = {}

    def deliver(self, n: int, now: float) -> None:
        self.received[n] += 1
        if now > self.last_at[n]:
            self.last_at[n] = now
        self.last_receive = now
        if not self.first_receive:
            self.first_receive = now
        self.deliveries += 1
        latency = (now - self.sent_at[n]) * 1000
        if len(self.latencies) < LATENCY_SAMPLES:
            self.latencies.append(latency)
        else:
            slot = random.randrange(self.deliveries)
            if slot < LATENCY_SAMPLES:
                self.latencies[slot] = latency

    def ack(self, payload: dict, now: float) -> None:
        n = self.index.get(str(payload.get("msg_id")).encode())
        if n is not None and not self.acked_at[n]:
            self.acked_at[n] = now
            self.ack_seq[n] = payload.get("seq") or 0
            self.acks += 1

    def other(self, frame: dict) -> None:
        kind = str(frame.get("type"))
        self.other_frames[kind] = self.other_frames.get(kind, 0) + 1
        if kind == "error":
            self.errors.append(frame.get("payload") or {})


class Member:
    """One user's socket and its reader greenlet. Pushes are counted on the hot path without
    json.loads; a bitmap of seen message numbers finds duplicates."""

    def __init__(self, user_id: int, token: str, ws_url: str):
        self.user_id, self.token = user_id, token
        self.ws = rawws.connect(f"{ws_url}?token={token}", timeout=30)
        first = json.loads(self.ws.receive(timeout=30))
        if first.get("type") != "auth_ok":
            raise RuntimeError(f"user {user_id}: {first}")
        self.rec: Recorder | None = None
        self.seen = bytearray()
        self.pushes = 0
        self.warm = False          # got the group_created message
        self.is_sender = False
        self.closed_code: int | None = None
        self.reader: gevent.Greenlet | None = None

    def start(self, rec: Recorder, group_id: int) -> None:
        self.rec, self.group_id = rec, group_id
        self.seen = bytearray((len(rec.msg_ids) + 7) // 8)
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        rec, seen, index, clock = self.rec, self.seen, self.rec.index, time.monotonic
        try:
            while True:
                messages = self.ws.recv_messages()
                now = clock()
                for data in messages:
                    if not data.startswith(MESSAGE_PREFIX):
                        self._slow(data, now)
                        continue
                    n = index.get(rawws.msg_id_of(data))
                    if n is None:
                        rec.unknown += 1
                        self.warm = True
                        continue
                    if self.is_sender:
                        rec.self_echo += 1
                        continue
                    byte, bit = n >> 3, 1 << (n & 7)
                    if seen[byte] & bit:
                        rec.duplicates += 1
                        continue
                    seen[byte] |= bit
                    rec.deliver(n, now)
                    self.pushes += 1
                    if self.pushes % CHECK_EVERY == 1:
                        self._check(data, n)
        except rawws.Closed as closed:
            self.closed_code = closed.code

    def _slow(self, data: bytes, now: float) -> None:
        frame = json.loads(data)
        if frame.get("type") == "message_ack":
            self.rec.ack(frame.get("payload") or {}, now)
        elif frame.get("type") == "message":   # a frame the fast path could not read
            self.rec.unknown += 1
        else:
            self.rec.other(frame)

    def _check(self, data: bytes, n: int) -> None:
        """The fast path's reading of a push against a full parse."""
        rec = self.rec
        rec.sample_checks += 1
        payload = json.loads(data).get("payload") or {}
        if payload.get("msg_id") != rec.msg_ids[n] or payload.get("group_id") != self.group_id:
            rec.sample_errors.append(f"user {self.user_id}: {data[:200]!r}")

    def send(self, msg_id: str, content: str) -> None:
        self.ws.send_text(json.dumps({"type": "send", "payload": {
            "msg_id": msg_id, "group_id": self.group_id, "content": content}}, separators=(",", ":")))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.kill(block=False)
        self.ws.close()


def connect_members(users: list[tuple[int, str]], ws_url: str) -> list[Member]:
    return list(Pool(CONNECT_CONCURRENCY).imap(lambda u: Member(u[0], u[1], ws_url), users))


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(interval)
    return predicate()


# --- CPU of this process and of given pids ----------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80].strip()
    except OSError:
        return "?"


class CpuMeter:
    def __init__(self, pids: list[int]):
        self.pids = pids
        self.start = time.monotonic()
        self.before = {pid: cpu_seconds(pid) for pid in [None, *pids]}

    def result(self) -> dict:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        out = {"window_s": round(elapsed, 2)}
        for pid, before in self.before.items():
            try:
                share = round(100 * (cpu_seconds(pid) - before) / elapsed, 1)
            except OSError:
                share = None
            out["load_tool" if pid is None else f"{pid} {process_name(pid)}"] = share
        return out


# --- the run ----------------------------------------------------------------------------------


def progress(rec: Recorder, started: float, stop: list) -> None:
    last = 0
    while not stop:
        gevent.sleep(1)
        now_deliveries = rec.deliveries
        print(f"  t={time.monotonic() - started:5.1f}s sent={rec.sent_count} acked={rec.acks} "
              f"deliveries={now_deliveries} (+{now_deliveries - last}/s) "
              f"expected={rec.acks * rec.recipients}", flush=True)
        last = now_deliveries


def send_all(sender: Member, rec: Recorder, rate: float, duration: float) -> tuple[float, float]:
    """Send every message at ``rate``/s; returns (first send, last send). Stops if it falls more
    than 10 s behind the schedule."""
    started = time.monotonic()
    for n, msg_id in enumerate(rec.msg_ids):
        due = started + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        elif delay < -10:
            break
        rec.sent_at[n] = time.monotonic()
        sender.send(msg_id, f"fanout {n}")
        rec.sent_count = n + 1
    return started, time.monotonic()


def drain(rec: Recorder) -> None:
    """Wait until every acked message reached every recipient, at most MAX_DRAIN_S, or until
    nothing moved for STALL_S."""
    deadline = time.monotonic() + MAX_DRAIN_S
    moved_at, seen = time.monotonic(), (-1, -1)
    while time.monotonic() < deadline:
        state = (rec.acks, rec.deliveries)
        if rec.acks == rec.sent_count and rec.deliveries >= rec.acks * rec.recipients:
            return
        if state != seen:
            moved_at, seen = time.monotonic(), state
        elif time.monotonic() - moved_at > STALL_S:
            return
        gevent.sleep(0.05)


def sync_group(ws_url: str, token: str, conversation_id: int) -> list[dict]:
    """Every message of the conversation through ``sync`` pages on a fresh socket."""
    ws = rawws.connect(f"{ws_url}?token={token}", timeout=30)
    try:
        json.loads(ws.receive(timeout=30))
        messages, after = [], 0
        while True:
            ws.send_text(json.dumps({"type": "sync", "payload": {
                "conversation_id": conversation_id, "after_seq": after, "limit": 200}}))
            while True:
                frame = json.loads(ws.receive(timeout=30))
                if frame["type"] == "sync":
                    break
                if frame["type"] == "error":
                    raise RuntimeError(f"sync failed: {frame['payload']}")
            page = frame["payload"]
            messages += page["messages"]
            if not page["has_more"] or not page["messages"]:
                return messages
            after = page["messages"][-1]["seq"]
    finally:
        ws.close()


def check_sync(messages: list[dict], rec: Recorder) -> list[str]:
    """Problems with one member's synced copy: gaps or repeats in seq, duplicate msg_ids, acked
    messages missing or stored with another seq than their ack."""
    problems = []
    seqs = [m["seq"] for m in messages]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append("seqs are not 1..n in order")
    ids = [m["msg_id"] for m in messages]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} msg_ids stored more than once")
    stored = {m["msg_id"]: m["seq"] for m in messages}
    acked = [n for n in range(len(rec.msg_ids)) if rec.acked_at[n]]
    missing = [rec.msg_ids[n] for n in acked if rec.msg_ids[n] not in stored]
    if missing:
        problems.append(f"{len(missing)} acked messages missing, e.g. {missing[:3]}")
    wrong_seq = [rec.msg_ids[n] for n in acked if stored.get(rec.msg_ids[n], rec.ack_seq[n]) != rec.ack_seq[n]]
    if wrong_seq:
        problems.append(f"{len(wrong_seq)} messages stored with another seq than acked")
    return problems


def summarize(rec: Recorder, members: int, rate: float, duration: float, first_send: float,
              last_send: float, in_window: int, warmup_s: float, cpu: dict) -> dict:
    total_sent = rec.sent_count
    acked = [n for n in range(total_sent) if rec.acked_at[n]]
    expected = len(acked) * rec.recipients
    received_acked = sum(rec.received[n] for n in acked)
    received_all = sum(rec.received[n] for n in range(total_sent))
    span = max(rec.last_receive - first_send, 1e-9)
    window = max(last_send - first_send, 1e-9)
    complete = [(rec.last_at[n] - rec.sent_at[n]) * 1000 for n in acked if rec.received[n] == rec.recipients]
    return {
        "members": members, "recipients_per_message": rec.recipients, "target_rate": rate,
        "duration_s": duration, "sent": total_sent, "acked": len(acked),
        "send_rate": round(total_sent / window, 1),
        "expected_deliveries": expected, "received_deliveries": received_acked,
        "received_unacked": received_all - received_acked,
        "missing": expected - received_acked, "duplicates": rec.duplicates,
        "messages_fully_delivered": len(complete),
        "deliveries_per_s": round(received_all / span, 1),
        "deliveries_per_s_in_send_window": round(in_window / window, 1),
        "offered_deliveries_per_s": round(total_sent * rec.recipients / window, 1),
        "first_send_to_last_receive_s": round(span, 2), "send_window_s": round(window, 2),
        "e2e_ms": percentiles(rec.latencies.tolist()),
        "latency_samples_capped": rec.deliveries > LATENCY_SAMPLES,
        "fanout_complete_ms": percentiles(complete),
        "ack_ms": percentiles([(rec.acked_at[n] - rec.sent_at[n]) * 1000 for n in acked]),
        # the fan-out stage alone: from the sender's ack (stored) to the last member's push
        "fanout_complete_after_ack_ms": percentiles(
            [(rec.last_at[n] - rec.acked_at[n]) * 1000 for n in acked if rec.received[n] == rec.recipients]),
        "errors": len(rec.errors), "error_codes": sorted({e.get("code") for e in rec.errors}, key=str),
        "other_frames": rec.other_frames, "unknown_pushes": rec.unknown, "self_echo": rec.self_echo,
        "fast_path_checks": rec.sample_checks, "fast_path_mismatches": len(rec.sample_errors),
        "warmup_s": round(warmup_s, 2), "cpu_percent": cpu,
    }


def run(url: str, members: int, rate: float, duration: float, pids: list[int] | None = None,
        quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    ws_url = url.replace("http://", "ws://") + "/ws"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, members + 500)), hard))

    t = time.monotonic()
    users = register_users(url, members, "fan")
    say(f"registered and logged in {members} users in {time.monotonic() - t:.1f}s")
    t = time.monotonic()
    peers = connect_members(users, ws_url)
    say(f"connected {len(peers)} sockets (all auth_ok) in {time.monotonic() - t:.1f}s")
    gevent.sleep(PRESENCE_SETTLE_S)  # see the constant

    msg_ids = [str(uuid.uuid4()) for _ in range(int(rate * duration))]
    rec = Recorder(msg_ids, members - 1)
    sender, receivers = peers[0], peers[1:]
    sender.is_sender = True
    try:
        t = time.monotonic()
        group = create_group(url, sender.token, [p.user_id for p in receivers])
        for peer in peers:
            peer.start(rec, group["group_id"])
        if not wait_until(lambda: all(p.warm for p in receivers), 30):
            cold = sum(1 for p in receivers if not p.warm)
            raise RuntimeError(f"{cold} members did not get the group_created message in 30 s")
        warmup_s = time.monotonic() - t
        say(f"group {group['group_id']} of {members} created; every member got group_created "
            f"in {warmup_s:.2f}s; sending {len(msg_ids)} messages at {rate}/s")

        stop: list = []
        setup_frames, rec.other_frames = rec.other_frames, {}
        cpu = CpuMeter(pids or [])
        started = time.monotonic()
        reporter = gevent.spawn(progress, rec, started, stop)
        first_send, last_send = send_all(sender, rec, rate, duration)
        in_window = rec.deliveries
        drain(rec)
        cpu_result = cpu.result()
        stop.append(True)
        reporter.kill()
        result = summarize(rec, members, rate, duration, first_send, last_send, in_window, warmup_s, cpu_result)
        result["other_frames_during_setup"] = setup_frames
        result["disconnected_members"] = sum(1 for p in receivers if p.closed_code is not None)
        result["close_codes"] = sorted({p.closed_code for p in peers if p.closed_code is not None})
    finally:
        for peer in peers:
            peer.close()

    checked = random.sample(receivers, min(SYNC_MEMBERS, len(receivers)))
    problems = {}
    for peer in checked:
        found = check_sync(sync_group(ws_url, peer.token, group["conversation_id"]), rec)
        if found:
            problems[peer.user_id] = found
    result["sync_checked_members"] = [p.user_id for p in checked]
    result["sync_problems"] = problems
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100, help="group messages per second")
    parser.add_argument("--duration", type=float, default=10, help="seconds of sending")
    parser.add_argument("--out", default="results/group_fanout.json")
    parser.add_argument("--pids", default="", help="comma-separated pids whose CPU use to report")
    args = parser.parse_args()
    if not 2 <= args.members <= 2000:
        parser.error("--members must be 2-2000")
    if not 0 < args.rate <= 2000:
        parser.error("--rate must be above 0 and at most 2000 messages/s")
    if not 0 < args.duration <= 120:
        parser.error("--duration must be above 0 and at most 120 s")
    if int(args.rate * args.duration) < 1:
        parser.error("--rate × --duration must be at least one message")
    try:
        pids = [int(p) for p in args.pids.split(",") if p.strip()]
    except ValueError:
        parser.error("--pids is a comma-separated list of process ids")
    result = run(args.url, args.members, args.rate, args.duration, pids)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"results written to {out}")
    ok = result["missing"] == 0 and not result["sync_problems"] and result["acked"] == result["sent"]
    os._exit(0 if ok else 1)


if __name__ == "__main__":
    main()
