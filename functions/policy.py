"""Failure routing decisions, pure and clock-free: the caller passes ``now``.

A failed event is retried ``max_attempts`` times with delays ``initial × multiplier^(n-1)`` capped
at ``max_backoff``; after that it is dead. Events that can never succeed are dead at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import KafkaConfig


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_ms: int = 100
    multiplier: float = 2.0
    max_backoff_ms: int = 10_000

    @classmethod
    def from_config(cls, cfg: KafkaConfig) -> "RetryPolicy":
        return cls(cfg.retry_max_attempts, cfg.retry_initial_backoff_ms, cfg.retry_multiplier,
                   cfg.retry_max_backoff_ms)

    def delay_ms(self, attempt: int) -> int:
        """The delay before retry number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        delay = self.initial_backoff_ms * self.multiplier ** (attempt - 1)
        return int(min(delay, self.max_backoff_ms))

    def due_ms(self, retries_done: int, now_ms: int) -> int | None:
        """When the next retry may run, or None when the retries are exhausted."""
        if retries_done >= self.max_attempts:
            return None
        return now_ms + self.delay_ms(retries_done + 1)

    def schedule(self) -> list[int]:
        """Every delay in order, for docs and operators."""
        return [self.delay_ms(n) for n in range(1, self.max_attempts + 1)]
