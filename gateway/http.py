"""HTTP API of the gateway: health, version, auth, profile, users, messages, conversations and
groups; and the web client's page at ``/`` (gateway/static, served with a strict CSP).

Every response uses the envelope ``{"code", "message", "data"}``; errors carry the code from
common/errors.py with its HTTP status (and ``field`` for 10002). Every answer is JSON, the framework's
own too (404, 405, 413, ``OPTIONS``, a plain ``GET /ws``).

Hostile input (docs/SECURITY.md): a body is read within :data:`BODY_TIMEOUT_S` (else 408/10012), at
most 64 KiB (413/10011), and decoded by common/validate.py (10002 naming the field); requests are
rate-limited (common/ratelimit.py) by client address before authentication and by user after it
(429/10007 with ``Retry-After``); a token is checked against its session and version
(common/sessions.py) on every request: here, or for a send by the send function, with the other
sends of its batch (one Redis read for them all instead of one per request).
"""
from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import os
import platform
import subprocess

import gevent
import peewee as pw
import redis
import yaml
from flask import Blueprint, current_app, g, jsonify, request
from gunicorn.http.errors import ParseException
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import WebsocketMismatch

from common import __version__, accounts, bus, chat, presence, protocol, rpc, sessions, validate
from common.models import username_key
from common.ratelimit import RateLimited, client_address
from common.config import REPO_ROOT
from common.errors import AppError, Code
from common.models import db, now_ms
from gateway import metrics as gateway_metrics

logger = logging.getLogger(__name__)
bp = Blueprint("http", __name__)
# A path id. Werkzeug's int converter with bounds answered 405 rather than 404 for an id out of range
# on a path that takes other methods (found by schemathesis), so the range is checked by
# check_path_ids: outside 1..2^63-1 (what the database holds) is 404/10005, never a 500.
ID = "int"


@bp.before_app_request
def check_path_ids():
    for value in (request.view_args or {}).values():
        if isinstance(value, int) and not 1 <= value <= validate.INT64_MAX:
            raise AppError(Code.NOT_FOUND)


def envelope(data=None, code: Code = Code.SUCCESS, status: int | None = None):
    return jsonify({"code": int(code), "message": code.message, "data": data}), status or code.http_status


def error_response(exc: AppError):
    return jsonify(exc.to_dict()), exc.code.http_status


def current_gateway():
    return current_app.extensions["pingme"]


def _read_body() -> bytes:
    """The request body, whole, within ``app.body_timeout_ms`` (a slow-body flood holds no
    connection longer); 408, 413 or 400 otherwise."""
    timeout_s = current_app.config["PINGME"].app.body_timeout_ms / 1000
    try:
        with gevent.Timeout(timeout_s):
            return request.get_data(cache=True)
    except gevent.Timeout:
        logger.warning("request body not complete after %.1f s code=%d", timeout_s, Code.REQUEST_TIMEOUT)
        raise AppError(Code.REQUEST_TIMEOUT) from None
    except (ParseException, OSError, ValueError) as exc:  # a malformed chunked body, a reset
        logger.info("request body unreadable code=%d: %s", Code.INVALID_PARAMS, type(exc).__name__)
        raise AppError(Code.INVALID_PARAMS, "the request body could not be read") from None


def json_body() -> dict:
    """The body as a JSON object, checked whole by common/validate.py (10002 naming the field)."""
    raw = _read_body()
    if not raw:
        raise AppError(Code.INVALID_PARAMS, "the body must be a JSON object")
    return validate.obj(validate.parse_json(raw))


def _address() -> str:
    rl = current_app.config["PINGME"].ratelimit
    return client_address(request.remote_addr, request.headers.get(rl.proxy_header), rl.trusted_proxies)


def operator() -> bool:
    """Whether this request may see operators' details: from ``app.operator_networks`` (the client
    address; behind a trusted proxy, the one it reports) or with ``app.operator_token`` as bearer."""
    app_cfg = current_app.config["PINGME"].app
    if app_cfg.operator_token:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), app_cfg.operator_token.encode()):
            return True
    try:
        ip = ipaddress.ip_address(_address())
    except ValueError:
        return False
    return any(ip in net for net in app_cfg.operator_networks)


