"""HTTP API of the gateway: health, version, auth, profile, users, messages, conversations and
groups; and the web client's page at ``/`` (gateway/static, served with a strict CSP).

Every response uses the envelope ``{"code", "message", "data"}``; errors carry the code from
common/errors.py with its HTTP status (and ``field`` for 10002).
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess

import peewee as pw
import redis
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from common import __version__, accounts, chat, presence, rpc
from common.config import REPO_ROOT
from common.errors import AppError, Code
from common.models import db, now_ms
from gateway import metrics as gateway_metrics

logger = logging.getLogger(__name__)
bp = Blueprint("http", __name__)


def envelope(data=None, code: Code = Code.SUCCESS, status: int | None = None):
    return jsonify({"code": int(code), "message": code.message, "data": data}), status or code.http_status


def error_response(exc: AppError):
    return jsonify(exc.to_dict()), exc.code.http_status


def _gateway():
    return current_app.extensions["pingme"]


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AppError(Code.INVALID_PARAMS, "the body must be a JSON object")
    return body


def require_user(view):
    """Resolve ``Authorization: Bearer <token>`` to ``g.user_id`` or answer 401 (30004/30005)."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AppError(Code.INVALID_TOKEN, "missing bearer token")
        g.user_id = accounts.authenticate(token.strip(), current_app.config["PINGME"])
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
    checks = _gateway().health()
    ok = all(check["ok"] for check in checks.values())
    data = {"status": "ok" if ok else "degraded", "checks": checks,
            "gateway_id": current_app.config["PINGME"].app.gateway_id}
    if ok:
        return envelope(data)
    code = {"db": Code.DATABASE_ERROR, "redis": Code.CACHE_ERROR, "kafka": Code.KAFKA_ERROR}[
        next(name for name, check in checks.items() if not check["ok"])]
    return jsonify({"code": int(code), "message": code.message, "data": data}), 503


@bp.get("/healthz")
def healthz():
    """Liveness: the worker answers. No dependency is checked: an outage must take a gateway out of
    rotation (/readyz), not get it restarted; it recovers by itself when the dependency is back."""
    return envelope({"status": "alive", "gateway_id": current_app.config["PINGME"].app.gateway_id})


@bp.get("/readyz")
def readyz():
    """Readiness: every dependency reachable (as /health) and not draining. While the gateway shuts
    down (SIGTERM) it answers 503 with ``status: draining``."""
    if _gateway().draining:
        data = {"status": "draining", "gateway_id": current_app.config["PINGME"].app.gateway_id}
        return jsonify({"code": int(Code.SERVER_ERROR), "message": "the gateway is shutting down",
                        "data": data}), 503
    return health()


@bp.get("/metrics")
def metrics():
    """Prometheus text: this gateway's metrics (gateway/metrics.py) and the DLQ depth by code."""
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
    return envelope({"name": "pingme", "version": __version__, "build": _build_info()})


@bp.post("/api/v1/auth/register")
def register():
    body = _json_body()
    accounts.validate_registration(body)  # answer bad input at once, without the pipeline
    return envelope(_gateway().call("register", body), status=201)


@bp.post("/api/v1/auth/login")
def login():
    body = _json_body()
    accounts.validate_login(body)
    return envelope(_gateway().call("login", body))


@bp.get("/api/v1/user/profile")
@require_user
@with_db
def get_profile():
    return envelope(accounts.profile(g.user_id).public())


@bp.put("/api/v1/user/profile")
@require_user
@with_db
def put_profile():
    changes = accounts.validate_profile_update(_json_body())
    return envelope(accounts.update_profile(g.user_id, changes).public())


@bp.post("/api/v1/messages")
@require_user
def send_message():
    """Send over HTTP: the same event, idempotency and ack as the WebSocket ``send``."""
    fields = chat.validate_send(_json_body())
    key = chat.route_key(g.user_id, fields["to_user_id"], fields["group_id"])
    reply = _gateway().request("send", {**fields, "sender_id": g.user_id}, key)
    return envelope(rpc.result(reply))


