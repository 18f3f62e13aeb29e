"""Kafka and Redis plumbing shared by the gateway and the function runtime.

Events are compact JSON objects. Pipeline metadata (retry attempt, origin topic, due time, error)
travels in Kafka record headers, so an event's bytes are never rewritten on its way through retry
and the DLQ. Client settings favour chat latency: no linger, short fetch waits, manual commits.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from common.config import Config

logger = logging.getLogger(__name__)

# The one list of functions, in a fixed order (probe ports follow it: functions/__main__.py). Each
# consumes the topic of its own name as the consumer group of its own name (Config.group), so the
# topics every deployment has are exactly these; functions.FUNCTIONS is this tuple.
FUNCTIONS = ("register", "login", "send", "deliver", "retry", "dlq", "notify")
TOPICS = FUNCTIONS
# Auth requests carry passwords: keep them in the log no longer than retries can need them.
_TOPIC_CONFIGS = {"register": {"retention.ms": "3600000"}, "login": {"retention.ms": "3600000"}}

# Header names of the pipeline metadata.
H_ATTEMPT = "pingme-attempt"              # retries done so far
H_ORIGIN_TOPIC = "pingme-origin-topic"
H_ORIGIN_PARTITION = "pingme-origin-partition"
H_ORIGIN_OFFSET = "pingme-origin-offset"
H_DUE_MS = "pingme-due-ms"                # when the retry function may re-publish it
H_ERROR_CODE = "pingme-error-code"
H_ERROR = "pingme-error"
H_FIRST_FAILED_MS = "pingme-first-failed-ms"
# The correlation id of the client request an event comes from (common/logs.py): set by the gateway,
# copied by the function runtime onto every Kafka output of the event (deliver, retry, DLQ).
H_CID = "pingme-cid"


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes | None) -> Any:
    """Decode a JSON event; raise ValueError for anything that is not a JSON object."""
    if raw is None:
        raise ValueError("empty record")
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("event is not a JSON object")
    return value


def headers_to_dict(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or ()}


def dict_to_headers(headers: dict[str, object]) -> list[tuple[str, bytes]]:
    return [(name, str(value).encode()) for name, value in headers.items()]


def _client_options(cfg: Config) -> dict:
    """What producers and consumers share."""
    return dict(
        bootstrap_servers=list(cfg.kafka.brokers),
        allow_auto_create_topics=False,
        metrics_enabled=False,  # nothing reads them; recording costs ~5% of a worker's CPU
        # kafka-python's default lets the wait between reconnection attempts grow to 30 s: a client
        # that saw its broker away for 15 s then idled up to 30 s more after the broker was back
        # (found by the broker-restart test). The Java client's default is 1 s.
        reconnect_backoff_max_ms=1000,
    )


def make_producer(cfg: Config, **overrides) -> KafkaProducer:
    options = dict(
        _client_options(cfg),
        client_id=f"{cfg.app.namespace}-producer",
        acks="all",
        # kafka-python 3.0.12's idempotent producer (its default) never sends again once a batch
        # has expired (delivery_timeout_ms) while the broker was away: later sends neither
        # succeed nor fail, so a gateway stops answering and a worker stops for good (found by
        # the broker-restart test, reproduced with a bare producer). Without it the expired
        # records fail (the runtime rewinds, the gateway answers 50008) and the producer goes on.
        # One request in flight keeps each partition in order when a request is retried;
        # duplicates are what the consumers' idempotency by key is for.
        enable_idempotence=False,
        max_in_flight_requests_per_connection=1,
        linger_ms=0,
        max_block_ms=10_000,
        request_timeout_ms=10_000,
        delivery_timeout_ms=30_000,
    )
    options.update(overrides)
    return KafkaProducer(**options)


class BusyLinger:
    """Lets a producer linger (gather records into fuller Kafka requests) only while it is busy.

    kafka-python's cost is per request: with no linger and one request in flight, a gateway taking a
    few hundred events a second sends nearly every event in a request of its own, and those requests
    are most of its CPU. A linger of a few ms shares each request between the events of those ms
    (3 ms: 20-40 % less gateway CPU at 500 events a second, docs/BENCHMARKS.md), but when the gateway
    is quiet it would only add its ms to every message. So :meth:`note`, called on every send, counts
    the sends over windows of ``window_s``: from a window with ``from_rate`` sends a second or more
    the producer lingers ``linger_ms``, after one with fewer it sends at once. ``from_rate`` 0 means
    always linger; ``linger_ms`` 0, never.
    """

    def __init__(self, producer: KafkaProducer, linger_ms: int, from_rate: int, window_s: float = 0.25,
                 clock=time.monotonic):
        # kafka-python 3 reads linger_ms from its accumulator's config on every readiness check
        # (RecordAccumulator.ready), so a change applies to the batches waiting now.
        self._settings = producer._accumulator.config
        self.linger_ms, self.from_rate, self.window_s, self._clock = linger_ms, from_rate, window_s, clock
        self._window_start = clock()
        self._sends = 0
        self._set(from_rate == 0)

    @property
    def lingering(self) -> bool:
        return self._settings["linger_ms"] > 0

    def _set(self, busy: bool) -> None:
        self._settings["linger_ms"] = self.linger_ms if busy else 0

    def note(self) -> None:
        """One send, about to be handed to the producer."""
        if not (self.from_rate and self.linger_ms):
            return
        self._sends += 1
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed >= self.window_s:
            self._set(self._sends >= self.from_rate * elapsed)
            self._window_start, self._sends = now, 0


def make_consumer(cfg: Config, function: str, **overrides) -> KafkaConsumer:
    options = dict(
        _client_options(cfg),
        group_id=cfg.group(function),
        client_id=f"{cfg.group(function)}-consumer",
        enable_auto_commit=False,          # the runtime commits after outputs are flushed
        auto_offset_reset="earliest",      # a new group must not skip events already accepted
        fetch_max_wait_ms=3000,
        # A killed worker's partitions move on after the session timeout; with a static
        # group.instance.id a restarted worker takes them back at once (docs/OPERATIONS.md).
        session_timeout_ms=cfg.kafka.session_timeout_ms,
        heartbeat_interval_ms=cfg.kafka.heartbeat_interval_ms,
        group_instance_id=cfg.kafka.group_instance_id or None,
        max_poll_interval_ms=300_000,
    )
    options.update(overrides)
    consumer = KafkaConsumer(**options)
    if not consumer.config["enable_auto_commit"]:
        _uncap_fetch_wait(consumer)
    return consumer


def _uncap_fetch_wait(consumer: KafkaConsumer) -> None:
    """Stop an idle consumer from spinning while a heartbeat goes unanswered (issue 15).

    kafka-python 3.0.12's ``poll`` caps each wait for fetched records by the coordinator's
    ``time_to_next_poll()``, which without auto-commit is the time to the next heartbeat: the time
    since the last heartbeat was *sent*. When the answer to a heartbeat takes longer than
    ``heartbeat_interval_ms`` (a broker that stalls, a coordinator that moves, a 2-core box under
    load), that time is 0 until the answer comes (up to ``request_timeout_ms``), so ``poll`` loops
    without waiting: hundreds of fetch rounds a second with nothing to fetch, 20-90 % of a core,
    the IO thread starved ("Task … ran for 2.154s … blocking the event loop"), which slows the
    heartbeat answers further. So the cap gets a floor of ``retry_backoff_ms`` (100 ms): a poll
    round waits at least that long for records, as an idle one does anyway. (Removing the cap
    altogether also stopped the spin, but on the three-node cluster, with a 3 s
    ``fetch_max_wait_ms``, it stalled the pipeline: tests/integration/test_kafka_cluster.py.)
    Reproduced with a stopped broker: 8 → 450-680 poll rounds a second and 20-30 % CPU for an
    idle consumer, 5-9 rounds and ~1 % with this (tests/integration/test_idle_spin.py)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not callable(getattr(coordinator, "time_to_next_poll", None)):
        logger.warning("kafka-python without ConsumerCoordinator.time_to_next_poll: the idle-spin "
                       "workaround (common/bus.py) is not applied")
        return
    next_poll = coordinator.time_to_next_poll
    floor_s = consumer.config["retry_backoff_ms"] / 1000
    coordinator.time_to_next_poll = lambda: max(next_poll(), floor_s)


