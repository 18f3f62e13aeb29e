"""gunicorn settings for the gateway, read from the same configuration as everything else."""
import resource

from common import config as _config

_cfg = _config.load()


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
# Path without the query string: a WebSocket token may travel as ?token= and must not be logged.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'
