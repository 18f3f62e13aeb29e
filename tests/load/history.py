"""An operation history of a chat run and a checker for it, in the spirit of Jepsen's.

A load tool records every operation it does and everything the server tells it, in the order it
happened, with :class:`History`; :func:`check` then decides whether the server kept its promises,
from the history alone (no peeking at the database):

``send``     a client sent ``msg_id`` (any number of times: a resend is a second ``send``)
``ack``      the sender's ``message_ack``: ``msg_id`` stored at ``seq`` in ``conversation_id``
``error``    an ``error`` frame about ``msg_id`` with its ``code``: refused
``push``     a ``message`` frame received on connection ``conn``
``sync``     a ``sync`` answer on ``conn``: the ``messages`` [(seq, msg_id)] of ``conversation_id``
             after ``after_seq``; ``complete=True`` when it is the whole conversation (the pages of
             one read from seq 0 joined, and ``has_more`` false), as a final check reads it
``receipt``  a read ``receipt`` on ``conn``: ``user_id``'s read cursor in ``conversation_id`` is ``seq``

Anomalies (each a list of findings in the verdict; the history is valid when all are empty):

``lost``                 acknowledged, but missing from a complete read of its conversation made
                         after the ack
``duplicated``           stored more than once: one msg_id twice in a complete read
``seq_gap``              a complete read whose seqs are not exactly 1..n
``seq_conflict``         two different msg_ids seen with one (conversation, seq), by any observer
``msg_id_conflict``      one msg_id seen at two different (conversation, seq)
``phantom``              delivered or stored, but never sent by any client of the run
``delivered_not_acked``  delivered or stored, but its sender never got an ack by the end of the
                         history (unless the send was refused with a code in ``ambiguous``, whose
                         outcome is unknown, like Jepsen's *info*)
``refused_but_stored``   refused with a definite code, yet delivered or stored
``cursor_backwards``     a read cursor seen to move back, on one connection

Pushes of one msg_id twice to a connection are allowed (at-least-once) and only counted. A message
acknowledged but never pushed is only counted too: push is a hint, sync is the truth.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Refusals after which a message may still have been stored: the gateway could not hand it to Kafka
# in time (50008), or a reply timed out (10008); and None, a request that got no answer at all (an
# HTTP connection lost mid-request). A client resends these with the same msg_id.
AMBIGUOUS_CODES = frozenset({50008, 10008, 20001, 20002, 20003, None})
ANOMALIES = ("lost", "duplicated", "seq_gap", "seq_conflict", "msg_id_conflict", "phantom",
             "delivered_not_acked", "refused_but_stored", "cursor_backwards")


class History:
    """An append-only list of operations, safe to record from several threads or greenlets."""

    def __init__(self, clock=time.monotonic):
        self.ops: list[dict] = []
        self._lock = threading.Lock()
        self._clock = clock

    def record(self, kind: str, **fields) -> None:
        with self._lock:
            self.ops.append({"i": len(self.ops), "t": round(self._clock(), 6), "op": kind, **fields})

    def send(self, conn, msg_id: str) -> None:
        self.record("send", conn=conn, msg_id=msg_id)

    def ack(self, conn, msg_id: str, conversation_id: int, seq: int) -> None:
        self.record("ack", conn=conn, msg_id=msg_id, conversation_id=conversation_id, seq=seq)

    def error(self, conn, msg_id: str | None, code: int | None) -> None:
        self.record("error", conn=conn, msg_id=msg_id, code=code)

    def push(self, conn, msg_id: str, conversation_id: int, seq: int) -> None:
        self.record("push", conn=conn, msg_id=msg_id, conversation_id=conversation_id, seq=seq)

    def sync(self, conn, conversation_id: int, after_seq: int, messages: list, complete: bool = False) -> None:
        self.record("sync", conn=conn, conversation_id=conversation_id, after_seq=after_seq,
                    messages=[[seq, msg_id] for seq, msg_id in messages], complete=complete)

    def receipt(self, conn, conversation_id: int, user_id: int, seq: int) -> None:
        self.record("receipt", conn=conn, conversation_id=conversation_id, user_id=user_id, seq=seq)

    def write(self, path: Path) -> None:
        """One JSON object per line (``read`` gives it back)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            for op in self.ops:
                f.write(json.dumps(op, separators=(",", ":")) + "\n")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@dataclass
class Verdict:
    anomalies: dict[str, list] = field(default_factory=lambda: {name: [] for name in ANOMALIES})
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.anomalies.values())

    def summary(self, limit: int = 5) -> dict:
        """The verdict as JSON: ok, the count and first findings of each anomaly, the stats."""
        return {"ok": self.ok, "stats": self.stats,
                "anomalies": {name: {"count": len(found), "first": found[:limit]}
                              for name, found in self.anomalies.items() if found}}


def _observations(ops: list[dict]):
    """Every (op, conversation_id, seq, msg_id) the server told a client."""
    for op in ops:
        if op["op"] in ("ack", "push"):
            yield op, op["conversation_id"], op["seq"], op["msg_id"]
        elif op["op"] == "sync":
            for seq, msg_id in op["messages"]:
                yield op, op["conversation_id"], seq, msg_id


