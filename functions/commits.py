"""Offset bookkeeping of a worker as a pure schedule: what is done, what to commit and when, what
to send again after a failed commit. No consumer, no clock: the caller passes ``now`` (monotonic
seconds) and the partitions it owns, and does the committing.

Offsets are "next offset to read" per partition (a finished batch's last offset + 1). At most one
commit goes out per ``interval_s`` (each costs the worker and the broker a request). A commit that
failed is sent again with the next one, unless a later batch moved that partition on; a partition
no longer owned is left to its new owner (which re-runs the batch: handlers are idempotent).
"""
from __future__ import annotations


class CommitSchedule:
    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.done: dict = {}      # every partition's next offset after its last finished batch
        self._pending: dict = {}  # the part of ``done`` not handed to a commit yet
        self._next_at = 0.0       # the time from which the next commit may go out

    def finished(self, offsets: dict) -> None:
        """A batch is done: its ``{partition: next offset}`` is to be committed."""
        self.done.update(offsets)
        self._pending.update(offsets)

    def ready(self, now: float) -> bool:
        """Whether a commit may go out at ``now``: something is pending and the interval passed
        (a cheap test before asking the consumer for its assignment)."""
        return bool(self._pending) and now >= self._next_at

    def due(self, now: float, owned) -> dict:
        """The offsets to commit now, of the partitions in ``owned``; ``{}`` when there is nothing
        new or the interval has not passed. What it returns counts as sent."""
        if not self.ready(now):
            return {}
        offsets = {tp: offset for tp, offset in self._pending.items() if tp in owned}
        self._pending = {}
        self._next_at = now + self.interval_s
        return offsets

    def failed(self, offsets: dict) -> None:
        """A commit of ``offsets`` failed: send them with the next commit. Only where they are
        still the partition's latest: a partition a later batch moved on (its newer offset is
        pending, or was sent already) or one given up since (:meth:`revoked`) must not be sent
        back to an older offset — that rewound the group after a scale-in (issue 18). An idle
        worker would otherwise leave its last offsets uncommitted for good, and its group's lag
        would never come back to 0."""
        for tp, offset in offsets.items():
            if self.done.get(tp) == offset:
                self._pending.setdefault(tp, offset)

    def revoked(self, partitions) -> dict:
        """The partitions are another worker's from now on: what of them is finished but not
        committed yet (commit it before letting go), and forget them — a partition that comes back
        later starts from the group's committed offset, not from this worker's old one."""
        unsent = {tp: self._pending.pop(tp) for tp in list(self._pending) if tp in partitions}
        for tp in partitions:
            self.done.pop(tp, None)
        return unsent

    def final(self, owned) -> dict:
        """Everything done, of the partitions in ``owned``: the last commit before closing."""
        return {tp: offset for tp, offset in self.done.items() if tp in owned}
