"""A function worker's Prometheus metrics, served on ``/metrics`` of its probe port
(functions/probes.py; docs/OPERATIONS.md, "Probes and metrics", has the table).

One registry per worker process (:data:`REGISTRY`); every series has the label ``function``.
:class:`FunctionMetrics` binds the children whose labels are known up front, so the runtime's hot
path (once per poll, once per ``handle``) only increments or observes. Error codes come from
common/errors.py, a fixed set.

Counting rules (the runtime is at-least-once, so these count work, not unique events):
``pingme_events_processed_total`` counts input records finished — handled or routed to retry or the
DLQ — when their batch's outputs are acknowledged (a rewound batch counts once it finishes).
``failed`` counts each failed handling (an event retried three times fails four times), ``retried``
and ``dead_lettered`` the records handed to the retry topic and the DLQ.
"""
from __future__ import annotations

import logging

from kafka.errors import KafkaError
from prometheus_client import Counter, Gauge, Histogram

from common import metrics

logger = logging.getLogger(__name__)

REGISTRY = metrics.new_registry()
CONTENT_TYPE = metrics.CONTENT_TYPE

# From a cached read (0.5 ms) to a password hash or a 500-event batch (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)

_processed = Counter("pingme_events_processed", "Input events finished (handled, or routed to retry "
                     "or the DLQ), counted when their outputs are acknowledged.", ["function"],
                     registry=REGISTRY)
_failed = Counter("pingme_events_failed", "Failed handlings of an event, by error code (each "
                  "attempt counts).", ["function", "code"], registry=REGISTRY)
_retried = Counter("pingme_events_retried", "Events sent to the retry topic, by error code.",
                   ["function", "code"], registry=REGISTRY)
_dead_lettered = Counter("pingme_events_dead_lettered", "Events sent to the DLQ topic, by error code "
                         "(50006: retries exhausted).", ["function", "code"], registry=REGISTRY)
_handler = Histogram("pingme_handler_seconds", "Time in the function's own code per call: handle "
                     "(one event) or handle_batch (a poll's events).", ["function", "call"],
                     buckets=LATENCY_BUCKETS, registry=REGISTRY)
_batch = Histogram("pingme_batch_seconds", "Time to process one poll's records: decode, handlers, "
                   "handing the outputs to Kafka and Redis.", ["function"], buckets=LATENCY_BUCKETS,
                   registry=REGISTRY)
_rewinds = Counter("pingme_batch_rewinds", "Batches rewound and tried again (outputs not produced, "
                   "DLQ hand-off failed, a dependency outage), by error code.", ["function", "code"],
                   registry=REGISTRY)
_batch_fallbacks = Counter("pingme_batch_fallbacks", "Polls whose handle_batch raised, processed one "
                           "event at a time instead (a bug in the batch path; its traceback is "
                           "logged).", ["function"], registry=REGISTRY)
_commit_failures = Counter("pingme_commit_failures", "Offset commits the group coordinator refused or "
                           "that failed (sent again with the next commit).", ["function"],
                           registry=REGISTRY)
_rebalances = Counter("pingme_rebalances", "Partition assignments this worker received from its "
                      "consumer group (one per rebalance it took part in).", ["function"],
                      registry=REGISTRY)
_assigned = Gauge("pingme_assigned_partitions", "Partitions currently assigned to this worker.",
                  ["function"], registry=REGISTRY)
_lag = Gauge("pingme_consumer_lag", "Records in a partition not yet polled by this worker: the "
             "partition's high watermark minus the worker's position (updated every few seconds).",
             ["function", "topic", "partition"], registry=REGISTRY)


def exposition() -> bytes:
    """This worker's metrics in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return metrics.exposition(REGISTRY)


def partition_lags(consumer) -> dict:
    """``{TopicPartition: lag}`` of the consumer's assigned partitions whose high watermark is known
    (it arrives with fetch responses). Never waits on the network: a partition whose position is
    not known yet is left out. Call from the thread that polls (kafka-python's consumer is not
    thread-safe)."""
    lags = {}
    for tp in consumer.assignment():
        try:
            highwater = consumer.highwater(tp)
            position = consumer.position(tp, timeout_ms=0) if highwater is not None else None
        except KafkaError:
            continue
        if highwater is not None and position is not None:
            lags[tp] = max(0, highwater - position)
    return lags


class FunctionMetrics:
    """The metrics of one function, with its fixed label values bound once."""

    def __init__(self, function: str):
        self.function = function
        self.processed = _processed.labels(function)
        self.handle_seconds = _handler.labels(function, "handle")
        self.handle_batch_seconds = _handler.labels(function, "handle_batch")
        self.batch_seconds = _batch.labels(function)
        self.batch_fallbacks = _batch_fallbacks.labels(function)
        self.commit_failures = _commit_failures.labels(function)
        self.rebalances = _rebalances.labels(function)
        self.assigned = _assigned.labels(function)
        self._lag_labels: set[tuple[str, str, str]] = set()

    def failed(self, code) -> None:
        _failed.labels(self.function, str(int(code))).inc()

    def retried(self, code) -> None:
        _retried.labels(self.function, str(int(code))).inc()

    def dead_lettered(self, code) -> None:
        _dead_lettered.labels(self.function, str(int(code))).inc()

    def rewound(self, code) -> None:
        _rewinds.labels(self.function, str(int(code))).inc()

    def set_lags(self, lags: dict) -> None:
        """Publish ``{TopicPartition: lag}``; partitions no longer in it (revoked) are removed."""
        labels = {(self.function, tp.topic, str(tp.partition)): lag for tp, lag in lags.items()}
        for gone in self._lag_labels - labels.keys():
            _lag.remove(*gone)
        for key, lag in labels.items():
            _lag.labels(*key).set(lag)
        self._lag_labels = set(labels)
