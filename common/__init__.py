"""Code shared by the gateway and the functions: config, error codes, models, Kafka/Redis helpers."""

__version__ = "0.1.0"