@bp.get("/api/v1/conversations")
@require_user
@with_db
def list_conversations():
    return envelope({"conversations": chat.conversations(g.user_id)})


@bp.get("/api/v1/conversations/<int:conversation_id>/messages")
@require_user
@with_db
def conversation_history(conversation_id):
    before = chat.seq_param(request.args.get("before_seq"), "before_seq")
    return envelope(chat.history(g.user_id, conversation_id, before, chat.page_limit(request.args.get("limit"))))


@bp.get("/api/v1/messages/offline")
@require_user
@with_db
def offline_messages():
    cursor = chat.seq_param(request.args.get("cursor"), "cursor", 0)
    return envelope(chat.offline(g.user_id, cursor, chat.page_limit(request.args.get("limit"))))


def _announce(stored: chat.Stored | None, also_notify=()) -> None:
    """Push a stored system message to the members (sync has it anyway if this fails)."""
    if stored is None:
        return
    event = {"kind": "message", "message": chat.message_view(stored.message, stored.conversation),
             "also_notify": list(also_notify)}
    _gateway().produce("deliver", event, str(stored.conversation.id),
                       on_error=lambda exc: logger.warning("system message push failed code=%d", Code.PRODUCER_ERROR))


@bp.post("/api/v1/groups")
@require_user
@with_db
def create_group():
    body = _json_body()
    conv, stored = chat.create_group(g.user_id, body.get("name"), body.get("member_ids", []))
    _announce(stored)
    return envelope(chat.group_view(conv), status=201)


@bp.get("/api/v1/groups/<int:group_id>")
@require_user
@with_db
def get_group(group_id):
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.get("/api/v1/groups/<int:group_id>/members")
@require_user
@with_db
def list_members(group_id):
    members = chat.group_members(g.user_id, group_id)
    gw = _gateway()
    online = presence.lookup(gw.redis, gw.cfg, [m["user_id"] for m in members], now_ms())
    return envelope({"members": [{**m, "online": m["user_id"] in online} for m in members]})


@bp.post("/api/v1/groups/<int:group_id>/members")
@require_user
@with_db
def add_members(group_id):
    stored = chat.add_members(g.user_id, group_id, _json_body().get("user_ids"))
    _announce(stored)
    return envelope(chat.group_view(chat.get_group(g.user_id, group_id)))


@bp.delete("/api/v1/groups/<int:group_id>/members/<int:user_id>")
@require_user
@with_db
def remove_member(group_id, user_id):
    _announce(chat.remove_member(g.user_id, group_id, user_id), also_notify=[user_id])
    return envelope({"group_id": group_id, "user_id": user_id, "removed": True})


@bp.get("/api/v1/users/<int:user_id>/status")
@require_user
@with_db
def user_status(user_id):
    accounts.profile(user_id)  # 30001 for an unknown user
    gw = _gateway()
    return envelope(presence.status(gw.redis, gw.cfg, [user_id], now_ms())[user_id])


@bp.get("/api/v1/users")
@require_user
@with_db
def find_user():
    return envelope(accounts.contact(accounts.find(request.args.get("username"))))


@bp.get("/api/v1/users/<int:user_id>")
@require_user
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


def register_error_handlers(app) -> None:
    @app.errorhandler(AppError)
    def on_app_error(exc: AppError):
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        code = {404: Code.NOT_FOUND, 405: Code.INVALID_PARAMS, 413: Code.INVALID_PARAMS,
                429: Code.TOO_MANY_REQUESTS}.get(exc.code or 500, Code.SERVER_ERROR)
        return jsonify({"code": int(code), "message": exc.description or code.message}), exc.code

    @app.errorhandler(pw.OperationalError)
    @app.errorhandler(pw.InterfaceError)
    def on_db_error(exc):
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
