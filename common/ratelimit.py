"""Rate limits shared by every gateway (Redis), and the per-connection limit kept in memory.

A limit ``N/period`` (config ``ratelimit.*``, e.g. ``10/1m``) is a token bucket of ``N`` that
refills at ``N`` per period: up to ``N`` requests at once, then one every ``period / N``. It is
kept as GCRA (the "generic cell rate algorithm"): one number per key, the time at which the
bucket is full again (the theoretical arrival time). A request is refused with the time until it
would be allowed (the retry hint); a refused request uses nothing up.

:class:`Limiter` checks several limits of one request (say login per account and per address) in
one Redis call, atomically, on Redis' clock (every gateway shares it): either all are charged or,
when any is exhausted, none, and the answer names the first refused rule and its retry hint. A
Redis error lets the request through (fail open, logged and counted): an outage must not lock
everyone out, and the per-connection limit below still bounds a socket.

:class:`Bucket` is the same algorithm in process memory with the clock passed in (pure), for the
limit of one WebSocket connection: a flooding socket is refused before it costs a Redis call.

Why not the ``limits`` package (moving window, Redis storage) and ``flask-limiter``: measured on
this box (commit message of this module), two ``limits`` checks per frame (connection + user)
cost 193 µs of gateway CPU and 29 µs of Redis CPU, against 84 µs and 15 µs for both keys in one
call of the script below; ``limits`` cannot charge two keys atomically (the first is used up
when the second refuses); its moving window keeps one list entry per request (20 KB for a full
1000/min key); and its ``redis`` extra requires redis<8, which downgraded the project's
redis 8.1.0 when installed.

:func:`client_address` is the address requests are counted by: the socket's peer, or, only when
that peer is a configured trusted proxy, the address the proxy reports in its header.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from common.errors import AppError, Code

logger = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"(\d{1,9})\s*/\s*(\d{0,6})\s*([smhd])")


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period_s`` seconds (a burst of ``count``, then evenly spread)."""

    count: int
    period_s: int

    @classmethod
    def parse(cls, text: str) -> "Rate":
        """``"10/1m"``, ``"30/10s"``, ``"5/h"`` (units s, m, h, d). ValueError otherwise."""
        match = _RATE.fullmatch(str(text).strip().lower())
        if not match:
            raise ValueError(f"{text!r} is not a rate like 10/1m (count/period with unit s, m, h or d)")
        count, amount, unit = int(match[1]), int(match[2] or 1), match[3]
        if count < 1 or amount < 1:
            raise ValueError(f"{text!r}: count and period must be at least 1")
        return cls(count, amount * _UNITS[unit])

    @property
    def period_ms(self) -> int:
        return self.period_s * 1000

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s}s"


@dataclass(frozen=True)
class Decision:
    """The answer for one request: allowed, or refused by ``rule`` with ``retry_after_ms``."""

    allowed: bool
    retry_after_ms: int = 0
    rule: str | None = None

    @property
    def retry_after_s(self) -> int:
        """Whole seconds for a ``Retry-After`` header (at least 1 when refused)."""
        return max(1, math.ceil(self.retry_after_ms / 1000)) if not self.allowed else 0


ALLOWED = Decision(True)


class RateLimited(AppError):
    """10007 with the retry hint: ``retry_after_ms`` in the body or frame (``Retry-After`` in
    seconds on HTTP)."""

    def __init__(self, decision: Decision):
        self.rule = decision.rule
        self.retry_after_ms = decision.retry_after_ms
        self.retry_after_s = decision.retry_after_s
        super().__init__(Code.TOO_MANY_REQUESTS, f"too many requests ({decision.rule}); "
                                                 f"retry in {decision.retry_after_s} s")

    def to_dict(self) -> dict:
        return {**super().to_dict(), "retry_after_ms": self.retry_after_ms}

# KEYS: one per limit; ARGV: (period_ms, count) per key. Returns {index of the refusing key (1-based;
# 0 = allowed), retry_after_ms}. Time is Redis' own (every gateway shares it); Redis 7 replicates the
# script's effects, so TIME before a write is allowed.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local arrivals, refused, retry = {}, 0, 0
for i = 1, #KEYS do
  local period = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new = tat + period / tonumber(ARGV[2 * i])
  if new - now > period then
    local wait = new - now - period
    if refused == 0 or wait > retry then refused, retry = i, wait end
  end
  arrivals[i] = new