def leave_group(cfg: Config, function: str) -> None:
    """Take a static member (``kafka.group_instance_id``) out of the function's group now.

    A static member does not leave its group when it closes (that is the point: a restarted worker
    takes its partitions back without a rebalance), so a worker stopped for good (a scale-down, a
    rolling deploy under new pod names) would hold its partitions for the session timeout. The
    runtime calls this after a SIGTERM drain, so a deliberate stop hands the partitions on at once,
    as a dynamic member's would; a crash keeps them for the restart."""
    from kafka.admin import MemberToRemove
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers),
                             client_id=f"{cfg.app.namespace}-admin", request_timeout_ms=5_000)
    try:
        admin.remove_group_members(cfg.group(function),
                                   [MemberToRemove(group_instance_id=cfg.kafka.group_instance_id)])
    finally:
        admin.close()


def ensure_topics(cfg: Config, names: Iterable[str] = TOPICS) -> list[str]:
    """Create the missing topics (short names); return the full names of those created."""
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers),
                             client_id=f"{cfg.app.namespace}-admin", request_timeout_ms=15_000)
    try:
        wanted = {cfg.topic(name): {"num_partitions": cfg.kafka.partitions, "replication_factor": -1,
                                    "configs": _TOPIC_CONFIGS.get(name, {})} for name in names}
        existing = set(admin.list_topics())
        missing = {name: spec for name, spec in wanted.items() if name not in existing}
        if missing:
            response = admin.create_topics(missing, raise_errors=False, wait_for_metadata=True)
            _raise_topic_errors(response)
        return sorted(missing)
    finally:
        admin.close()


def _raise_topic_errors(response: dict) -> None:
    for topic in response.get("topics", ()):
        code = topic.get("error_code", 0)
        if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (another process won the race)
            raise RuntimeError(f"creating topic {topic.get('name')} failed with Kafka error code {code}")


def make_redis(cfg: Config, max_connections: int | None = None) -> redis.Redis:
    """A Redis client. With ``max_connections`` (the gateway), callers beyond that many wait up to
    5 s for a pooled connection instead of opening one each: under gevent a burst of sockets would
    otherwise open hundreds of Redis connections at once and time out (seen: 182 of 2,000 socket
    opens refused with 20002)."""
    options = dict(host=cfg.redis.host, port=cfg.redis.port, db=cfg.redis.db,
                   socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
    if max_connections is None:
        return redis.Redis(**options)
    return redis.Redis(connection_pool=redis.BlockingConnectionPool(
        max_connections=max_connections, timeout=5, **options))


def batch(values: list) -> Any:
    """One Redis publish for several messages to the same channel (see :func:`unbatch`)."""
    return values[0] if len(values) == 1 else {"type": "batch", "items": values}


def unbatch(message: Any) -> list:
    """The messages of one Redis publish, in order."""
    if isinstance(message, dict) and message.get("type") == "batch":
        return list(message.get("items") or ())
    return [message]


def gateway_channel(cfg: Config, gateway_id: str) -> str:
    """The Redis channel a gateway listens on for replies and pushes."""
    return cfg.redis_key("gw", gateway_id)
