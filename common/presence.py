"""Online status in Redis: ``user → {conn_id: gateway_id}`` with expiry refreshed by heartbeats.

Layout: the hash ``<ns>:presence:<user_id>`` maps each live connection to
``"<gateway_id>|<expires_at_ms>"``, and the whole key expires ``ttl`` after its last refresh. Readers
ignore (and remove) entries past their own expiry, so a gateway that dies leaves no stale presence:
its connections stop being refreshed and vanish within ``ttl``, even while the user's other
devices keep the key alive. ``<ns>:last_seen:<user_id>`` holds the time the user was last online.
"""
from __future__ import annotations

from typing import Iterable

from common.config import Config

TTL_MS = 60_000          # a connection not refreshed for this long is offline
HEARTBEAT_S = 20         # gateways refresh their connections this often (TTL / 3)


def _key(cfg: Config, user_id: int) -> str:
    return cfg.redis_key("presence", user_id)


def _last_seen_key(cfg: Config, user_id: int) -> str:
    return cfg.redis_key("last_seen", user_id)


def live_entries(raw: dict, now_ms: int) -> tuple[dict[str, str], list]:
    """Split a presence hash into live ``{conn_id: gateway_id}`` and the expired field names."""
    live, expired = {}, []
    for field, value in raw.items():
        conn_id = field.decode() if isinstance(field, bytes) else field
        text = value.decode() if isinstance(value, bytes) else value
        gateway_id, _, expires = text.rpartition("|")
        if expires.isdigit() and int(expires) > now_ms and gateway_id:
            live[conn_id] = gateway_id
        else:
            expired.append(field)
    return live, expired


def connect(r, cfg: Config, user_id: int, conn_id: str, gateway_id: str, now_ms: int,
            ttl_ms: int = TTL_MS) -> bool:
    """Record a new connection; True when the user was offline before it."""
    before = lookup(r, cfg, [user_id], now_ms).get(user_id, {})
    refresh(r, cfg, [(user_id, conn_id)], gateway_id, now_ms, ttl_ms)
    return not before


def refresh(r, cfg: Config, conns: Iterable[tuple[int, str]], gateway_id: str, now_ms: int,
            ttl_ms: int = TTL_MS) -> None:
    """Extend the life of a gateway's connections (one round trip for all of them)."""
    pipe = r.pipeline(transaction=False)
    value = f"{gateway_id}|{now_ms + ttl_ms}"
    for user_id, conn_id in conns:
        pipe.hset(_key(cfg, user_id), conn_id, value)
        pipe.pexpire(_key(cfg, user_id), ttl_ms)
    pipe.execute()


def disconnect(r, cfg: Config, user_id: int, conn_id: str, now_ms: int) -> bool:
    """Forget a connection; True when it was the user's last one (the user is now offline)."""
    pipe = r.pipeline(transaction=False)
    pipe.hdel(_key(cfg, user_id), conn_id)
    pipe.hgetall(_key(cfg, user_id))
    _, raw = pipe.execute()
    live, _ = live_entries(raw, now_ms)
    if live:
        return False
    r.set(_last_seen_key(cfg, user_id), now_ms)
    return True


def lookup(r, cfg: Config, user_ids: Iterable[int], now_ms: int) -> dict[int, dict[str, str]]:
    """Live connections of each user that has any: ``{user_id: {conn_id: gateway_id}}``."""
    user_ids = list(dict.fromkeys(user_ids))
    if not user_ids:
        return {}
    pipe = r.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.hgetall(_key(cfg, user_id))
    result, cleanup = {}, []
    for user_id, raw in zip(user_ids, pipe.execute()):
        live, expired = live_entries(raw, now_ms)
        if live:
            result[user_id] = live
        if expired:
            cleanup.append((user_id, expired))
    if cleanup:
        pipe = r.pipeline(transaction=False)
        for user_id, fields in cleanup:
            pipe.hdel(_key(cfg, user_id), *fields)
        pipe.execute()
    return result


def status(r, cfg: Config, user_ids: Iterable[int], now_ms: int) -> dict[int, dict]:
    """``{user_id: {online, last_seen}}`` for display (last_seen is None for a never-seen user)."""
    user_ids = list(dict.fromkeys(user_ids))
    online = lookup(r, cfg, user_ids, now_ms)
    seen = r.mget([_last_seen_key(cfg, u) for u in user_ids]) if user_ids else []
    return {u: {"user_id": u, "online": u in online,
                "last_seen": now_ms if u in online else (int(s) if s else None)}
            for u, s in zip(user_ids, seen)}


def group_by_gateway(connections: dict[int, dict[str, str]],
                     skip_conn: str | None = None) -> dict[str, list[str]]:
    """``{gateway_id: [conn_id, ...]}`` for one publish per gateway (pure)."""
    batches: dict[str, list[str]] = {}
    for conns in connections.values():
        for conn_id, gateway_id in conns.items():
            if conn_id != skip_conn:
                batches.setdefault(gateway_id, []).append(conn_id)
    return batches
