"""Connection capacity: idle authenticated WebSocket connections held by one gateway process.

    python -m tests.load.conn_capacity [--url http://127.0.0.1:8080] [--count 2000] [--per-user 4]
                                       [--gateway-pid PID] [--out results/conn_capacity.json]

Against a running gateway (`make dev`; for more than ~9,000 sockets raise WORKER_CONNECTIONS and
the open-file limits of both processes: see docs/BENCHMARKS.md). Registers ``count / per-user``
users, opens ``count`` sockets (``per-user`` devices each; each gets ``auth_ok``) with a minimal
raw client (tests/load/rawws.py) so the client side stays light, holds them for a few seconds, and
reports how long opening took and the gateway worker's resident memory per connection (from
/proc; the worker is found by its command line unless ``--gateway-pid`` is given). Bounded: it
closes everything and stops by itself; exit status 1 when not every socket opened.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from tests.load import procstats, rawws  # noqa: E402
from tests.load.users import register_users  # noqa: E402


def gateway_worker_pid() -> int:
    """The gunicorn worker serving the gateway (the child of the arbiter)."""
    pids = subprocess.run(["pgrep", "-f", "gateway.wsgi:app"], capture_output=True, text=True).stdout.split()
    parents = {int(p): procstats.read_stat(p).ppid for p in pids}
    workers = [pid for pid, parent in parents.items() if parent in parents]
    if len(workers) != 1:
        raise SystemExit(f"found gateway workers {workers}; pass --gateway-pid")
    return workers[0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # as root the hard limit may be raised too
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))


SOCKETS_PER_CLIENT = 10_000  # each client process stays well inside a 20,000 open-file limit


def hold(ws_base: str, tokens: list[str], concurrency: int = 200) -> None:
    """Client process: open one socket per token, report, hold them until stdin closes."""
    raise_open_files(len(tokens) + 500)
    sockets, failures = [], []

    def open_one(token):
        try:
            ws = rawws.connect(ws_base + token, timeout=30, recv_size=4096)
            frame = json.loads(ws.receive(timeout=30))
            if frame["type"] != "auth_ok":
                raise RuntimeError(frame["type"])
            sockets.append(ws)
        except Exception as exc:  # count and report every failure, keep going
            failures.append(type(exc).__name__)

    Pool(concurrency).map(open_one, tokens)
    print(json.dumps({"opened": len(sockets), "failures": failures}), flush=True)
    sys.stdin.read()  # the parent closes our stdin when it has measured
    for ws in sockets:
        ws.close()


def run(url: str, count: int, per_user: int, pid: int) -> dict:
    users = register_users(url, -(-count // per_user), "cap")
    tokens = [users[i % len(users)][1] for i in range(count)]
    ws_base = url.replace("http://", "ws://") + "/ws?token="
    before = rss_kb(pid)
    started = time.time()
    clients = []
    for start in range(0, count, SOCKETS_PER_CLIENT):
        child = subprocess.Popen([sys.executable, "-m", "tests.load.conn_capacity", "--hold", ws_base],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        child.stdin.write("\n".join(tokens[start:start + SOCKETS_PER_CLIENT]) + "\n\n")
        child.stdin.flush()
        clients.append(child)
    try:
        reports = [json.loads(child.stdout.readline() or '{"opened": 0, "failures": ["client died"]}')
                   for child in clients]
        open_seconds = time.time() - started
        gevent.sleep(3)  # let the gateway settle (heartbeats, GC)
        after = rss_kb(pid)
    finally:
        for child in clients:
            child.stdin.close()
            child.wait(timeout=60)
    opened = sum(r["opened"] for r in reports)
    failures = [f for r in reports for f in r["failures"]]
    return {"requested": count, "users": len(users), "opened": opened, "failures": len(failures),
            "failure_kinds": sorted(set(failures)), "open_seconds": round(open_seconds, 2),
            "opens_per_second": round(opened / max(open_seconds, 1e-9), 1),
            "gateway_rss_before_kb": before, "gateway_rss_after_kb": after,
            "kb_per_connection": round((after - before) / max(opened, 1), 1)}


def main() -> int | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--per-user", type=int, default=4, help="sockets (devices) per user")
    parser.add_argument("--gateway-pid", type=int)
    parser.add_argument("--out", default="results/conn_capacity.json")
    parser.add_argument("--hold", metavar="WS_URL", help=argparse.SUPPRESS)  # a client process
    args = parser.parse_args()
    if args.hold:
        tokens = []
        while line := sys.stdin.readline().strip():
            tokens.append(line)
        return hold(args.hold, tokens)
    if not 1 <= args.count <= 50_000 or not 1 <= args.per_user <= 100:
        parser.error("count is 1-50000, per-user 1-100")
    result = run(args.url, args.count, args.per_user, args.gateway_pid or gateway_worker_pid())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["opened"] == result["requested"] else 1


if __name__ == "__main__":
    sys.exit(main())