def limit(*hits) -> None:
    """Charge this request to the named limits (all or none); 429/10007 when one is exhausted."""
    try:
        current_gateway().limiter.enforce(*hits)
    except RateLimited as exc:
        gateway_metrics.rate_limited(exc.rule)
        # debug, not info: a flood would otherwise write a log line per refused request (the counter
        # pingme_rate_limited{rule} is what operators watch)
        logger.debug("rate limited code=%d rule=%s on %s %s", Code.TOO_MANY_REQUESTS, exc.rule, request.method,
                    request.path)
        raise


def _bearer() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AppError(Code.INVALID_TOKEN, "missing bearer token")
    return token.strip()


def require_user(view=None, *, session_checked_later: bool = False, also_limits: tuple[str, ...] = ()):
    """Resolve ``Authorization: Bearer <token>`` to ``g.user_id`` (and its claims, ``g.claims``)
    or answer 401 (30004/30005: expired, forged, or revoked), then charge the user's API limit and
    the user's ``also_limits`` (one Redis call for all: common/ratelimit.py).

    With ``session_checked_later`` the token's signature and expiry are checked here, and whether
    it was revoked is left to the function the request goes to (``send``, which checks a batch of
    requests' sessions with one Redis read): the view must hand ``g.claims``' session on."""
    if view is None:
        return functools.partial(require_user, session_checked_later=session_checked_later,
                                 also_limits=also_limits)

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        gw = current_gateway()
        g.claims = accounts.authenticate_claims(_bearer(), gw.cfg, None if session_checked_later else gw.redis)
        g.user_id = int(g.claims["sub"])
        limit(("api_user", g.user_id), *((rule, g.user_id) for rule in also_limits))
        return view(*args, **kwargs)
    return wrapper


def directory(view):
    """A user-directory lookup: also charged to the user's directory limit (enumeration)."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        limit(("directory_user", g.user_id))
        return view(*args, **kwargs)
    return wrapper


def with_db(view):
    """Run the view inside one pooled database connection."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        with db.connection_context():
            return view(*args, **kwargs)
    return wrapper


@bp.get("/health")
def health():
    """Each dependency's check and how long it took; 503 with the first failing one's code."""
    checks = current_gateway().health()
    ok = all(check["ok"] for check in checks.values())
    data = {"status": "ok" if ok else "degraded", "checks": checks,
            "gateway_id": current_app.config["PINGME"].app.gateway_id}
    if not operator():  # a probe needs the status only
        data = {"status": data["status"]}
    if ok:
        return envelope(data)
    code = {"db": Code.DATABASE_ERROR, "redis": Code.CACHE_ERROR, "kafka": Code.KAFKA_ERROR}[
        next(name for name, check in checks.items() if not check["ok"])]
    return jsonify({"code": int(code), "message": code.message, "data": data}), 503


@bp.get("/healthz")
def healthz():
    """Liveness: the worker answers. No dependency is checked: an outage must take a gateway out of
    rotation (/readyz), not get it restarted; it recovers by itself when the dependency is back."""
    if not operator():
        return envelope({"status": "alive"})
    return envelope({"status": "alive", "gateway_id": current_app.config["PINGME"].app.gateway_id})


@bp.get("/readyz")
def readyz():
    """Readiness: every dependency reachable (as /health) and not draining. While the gateway shuts
    down (SIGTERM) it answers 503 with ``status: draining``."""
    if current_gateway().draining:
        data = {"status": "draining"}
        if operator():
            data["gateway_id"] = current_app.config["PINGME"].app.gateway_id
        return jsonify({"code": int(Code.SERVER_ERROR), "message": "the gateway is shutting down",
                        "data": data}), 503
    return health()


