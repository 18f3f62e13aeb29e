"""Flask app factory and the gateway's connections to Kafka and Redis.

The gateway is stateless apart from its sockets and its inbox channel. Requests that need a function
(register, login) go through :meth:`Gateway.call`: produce the request with a correlation id and this
gateway's channel as the reply address, then wait for the reply until the configured timeout
(10008). Reads that need no pipeline (profile, health) go straight to the database and Redis.
"""
from __future__ import annotations

import logging
import socket
import time
import uuid
from queue import Empty

from flask import Flask, jsonify
from flask_sock import Sock
from kafka.errors import KafkaError

from common import bus, config as config_mod, rpc
from common.config import Config
from common.errors import AppError, Code
from common.models import db, init_db, now_ms
from gateway.inbox import Inbox

logger = logging.getLogger(__name__)
sock = Sock()


class Gateway:
    """This process's producer, Redis client and inbox."""

    def __init__(self, cfg: Config, producer, redis_client, inbox: Inbox):
        self.cfg = cfg
        self.producer = producer
        self.redis = redis_client
        self.inbox = inbox

    @classmethod
    def connect(cls, cfg: Config) -> "Gateway":
        redis_client = bus.make_redis(cfg)
        inbox = Inbox(redis_client, bus.gateway_channel(cfg, cfg.app.gateway_id))
        if not inbox.start():
            logger.warning("inbox not subscribed yet; replies wait for Redis")
        # A request never waits on Kafka metadata longer than it would wait for its reply.
        producer = bus.make_producer(cfg, max_block_ms=cfg.kafka.request_timeout_ms)
        return cls(cfg, producer, redis_client, inbox)

    def call(self, function: str, body: dict):
        """Ask a function and wait for its answer; raise its AppError, 50008 or 10008."""
        timeout_ms = self.cfg.kafka.request_timeout_ms
        started = time.monotonic()
        request_id = uuid.uuid4().hex
        waiter = self.inbox.expect(request_id)
        try:
            request = rpc.request(request_id, self.inbox.channel, now_ms() + timeout_ms, body)
            try:
                self.producer.send(self.cfg.topic(function), key=request_id.encode(),
                                   value=bus.encode(request)).get(timeout=timeout_ms / 1000)
            except KafkaError as exc:
                logger.error("%s request not produced code=%d: %s", function, Code.PRODUCER_ERROR,
                             type(exc).__name__)
                raise AppError(Code.PRODUCER_ERROR) from None
            remaining = timeout_ms / 1000 - (time.monotonic() - started)
            try:
                reply = waiter.get(timeout=max(remaining, 0.001))
            except Empty:
                logger.warning("%s request %s got no reply in %d ms code=%d", function, request_id,
                               timeout_ms, Code.TIMEOUT)
                raise AppError(Code.TIMEOUT) from None
        finally:
            self.inbox.forget(request_id)
        return rpc.result(reply)

    def health(self) -> dict:
        """Check each dependency; each entry says ok and how long the check took."""
        checks = {}
        for name, probe in (("db", self._check_db), ("redis", self.redis.ping),
                            ("kafka", self._check_kafka)):
            started = time.monotonic()
            try:
                probe()
                checks[name] = {"ok": True}
            except Exception as exc:  # any failure of a probe means "down"
                checks[name] = {"ok": False, "error": type(exc).__name__}
            checks[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
        return checks

    @staticmethod
    def _check_db() -> None:
        with db.connection_context():
            db.execute_sql("SELECT 1")

    def _check_kafka(self) -> None:
        """A broker accepts connections (cheap enough for every health probe)."""
        errors = []
        for broker in self.cfg.kafka.brokers:
            host, _, port = broker.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError as exc:
                errors.append(exc)
        raise ConnectionError(f"no broker reachable: {errors[-1]}")


def envelope(data=None, code: Code = Code.SUCCESS, status: int | None = None):
    return jsonify({"code": int(code), "message": code.message, "data": data}), status or code.http_status


def error_response(exc: AppError):
    return jsonify(exc.to_dict()), exc.code.http_status


def create_app(cfg: Config | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the app. Without ``gateway`` it connects to the configured Kafka and Redis."""
    cfg = cfg or config_mod.load()
    init_db(cfg.db)
    app = Flask(__name__)
    app.config["PINGME"] = cfg
    app.extensions["pingme"] = gateway or Gateway.connect(cfg)
    sock.init_app(app)

    from gateway import http
    app.register_blueprint(http.bp)
    http.register_error_handlers(app)
    logger.info("gateway %s ready (env=%s, config=%s)", cfg.app.gateway_id, cfg.app.env,
                cfg.source or "defaults")
    return app
