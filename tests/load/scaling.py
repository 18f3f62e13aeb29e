"""Scaling one function: the same load against 1, 2, 4 … worker processes of one function, in one run.

    python -m tests.load.scaling login   [--workers 1,2] [--duration 15] [--concurrency 16]
    python -m tests.load.scaling deliver [--workers 1,2,4] [--members 500] [--rate 150] [--duration 10]

What an operator who scales single handlers wants to know: what one more worker buys. Starts its own
system on the project's servers (``make services``): a private namespace on MariaDB, one gateway,
one worker of every function the scenario needs, and ``N`` workers of the measured one (each joins
the function's consumer group, as another container would). Topics get 4 partitions, so up to 4
workers share the work.

``login``: password hashing at the default cost (``auth.password_iterations``, CPU-bound). A closed
loop of ``--concurrency`` clients logs in 32 users over and over for ``--duration`` seconds; reports
logins/s, latency and the CPU of the login workers.
``deliver``: a ``--members`` group fed at ``--rate`` messages/s (tests/load/group_fanout.py, with its
loss and sync checks); reports deliveries/s, latency and the CPU of the deliver workers and gateway.

Prints one line per worker count and writes JSON to ``--out``. Bounded by the durations; every
process it starts is stopped at the end.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402

from common import bus, config as config_mod  # noqa: E402
from common.models import init_db  # noqa: E402
from common.migrations import migrate  # noqa: E402
from tests.integration.conftest import Procs, _services_env, group_assignment  # noqa: E402
from tests.load import group_fanout  # noqa: E402
from tests.load.stats import percentiles  # noqa: E402
from tests.load.users import post, register_users  # noqa: E402

PARTITIONS = 4
LOGIN_USERS = 32
SCENARIO_FUNCTIONS = {"login": ("register",), "deliver": ("register", "login", "send")}


def system_env(function: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("APP_", "DB_", "REDIS_", "KAFKA_", "RETRY_", "JWT_", "PINGME_"))}
    env.update(_services_env())
    env.update({"APP_CONF": os.devnull, "APP_ENV": "test", "DB_ENGINE": "mysql", "DB_NAME": "pingme",
                "PINGME_NAMESPACE": f"s{uuid.uuid4().hex[:8]}", "KAFKA_PARTITIONS": str(PARTITIONS),
                "JWT_SECRET": "scaling-benchmark-" + uuid.uuid4().hex, "LOG_LEVEL": "INFO"})
    if function != "login":  # registering hundreds of members at the production cost takes minutes
        env["PASSWORD_ITERATIONS"] = "1000"
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Cpu:
    """CPU % (100 = one core) of some processes, and of the whole machine (100 × cores), between
    construction and :meth:`pct` / :meth:`machine_pct`."""

    def __init__(self, pids: list[int]):
        self.pids, self.started = pids, time.monotonic()
        self.before = {pid: cpu_seconds(pid) for pid in pids}
        self.machine_before = machine_busy()

    def pct(self) -> float:
        wall = time.monotonic() - self.started
        return round(100 * sum(cpu_seconds(p) - self.before[p] for p in self.pids) / wall, 1)

    def machine_pct(self) -> float:
        (busy0, total0), (busy1, total1) = self.machine_before, machine_busy()
        return round(100 * os.cpu_count() * (busy1 - busy0) / max(total1 - total0, 1), 1)


def login_load(url: str, users: list[dict], concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    deadline = time.monotonic() + duration

    def client(i: int) -> None:
        n = i
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                post(url + "/api/v1/auth/login", users[n % len(users)])
                latencies.append((time.monotonic() - started) * 1000)
            except urllib.error.HTTPError as err:
                errors[err.code] = errors.get(err.code, 0) + 1
            n += concurrency

    started = time.monotonic()
    Pool(concurrency).map(client, range(concurrency))
    elapsed = time.monotonic() - started
    return {"logins": len(latencies), "per_s": round(len(latencies) / elapsed, 1),
            "latency_ms": percentiles(latencies), "http_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", choices=sorted(SCENARIO_FUNCTIONS))
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (login 1,2; deliver 1,2,4)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load per count")
    parser.add_argument("--concurrency", type=int, default=16, help="login: clients logging in at once")
    parser.add_argument("--members", type=int, default=500, help="deliver: group size")
    parser.add_argument("--rate", type=float, default=150, help="deliver: group messages per second")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    counts = [int(n) for n in (args.workers or ("1,2" if args.function == "login" else "1,2,4")).split(",")]
    duration = args.duration or (15 if args.function == "login" else 10)
    out = Path(args.out or f"results/scaling-{args.function}.json")

    env = system_env(args.function)
    cfg = config_mod.load(env)
    init_db(cfg.db)
    migrate()
    bus.ensure_topics(cfg)
    procs = Procs(env)
    rows = []
    try:
        for name in SCENARIO_FUNCTIONS[args.function]:
            procs.function(name)
        api = procs.gateway()
        gateway_pid = group_fanout_gateway_pid(api)
        users = []
        if args.function == "login":
            creds = [{"username": f"scale{uuid.uuid4().hex[:6]}{i}", "password": "scaling-password"}
                     for i in range(LOGIN_USERS)]
            Pool(4).map(lambda c: post(api.base + "/api/v1/auth/register", c), creds)
            users = creds
        workers = []
        for count in counts:
            while len(workers) < count:
                workers.append(procs.function(args.function, ready=False))
            wait_for_members(cfg, args.function, count)
            cpu = Cpu([w.popen.pid for w in workers])
            gw_cpu = Cpu([gateway_pid])
            if args.function == "login":
                result = login_load(api.base, users, args.concurrency, duration)
                line = (f"login workers={count}: {result['per_s']} logins/s, p50 {result['latency_ms'].get('p50')} ms, "
                        f"p99 {result['latency_ms'].get('p99')} ms, errors {result['http_errors']}")
            else:
                result = group_fanout.run(api.base, args.members, args.rate, duration, quiet=True)
                line = (f"deliver workers={count}: {result['deliveries_per_s']} deliveries/s "
                        f"(offered {result['offered_deliveries_per_s']}), e2e p50 {result['e2e_ms'].get('p50')} ms, "
                        f"missing {result['missing']}, sync problems {len(result['sync_problems'])}")
            result.update(workers=count, worker_cpu_pct=cpu.pct(), gateway_cpu_pct=gw_cpu.pct(),
                          machine_cpu_pct=cpu.machine_pct())
            print(f"{line}; CPU: {args.function} workers {result['worker_cpu_pct']} %, gateway "
                  f"{result['gateway_cpu_pct']} %, machine {result['machine_cpu_pct']} of {100 * os.cpu_count()} %",
                  flush=True)
            rows.append(result)
    finally:
        procs.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"function": args.function, "partitions": PARTITIONS, "runs": rows}, indent=1))
    print(f"results written to {out}")


def group_fanout_gateway_pid(api) -> int:
    """The gunicorn worker of the gateway (the process that does the work, not the arbiter)."""
    from tests.load.procstats import children
    return children(api.proc.popen.pid)[0]


def wait_for_members(cfg, function: str, count: int, timeout: float = 90) -> None:
    """Until the function's group is stable with ``count`` members, each holding a partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = group_assignment(cfg, function)
        if len(members) == count and all(members.values()):
            return
        gevent.sleep(0.5)
    raise RuntimeError(f"{function}: {count} workers did not share the partitions in {timeout} s")


if __name__ == "__main__":
    main()