@bp.get("/metrics")
def metrics():
    """Prometheus text: this gateway's metrics (gateway/metrics.py) and the DLQ depth by code; for
    operators only (403/10004 for anyone else)."""
    if not operator():
        raise AppError(Code.FORBIDDEN, "metrics are for operators (app.operator_networks, app.operator_token)")
    return gateway_metrics.exposition(), 200, {"Content-Type": gateway_metrics.CONTENT_TYPE}


@functools.lru_cache(maxsize=1)
def _build_info() -> dict:
    commit = os.environ.get("BUILD_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=2).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return {"commit": commit or "unknown", "built_at": os.environ.get("BUILD_TIME", "unknown"),
            "python": platform.python_version()}


@bp.get("/version")
def version():
    """Name and version; the build (commit, time, Python) for operators only."""
    if not operator():
        return envelope({"name": "pingme", "version": __version__})
    return envelope({"name": "pingme", "version": __version__, "build": _build_info()})


OPENAPI = REPO_ROOT / "docs" / "openapi.yaml"


@functools.lru_cache(maxsize=2)
def _openapi(path) -> str:
    return json.dumps(yaml.safe_load(path.read_text()))


@bp.get("/openapi.json")
def openapi():
    """docs/openapi.yaml as JSON: this API's OpenAPI 3.1 document (the image copies it too; the app
    setting ``OPENAPI_PATH`` points elsewhere)."""
    try:
        return _openapi(current_app.config.get("OPENAPI_PATH", OPENAPI)), 200, {"Content-Type": "application/json"}
    except FileNotFoundError:
        raise AppError(Code.NOT_FOUND, "this installation has no docs/openapi.yaml") from None


@bp.post("/api/v1/auth/register")
def register():
    fields = accounts.validate_registration(json_body())  # bad input answered at once, no pipeline
    limit(("register_address", _address()))
    body = {name: value for name, value in fields.items() if value is not None}
    return envelope(current_gateway().call("register", body), status=201)


@bp.post("/api/v1/auth/login")
def login():
    """Start a session: an access token and a refresh token (common/sessions.py). Limited per
    account and per client address, so guessing one account's password from many addresses and
    many accounts' from one address are both slowed down."""
    fields = accounts.validate_login(json_body())
    limit(("login_account", username_key(fields["username"])), ("login_address", _address()))
    return envelope(current_gateway().call("login", fields))


@bp.post("/api/v1/auth/refresh")
def refresh():
    """Rotate a refresh token (reusing one revokes its session and closes its sockets)."""
    token = validate.text(json_body(), "refresh_token", max_len=200)
    limit(("login_address", _address()))
    gw = current_gateway()
    try:
        return envelope(sessions.refresh(gw.redis, gw.cfg, token))
    except AppError:
        user_id = sessions.REFRESH.fullmatch(token)
        if user_id:
            _revoked(int(user_id[1]))
        raise


@bp.post("/api/v1/auth/logout")
@require_user
def logout():
    """End this token's session: its refresh token and its access tokens stop working now."""
    gw = current_gateway()
    sessions.end(gw.redis, gw.cfg, g.claims)
    _revoked(g.user_id)
    return envelope({"logged_out": "session"})


@bp.post("/api/v1/auth/logout-all")
@require_user
def logout_all():
    """End every session of the user, on every device."""
    gw = current_gateway()
    sessions.end_all(gw.redis, gw.cfg, g.user_id)
    _revoked(g.user_id)
    return envelope({"logged_out": "everywhere"})


@bp.put("/api/v1/user/password")
@require_user
def change_password():
    """Change the password (the current one is asked): every other session ends; this caller gets
    a new session's tokens. Served by the login function (the hash is the cost)."""
    fields = accounts.validate_password_change(json_body())
    limit(("login_account", f"id:{g.user_id}"))  # guessing the current password is a login
    result = current_gateway().call("login", fields, op="password", user_id=g.user_id)
    _revoked(g.user_id)
    return envelope(result)


