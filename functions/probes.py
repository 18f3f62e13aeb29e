"""A function worker's probe server: ``GET /healthz``, ``/readyz`` and ``/metrics`` on
``app.function_port`` (env ``FUNCTION_PORT``; 0, the default, serves nothing).

* ``/healthz`` (liveness) is 200 while the worker's loop comes round: the loop beats
  (:meth:`WorkerState.beat`) at least every poll timeout (1 s) when idle. A loop that has not
  beaten for ``60 s + kafka.retry_max_backoff_ms`` (longer than any wait the runtime makes on
  purpose: a 30 s producer flush, a rewind's backoff) is wedged: 503, so the orchestrator restarts
  the worker. No dependency is checked here; an outage must not get workers restarted.
* ``/readyz`` (readiness) is 200 when the worker has its partition assignment from its consumer
  group (an assignment may be empty when the group has more members than partitions), is not
  draining (SIGTERM), and the database, Redis and a Kafka broker are reachable; otherwise 503. The
  JSON body names every check and what is not ready (``not_ready``). Dependency checks
  (common/checks.py) run at most once per :data:`CHECK_CACHE_S`, however often probes come.
* ``/metrics``: functions/metrics.py in the Prometheus text format.

The server is a ``ThreadingHTTPServer`` in a daemon thread; it only reads :class:`WorkerState`,
which the worker's loop writes (plain attribute stores, atomic under the GIL).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from common import checks
from common.config import Config
from functions import metrics

logger = logging.getLogger(__name__)

CHECK_CACHE_S = 2.0
LIVENESS_BASE_S = 60.0


class WorkerState:
    """What the worker's loop tells its probes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.last_beat = clock()   # start-up counts as a beat: ensure_topics and joining take time
        self.assigned = False      # an assignment was received and not revoked since

    def beat(self) -> None:
        self.last_beat = self._clock()


class Probes:
    """The answers of /healthz and /readyz as ``(status, body)``; pure over the worker state, the
    dependency checks, the stop event and the clock."""

    def __init__(self, state: WorkerState, dependency_checks: dict[str, Callable[[], object]],
                 stop: threading.Event, stale_after_s: float, cache_s: float = CHECK_CACHE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.state = state
        self.checks = dependency_checks
        self.stop = stop
        self.stale_after_s = stale_after_s
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict] | None = None

    def health(self) -> tuple[int, dict]:
        idle = self._clock() - self.state.last_beat
        alive = idle < self.stale_after_s
        return (200 if alive else 503), {"status": "alive" if alive else "wedged",
                                         "loop_idle_s": round(idle, 1),
                                         "stale_after_s": self.stale_after_s}

    def readiness(self) -> tuple[int, dict]:
        results = {"group": {"ok": self.state.assigned},
                   "running": {"ok": not self.stop.is_set()}}
        if not results["group"]["ok"]:
            results["group"]["error"] = "no partition assignment from the consumer group yet"
        if not results["running"]["ok"]:
            results["running"]["error"] = "draining (shutting down)"
        results.update(self._dependencies())
        not_ready = [name for name, result in results.items() if not result["ok"]]
        body = {"status": "not ready" if not_ready else "ready", "not_ready": not_ready,
                "checks": results}
        return (503 if not_ready else 200), body

    def _dependencies(self) -> dict:
        with self._lock:  # concurrent probes wait for one round of checks instead of each running one
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self.cache_s:
                self._cached = (now, checks.run(self.checks))
            return self._cached[1]


def stale_after_s(retry_max_backoff_ms: int) -> float:
    """How long the loop may go without a beat before /healthz calls it wedged."""
    return LIVENESS_BASE_S + retry_max_backoff_ms / 1000


def start_server(probes: Probes, exposition: Callable[[], bytes], content_type: str, host: str,
                 port: int) -> ThreadingHTTPServer:
    """Serve the probes and ``exposition()`` (the /metrics body) on ``host:port`` in a daemon
    thread; OSError when the port cannot be bound. ``shutdown()`` the returned server to stop."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "pingme-function"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    self._json(*probes.health())
                elif path == "/readyz":
                    self._json(*probes.readiness())
                elif path == "/metrics":
                    self._send(200, exposition(), content_type)
                else:
                    self._json(404, {"status": "not found", "paths": ["/healthz", "/readyz", "/metrics"]})
            except Exception:  # a probe must answer, never hang up
                logger.exception("probe %s failed", path)
                self._json(500, {"status": "error"})

        def _json(self, status: int, body: dict) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            logger.debug("probe %s", format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    logger.info("probes and metrics on http://%s:%d (/healthz, /readyz, /metrics)", host, port)
    return server


def start(config: Config, state: WorkerState, redis_client, stop: threading.Event) -> ThreadingHTTPServer | None:
    """Start this worker's probe server on ``app.host:app.function_port``; None when the port is 0."""
    if not config.app.function_port:
        return None
    probes = Probes(state, checks.dependencies(config, redis_client), stop,
                    stale_after_s(config.kafka.retry_max_backoff_ms))
    try:
        return start_server(probes, metrics.exposition, metrics.CONTENT_TYPE, config.app.host,
                            config.app.function_port)
    except OSError as exc:
        raise OSError(f"FUNCTION_PORT (app.function_port): cannot serve probes on "
                      f"{config.app.host}:{config.app.function_port}: {exc.strerror or exc}") from exc
