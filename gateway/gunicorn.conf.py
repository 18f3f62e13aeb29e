"""gunicorn settings for the gateway, read from the same configuration as everything else.

Shutdown: gunicorn's master passes SIGTERM on to the worker, whose own handler only stops its loop;
the worker then closes its listener and waits for every open connection up to ``graceful_timeout``,
and an open WebSocket would keep it waiting that long. :func:`post_worker_init` adds the gateway's
drain (``Gateway.drain``: draining, flush, every socket closed with 1012) to that handler, so the
connections end within about a second and the worker exits soon after; :func:`worker_exit` flushes
and closes the producer last. SIGINT/SIGQUIT (gunicorn's quick stop, ``worker_int``) drain with
short waits before gunicorn exits the worker 0.1 s later.
"""
import resource
import signal
import sys

from gunicorn import glogging as _glogging

from common import config as _config, heap as _heap, logs as _logs

try:
    _cfg = _config.load()
except _config.ConfigError as _exc:  # one line naming the key, not gunicorn's traceback of this file
    sys.exit(f"config error: {_exc}")


def _raise_open_files(wanted: int) -> None:
    """Every socket is a file: lift the soft limit towards the hard one (which only the operator
    can raise) so worker_connections is reachable."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))


_raise_open_files(_cfg.app.worker_connections + 100)

bind = f"{_cfg.app.host}:{_cfg.app.port}"
worker_class = "gevent"
# One worker per container: scale gateways by adding containers. Each worker is its own gateway
# (own inbox channel), so more workers here would also work.
workers = 1
# Caps WebSocket and HTTP sockets together; the next one waits in the listen backlog.
worker_connections = _cfg.app.worker_connections
backlog = 2048
preload_app = False   # the gevent worker must patch before kafka-python is imported
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
# The master's lines and the access log in the processes' own format (LOG_FORMAT, common/logs.py).
logconfig_dict = _logs.config("gateway")
# Path without the query string: a WebSocket token may travel as ?token= and must not be logged.
# The request's correlation id (common/logs.py) from the response header the app sets.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms cid=%({x-request-id}o)s'


class AccessLogger(_glogging.Logger):
    """gunicorn's logger, with the access line's atoms built for what the format can name: the
    request's headers (``%({name}i)s``) and the WSGI environ (``%({name}e)s``) only when it names
    one. gunicorn builds, copies and escapes an atom for every header and environ variable of every
    request (~50), which was a twentieth of the gateway's CPU per HTTP send; the format above names
    a response header only, so its line is the same."""

    _BASE = ("REMOTE_ADDR", "REQUEST_METHOD", "RAW_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
             "HTTP_REFERER", "HTTP_USER_AGENT", "HTTP_AUTHORIZATION")

    def atoms(self, resp, req, environ, request_time):
        fmt = self.cfg.access_log_format
        if "}i" in fmt or "}e" in fmt:
            return super().atoms(resp, req, environ, request_time)
        base = {name: environ[name] for name in self._BASE if name in environ}
        return super().atoms(resp, (), base, request_time)


logger_class = AccessLogger


def _gateway(worker):
    """The worker's Gateway (None in the master, or when the app failed to load)."""
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get("pingme")


def post_worker_init(worker):
    gateway = _gateway(worker)
    if gateway is None:
        return
    import gevent

    def on_sigterm(signum, frame):
        worker.handle_exit(signum, frame)  # gunicorn: leave the loop, close the listener, wait
        gevent.spawn(gateway.drain)        # the gateway: end every connection now (not in a handler)

    signal.signal(signal.SIGTERM, on_sigterm)
    _heap.freeze_startup()  # the app is loaded: what exists now lives as long as the worker


def worker_int(worker):
    gateway = _gateway(worker)
    if gateway is not None:
        gateway.drain(flush_timeout=1.0, close_timeout=0.5)


def worker_exit(server, worker):
    gateway = _gateway(worker)
    if gateway is not None:
        gateway.close()