def _revoked(user_id: int) -> None:
    """Tell every gateway with a socket of the user to re-check its token (and close it with
    4003 when revoked)."""
    gw = current_gateway()
    try:
        gateways = set(presence.lookup(gw.redis, gw.cfg, [user_id], now_ms()).get(user_id, {}).values())
        for gateway_id in gateways:
            gw.redis.publish(bus.gateway_channel(gw.cfg, gateway_id), bus.encode(protocol.revoke(user_id)))
    except redis.RedisError as exc:
        logger.error("revocation of user %d not announced code=%d: %s", user_id, Code.CACHE_ERROR,
                     type(exc).__name__)


@bp.get("/api/v1/user/profile")
@require_user
@with_db
def get_profile():
    return envelope(accounts.profile(g.user_id).public())


@bp.put("/api/v1/user/profile")
@require_user
@with_db
def put_profile():
    changes = accounts.validate_profile_update(json_body())
    return envelope(accounts.update_profile(g.user_id, changes).public())


@bp.post("/api/v1/messages")
@require_user(session_checked_later=True, also_limits=("ws_send_user",))
def send_message():
    """Send over HTTP: the same event, idempotency, ack and rate limit as the WebSocket ``send``
    (charged before the body is read, as a ``send`` frame is). The send function refuses it (30005)
    if the token was revoked (``session``)."""
    fields = chat.validate_send(json_body())
    key = chat.route_key(g.user_id, fields["to_user_id"], fields["group_id"])
    session = {"sid": g.claims.get("sid"), "ver": g.claims.get("ver", 0)}
    reply = current_gateway().request("send", {**fields, "sender_id": g.user_id, "session": session}, key)
    return envelope(rpc.result(reply))


@bp.get("/api/v1/conversations")
@require_user
@with_db
def list_conversations():
    return envelope({"conversations": chat.conversations(g.user_id)})


def page_limit() -> int:
    return validate.query_int(request.args.get("limit"), "limit", minimum=1, maximum=chat.MAX_PAGE, default=50)


@bp.get(f"/api/v1/conversations/<{ID}:conversation_id>/messages")
@require_user
@with_db
def conversation_history(conversation_id):
    before = validate.query_int(request.args.get("before_seq"), "before_seq")
    return envelope(chat.history(g.user_id, conversation_id, before, page_limit()))


@bp.get("/api/v1/messages/offline")
@require_user
@with_db
def offline_messages():
    cursor = validate.query_int(request.args.get("cursor"), "cursor", default=0)
    return envelope(chat.offline(g.user_id, cursor, page_limit()))


def announce(stored: chat.Stored | None, also_notify=()) -> None:
    """Push a stored system message to the members (sync has it anyway if this fails)."""
    if stored is None:
        return
    event = {"kind": "message", "message": chat.message_view(stored.message, stored.conversation),
             "also_notify": list(also_notify)}
    current_gateway().produce("deliver", event, str(stored.conversation.id),
                       on_error=lambda exc: logger.warning("system message push failed code=%d", Code.PRODUCER_ERROR))


@bp.post("/api/v1/groups")
@require_user
@with_db
def create_group():
    body = json_body()
    name = validate.text(body, "name", max_len=64)
    member_ids = validate.id_list(body, "member_ids")
    conv, stored = chat.create_group(g.user_id, name, member_ids, current_app.config["PINGME"].chat.max_group_members)
    announce(stored)
    return envelope(chat.group_view(conv), status=201)


@bp.get(f"/api/v1/groups/<{ID}:group_id>")
@require_user
@with_db
def get_group(group_id):
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.get(f"/api/v1/groups/<{ID}:group_id>/members")
@require_user
@with_db
def list_members(group_id):
    members = chat.group_members(g.user_id, group_id)
    gw = current_gateway()
    online = presence.lookup(gw.redis, gw.cfg, [m["user_id"] for m in members], now_ms())
    return envelope({"members": [{**m, "online": m["user_id"] in online} for m in members]})


@bp.post(f"/api/v1/groups/<{ID}:group_id>/members")
@require_user
@with_db
def add_members(group_id):
    user_ids = validate.id_list(json_body(), "user_ids", allow_empty=False)
    stored = chat.add_members(g.user_id, group_id, user_ids, current_app.config["PINGME"].chat.max_group_members)
    announce(stored)
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.delete(f"/api/v1/groups/<{ID}:group_id>/members/<{ID}:user_id>")
@require_user
@with_db
def remove_member(group_id, user_id):
    announce(chat.remove_member(g.user_id, group_id, user_id), also_notify=[user_id])
    return envelope({"group_id": group_id, "user_id": user_id, "removed": True})


