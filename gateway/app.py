"""Flask app factory and the gateway's connections to Kafka and Redis.

The gateway is stateless apart from its sockets and its inbox channel. Requests that need a function
(register, login) go through :meth:`Gateway.call`: produce the request with a correlation id and this
gateway's channel as the reply address, then wait for the reply until the configured timeout
(10008). Reads that need no pipeline (profile, health) go straight to the database and Redis.

Every event the gateway produces carries the correlation id of the client request it serves (an
HTTP request, or a WebSocket frame: see gateway/ws.py) in the ``pingme-cid`` header; an HTTP request
may bring its own as ``X-Request-ID`` (letters, digits, ``.``, ``_``, ``-``; at most 64), and the
response names it in the same header.

Shutdown (:meth:`Gateway.drain`, run on SIGTERM by gateway/gunicorn.conf.py): stop taking sockets
and frames, hand every accepted event to Kafka, close each socket with 1012, then :meth:`close`.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request
from kafka.errors import KafkaError, KafkaTimeoutError

from common import bus, checks, config as config_mod, logs, rpc, validate
from common.config import Config
from common.errors import AppError, Code
from common.models import init_db, now_ms
from common.protocol import CLOSE_SERVICE_RESTART, RESTART_REASON
from common.ratelimit import Limiter
from gateway import chat_api, http, metrics, ws
from gateway.inbox import Inbox

logger = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DRAIN_FLUSH_S = 5.0  # how long a drain waits for Kafka to take the accepted events (per flush)
DRAIN_CLOSE_S = 2.0  # how long it waits for clients to answer the close before dropping them


class Gateway:
    """This process's producer, Redis client and inbox."""

    def __init__(self, cfg: Config, producer, redis_client, inbox: Inbox, linger: bus.BusyLinger | None = None):
        self.cfg = cfg
        self.producer = producer
        self.linger = linger  # the producer's linger while this gateway is busy (common/bus.py)
        self.redis = redis_client
        # Rate limits shared with every other gateway (common/ratelimit.py, config ratelimit.*).
        self.limiter = Limiter(redis_client, cfg.app.namespace, cfg.ratelimit.rules(), cfg.ratelimit.enabled,
                               on_error=lambda _exc: metrics.RATE_LIMIT_ERRORS.inc())
        self.inbox = inbox
        self.hub = ws.Hub(self)
        metrics.WS_CONNECTIONS.set_function(lambda: len(self.hub.conns))
        self.draining = False  # set by drain(): /readyz answers 503, no new socket or frame is taken
        # Events produced with an on_error (a client's sends) until Kafka has answered for them.
        self._unsent: dict = {}
        inbox.on_message = self.hub.on_message
        inbox.on_lost = self.hub.reply_channel_lost

    @classmethod
    def connect(cls, cfg: Config) -> "Gateway":
        redis_client = bus.make_redis(cfg, max_connections=64)  # +1 held by the inbox subscription
        inbox = Inbox(redis_client, bus.gateway_channel(cfg, cfg.app.gateway_id))
        # A request never waits on Kafka metadata longer than it would wait for its reply.
        producer = bus.make_producer(cfg, max_block_ms=cfg.kafka.request_timeout_ms)
        linger = bus.BusyLinger(producer, cfg.kafka.gateway_linger_ms, cfg.kafka.gateway_linger_from_rate)
        gateway = cls(cfg, producer, redis_client, inbox, linger)
        if not inbox.start():
            logger.warning("inbox not subscribed yet; replies wait for Redis")
        gateway.hub.start()
        return gateway

    def produce(self, function: str, value: dict, key: str, on_error=None, reply: bool = False):
        """Hand an event to a function without waiting; ``on_error(exc)`` if Kafka refuses it.

        With ``reply``, the function answers on this gateway's channel.
        """
        if reply:
            value = {**value, "reply_to": self.inbox.channel}
        cid = logs.current_cid()
        if self.linger is not None:
            self.linger.note()
        try:
            future = self.producer.send(self.cfg.topic(function), key=key.encode(), value=bus.encode(value),
                                        headers=[(bus.H_CID, cid.encode())] if cid else None)
        except KafkaError as exc:
            logger.error("%s event not produced code=%d: %s", function, Code.PRODUCER_ERROR, type(exc).__name__)
            metrics.produce_failed(function)
            if on_error is None:
                raise AppError(Code.PRODUCER_ERROR) from None
            on_error(exc)
            return None
        future.add_errback(metrics.produce_failed, function)
        if on_error is not None:
            self._unsent[future] = on_error
            future.add_both(lambda _: self._unsent.pop(future, None))
            future.add_errback(on_error)
        return future

    def request(self, function: str, value: dict, key: str) -> dict:
        """Produce ``value`` with a request id and this gateway as reply address; wait for the
        answer (a dict with ``ok``); raise 50008 or 10008.

        One wait, for whichever comes first: the function's answer, or Kafka refusing the event
        (as a WebSocket send is answered: an errback, not a wait for the broker's acknowledgement
        before the wait for the answer, which cost a second wake-up per request)."""
        timeout_ms = self.cfg.kafka.request_timeout_ms
        request_id = uuid.uuid4().hex
        waiter = self.inbox.expect(request_id)
        try:
            self.produce(function, {**value, "request_id": request_id}, key, reply=True,
                         on_error=lambda exc: waiter.put(exc))
            try:
                answer = waiter.get(timeout=timeout_ms / 1000)
            except TimeoutError:
                metrics.reply_timed_out(function)
                logger.warning("%s request %s got no reply in %d ms code=%d", function, request_id,
                               timeout_ms, Code.TIMEOUT)
                raise AppError(Code.TIMEOUT) from None
            if isinstance(answer, BaseException):
                logger.error("%s request not produced code=%d: %s", function, Code.PRODUCER_ERROR,
                             type(answer).__name__)
                raise AppError(Code.PRODUCER_ERROR)
            return answer
        finally:
            self.inbox.forget(request_id)

    def call(self, function: str, body: dict, **envelope):
        """Ask a request/reply function (register, login); its result or its AppError. ``envelope``
        fields travel beside the client's body (the login function's ``op`` and the authenticated
        ``user_id`` of a password change), so a client cannot set them."""
        # The function must commit by the deadline; the margin is for its reply to reach us.
        deadline = now_ms() + self.cfg.kafka.request_timeout_ms - rpc.REPLY_MARGIN_MS
        reply = self.request(function, {**envelope, "deadline_ms": deadline, "body": body}, uuid.uuid4().hex)
        return rpc.result(reply)

    def announce_presence(self, user_id: int, online: bool) -> None:
        """Tell the user's contacts (through the deliver function) that they came or went."""
        event = {"kind": "presence", "user_id": user_id, "online": online, "last_seen": now_ms()}
        self.produce("deliver", event, str(user_id),
                     on_error=lambda exc: logger.warning("presence of %d not announced", user_id))

    def drain(self, flush_timeout: float = DRAIN_FLUSH_S, close_timeout: float = DRAIN_CLOSE_S) -> None:
        """Take this gateway out of service for a restart (on SIGTERM: gateway/gunicorn.conf.py).

        Draining first: /readyz answers 503, a new socket is closed with 1012, and a frame that
        reaches an open socket is no longer handled (the 1012 that follows tells its client to
        resend what is unacknowledged). Then the producer is flushed, so every send accepted so far
        is in Kafka or has been answered 50008 on its socket, still open. Then every socket is
        closed with 1012 (docs/PROTOCOL.md); one whose client has not answered the close within
        ``close_timeout`` is dropped. A last flush hands on the closed sockets' presence updates.
        """
        if self.draining:
            return
        self.draining = True
        started = time.monotonic()
        logger.info("gateway %s draining: %d sockets open", self.cfg.app.gateway_id, len(self.hub.conns))
        self.flush(flush_timeout)
        deadline = time.monotonic() + close_timeout
        while self.hub.conns and time.monotonic() < deadline:
            self.hub.close_all(CLOSE_SERVICE_RESTART, RESTART_REASON)  # again: one may have just authenticated
            time.sleep(0.05)
        dropped = self.hub.drop_all()
        self.flush(flush_timeout)
        logger.info("gateway %s drained in %.2f s (%d sockets dropped without answering the close)",
                    self.cfg.app.gateway_id, time.monotonic() - started, dropped)

    def flush(self, timeout: float) -> None:
        """Wait until Kafka has taken every event produced so far. A client's send it has not taken
        within ``timeout`` is answered 50008 now (it may still be stored: a resend gets its seq)."""
        try:
            self.producer.flush(timeout=timeout)
        except KafkaError as exc:
            logger.error("producer flush failed code=%d: %s", Code.PRODUCER_ERROR, type(exc).__name__)
        for future, on_error in list(self._unsent.items()):
            if self._unsent.pop(future, None) is not None and not future.is_done:
                on_error(KafkaTimeoutError("not handed to Kafka before shutdown"))

    def close(self, timeout: float = DRAIN_FLUSH_S) -> None:
        """The process is exiting: stop the inbox and the presence heartbeat, flush and close the
        producer."""
        self.inbox.stop()
        self.hub.stop()
        self.producer.close(timeout=timeout)

    def health(self) -> dict:
        """Check each dependency; each entry says ok and how long the check took."""
        return checks.run(checks.dependencies(self.cfg, self.redis))


