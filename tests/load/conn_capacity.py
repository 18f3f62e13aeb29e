"""Connection capacity: idle authenticated WebSocket connections held by one gateway process.

    python -m tests.load.conn_capacity [--url http://127.0.0.1:8080] [--count 2000]
                                       [--gateway-pid PID] [--out results/conn_capacity.json]

Against a running gateway (`make dev`; for more than ~9,000 sockets raise WORKER_CONNECTIONS and
the open-file limits of both processes). Registers one user, opens ``count`` sockets with its token
(each gets ``auth_ok``), holds them for a few seconds, and reports how long opening took and the
gateway worker's resident memory per connection (from /proc; the worker is found by its command
line unless ``--gateway-pid`` is given). Bounded: it closes everything and stops by itself.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from tests import wsclient  # noqa: E402
from tests.load.chat_load import post  # noqa: E402


def gateway_worker_pid() -> int:
    """The gunicorn worker serving the gateway (the child of the arbiter)."""
    pids = subprocess.run(["pgrep", "-f", "gateway.wsgi:app"], capture_output=True, text=True).stdout.split()
    parents = {int(p): int(Path(f"/proc/{p}/stat").read_text().split()[3]) for p in pids}
    workers = [pid for pid, parent in parents.items() if parent in parents]
    if len(workers) != 1:
        raise SystemExit(f"found gateway workers {workers}; pass --gateway-pid")
    return workers[0]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run(url: str, count: int, pid: int, concurrency: int = 200) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 500)), hard))
    creds = {"username": "cap" + uuid.uuid4().hex[:8], "password": "capacity-password"}
    post(url + "/api/v1/auth/register", creds)
    token = post(url + "/api/v1/auth/login", creds)["data"]["token"]
    ws_url = url.replace("http://", "ws://") + f"/ws?token={token}"
    before = rss_kb(pid)
    sockets, failures = [], []

    def open_one(_):
        try:
            ws = wsclient.connect(ws_url)
            frame = json.loads(ws.receive(timeout=30))
            if frame["type"] != "auth_ok":
                raise RuntimeError(frame["type"])
            sockets.append(ws)
        except Exception as exc:  # count and report every failure, keep going
            failures.append(type(exc).__name__)

    started = time.time()
    Pool(concurrency).map(open_one, range(count))
    open_seconds = time.time() - started
    gevent.sleep(3)  # let the gateway settle (heartbeats, GC)
    after = rss_kb(pid)
    for ws in sockets:
        try:
            ws.close()
        except Exception:
            pass
    return {"requested": count, "opened": len(sockets), "failures": len(failures),
            "failure_kinds": sorted(set(failures)), "open_seconds": round(open_seconds, 2),
            "opens_per_second": round(len(sockets) / max(open_seconds, 1e-9), 1),
            "gateway_rss_before_kb": before, "gateway_rss_after_kb": after,
            "kb_per_connection": round((after - before) / max(len(sockets), 1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--gateway-pid", type=int)
    parser.add_argument("--out", default="results/conn_capacity.json")
    args = parser.parse_args()
    if not 1 <= args.count <= 50_000:
        parser.error("count is 1-50000")
    result = run(args.url, args.count, args.gateway_pid or gateway_worker_pid())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