@bp.get(f"/api/v1/users/<{ID}:user_id>/status")
@require_user
@directory
@with_db
def user_status(user_id):
    """Online status and last seen, of yourself or a contact only (chat.contact_ids: who would be
    told of it by presence frames); anyone else, existing or not, is 10004."""
    if user_id != g.user_id and g.user_id not in chat.contact_ids(user_id):
        raise AppError(Code.FORBIDDEN, "presence is shown to contacts only")
    gw = current_gateway()
    return envelope(presence.status(gw.redis, gw.cfg, [user_id], now_ms())[user_id])


@bp.get("/api/v1/users")
@require_user
@directory
@with_db
def find_user():
    return envelope(accounts.contact(accounts.find(request.args.get("username"))))


@bp.get(f"/api/v1/users/<{ID}:user_id>")
@require_user
@directory
@with_db
def get_user(user_id):
    return envelope(accounts.contact(accounts.profile(user_id)))


# The web client's page: its scripts and styles come from /static only (no inline code), it talks
# to this origin only, and no other site may frame it.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@bp.get("/")
def web_client():
    """The browser chat client (gateway/static: plain HTML, CSS and ES modules, no build step)."""
    response = current_app.send_static_file("index.html")
    response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})
    return response


# The framework's own refusals, as codes of the table (each answered with its code's HTTP status).
_HTTP_CODES = {400: Code.INVALID_PARAMS, 404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED,
               408: Code.REQUEST_TIMEOUT, 413: Code.PAYLOAD_TOO_LARGE, 429: Code.TOO_MANY_REQUESTS}


def answer_options():
    """``OPTIONS`` on a route: the methods it takes, as JSON (Flask's own answer is an empty HTML
    page). Registered as a ``before_request`` hook; ``None`` lets any other request through."""
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    allowed = sorted(request.url_rule.methods or ())
    response, status = envelope({"allow": allowed})
    response.headers["Allow"] = ", ".join(allowed)
    return response, status


def register_error_handlers(app) -> None:
    @app.errorhandler(AppError)
    def on_app_error(exc: AppError):
        response, status = error_response(exc)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        elif exc.code is Code.UPGRADE_REQUIRED:
            response.headers["Upgrade"] = "websocket"
        return response, status

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        if isinstance(exc, WebsocketMismatch):  # a plain request for /ws (routing refuses it: 400)
            return on_app_error(AppError(Code.UPGRADE_REQUIRED))
        code = _HTTP_CODES.get(exc.code or 500, Code.INVALID_PARAMS if (exc.code or 500) < 500 else Code.SERVER_ERROR)
        message = code.message if code is not Code.INVALID_PARAMS else (exc.description or code.message)
        response = jsonify({"code": int(code), "message": message})
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response, code.http_status

    @app.errorhandler(pw.OperationalError)
    @app.errorhandler(pw.InterfaceError)
    @app.errorhandler(MaxConnectionsExceeded)
    def on_db_error(exc):
        """The database unreachable, or every pooled connection busy for the pool's whole wait
        (seen under a burst of HTTP sends on a saturated box: it was a 500 with 10001)."""
        logger.error("database unavailable on %s %s code=%d: %s", request.method, request.path,
                     Code.DATABASE_ERROR, type(exc).__name__)
        return error_response(AppError(Code.DATABASE_ERROR))

    @app.errorhandler(redis.ConnectionError)
    def on_cache_error(exc):
        logger.error("redis unavailable on %s %s code=%d", request.method, request.path,
                     Code.CACHE_ERROR)
        return error_response(AppError(Code.CACHE_ERROR))

    @app.errorhandler(Exception)
    def on_error(exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"code": int(Code.SERVER_ERROR), "message": Code.SERVER_ERROR.message}), 500
