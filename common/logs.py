"""Logging set-up for every process: one line per record, level from LOG_LEVEL."""
import logging
import os


def setup(name: str) -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s {name}[%(process)d] %(name)s: %(message)s")
    # kafka-python is chatty at INFO (every connection and rebalance step).
    logging.getLogger("kafka").setLevel(logging.WARNING)
