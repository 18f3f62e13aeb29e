"""The gateway's inbox: one Redis channel per gateway process, read by one background loop.

Functions answer requests and push frames to sockets by publishing to this gateway's channel.
:meth:`Inbox.expect` registers a waiter before the request is produced, so a reply can never arrive
before someone waits for it. Under gunicorn's gevent worker the thread is a greenlet.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

from common import bus

logger = logging.getLogger(__name__)


class Waiter:
    """Where the answer to one request arrives: the first :meth:`put` wins, :meth:`get` waits for
    it. One event per request (a ``queue.Queue`` was a lock and three conditions)."""

    __slots__ = ("_event", "_value")

    def __init__(self):
        self._event = threading.Event()
        self._value = None

    def put(self, value) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def get(self, timeout: float):
        """The answer; TimeoutError when none came within ``timeout`` seconds."""
        if not self._event.wait(timeout):
            raise TimeoutError
        return self._value


class Inbox:
    def __init__(self, redis_client: redis.Redis, channel: str, on_message=None, on_lost=None):
        self.redis = redis_client
        self.channel = channel
        self.on_message = on_message  # everything that is not a reply to a waiting request
        # Called when the subscription drops: whatever was published to the channel until it is
        # back is lost, so the gateway tells its clients to reconnect and resend.
        self.on_lost = on_lost
        self._waiters: dict[str, Waiter] = {}
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)

    def start(self, wait: float = 5.0) -> bool:
        """Start listening; True once the subscription is confirmed within ``wait`` seconds."""
        self._thread.start()
        return self._subscribed.wait(wait)

    def stop(self) -> None:
        self._stop.set()

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def expect(self, request_id: str) -> Waiter:
        waiter = Waiter()
        self._waiters[request_id] = waiter
        return waiter

    def forget(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)

    def dispatch(self, message: dict) -> None:
        request_id = message.get("request_id")
        if request_id is not None:
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None:
                waiter.put(message)
            return  # no waiter: the request already timed out
        if self.on_message is not None:
            self.on_message(message)
        else:
            logger.warning("inbox %s: message type %r ignored", self.channel, message.get("type"))

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if not self._subscribed.is_set() and pubsub.subscribed:
                        self._subscribed.set()
                        backoff = 0.1
                    if message is None:
                        continue
                    try:
                        for item in bus.unbatch(json.loads(message["data"])):
                            self.dispatch(item)
                    except (ValueError, TypeError):
                        logger.warning("inbox %s: undecodable message dropped", self.channel)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                was_subscribed = self._subscribed.is_set()
                self._subscribed.clear()
                if was_subscribed and self.on_lost is not None:
                    self.on_lost()
                logger.warning("inbox %s: redis unavailable (%s); resubscribing in %.1fs",
                               self.channel, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                try:
                    pubsub.close()
                except Exception:  # closing a broken connection may fail; nothing to do
                    pass
