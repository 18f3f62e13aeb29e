"""Prometheus plumbing shared by the gateway (gateway/metrics.py) and the function workers
(functions/metrics.py): a registry per process and its text exposition.

Each process has its own registry with its own metrics plus the standard ``process_*`` (CPU,
memory, open files) and ``python_info`` series. No multiprocess mode: a gateway container runs one
gunicorn worker and a function container one worker process, so every scrape target is one process
(``python -m functions all`` gives each child a port of its own). Counters are exposed without
prometheus_client's ``*_created`` companion series, which nothing here reads.
"""
from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

prometheus_client.disable_created_metrics()

# The text format every Prometheus since 2.0 reads (also what /metrics of the gateway served before).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def new_registry() -> CollectorRegistry:
    """An empty registry with the process and platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's current values in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry)
