"""Serverless-style worker functions, one module per function, named after its input topic.

``python -m functions NAME`` runs one of :data:`FUNCTIONS` as a Kafka consumer-group worker (see
functions/runtime.py); ``python -m functions all`` runs every one, each in its own process.
"""

from common.bus import FUNCTIONS  # the one list: topics and consumer groups derive from it

__all__ = ["FUNCTIONS"]
