"""The gateway's access log (gateway/gunicorn.conf.py ``AccessLogger``): the same line as gunicorn's
own logger writes, from far fewer atoms; a format that names a request header or an environ
variable gets gunicorn's full set."""
import importlib.util
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from gunicorn import glogging
from gunicorn.config import Config

REPO = Path(__file__).resolve().parents[2]


def gunicorn_conf():
    spec = importlib.util.spec_from_file_location("gateway_gunicorn_conf", REPO / "gateway" / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def a_request():
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/api/v1/messages?x=1", "PATH_INFO": "/api/v1/messages",
               "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_AUTHORIZATION": "Bearer abc.def.ghi", "HTTP_USER_AGENT": 'bot "7"', "HTTP_HOST": "gw",
               "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "80", "wsgi.url_scheme": "http",
               **{f"HTTP_X_EXTRA_{n}": str(n) for n in range(20)}}
    req = SimpleNamespace(headers=[("HOST", "gw"), ("USER-AGENT", 'bot "7"'), ("AUTHORIZATION", "Bearer abc.def.ghi")])
    resp = SimpleNamespace(status="200 OK", sent=57, response_length=57,
                           headers=[("Content-Type", "application/json"), ("X-Request-ID", "cid-1")])
    return resp, req, environ, timedelta(milliseconds=12, microseconds=345)


def line(logger, fmt, request):
    return fmt % glogging.SafeAtoms(logger.atoms(*request))


def test_the_access_line_is_gunicorns_own():
    conf = gunicorn_conf()
    cfg = Config()
    cfg.set("access_log_format", conf.access_log_format)
    request = a_request()
    lean, full = conf.AccessLogger(cfg), glogging.Logger(cfg)
    assert line(lean, conf.access_log_format, request) == line(full, conf.access_log_format, request) \
        == '127.0.0.1 "POST /api/v1/messages" 200 57 12ms cid=cid-1'
    assert len(lean.atoms(*request)) < len(full.atoms(*request)) - 20  # and a real environ is larger


def test_a_format_naming_request_headers_or_environ_gets_every_atom():
    conf = gunicorn_conf()
    fmt = '%(h)s %({user-agent}i)s %({http_x_extra_3}e)s %({x-request-id}o)s'
    cfg = Config()
    cfg.set("access_log_format", fmt)
    request = a_request()
    assert line(conf.AccessLogger(cfg), fmt, request) == line(glogging.Logger(cfg), fmt, request) \
        == '127.0.0.1 bot \\"7\\" 3 cid-1'
