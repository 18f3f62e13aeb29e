"""The function runtime: consume → decode → ``handle(event, ctx)`` → produce → commit.

A function is a module with ``handle(event, ctx)`` that returns the outputs to emit (:class:`Emit`
for Kafka, :class:`Publish` for a gateway's Redis channel). It never touches a consumer, a producer
or an offset; this module owns all of that.

Contract:

* **At-least-once.** An input offset is committed only after every Kafka output of its batch is
  acknowledged by the broker and every Redis publish is done. Any crash means redelivery, never
  loss, so handlers must be idempotent. Redis publishes go out as soon as a batch is processed, so
  a reply may precede the acknowledgement of the batch's Kafka outputs; if those fail, the batch
  runs again and re-emits both.
* **Pipelined.** A batch's Kafka outputs are acknowledged while the next poll waits, and offsets
  are committed asynchronously, at most every ``kafka.commit_interval_ms``: no batch waits for the
  broker's answer about the one before it. A lost or not yet sent commit only means a redelivery.
* **Typed failures.** :class:`Invalid` (can never succeed; also any undecodable record, 50002) goes
  to the DLQ topic at once. :class:`Transient`, and any other exception (a bug: logged with the
  event's coordinates, never its body), goes to the retry topic with its attempt count, due time and
  origin topic; when the retries are exhausted it goes to the DLQ with 50006. A poison event never
  blocks its partition. A function that defines ``on_dead_letter(event, code, ctx)`` adds its
  outputs to the dead letter's (send tells the sender, so a client always learns the outcome).
* **Outages are not events' failures.** A database or Redis error is checked with a fresh
  connection: when the dependency is unreachable (:class:`Outage`), the batch is rewound and tried
  again every second at most until it is back — back-pressure, no retry budget spent, nothing
  dead-lettered. Only failures while the dependencies answer take the retry → DLQ route.
* **Blocking failures.** When outputs cannot be produced (50008), the DLQ hand-off fails (50007), or
  a function that declares ``Spec(route_failures=False)`` (retry, dlq) fails, nothing is committed: the
  batch (with the one polled after it) is rewound and tried again with backoff.
* **Batches.** A function may also define ``handle_batch(events, ctx)``: called with every decoded
  event of a poll, it returns one list of outputs per event, or ``None`` for an event it leaves to
  ``handle`` (only events whose handling does not depend on their order among the others, such as
  invalid ones). If it raises, the whole poll is processed one event at a time through ``handle``,
  so a batch is only ever an optimisation of the per-event contract; the fallback is logged with
  its traceback and counted (``pingme_batch_fallbacks_total``): it is a bug, and a slow path.
  Publishes of a batch to one channel travel as one Redis message (``common.bus.batch``).
* **Correlation.** An event's correlation id (header ``pingme-cid``, common/logs.py) is the logging
  context while the event is handled and is copied onto each of its Kafka outputs (retry and DLQ
  records keep all of its headers anyway), so one grep follows a message gateway → send → deliver.
* **SIGTERM drains**: stop polling, finish the batch, wait for its acknowledgement, commit (and
  wait for that), exit 0. A static group member (``kafka.group_instance_id``) then leaves its group
  explicitly, which it does not do by itself; after a crash it keeps its partitions for its restart.
* A worker keeps one database connection (Peewee opens it on first use); a database error hands it
  back to the pool, which pings it before the next event uses it, so a restarted database heals.
* **Time is injected**: the worker's wall clock (``clock``, milliseconds: what handlers see as
  ``ctx.now_ms()`` and what retry/DLQ records are stamped with) and its monotonic clock
  (``monotonic``, seconds: the commit schedule, lag updates) are constructor arguments.

A function's module holds only the handler API (functions/api.py) and its declared options
(``SPEC = Spec(...)``, checked here at start-up); failure routing is functions/policy.py's and the
offset bookkeeping functions/commits.py's. What remains here is the loop around the clients.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from types import ModuleType
from typing import Awaitable, Callable

import peewee as pw
import redis
from kafka import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from common import bus, heap, logs
from common.config import Config
from common.errors import Code
from common.models import db, now_ms
from functions import metrics, policy, probes
from functions.api import Context, Emit, Event, Invalid, Outage, Output, Publish, Transient, spec_of
from functions.commits import CommitSchedule
from functions.policy import DEPENDENCY_ERRORS, RetryPolicy, error_text as _error_text

logger = logging.getLogger(__name__)
COMMIT_TIMEOUT_MS = 10_000
OUTAGE_RETRY_MS = 1_000  # how often a paused worker tries its batch again while a dependency is down
LAG_INTERVAL_S = 5.0  # how often pingme_consumer_lag is brought up to date
# A poll returns as soon as records arrive, so its timeout is only how often an idle loop comes
# round (each round wakes the consumer's threads: most of an idle worker's CPU). With work in hand
# (outputs to acknowledge, offsets to commit) the loop comes round soon; idle, once a second —
# which bounds how long a SIGTERM waits for the loop, and keeps the liveness beat fresh.
BUSY_POLL_MS = 200
IDLE_POLL_MS = 1000


class OutputFailure(Exception):
    """Outputs of a batch could not be handed over; the batch must not be committed."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


