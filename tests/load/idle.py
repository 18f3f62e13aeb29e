"""What idle costs: the CPU every function's worker uses with nothing to do, and how long the first
message after a quiet spell takes to be acknowledged.

    python -m tests.load.idle [--seconds 60] [--samples 5] [--gap 15] [--out results/idle.json]

Starts its own system on the project's servers (``make services``): a private namespace, one
worker of every function (common.bus.FUNCTIONS) and a gateway. Registers two users, sends one
message (so connections and the pair's conversation exist), lets the system settle, then reads the
workers' CPU time from /proc over ``--seconds`` (100 % = one core). Then ``--samples`` times: wait
``--gap`` seconds, send one message over HTTP and time its ack (stored, by the send function, through
Kafka and Redis). Bounded by those times; every process it starts is stopped at the end.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after monkey-patching, as gevent requires)
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from common import bus, config as config_mod  # noqa: E402
from common.migrations import migrate  # noqa: E402
from common.models import init_db  # noqa: E402
from tests.integration.conftest import Procs  # noqa: E402
from tests.load.scaling import Cpu, system_env  # noqa: E402
from tests.load.users import post  # noqa: E402

SETTLE_S = 5  # after the warm-up message: its commits and the consumers' first idle rounds


def run(seconds: float, samples: int, gap: float) -> dict:
    env = system_env("idle")
    cfg = config_mod.load(env)
    init_db(cfg.db)
    migrate()
    bus.ensure_topics(cfg)
    procs = Procs(env)
    try:
        workers = {name: procs.function(name) for name in bus.FUNCTIONS}
        api = procs.gateway()
        users = []
        for i in range(2):
            creds = {"username": f"idle{uuid.uuid4().hex[:8]}{i}", "password": "idle-benchmark"}
            users.append(post(api.base + "/api/v1/auth/register", creds)["data"])
        token = post(api.base + "/api/v1/auth/login",
                     {"username": users[0]["username"], "password": "idle-benchmark"})["data"]["token"]

        def send() -> float:
            started = time.perf_counter()
            post(api.base + "/api/v1/messages", {"msg_id": uuid.uuid4().hex, "to_user_id": users[1]["id"],
                                                 "content": "after a quiet spell"}, token)
            return (time.perf_counter() - started) * 1000

        send()
        time.sleep(SETTLE_S)
        per_worker = {name: Cpu([proc.popen.pid]) for name, proc in workers.items()}
        time.sleep(seconds)
        cpu = {name: c.pct() for name, c in per_worker.items()}
        first = []
        for _ in range(samples):
            time.sleep(gap)
            first.append(round(send(), 1))
    finally:
        procs.stop()
    return {"seconds": seconds, "cpu_pct": cpu, "total_cores": round(sum(cpu.values()) / 100, 4),
            "first_message_ms": first, "first_message_median_ms": statistics.median(first) if first else None,
            "gap_s": gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the idle CPU is measured")
    parser.add_argument("--samples", type=int, default=5, help="first messages after a quiet spell")
    parser.add_argument("--gap", type=float, default=15, help="seconds of quiet before each of them")
    parser.add_argument("--out", default="results/idle.json")
    args = parser.parse_args()
    result = run(args.seconds, args.samples, args.gap)
    per = ", ".join(f"{name} {pct} %" for name, pct in result["cpu_pct"].items())
    print(f"idle over {args.seconds:.0f} s: {result['total_cores']} cores for {len(result['cpu_pct'])} functions "
          f"({per})")
    print(f"first message after {args.gap:.0f} s idle: ack in {result['first_message_ms']} ms "
          f"(median {result['first_message_median_ms']})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