def check(ops: list[dict], ambiguous: frozenset[int] = AMBIGUOUS_CODES) -> Verdict:
    """Check a history (operations in the order they happened); see the module docstring."""
    verdict = Verdict()
    found = verdict.anomalies
    sent = {op["msg_id"] for op in ops if op["op"] == "send"}
    acked: dict[str, tuple[int, int]] = {}
    acked_at: dict[str, int] = {}  # the op index of a msg_id's first ack
    for op in ops:
        if op["op"] == "ack" and op["msg_id"] not in acked:
            acked[op["msg_id"]] = (op["conversation_id"], op["seq"])
            acked_at[op["msg_id"]] = op["i"]
    refusals: dict[str, set[int]] = {}
    for op in ops:
        if op["op"] == "error" and op.get("msg_id"):
            refusals.setdefault(op["msg_id"], set()).add(op.get("code"))

    # One seq, one message; one message, one place.
    at_seq: dict[tuple[int, int], tuple[str, int]] = {}
    place: dict[str, tuple[int, int, int]] = {}
    seen: set[str] = set()
    for op, conversation_id, seq, msg_id in _observations(ops):
        seen.add(msg_id)
        first = at_seq.setdefault((conversation_id, seq), (msg_id, op["i"]))
        if first[0] != msg_id:
            found["seq_conflict"].append({"conversation_id": conversation_id, "seq": seq,
                                          "msg_ids": [first[0], msg_id], "ops": [first[1], op["i"]]})
        where = place.setdefault(msg_id, (conversation_id, seq, op["i"]))
        if where[:2] != (conversation_id, seq):
            found["msg_id_conflict"].append({"msg_id": msg_id, "at": [list(where[:2]), [conversation_id, seq]],
                                             "ops": [where[2], op["i"]]})

    # What the server delivered or stored must come from a send that succeeded.
    for msg_id in sorted(seen - set(acked)):
        if msg_id not in sent:
            found["phantom"].append(msg_id)
        elif refusals.get(msg_id, set()) - ambiguous:
            found["refused_but_stored"].append({"msg_id": msg_id, "codes": sorted(refusals[msg_id], key=str)})
        elif not refusals.get(msg_id):
            found["delivered_not_acked"].append(msg_id)
    for msg_id in sorted(set(acked) & set(refusals)):
        if refusals[msg_id] - ambiguous:
            found["refused_but_stored"].append({"msg_id": msg_id, "codes": sorted(refusals[msg_id], key=str)})
    for msg_id in sorted(set(acked) - sent):
        found["phantom"].append(msg_id)

    # The complete reads: every acknowledged message exactly once, seqs 1..n.
    complete: dict[int, dict] = {}
    for op in ops:
        if op["op"] == "sync" and op.get("complete"):
            complete[op["conversation_id"]] = op  # the last complete read of a conversation counts
    for conversation_id, op in sorted(complete.items()):
        seqs = [seq for seq, _ in op["messages"]]
        if seqs != list(range(1, len(seqs) + 1)):
            found["seq_gap"].append({"conversation_id": conversation_id, "op": op["i"],
                                     "missing": sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs)),
                                     "seqs_head": seqs[:20]})
        counts: dict[str, int] = {}
        for _, msg_id in op["messages"]:
            counts[msg_id] = counts.get(msg_id, 0) + 1
        for msg_id, n in sorted(counts.items()):
            if n > 1:
                found["duplicated"].append({"msg_id": msg_id, "conversation_id": conversation_id, "times": n})
    for msg_id, (conversation_id, seq) in sorted(acked.items()):
        read_op = complete.get(conversation_id)
        # Only a read that began after the ack must hold the message.
        if read_op is not None and acked_at[msg_id] < read_op["i"] \
                and all(m != msg_id for _, m in read_op["messages"]):
            found["lost"].append({"msg_id": msg_id, "conversation_id": conversation_id, "seq": seq})
    unread = {conversation_id for conversation_id, _ in acked.values()} - set(complete)

    # Read cursors move forward only, as each connection sees them.
    cursors: dict[tuple, tuple[int, int]] = {}
    for op in ops:
        if op["op"] == "receipt":
            key = (op["conn"], op["conversation_id"], op["user_id"])
            before = cursors.get(key)
            if before is not None and op["seq"] < before[0]:
                found["cursor_backwards"].append({"conn": op["conn"], "conversation_id": op["conversation_id"],
                                                  "user_id": op["user_id"], "from": before[0], "to": op["seq"],
                                                  "ops": [before[1], op["i"]]})
            if before is None or op["seq"] >= before[0]:
                cursors[key] = (op["seq"], op["i"])

    pushes: dict[tuple, int] = {}
    for op in ops:
        if op["op"] == "push":
            pushes[(op["conn"], op["msg_id"])] = pushes.get((op["conn"], op["msg_id"]), 0) + 1
    pushed = {msg_id for _, msg_id in pushes}
    verdict.stats = {
        "ops": len(ops), "sent": len(sent), "acked": len(acked),
        "refused": len(set(refusals) - set(acked)),
        "pushes": sum(pushes.values()), "duplicate_pushes": sum(n - 1 for n in pushes.values()),
        "acked_not_pushed": len(set(acked) - pushed),
        "conversations_read": len(complete), "conversations_not_read": len(unread),
        "receipts": sum(1 for op in ops if op["op"] == "receipt"),
    }
    return verdict