def _by_channel(publishes: list[Publish]) -> dict[str, list]:
    channels: dict[str, list] = {}
    for out in publishes:
        channels.setdefault(out.channel, []).append(out.value)
    return channels


def _cid_of(record) -> str | None:
    for name, value in record.headers or ():
        if name == bus.H_CID:
            return (value or b"").decode("utf-8", "replace") or None
    return None


def with_cid(outputs: list[Output], cid: str | None) -> list[Output]:
    """``outputs`` with the correlation id ``cid`` on each Kafka output that has none yet."""
    if not cid:
        return outputs
    return [replace(out, headers={**out.headers, bus.H_CID: cid})
            if isinstance(out, Emit) and bus.H_CID not in out.headers else out for out in outputs]


def _record_event(record) -> Event:
    return Event(record.topic, record.partition, record.offset, record.key, record.value,
                 record.value, bus.headers_to_dict(record.headers), record.timestamp)


def _next_offsets(batch) -> dict:
    """``{partition: next offset}`` of a polled batch."""
    return {tp: records[-1].offset + 1 for tp, records in batch.items()}


def _metadata(offsets: dict) -> dict:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class _GroupListener(AsyncConsumerRebalanceListener):
    """Tells the probes whether the worker holds an assignment, counts rebalances, and hands the
    worker the partitions it gives up (``on_revoked``, awaited). kafka-python runs these on its IO
    thread, where a blocking call (a synchronous commit) raises: hence the async listener."""

    def __init__(self, state: probes.WorkerState, fn_metrics: metrics.FunctionMetrics,
                 on_revoked: Callable[[set], Awaitable[None]]):
        self.state = state
        self.metrics = fn_metrics
        self.on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked):
        self.state.assigned = False
        await self.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned):
        self.state.assigned = True
        self.metrics.rebalances.inc()
        self.metrics.assigned.set(len(assigned))