def create_app(cfg: Config | None = None, gateway: Gateway | None = None) -> Flask:
    """Build the app. Without ``gateway`` it connects to the configured Kafka and Redis."""
    cfg = cfg or config_mod.load()
    init_db(cfg.db)
    app = Flask(__name__)
    app.config["PINGME"] = cfg
    app.extensions["pingme"] = gateway or Gateway.connect(cfg)
    ws.init_app(app)

    @app.before_request
    def correlate():
        """The request's correlation id (common/logs.py): its own X-Request-ID if it is sane."""
        wanted = request.headers.get("X-Request-ID", "")
        g.cid = wanted if REQUEST_ID.fullmatch(wanted) else logs.new_cid()
        g.cid_token = logs.bind(g.cid)

    @app.after_request
    def name_correlation(response):
        if "cid" in g:
            response.headers["X-Request-ID"] = g.cid
        return response

    @app.teardown_request
    def uncorrelate(_exc):
        token = g.pop("cid_token", None)
        if token is not None:
            logs.unbind(token)

    app.config["MAX_CONTENT_LENGTH"] = validate.MAX_BODY_BYTES  # larger bodies: 413/10011 unread
    app.before_request(http.answer_options)
    app.register_blueprint(http.bp)
    app.register_blueprint(chat_api.bp)
    http.register_error_handlers(app)
    logger.info("gateway %s ready (env=%s, config=%s)", cfg.app.gateway_id, cfg.app.env,
                cfg.source or "defaults")
    return app
