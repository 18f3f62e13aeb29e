"""Operator commands: ``python -m common.cli db migrate`` and ``python -m common.cli topics ensure``.

Exit status 0 on success, 1 on failure, 2 on bad usage or configuration.
"""
from __future__ import annotations

import argparse
import sys

from common import bus, config as config_mod, logs
from common.models import init_db, migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.cli", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="area", required=True)
    sub.add_parser("db", help="database schema").add_argument("action", choices=["migrate"])
    sub.add_parser("topics", help="Kafka topics").add_argument("action", choices=["ensure"])
    args = parser.parse_args(argv)
    logs.setup("cli")
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.area == "db":
            init_db(cfg.db)
            tables = migrate()
            print(f"schema up to date ({cfg.db.engine}): {', '.join(tables)}")
        else:
            created = bus.ensure_topics(cfg)
            print(f"topics ready; created: {', '.join(created) if created else 'none'}")
    except Exception as exc:  # report any failure as one line and a non-zero status
        print(f"{args.area} {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
