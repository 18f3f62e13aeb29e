"""The gateway's Prometheus metrics, served by ``GET /metrics`` (docs/OPERATIONS.md, "Probes and
metrics", has the table).

One registry per gateway process (:data:`REGISTRY`). Hot paths only increment children bound at
import: every label value is from a fixed set (a client's frame type outside the protocol counts as
``unknown``, so a client cannot grow the series). ``pingme_dlq_depth`` is read from the database at
scrape time; while the database is unreachable the scrape leaves it out instead of failing (the
other series, and ``up``, still tell the gateway's own state).
"""
from __future__ import annotations

import logging

import peewee as pw
from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

from common import metrics, protocol
from common.errors import Code
from common.models import DeadLetter, db

logger = logging.getLogger(__name__)

REGISTRY = metrics.new_registry()
CONTENT_TYPE = metrics.CONTENT_TYPE

# The protocol's frame types (common/protocol.py), and what is outside it.
FRAMES_IN_TYPES = (*protocol.CLIENT_FRAMES, "unknown", "invalid")
FRAMES_OUT_TYPES = (*protocol.SERVER_FRAMES, "other")
# The functions the gateway produces to (its requests, a client's sends, acks, typing, presence).
PRODUCED_TO = ("register", "login", "send", "deliver")

WS_CONNECTIONS = Gauge("pingme_ws_connections", "Open WebSocket connections on this gateway.",
                       registry=REGISTRY)
WS_OPENED = Counter("pingme_ws_connections_opened", "WebSocket connections authenticated and opened.",
                    registry=REGISTRY)
WS_CLOSED = Counter("pingme_ws_connections_closed", "WebSocket connections closed (for any reason).",
                    registry=REGISTRY)
_frames_in = Counter("pingme_ws_frames_in", "Client frames received, by frame type (unknown: a type "
                     "outside the protocol; invalid: not a JSON frame).", ["type"], registry=REGISTRY)
_frames_out = Counter("pingme_ws_frames_out", "Frames written (or queued) to clients, by frame type.",
                      ["type"], registry=REGISTRY)
SLOW_READER_DROPS = Counter("pingme_ws_slow_reader_drops", "Connections dropped because the client "
                            "stopped reading and its backlog (app.ws_queue_limit) filled.",
                            registry=REGISTRY)
_produce_errors = Counter("pingme_kafka_produce_errors", "Events Kafka did not take (refused at once "
                          "or failed later), by the function they were for.", ["function"],
                          registry=REGISTRY)
_reply_timeouts = Counter("pingme_reply_timeouts", "Requests a function did not answer within "
                          "kafka.request_timeout_ms (answered 10008), by function.", ["function"],
                          registry=REGISTRY)

# The rate limits (common/ratelimit.py, config ratelimit.*); ws_connection is the in-memory one.
RATE_LIMIT_RULES = ("login_account", "login_address", "register_address", "api_user", "directory_user",
                    "ws_connection", "ws_send_user", "ws_typing_user", "ws_sync_user")
_rate_limited = Counter("pingme_rate_limited", "Requests and frames refused with 10007, by the limit "
                        "that refused them.", ["rule"], registry=REGISTRY)
RATE_LIMIT_ERRORS = Counter("pingme_rate_limit_errors", "Rate-limit checks Redis did not answer "
                            "(the request was let through).", registry=REGISTRY)
RATE_LIMITED = {rule: _rate_limited.labels(rule) for rule in RATE_LIMIT_RULES}
TOKENS_REVOKED_CLOSES = Counter("pingme_ws_closed_token_revoked", "Sockets closed with 4003 because "
                                "their token was revoked.", registry=REGISTRY)

FRAMES_IN = {kind: _frames_in.labels(kind) for kind in FRAMES_IN_TYPES}
FRAMES_OUT = {kind: _frames_out.labels(kind) for kind in FRAMES_OUT_TYPES}
PRODUCE_ERRORS = {name: _produce_errors.labels(name) for name in PRODUCED_TO}
REPLY_TIMEOUTS = {name: _reply_timeouts.labels(name) for name in PRODUCED_TO}