end
if refused == 0 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.3f', arrivals[i]), 'PX', math.ceil(arrivals[i] - now) + 1)
  end
end
return {refused, math.ceil(retry)}
"""


class Limiter:
    """Limits shared by every gateway, kept in Redis under ``<namespace>:rl:<rule>:<key>``.

    ``rules`` maps a rule name (``login_account``) to its :class:`Rate`; a rule that is absent or
    ``None`` is not limited. ``on_error`` is called with the exception when Redis fails (metrics).
    """

    def __init__(self, redis_client, namespace: str, rules: dict[str, Rate | None],
                 enabled: bool = True, on_error=None):
        self.redis = redis_client
        self.namespace = namespace
        self.rules = {name: rate for name, rate in rules.items() if rate is not None}
        self.enabled = enabled
        self.on_error = on_error
        self._script = redis_client.register_script(_GCRA)

    def key(self, rule: str, key: object) -> str:
        return f"{self.namespace}:rl:{rule}:{key}"

    def enforce(self, *hits: tuple[str, object]) -> None:
        """:meth:`check`, raising :class:`RateLimited` when refused."""
        decision = self.check(*hits)
        if not decision.allowed:
            raise RateLimited(decision)

    def check(self, *hits: tuple[str, object]) -> Decision:
        """Charge one request to each ``(rule, key)``, all or none; unknown rules are skipped."""
        hits = [(rule, key) for rule, key in hits if rule in self.rules and key not in (None, "")]
        if not self.enabled or not hits:
            return ALLOWED
        args: list[int] = []
        for rule, _ in hits:
            rate = self.rules[rule]
            args += [rate.period_ms, rate.count]
        import redis  # here, not at the top: common.config imports this module in gunicorn's master,
        # which must not import redis (and its ssl) before the gevent worker has patched

        try:
            refused, retry_ms = self._script(keys=[self.key(rule, key) for rule, key in hits], args=args)
        except redis.RedisError as exc:
            logger.warning("rate limit not checked (redis unavailable: %s); request allowed",
                           type(exc).__name__)
            if self.on_error is not None:
                self.on_error(exc)
            return ALLOWED
        if not refused:
            return ALLOWED
        return Decision(False, max(1, int(retry_ms)), hits[int(refused) - 1][0])


class Bucket:
    """The same algorithm in memory, for one connection (pure: ``now_ms`` is passed in)."""

    __slots__ = ("rate", "_tat")

    def __init__(self, rate: Rate):
        self.rate = rate
        self._tat = 0.0

    def take(self, now_ms: float) -> int:
        """0 when allowed (and charged), else the milliseconds until a request would be."""
        period = self.rate.period_ms
        tat = max(self._tat, now_ms)
        new = tat + period / self.rate.count
        if new - now_ms > period:
            return max(1, math.ceil(new - now_ms - period))
        self._tat = new
        return 0


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "127.0.0.1"]`` → networks; ValueError naming a bad item."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(peer: str | None, forwarded: str | None, trusted: Sequence[Network]) -> str:
    """The address a request is counted by.

    ``peer`` is the socket's remote address; ``forwarded`` the value of the configured proxy header
    (``X-Forwarded-For``: ``client, proxy1, proxy2``). The header is believed only when ``peer`` is
    a trusted proxy, and then read from the right: each hop a trusted proxy appended is skipped, and
    the first address that is not a trusted proxy is the client (what a client writes into the
    header itself stays to the left of it). Without trusted proxies the header is ignored.
    """
    peer = (peer or "").strip()
    peer_ip = _ip(peer)
    if not trusted or peer_ip is None or not any(peer_ip in net for net in trusted) or not forwarded:
        return peer or "unknown"
    hops = [hop.strip() for hop in forwarded.split(",")]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            return peer  # a malformed hop: do not guess past it
        if not any(ip in net for net in trusted):
            return str(ip)
    return str(_ip(hops[0]) or peer)
