"""Failover: how long messages stall when a function worker is killed with SIGKILL.

    python -m tests.load.failover [--function send] [--kills 3] [--no-restart] [--static]
                                  [--set KEY=VALUE ...] [--out results/failover.json]

Against the servers of deploy/local/services.sh (`make services`; it reads `services.sh env`), in
a private namespace on the `pingme` database: starts register, login, deliver, two replicas of the
function under test (each topic has 2 partitions, so each replica holds one), and a gateway; then
sends private messages between 8 pairs (8 conversations, on both partitions) at 40/s. Every ``--every`` seconds it kills one replica of
the function with SIGKILL (the two in turn) and, unless ``--no-restart``, starts it again at once
with the same environment, as a container runtime would (with ``--no-restart`` it comes back only
after the stall window, so that the next kill has a survivor too). ``--static`` gives each replica its own
``KAFKA_GROUP_INSTANCE_ID`` (static membership, kept by its restart); ``--set`` passes any other
setting (e.g. ``KAFKA_SESSION_TIMEOUT_MS=6000``).

The stall of a kill is the longest end-to-end latency (send → the recipient's push) of the
messages sent in the ``--every`` seconds after it: how long the conversations of the killed
worker's partition waited. Prints the stall of each kill, their median and the e2e p50 before the
first kill; writes them with the operation-history checker's verdict (tests/load/history.py) to
``--out``. Exit status 1 when the checker finds an anomaly.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from tests.integration.conftest import REPO, SERVICES, Proc, free_port  # noqa: E402
from tests.load import history as history_mod  # noqa: E402
from tests.load.chat_load import Peer, sync_all  # noqa: E402
from tests.load.stats import percentiles  # noqa: E402
from tests.load.users import healthy, register_users  # noqa: E402

PAIRS, RATE = 8, 40.0  # 8 conversations: both partitions carry messages


def services_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(SERVICES), "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        gevent.sleep(0.1)


class System:
    """The functions and the gateway of one run, in their own namespace."""

    def __init__(self, env: dict[str, str], function: str, static: bool):
        self.env, self.function, self.static = env, function, static
        self.procs: list[Proc] = []
        self.replicas: dict[str, Proc] = {}

    def start_function(self, name: str, instance: str | None = None, ready: bool = True) -> Proc:
        env = dict(self.env)
        if instance and self.static:
            env["KAFKA_GROUP_INSTANCE_ID"] = instance
        proc = Proc([sys.executable, "-m", "functions", name], env, f"failover-{instance or name}")
        self.procs.append(proc)
        if ready:
            wait_until(lambda: "partitions assigned" in proc.log(), 60, f"{name} joining its group")
        return proc

    def start(self) -> str:
        for name in ("register", "login", "send", "deliver"):
            if name != self.function:
                self.start_function(name)
        for replica in ("a", "b"):
            self.replicas[replica] = self.start_function(self.function, f"{self.function}-{replica}")
        port = free_port()
        gw = Proc([sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py", "gateway.wsgi:app"],
                  {**self.env, "APP_HOST": "127.0.0.1", "APP_PORT": str(port)}, "failover-gateway")
        self.procs.append(gw)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url), 30, "healthy gateway")
        return url

    def kill(self, replica: str, restart: bool) -> None:
        proc = self.replicas[replica]
        proc.signal(signal.SIGKILL)
        proc.popen.wait()
        if restart:
            self.replicas[replica] = self.start_function(self.function, f"{self.function}-{replica}", ready=False)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def run(function: str, kills: int, every: float, restart: bool, static: bool, settings: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "REDIS_", "KAFKA_", "PINGME_"))}
    env.update(services_env())
    env.update({"APP_CONF": os.devnull, "APP_ENV": "test", "DB_ENGINE": "mysql", "DB_NAME": "pingme",
                "PINGME_NAMESPACE": f"fo{uuid.uuid4().hex[:8]}", "KAFKA_PARTITIONS": "2",
                "PASSWORD_ITERATIONS": "1000", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1", **settings})
    subprocess.run([sys.executable, "-m", "common.cli", "db", "migrate"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    system = System(env, function, static)
    try:
        url = system.start()
        return _measure(system, url, kills, every, restart)
    finally:
        system.stop()


def _measure(system: System, url: str, kills: int, every: float, restart: bool) -> dict:
    ws_url = url.replace("http://", "ws://") + "/ws"
    users = register_users(url, 2 * PAIRS, "failover")
    acks, received = {}, {}
    history = history_mod.History()
    peers = [Peer(ws_url, uid, token, acks, received, history) for uid, token in users]
    routes = [(peers[2 * i], peers[2 * i + 1]) for i in range(PAIRS)]
    routes += [(b, a) for a, b in routes]
    sent: dict[str, tuple[float, int]] = {}
    kill_times: list[float] = []
    warmup = 5.0
    started = time.time()

    def killer():
        gevent.sleep(warmup)
        for k in range(kills):
            kill_times.append(time.time())
            system.kill("ab"[k % 2], restart)
            gevent.sleep(every)
            if not restart:  # back for the next kill, so that each has a survivor; then settle
                system.replicas["ab"[k % 2]] = system.start_function(system.function,
                                                                     f"{system.function}-{'ab'[k % 2]}")
                gevent.sleep(5)
    killing = gevent.spawn(killer)
    n = 0
    while not killing.dead:
        gevent.sleep(max(0.0, started + n / RATE - time.time()))
        sender, recipient = routes[n % len(routes)]
        msg_id = str(uuid.uuid4())
        sent[msg_id] = (time.time(), recipient.user_id)
        sender.send(msg_id, recipient.user_id, f"failover {n}")
        n += 1
    killing.join()
    deadline = time.time() + 60
    while time.time() < deadline and not all((r, m) in received for m, (_, r) in sent.items()):
        gevent.sleep(0.1)
    for peer in peers:
        peer.close()
    conversations = {conversation_id for _, _, conversation_id in acks.values()}
    tokens = dict(users)
    for conversation_id in conversations:
        msg_id = next(m for m, a in acks.items() if a[2] == conversation_id)
        sync_all(ws_url, tokens[sent[msg_id][1]], conversation_id, history)

    def e2e(msg_id):
        t, r = sent[msg_id]
        return received[(r, msg_id)] - t if (r, msg_id) in received else float("inf")
    stalls = []
    for k in kill_times:
        window = [m for m, (t, _) in sent.items() if k <= t < k + every]
        stalls.append(round(max(e2e(m) for m in window), 2) if window else None)
    before = [e2e(m) * 1000 for m, (t, _) in sent.items() if t < (kill_times[0] if kill_times else float("inf"))]
    verdict = history_mod.check(history.ops)
    return {"sent": len(sent), "acked": len(acks), "delivered": sum(1 for m in sent if e2e(m) < float("inf")),
            "stalls_s": stalls, "stall_median_s": statistics.median([s for s in stalls if s is not None] or [0]),
            "e2e_ms_before": percentiles(before), "checker": verdict.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", default="send", choices=("send", "deliver"))
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--every", type=float, default=20, help="seconds between kills (and each stall window)")
    parser.add_argument("--no-restart", action="store_true", help="do not start a killed replica again")
    parser.add_argument("--static", action="store_true", help="static membership: KAFKA_GROUP_INSTANCE_ID per replica")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every process")
    parser.add_argument("--out", default="results/failover.json")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    result = run(args.function, args.kills, args.every, not args.no_restart, args.static, settings)
    result["options"] = {"function": args.function, "kills": args.kills, "every": args.every,
                         "restart": not args.no_restart, "static": args.static, "settings": settings}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    os._exit(0 if result["checker"]["ok"] else 1)


if __name__ == "__main__":
    main()
