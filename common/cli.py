"""pingmectl — operator commands: ``python -m common.cli AREA ACTION [options]``.

    db migrate                      create missing tables (idempotent)
    topics ensure                   create missing Kafka topics
    dlq list [--code C] [--topic T] [--older-than S] [--limit N]
    dlq show ID
    dlq replay (ID | --all) [--code C] [--topic T] [--again]
    dlq purge --older-than S [--code C]
    dlq depth                       dead letters waiting, by code

Every command takes ``--json`` for scripts. Exit status: 0 success, 1 failure, 2 bad usage or
configuration. Replaying re-publishes a dead letter's original bytes and key to its origin topic
with a fresh retry budget; functions are idempotent (``msg_id``, request id), so a replayed event
is stored once however often it is replayed.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys

import peewee as pw

from common import bus, config as config_mod, logs
from common.errors import Code
from common.models import DeadLetter, db, init_db, now_ms
from common.migrations import migrate


class CommandError(Exception):
    """A failure to report in one line with exit status 1."""


def _letter(d: DeadLetter, full: bool = False) -> dict:
    row = {"id": d.id, "code": d.code, "code_name": _code_name(d.code), "origin_topic": d.origin_topic,
           "origin_partition": d.origin_partition, "origin_offset": d.origin_offset,
           "attempts": d.attempts, "first_failed_at": d.first_failed_at, "last_failed_at": d.last_failed_at,
           "created_at": d.created_at, "replayed_at": d.replayed_at, "error": d.error}
    if full:
        value = bytes(d.value or b"")
        try:
            row["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            row["value_base64"] = base64.b64encode(value).decode()
        row["key"] = bytes(d.key).decode("utf-8", "replace") if d.key is not None else None
    return row


def _code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return "UNKNOWN"


def _filtered(args) -> pw.ModelSelect:
    query = DeadLetter.select().order_by(DeadLetter.id)
    if getattr(args, "code", None):
        query = query.where(DeadLetter.code == args.code)
    if getattr(args, "topic", None):
        query = query.where(DeadLetter.origin_topic == args.topic)
    if getattr(args, "older_than", None) is not None:
        query = query.where(DeadLetter.created_at < now_ms() - int(args.older_than * 1000))
    return query


def dlq_list(args, cfg) -> dict:
    rows = [_letter(d) for d in _filtered(args).limit(args.limit)]
    return {"dead_letters": rows, "count": len(rows)}


def dlq_show(args, cfg) -> dict:
    letter = DeadLetter.get_or_none(DeadLetter.id == args.id)
    if letter is None:
        raise CommandError(f"no dead letter {args.id}")
    return _letter(letter, full=True)


def dlq_replay(args, cfg) -> dict:
    if args.id is None and not args.all:
        raise CommandError("give a dead letter ID or --all")
    query = _filtered(args)
    if args.id is not None:
        query = query.where(DeadLetter.id == args.id)
    elif not args.again:
        query = query.where(DeadLetter.replayed_at.is_null())
    letters = list(query)
    if args.id is not None and not letters:
        raise CommandError(f"no dead letter {args.id}")
    producer = bus.make_producer(cfg)
    try:
        futures = [(d, producer.send(d.origin_topic, key=bytes(d.key) if d.key is not None else None,
                                     value=bytes(d.value or b""),
                                     headers=bus.dict_to_headers({"pingme-replayed-from": d.id})))
                   for d in letters if d.origin_topic]
        producer.flush(timeout=30)
        failed = [d.id for d, f in futures if f.failed()]
    finally:
        producer.close(timeout=10)
    replayed = [d.id for d, _ in futures if d.id not in failed]
    if replayed:
        DeadLetter.update(replayed_at=now_ms()).where(DeadLetter.id.in_(replayed)).execute()
    if failed:
        raise CommandError(f"replayed {len(replayed)}, failed to produce {len(failed)}: {failed[:10]} "
                           f"(code {int(Code.PRODUCER_ERROR)})")
    return {"replayed": replayed, "count": len(replayed)}


def dlq_purge(args, cfg) -> dict:
    deleted = DeadLetter.delete().where(DeadLetter.id.in_(_filtered(args).select(DeadLetter.id))).execute()
    return {"purged": deleted}


def dlq_depth(args, cfg) -> dict:
    depth = DeadLetter.depth_by_code()
    return {"depth": depth, "total": sum(depth.values())}


def _print_human(area: str, action: str, result: dict) -> None:
    if area == "dlq" and action == "list":
        print(f"{'ID':>6}  {'CODE':>5}  {'ATTEMPTS':>8}  {'ORIGIN':<28} {'AGE':>8}  REPLAYED  ERROR")
        for row in result["dead_letters"]:
            age = f"{(now_ms() - row['created_at']) / 1000:.0f}s"
            print(f"{row['id']:>6}  {row['code']:>5}  {row['attempts']:>8}  {row['origin_topic']:<28} {age:>8}  "
                  f"{'yes' if row['replayed_at'] else 'no':<8}  {row['error'][:60]}")
        print(f"{result['count']} dead letter(s)")
    elif area == "dlq" and action == "show":
        for key, value in result.items():
            print(f"{key:>17}: {value}")
    elif area == "dlq" and action == "replay":
        print(f"replayed {result['count']} dead letter(s): {result['replayed'][:20]}")
    elif area == "dlq" and action == "purge":
        print(f"purged {result['purged']} dead letter(s)")
    elif area == "dlq" and action == "depth":
        print(f"{result['total']} dead letter(s) waiting: " +
              (", ".join(f"{code} {_code_name(code)}: {n}" for code, n in sorted(result["depth"].items())) or "none"))
    else:
        print(result["message"])


def parse(argv):
    parser = argparse.ArgumentParser(prog="python -m common.cli", description="PingMe operator commands")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    areas = parser.add_subparsers(dest="area", required=True)

    def leaf(group, name):
        sub = group.add_parser(name)
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS)  # also after the action
        return sub

    def filters(sub):
        sub.add_argument("--code", type=int)
        sub.add_argument("--topic", help="origin topic")
        sub.add_argument("--older-than", type=float, metavar="SECONDS")
        return sub

    leaf(areas.add_parser("db").add_subparsers(dest="action", required=True), "migrate")
    leaf(areas.add_parser("topics").add_subparsers(dest="action", required=True), "ensure")
    dlq = areas.add_parser("dlq").add_subparsers(dest="action", required=True)
    filters(leaf(dlq, "list")).add_argument("--limit", type=int, default=100)
    leaf(dlq, "show").add_argument("id", type=int)
    replay = filters(leaf(dlq, "replay"))
    replay.add_argument("id", type=int, nargs="?")
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--again", action="store_true", help="with --all: include replayed ones")
    purge = leaf(dlq, "purge")
    purge.add_argument("--older-than", type=float, metavar="SECONDS", required=True)
    purge.add_argument("--code", type=int)
    leaf(dlq, "depth")
    return parser.parse_args(argv)


ACTIONS = {("dlq", "list"): dlq_list, ("dlq", "show"): dlq_show, ("dlq", "replay"): dlq_replay,
           ("dlq", "purge"): dlq_purge, ("dlq", "depth"): dlq_depth}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logs.setup("cli")
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.area == "topics":
            created = bus.ensure_topics(cfg)
            result = {"created": created, "message": f"topics ready; created: {', '.join(created) or 'none'}"}
        else:
            init_db(cfg.db)
            with db.connection_context():
                if args.area == "db":
                    tables = migrate()
                    result = {"tables": tables,
                              "message": f"schema up to date ({cfg.db.engine}): {', '.join(tables)}"}
                else:
                    result = ACTIONS[(args.area, args.action)](args, cfg)
    except CommandError as exc:
        print(f"{args.area} {args.action}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # report any failure as one line and a non-zero status
        print(f"{args.area} {args.action} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_human(args.area, args.action, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
