"""What storing a message costs the send function: CPU per message of ``chat.store_messages`` on the
project's MariaDB (``make services``), for batches of private sends across 20 pairs.

    python -m tests.load.store_cost [--batch 50 5] [--rounds 60] [--out results/store-cost.json]

Each round stores one batch twice over — through the store as it is (its statements rendered once
per shape), and rendering every statement again as peewee does by default (what the store did
before) — alternately, so that both see the same machine; it prints the 25th percentile and the
median per message of each (process CPU time, not wall time: the database's own work is not
counted). Uses the ``pingme`` database of the project's servers, with users of its own.
"""
from __future__ import annotations

from tests.load.scaling import system_env  # first: it monkey-patches with gevent, as the tools do

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from common import accounts, chat, config as config_mod  # noqa: E402
from common.chat import prepared  # noqa: E402
from common.chat import store  # noqa: E402
from common.migrations import migrate  # noqa: E402
from common.models import db, init_db  # noqa: E402

PAIRS = 20


def _render_each_time(key, query, params):
    return db.execute(query())


def measure(batch: int, rounds: int) -> dict[str, dict[str, float]]:
    cfg = config_mod.load(system_env("send"))
    init_db(cfg.db)
    migrate()
    variants = {"rendered once": prepared.execute, "rendered each time": _render_each_time}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    with db.connection_context():
        tag = uuid.uuid4().hex[:6]
        users = [accounts.register(accounts.validate_registration(
            {"username": f"cost{tag}{i}", "password": "store-cost-password"}), None, cfg).id
            for i in range(2 * PAIRS)]

        def sends():
            return [(users[2 * (i % PAIRS)], {"msg_id": uuid.uuid4().hex, "content": "hello there, how are you",
                                              "content_type": "text", "to_user_id": users[2 * (i % PAIRS) + 1],
                                              "group_id": None}) for i in range(batch)]
        chat.store_messages(sends())  # the pairs' conversations exist and are cached
        try:
            for _ in range(rounds):
                for name, execute in variants.items():
                    prepared.execute = execute
                    todo = sends()
                    started = time.process_time()
                    results = chat.store_messages(todo)
                    cpu[name].append((time.process_time() - started) / batch * 1e6)
                    if not all(isinstance(r, chat.Stored) and r.created for r in results):
                        raise SystemExit(f"a send was not stored: {results[:3]}")
        finally:
            prepared.execute = variants["rendered once"]
    return {name: {"p25_us": round(sorted(v)[len(v) // 4], 1), "median_us": round(statistics.median(v), 1)}
            for name, v in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[50, 5])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {}
    for batch in args.batch:
        result[batch] = measure(batch, args.rounds)
        for name, figures in result[batch].items():
            print(f"batch {batch:4d} {name:>18}: CPU per message p25 {figures['p25_us']:7.1f} us, "
                  f"median {figures['median_us']:7.1f} us")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