class Worker:
    """Runs one function as a member of its consumer group. ``state`` is what its probes read
    (functions/probes.py); its metrics are functions/metrics.py's. ``clock`` (ms since the epoch)
    and ``monotonic`` (s) are its two sources of time. TypeError at once when the function's
    module declares its options wrongly (functions/api.py, :func:`spec_of`)."""

    def __init__(self, name: str, module: ModuleType, config: Config, consumer, producer,
                 redis_client, stop: threading.Event | None = None,
                 state: probes.WorkerState | None = None, clock: Callable[[], int] = now_ms,
                 monotonic: Callable[[], float] = time.monotonic):
        self.name = name
        self.module = module
        self.spec = spec_of(module)
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.redis = redis_client
        self.stop = stop or threading.Event()
        self.ctx = Context(config, redis_client, clock=clock, stop=self.stop)
        self.monotonic = monotonic
        self.policy = RetryPolicy.from_config(config.kafka)
        self._blocked = 0  # consecutive batches that could not be committed
        self.commits = CommitSchedule(config.kafka.commit_interval_ms / 1000)
        self._unacked = None   # (batch, Kafka futures) of the batch waiting for the broker's answer
        self.state = state or probes.WorkerState()
        self.metrics = metrics.FunctionMetrics(name)
        self._next_lag = 0.0  # monotonic time of the next consumer-lag update

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        topic = self.config.topic(self.name)
        # Metadata first: a group leader without it assigns nobody any partition, and the group
        # then idles until the next metadata refresh.
        partitions = self.consumer.partitions_for_topic(topic)
        self.consumer.subscribe([topic], listener=_GroupListener(self.state, self.metrics, self._revoked))
        logger.info("function %s consuming %s (%d partitions) as group %s", self.name, topic,
                    len(partitions), self.config.group(self.name))
        assigned = None
        while not self.stop.is_set():
            self.run_once(BUSY_POLL_MS if self._busy() else IDLE_POLL_MS)
            self.state.beat()
            if self.monotonic() >= self._next_lag:
                self._next_lag = self.monotonic() + LAG_INTERVAL_S
                self.metrics.set_lags(metrics.partition_lags(self.consumer))
            if self.consumer.assignment() != assigned:
                assigned = set(self.consumer.assignment())
                logger.info("function %s partitions assigned: %s", self.name,
                            sorted(tp.partition for tp in assigned))
        logger.info("function %s stopped", self.name)

    def _busy(self) -> bool:
        """Work in hand: a batch whose outputs are unacknowledged, or finished offsets not
        committed yet. Then a poll waits :data:`BUSY_POLL_MS` at most, so they are settled soon."""
        return self._unacked is not None or self.commits.ready(float("inf"))

    def run_once(self, timeout_ms: int = BUSY_POLL_MS) -> int:
        """Poll a batch, finish the previous one, process the new one; return how many records
        were processed (the batch is committed once its Kafka outputs are acknowledged).

        Pipelined: a batch's Kafka outputs are acknowledged while the next poll waits, so a batch
        never waits for the broker's answer about the one before it.
        """
        try:
            batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.spec.max_records)
        except KafkaError as exc:
            # kafka-python can raise out of poll while the broker is away (a failed coordinator
            # lookup, seen in the broker-restart test); the worker waits and polls again.
            logger.warning("function %s poll failed code=%d: %s", self.name, Code.KAFKA_ERROR,
                           _error_text(exc))
            self.stop.wait(1.0)
            return 0
        if self._unacked is not None:
            previous, futures = self._unacked
            self._unacked = None
            try:
                self._await(futures)
            except OutputFailure as exc:
                self._rewind([previous, batch], exc.code, _error_text(exc))
                return 0
            self._commit(previous)
        if not batch:
            self._maybe_commit()
            return 0
        started = time.perf_counter()
        try:
            futures = self.emit(self.process_all([record for records in batch.values() for record in records]))
        except (OutputFailure, Transient) as exc:
            self._rewind([batch], exc.code, _error_text(exc), outage=isinstance(exc, Outage))
            return 0
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if futures:
            self._unacked = (batch, futures)
        else:
            self._commit(batch)
        return sum(len(records) for records in batch.values())

    async def _revoked(self, partitions: set) -> None:
        """A rebalance takes ``partitions`` away (kafka-python calls this inside ``poll``, while the
        worker is still their owner): commit what is finished of them, then forget them. A batch
        still waiting for its outputs' acknowledgement is left to the next owner, which runs it
        again (at least once; handlers are idempotent)."""
        unsent = self.commits.revoked(partitions)
        if not unsent:
            return
        try:
            await self.consumer.commit_async(_metadata(unsent))
        except KafkaError as exc:  # the next owner re-runs those batches
            self._commit_failed(unsent, exc)

    def _commit(self, batch) -> None:
        """Mark a batch finished; its offsets are committed with the next commit that goes out.
        Only for partitions still owned: one given up meanwhile is its next owner's to commit."""
        owned = self.consumer.assignment()
        self.commits.finished({tp: offset for tp, offset in _next_offsets(batch).items() if tp in owned})
        self._blocked = 0
        self.metrics.processed.inc(sum(len(records) for records in batch.values()))
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        # Asynchronous: the next batch does not wait for the broker's answer. A commit that fails
        # (a rebalance, a broker outage) is covered by a later one, or the partition's next owner
        # re-runs the batch (handlers are idempotent); close() commits the last offsets and waits.
        now = self.monotonic()
        if not self.commits.ready(now):
            return
        offsets = self.commits.due(now, self.consumer.assignment())
        if not offsets:
            return
        try:
            self.consumer.commit_async(_metadata(offsets), callback=self._on_commit)
        except KafkaError as exc:
            self._commit_failed(offsets, exc)

    def _on_commit(self, offsets, response) -> None:
        """commit_async's callback: ``offsets`` as sent, ``response`` an exception when it failed."""
        if isinstance(response, BaseException):
            self._commit_failed({tp: meta.offset for tp, meta in offsets.items()}, response)

    def _commit_failed(self, offsets: dict, exc: BaseException) -> None:
        self.metrics.commit_failures.inc()
        logger.warning("function %s commit failed code=%d: %s", self.name,
                       Code.CONSUMER_GROUP_ERROR, _error_text(exc))
        self.commits.failed(offsets)

    # -- records ----------------------------------------------------------------------------
    def process_all(self, records: list) -> list[Output]:
        """The outputs of a poll's records, in record order."""
        handle_batch = getattr(self.module, "handle_batch", None)
        if handle_batch is None:
            return [out for record in records for out in self._traced(record, None)]
        results: list[list[Output] | None] = [None] * len(records)
        decoded = []
        for i, record in enumerate(records):
            try:
                decoded.append((i, self.event(record)))
            except Invalid:
                pass  # process() routes it
        started = time.perf_counter()
        try:
            handled = list(handle_batch([event for _, event in decoded], self.ctx))
            self.metrics.handle_batch_seconds.observe(time.perf_counter() - started)
            if len(handled) != len(decoded):
                raise RuntimeError(f"handle_batch returned {len(handled)} results for {len(decoded)} events")
        except Exception as exc:
            self._raise_if_outage(exc)
            self.metrics.batch_fallbacks.inc()
            logger.exception("function %s handle_batch of %d events failed; processing them one by one",
                             self.name, len(decoded))
            handled = [None] * len(decoded)
        for (i, _), outputs in zip(decoded, handled):
            results[i] = outputs
        return [out for record, outputs in zip(records, results) for out in self._traced(record, outputs)]

    def _traced(self, record, outputs: list[Output] | None) -> list[Output]:
        """One record's outputs (``handle``'s, through :meth:`process`, unless ``handle_batch``
        gave them) under the record's correlation id: on every log line of its handling and on
        each of its Kafka outputs (common/logs.py)."""
        cid = _cid_of(record)
        with logs.correlation(cid):
            if outputs is None:
                outputs = self.process(record)
            logger.debug("function %s handled %s/%d@%d: %d outputs", self.name, record.topic,
                         record.partition, record.offset, len(outputs))
            return with_cid(outputs, cid)

    def event(self, record) -> Event:
        """The handler's view of a record; Invalid (50002) when its value is not JSON."""
        return self._decoded(_record_event(record))

    def _decoded(self, event: Event) -> Event:
        if self.spec.raw:
            return event
        try:
            return replace(event, value=bus.decode(event.raw))
        except ValueError as exc:
            raise Invalid(Code.UNMARSHAL_FAILED, _error_text(exc)) from None

    def process(self, record) -> list[Output]:
        """One record through ``handle``, its failures routed to the retry topic or the DLQ."""
        event = _record_event(record)
        try:
            event = self._decoded(event)
            started = time.perf_counter()
            try:
                return list(self.module.handle(event, self.ctx) or ())
            finally:
                self.metrics.handle_seconds.observe(time.perf_counter() - started)
        except Exception as exc:
            if isinstance(exc, DEPENDENCY_ERRORS):
                self._raise_if_outage(exc)
            elif not isinstance(exc, (Invalid, Transient)):  # a bug or an unclassified server error
                logger.exception("function %s failed on %s/%d@%d", self.name, record.topic,
                                 record.partition, record.offset)
            code, error, permanent = policy.classify(exc)
        self.metrics.failed(code)
        if not permanent and not self.spec.route_failures:
            raise Transient(code, error)
        logger.warning("function %s event %s/%d@%d attempt=%d code=%d: %s", self.name,
                       record.topic, record.partition, record.offset, event.attempt, code, error)
        routed = policy.route_failure(event, code, error, permanent, self.policy, self.config,
                                      self.ctx.now_ms(), self.spec.redact)
        if routed is None:
            logger.error("function %s dropped %s/%d@%d code=%d (DLQ disabled)", self.name,
                         record.topic, record.partition, record.offset, Code.RETRY_EXHAUSTED)
            return self._given_up(event, code if permanent else Code.RETRY_EXHAUSTED)
        if routed.topic == self.config.topic("retry"):
            self.metrics.retried(code)
            return [routed]
        dlq_code = Code(int(routed.headers[bus.H_ERROR_CODE]))
        self.metrics.dead_lettered(dlq_code)
        return [routed, *self._given_up(event, dlq_code)]

    def _given_up(self, event: Event, code: Code) -> list[Output]:
        """What the function tells its caller about an event it gave up on (``on_dead_letter``):
        a sender must learn that its message was not stored."""
        hook = getattr(self.module, "on_dead_letter", None)
        if hook is None or not isinstance(event.value, dict):
            return []
        try:
            return list(hook(event, code, self.ctx) or ())
        except Exception:  # the dead letter itself is what matters; never lose it over this
            logger.exception("function %s on_dead_letter failed", self.name)
            return []

    def _raise_if_outage(self, exc: BaseException) -> None:
        """Raise :class:`Outage` when ``exc`` came from a dependency that is now unreachable (a
        fresh connection fails too); return when it is reachable, so the event's own retries
        apply. Database errors hand the connection back first; the pool pings before reuse."""
        if isinstance(exc, (pw.OperationalError, pw.InterfaceError)):
            db.close()
            try:
                db.execute_sql("SELECT 1")
            except (pw.OperationalError, pw.InterfaceError) as probe:
                db.close()
                raise Outage(Code.DATABASE_ERROR, f"database unreachable: {_error_text(probe)}") from exc
        elif isinstance(exc, redis.ConnectionError):
            try:
                self.redis.ping()
            except (redis.ConnectionError, redis.TimeoutError) as probe:
                raise Outage(Code.CACHE_ERROR, f"redis unreachable: {_error_text(probe)}") from exc

    # -- outputs ----------------------------------------------------------------------------
    def emit(self, outputs: list[Output]) -> list:
        """Hand the Kafka outputs to the producer and publish the Redis ones; return the Kafka
        futures (see :meth:`_await`). OutputFailure when either cannot be handed over."""
        sent = []
        try:
            for out in outputs:
                if isinstance(out, Emit):
                    value = out.value if isinstance(out.value, (bytes, bytearray)) else bus.encode(out.value)
                    key = out.key.encode() if isinstance(out.key, str) else out.key
                    future = self.producer.send(out.topic, value=value, key=key,
                                                headers=bus.dict_to_headers(out.headers),
                                                timestamp_ms=out.timestamp_ms)
                    sent.append((out.topic, future))
        except KafkaError as exc:
            raise OutputFailure(Code.PRODUCER_ERROR, _error_text(exc)) from exc
        publishes = [out for out in outputs if isinstance(out, Publish)]
        if publishes:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for channel, values in _by_channel(publishes).items():
                    pipe.publish(channel, bus.encode(bus.batch(values)))
                pipe.execute()
            except Exception as exc:  # redis.RedisError and socket errors alike
                raise OutputFailure(Code.CACHE_ERROR, _error_text(exc)) from exc
        return sent

    def _await(self, sent: list) -> None:
        """Wait until the broker has acknowledged every Kafka output; OutputFailure if it refused."""
        try:
            self.producer.flush(timeout=30)
        except KafkaError as exc:
            raise OutputFailure(Code.PRODUCER_ERROR, _error_text(exc)) from exc
        dlq_topic = self.config.topic("dlq")
        for topic, future in sent:
            if not future.is_done or future.failed():
                code = Code.DLQ_SEND_FAILED if topic == dlq_topic else Code.PRODUCER_ERROR
                raise OutputFailure(code, f"producing to {topic} failed: {future.exception}")

    def _rewind(self, batches: list, code: Code, error: str, outage: bool = False) -> None:
        """Seek back to the first records of the batches and wait before trying them again
        (during an outage at most :data:`OUTAGE_RETRY_MS`, so work resumes soon after it ends)."""
        first: dict = {}
        for batch in batches:
            for tp, records in (batch or {}).items():
                first[tp] = min(first.get(tp, records[0].offset), records[0].offset)
        for tp, offset in first.items():
            self.consumer.seek(tp, offset)
        self._blocked += 1
        self.metrics.rewound(code)
        delay_ms = self.policy.delay_ms(min(self._blocked, 30)) if self.policy.max_attempts else 1000
        if outage:
            delay_ms = min(delay_ms, OUTAGE_RETRY_MS)
        logger.error("function %s could not finish a batch code=%d (try %d, again in %d ms): %s",
                     self.name, code, self._blocked, delay_ms, error)
        self.stop.wait(delay_ms / 1000)

    def close(self) -> None:
        try:
            if self._unacked is not None:
                batch, futures = self._unacked
                self._await(futures)
                self.commits.finished(_next_offsets(batch))
                self.metrics.processed.inc(sum(len(records) for records in batch.values()))
            owned = self.commits.final(self.consumer.assignment())
            if owned:
                # Bounded: a commit without a timeout waits forever for a coordinator that a broker
                # restart took away (seen in the broker-restart test).
                self.consumer.commit(_metadata(owned), timeout_ms=COMMIT_TIMEOUT_MS)
        except (KafkaError, OutputFailure) as exc:
            self._commit_failed(self.commits.done, exc)
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=10)


