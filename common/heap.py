"""The garbage collector in the long-running processes (the gateway worker and each function).

A full collection (generation 2) walks every object the collector tracks, and most of a worker's
objects are made at start-up and live as long as the process: modules, functions, the Kafka, Redis
and database clients. Under load those collections come every few seconds and stop the process
while they run — one send or deliver batch, or every socket of a gateway, waits (docs/BENCHMARKS.md
has the pauses measured). :func:`freeze_startup` is called once start-up is done: it moves what
exists then into the permanent generation, which no collection walks, so a full collection walks
only what the process made since.
"""
import gc


def freeze_startup() -> int:
    """Collect once, then exempt every surviving object from later collections; how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