_TYPE_PREFIX = '{"type":"'


def exposition() -> bytes:
    """This gateway's metrics in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return metrics.exposition(REGISTRY)


def frame_in(kind) -> None:
    """Count a client frame of type ``kind`` (any value; outside the protocol it is ``unknown``)."""
    FRAMES_IN.get(kind if isinstance(kind, str) else "unknown", FRAMES_IN["unknown"]).inc()


def frame_type(text: str) -> str:
    """The type of a server frame from its text, without decoding it: every server frame is
    compact JSON that starts with its type (common/protocol.py ``frame``);
    ``other`` for anything else."""
    if text.startswith(_TYPE_PREFIX):
        end = text.find('"', len(_TYPE_PREFIX))
        kind = text[len(_TYPE_PREFIX):end]
        if kind in FRAMES_OUT:
            return kind
    return "other"


def frames_out(text: str, n: int = 1) -> None:
    """Count ``n`` frames with this text written to clients."""
    if n:
        FRAMES_OUT[frame_type(text)].inc(n)


def rate_limited(rule) -> None:
    counter = RATE_LIMITED.get(rule)
    if counter is not None:
        counter.inc()


def produce_failed(function: str, _exc=None) -> None:
    """Count an event for ``function`` that Kafka did not take (also usable as an errback)."""
    (PRODUCE_ERRORS.get(function) or _produce_errors.labels(function)).inc()


def reply_timed_out(function: str) -> None:
    (REPLY_TIMEOUTS.get(function) or _reply_timeouts.labels(function)).inc()


def counted(text: str) -> str:
    """``text``, counted as one frame out (for a frame written where the count is not otherwise kept)."""
    frames_out(text)
    return text


class DlqDepth:
    """``pingme_dlq_depth{code}``: dead letters not yet replayed, read from the database at scrape
    time (the same number on every gateway: it is the system's)."""

    def collect(self):
        try:
            with db.connection_context():
                depth = DeadLetter.depth_by_code()
        except (pw.OperationalError, pw.InterfaceError) as exc:
            logger.warning("pingme_dlq_depth left out of the scrape code=%d: %s", Code.DATABASE_ERROR,
                           type(exc).__name__)
            return
        family = GaugeMetricFamily("pingme_dlq_depth", "Dead letters not yet replayed, by error code.",
                                   labels=["code"])
        for code, n in sorted(depth.items()):
            family.add_metric([str(code)], n)
        yield family

    def describe(self):
        return []  # collected at scrape time only; nothing to check at registration


REGISTRY.register(DlqDepth())


class Greenlets:
    """``pingme_gateway_greenlets``: live greenlets in this gateway process (a socket's route, a
    request, the gateway's own loops). Growing while ``pingme_ws_connections`` does not is a leak.
    Counting walks every object the garbage collector tracks, which stalls the gateway's loop
    (20-50 ms for an idle gateway's ~80,000 objects on a 2-core box, more under load), so a scrape
    recounts at most every ``max_age_s`` and otherwise reports the last count."""

    def __init__(self, max_age_s: float = 300, clock=None):
        import time
        self.max_age_s = max_age_s
        self.clock = clock or time.monotonic
        self.counted_at: float | None = None
        self.count = 0

    def live(self) -> int:
        now = self.clock()
        if self.counted_at is None or now - self.counted_at >= self.max_age_s:
            import gc

            from greenlet import greenlet
            self.count = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)
            self.counted_at = now
        return self.count

    def collect(self):
        yield GaugeMetricFamily("pingme_gateway_greenlets", "Live greenlets in this gateway process (counted "
                                "at most every 5 minutes).", value=self.live())

    def describe(self):
        return []


GREENLETS = Greenlets()
REGISTRY.register(GREENLETS)