def set_switch_interval() -> None:
    """kafka-python hands every fetch and produce between the worker's thread and its network
    threads; at the default 5 ms GIL switch interval each hand-off can wait that long."""
    sys.setswitchinterval(float(os.environ.get("PY_SWITCH_INTERVAL", "0.0005")))


def install_signal_handlers(stop: threading.Event) -> None:
    def on_signal(signum, _frame):
        logger.info("signal %d: draining", signum)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _leave_group(name: str, config: Config) -> None:
    """A drained static member leaves its group (common.bus.leave_group); best effort: if it
    cannot, its partitions move on after the session timeout."""
    try:
        bus.leave_group(config, name)
        logger.info("function %s left group %s as %s", name, config.group(name), config.kafka.group_instance_id)
    except Exception as exc:  # the broker away at shutdown: the session timeout does it
        logger.warning("function %s could not leave its group code=%d: %s", name, Code.CONSUMER_GROUP_ERROR,
                       _error_text(exc))


def serve(name: str, module: ModuleType, config: Config, stop: threading.Event) -> None:
    """Run one function until ``stop`` is set (by SIGTERM/SIGINT in the process entry point)."""
    state, redis_client = probes.WorkerState(), bus.make_redis(config)
    server = probes.start(config, state, redis_client, stop)  # first: start-up is probed too
    try:
        bus.ensure_topics(config)
        worker = Worker(name, module, config, bus.make_consumer(config, name), bus.make_producer(config),
                        redis_client, stop, state)
        frozen = heap.freeze_startup()
        logger.debug("function %s: %d start-up objects exempted from garbage collection", name, frozen)
        try:
            worker.run()
        finally:
            worker.close()
        if config.kafka.group_instance_id:
            _leave_group(name, config)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
