"""Configuration: one immutable object, loaded once with :func:`load` and passed in.

Sources, later ones winning: the defaults in :data:`SETTINGS`, the YAML file (``APP_CONF``, default
``config/local.yml``), then environment variables. Every setting has a default; a bad value raises
:class:`ConfigError` naming the key. ``APP_ENV=production`` refuses a missing, short or default
JWT secret.

The table in :data:`SETTINGS` is the single list of settings; ``python -m common.config --markdown``
prints it as the README's configuration table.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF = REPO_ROOT / "config" / "local.yml"
# A placeholder that lets `make dev` run out of the box; production refuses it.
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"
MIN_PRODUCTION_SECRET_LEN = 32


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the key."""


# ---- value parsers: each takes the raw value (YAML scalar or env string) and the key -------------

def _int(lo: int, hi: int) -> Callable[[Any, str], int]:
    def parse(raw: Any, key: str) -> int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: {value} is out of range [{lo}, {hi}]")
        return value
    return parse


def _float(lo: float, hi: float) -> Callable[[Any, str], float]:
    def parse(raw: Any, key: str) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: {value} is out of range [{lo}, {hi}]")
        return value
    return parse


def _bool(raw: Any, key: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _str(raw: Any, key: str) -> str:
    if raw is None or isinstance(raw, (dict, list)):
        raise ConfigError(f"{key}: expected a string, got {raw!r}")
    return str(raw)


def _nonempty(raw: Any, key: str) -> str:
    value = _str(raw, key).strip()
    if not value:
        raise ConfigError(f"{key}: must not be empty")
    return value


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(raw: Any, key: str) -> str:
        value = _str(raw, key).strip().lower()
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {raw!r}")
        return value
    return parse


def _origins(raw: Any, key: str) -> tuple[str, ...]:
    """Comma-separated web origins (``scheme://host[:port]``), or ``*`` for any."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    origins = tuple(str(item).strip().rstrip("/").lower() for item in items if str(item).strip())
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if origin != "*" and (scheme not in ("http", "https") or not sep or not host or "/" in host):
            raise ConfigError(f"{key}: {origin!r} is not an origin like https://chat.example.com[:port] (or *)")
    return origins


def _rate(raw: Any, key: str):
    """A rate limit ``count/period`` (``10/1m``, ``30/10s``: common/ratelimit.py), or ``off``."""
    from common.ratelimit import Rate

    text = _str(raw, key).strip().lower()
    if text in ("off", "none", "0"):
        return None
    try:
        return Rate.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _networks(raw: Any, key: str) -> tuple:
    """Comma-separated IP addresses or networks (CIDR)."""
    from common.ratelimit import parse_networks

    items = raw if isinstance(raw, list) else str(raw).split(",")
    try:
        return parse_networks(str(item) for item in items if str(item).strip())
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _webhook(raw: Any, key: str) -> str:
    url = _str(raw, key).strip()
    if url and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {url!r}")
    return url


def _brokers(raw: Any, key: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    brokers = tuple(str(item).strip() for item in items if str(item).strip())
    if not brokers:
        raise ConfigError(f"{key}: expected at least one host:port")
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{key}: {broker!r} is not host:port")
    return brokers


@dataclass(frozen=True)
class Setting:
    key: str            # dotted YAML path, e.g. "db.host"
    env: str | None     # environment variable that overrides it
    default: Any
    parse: Callable[[Any, str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("app.host", "APP_HOST", "0.0.0.0", _nonempty, "Gateway listen address"),
    Setting("app.port", "APP_PORT", 8080, _int(1, 65535), "Gateway listen port"),
    Setting("app.env", "APP_ENV", "development", _choice("development", "test", "production"),
            "`production` enforces a real JWT secret"),
    Setting("app.namespace", "PINGME_NAMESPACE", "pingme", _nonempty,
            "Prefix of every Kafka topic, consumer group and Redis key (isolates test runs)"),
    Setting("app.gateway_id", "GATEWAY_ID", "", _str,
            "This gateway's reply/push address; empty = random per process"),
    Setting("app.worker_connections", "WORKER_CONNECTIONS", 10000, _int(10, 1_000_000),
            "gunicorn gevent worker connection cap (WebSocket + HTTP)"),
    Setting("app.ws_queue_limit", "WS_QUEUE_LIMIT", 1000, _int(10, 1_000_000),
            "Frames queued for one slow WebSocket client before it is disconnected"),
    Setting("app.function_port", "FUNCTION_PORT", 0, _int(0, 65535),
            "A function worker's probe port (`/healthz`, `/readyz`, `/metrics`) on `app.host`; "
            "0: off. `python -m functions all` gives each function this port + its place in "
            "`functions.FUNCTIONS` (register +0 … notify +6)"),
    Setting("app.allowed_origins", "ALLOWED_ORIGINS", "", _origins,
            "Web origins (comma-separated `scheme://host[:port]`, or `*`) whose pages may open "
            "`/ws`; empty: the gateway's own origin only. A client without an `Origin` header is not checked"),
    Setting("app.body_timeout_ms", "BODY_TIMEOUT_MS", 10_000, _int(100, 300_000),
            "How long the gateway waits for a request body to arrive whole before answering 408/10012"),
    Setting("app.operator_networks", "OPERATOR_NETWORKS", "127.0.0.0/8,::1", _networks,
            "Client addresses (comma-separated, CIDR; behind a trusted proxy, the address it reports) "
            "that see operators' details: `/health` checks, `/version` build, `/metrics`; others get "
            "the status only (probes need no more) and 403 on `/metrics`"),
    Setting("app.operator_token", "OPERATOR_TOKEN", "", _str,
            "A secret that grants operators' details from anywhere (`Authorization: Bearer <token>`, "
            "e.g. for Prometheus); empty: none. At least 32 characters"),
    Setting("db.engine", "DB_ENGINE", "sqlite", _choice("sqlite", "mysql"),
            "`sqlite` (embedded, local run only) or `mysql` (MariaDB/MySQL)"),
    Setting("db.path", "DB_PATH", ".state/pingme.db", _nonempty,
            "SQLite file, relative to the repository root"),
    Setting("db.host", "DB_HOST", "127.0.0.1", _nonempty, "MySQL host"),
    Setting("db.port", "DB_PORT", 3306, _int(1, 65535), "MySQL port"),
    Setting("db.username", "DB_USERNAME", "pingme", _nonempty, "MySQL user"),
    Setting("db.password", "DB_PASSWORD", "", _str, "MySQL password"),
    Setting("db.name", "DB_NAME", "pingme", _nonempty, "MySQL database"),
    Setting("db.max_connections", "DB_MAX_CONNECTIONS", 20, _int(1, 1000),
            "Connection pool size per process"),
    Setting("redis.host", "REDIS_HOST", "127.0.0.1", _nonempty, "Redis host"),
    Setting("redis.port", "REDIS_PORT", 6379, _int(1, 65535), "Redis port"),
    Setting("redis.db", "REDIS_DB", 0, _int(0, 15), "Redis database number"),
    Setting("kafka.brokers", "KAFKA_BROKERS", "127.0.0.1:9092", _brokers,
            "Comma-separated bootstrap servers"),
    Setting("kafka.partitions", "KAFKA_PARTITIONS", 6, _int(1, 1000),
            "Partitions per topic when the app creates it (bounds each function's parallelism)"),
    Setting("kafka.request_timeout_ms", "KAFKA_REQUEST_TIMEOUT_MS", 5000, _int(100, 120_000),
            "How long the gateway waits for a function's reply before answering 10008"),
    Setting("kafka.gateway_linger_ms", "GATEWAY_LINGER_MS", 0, _int(0, 100),
            "How long the gateway's producer gathers client events into one Kafka request while it "
            "is busy (0: never, the lowest latency; 3: 18-41 % less gateway CPU at 500 msg/s, "
            "latency not better: docs/BENCHMARKS.md)"),
    Setting("kafka.gateway_linger_from_rate", "GATEWAY_LINGER_FROM_RATE", 300, _int(0, 1_000_000),
            "Events a second from which the gateway's producer lingers GATEWAY_LINGER_MS; below it "
            "each event goes to Kafka at once (0: always linger)"),
    Setting("kafka.commit_interval_ms", "COMMIT_INTERVAL_MS", 200, _int(0, 60_000),
            "How often a function commits the offsets of finished batches (0: after every batch); "
            "a crash or a rebalance re-runs at most this much work, which handlers absorb by msg_id"),
    Setting("kafka.retry_max_attempts", "RETRY_MAX_ATTEMPTS", 3, _int(0, 100),
            "Retries of a transiently failed event before the DLQ"),
    Setting("kafka.retry_initial_backoff_ms", "RETRY_INITIAL_BACKOFF_MS", 100, _int(1, 240_000),
            "Delay before the first retry"),
    Setting("kafka.retry_max_backoff_ms", "RETRY_MAX_BACKOFF_MS", 10_000, _int(1, 240_000),
            "Cap on any retry delay (below the consumer poll interval)"),
    Setting("kafka.retry_multiplier", "RETRY_MULTIPLIER", 2.0, _float(1.0, 100.0),
            "Backoff growth factor per attempt"),
    Setting("kafka.enable_dlq", "ENABLE_DLQ", True, _bool,
            "Send exhausted/undecodable events to the DLQ topic (else log and skip)"),
    Setting("kafka.group_instance_id", "KAFKA_GROUP_INSTANCE_ID", "", _str,
            "Static group membership (`group.instance.id`): a name unique among the replicas of a "
            "function and kept across restarts (a pod or container name). A worker restarted under it "
            "gets its partitions back at once instead of after the session timeout; empty: dynamic "
            "membership (docs/OPERATIONS.md, Failover)"),
    Setting("kafka.session_timeout_ms", "KAFKA_SESSION_TIMEOUT_MS", 10_000, _int(1000, 300_000),
            "How long a silent worker keeps its partitions before its group gives them to the others "
            "(brokers refuse less than their `group.min.session.timeout.ms`, 6000 by default)"),
    Setting("kafka.heartbeat_interval_ms", "KAFKA_HEARTBEAT_INTERVAL_MS", 1000, _int(100, 60_000),
            "How often a worker tells its group it is alive; below a third of the session timeout"),
    Setting("jwt.secret", "JWT_SECRET", DEV_JWT_SECRET, _str,
            "HS256 signing secret; production needs >= 32 chars, not the default"),
    Setting("jwt.ttl_seconds", "JWT_TTL_SECONDS", 900, _int(60, 30 * 86400),
            "Access token lifetime; clients refresh it (`POST /api/v1/auth/refresh`; the web client does "
            "so before it expires). A revoked one is refused at once on every gateway (docs/SECURITY.md)"),
    Setting("jwt.refresh_ttl_seconds", "JWT_REFRESH_TTL_SECONDS", 30 * 86400, _int(60, 365 * 86400),
            "How long an unused refresh token (a login session) lives; each refresh starts it again"),
    Setting("jwt.issuer", "JWT_ISSUER", "pingme", _nonempty, "`iss` claim"),
    Setting("auth.password_iterations", "PASSWORD_ITERATIONS", 200_000, _int(1, 10_000_000),
            "PBKDF2-SHA256 iterations for new password hashes (the login cost)"),
    Setting("chat.edit_window_s", "EDIT_WINDOW_S", 86400, _int(0, 365 * 86400),
            "How long after sending it a message's sender may edit it (seconds; 0: never)"),
    Setting("chat.recall_window_s", "RECALL_WINDOW_S", 120, _int(0, 365 * 86400),
            "How long after sending it a message's sender may recall it (seconds; 0: never)"),
    Setting("chat.max_group_members", "MAX_GROUP_MEMBERS", 2000, _int(2, 100_000),
            "Members a group may have, its owner included"),
    Setting("notify.webhook_url", "NOTIFY_WEBHOOK_URL", "", _webhook,
            "Where the notify function posts push notifications for offline recipients (a push gateway "
            "for FCM/APNs, a bot): `http(s)://…`; empty: no notifications (deliver emits none)"),
    Setting("notify.previews", "NOTIFY_PREVIEWS", False, _bool,
            "Put the first 100 characters of a message in its notification (off: who wrote where only)"),
    Setting("notify.timeout_ms", "NOTIFY_TIMEOUT_MS", 3000, _int(100, 60_000),
            "How long the notify function waits for the webhook before retrying the notification"),
    Setting("ratelimit.enabled", "RATE_LIMIT_ENABLED", True, _bool,
            "Refuse requests over the limits below with 429 / an `error` frame, code 10007 and a retry "
            "hint (docs/SECURITY.md). A limit is `count/period` (`10/1m`: a burst of 10, then one "
            "every 6 s; units s, m, h, d) or `off`"),
    Setting("ratelimit.login_account", "RATE_LIMIT_LOGIN_ACCOUNT", "10/1m", _rate,
            "Logins per username (any letter case), from anywhere"),
    Setting("ratelimit.login_address", "RATE_LIMIT_LOGIN_ADDRESS", "30/1m", _rate,
            "Logins per client address"),
    Setting("ratelimit.register_address", "RATE_LIMIT_REGISTER_ADDRESS", "10/1h", _rate,
            "Registrations per client address"),
    Setting("ratelimit.api_user", "RATE_LIMIT_API_USER", "300/1m", _rate,
            "Authenticated HTTP API requests per user"),
    Setting("ratelimit.directory_user", "RATE_LIMIT_DIRECTORY_USER", "60/1m", _rate,
            "User-directory lookups (`/api/v1/users…`, a user's status) per user"),
    Setting("ratelimit.ws_connection", "RATE_LIMIT_WS_CONNECTION", "50/1s", _rate,
            "WebSocket frames of any type per connection (kept in the gateway's memory)"),
    Setting("ratelimit.ws_send_user", "RATE_LIMIT_WS_SEND_USER", "20/1s", _rate,
            "`send` frames (and HTTP sends) per user, all connections together"),
    Setting("ratelimit.ws_typing_user", "RATE_LIMIT_WS_TYPING_USER", "5/1s", _rate,
            "`typing` frames per user"),
    Setting("ratelimit.ws_sync_user", "RATE_LIMIT_WS_SYNC_USER", "30/10s", _rate,
            "`sync` frames per user"),
    Setting("ratelimit.trusted_proxies", "TRUSTED_PROXIES", "", _networks,
            "Addresses or networks (comma-separated, CIDR) of proxies whose `ratelimit.proxy_header` "
            "names the client; empty: the header is ignored and the socket's peer is the client"),
    Setting("ratelimit.proxy_header", "PROXY_HEADER", "X-Forwarded-For", _nonempty,
            "The header a trusted proxy puts the client's address in (read from the right)"),
)


@dataclass(frozen=True)
class AppConfig:
    host: str
    port: int
    env: str
    namespace: str
    gateway_id: str
    worker_connections: int
    ws_queue_limit: int
    function_port: int
    allowed_origins: tuple[str, ...]
    body_timeout_ms: int = 10_000
    operator_networks: tuple = ()
    operator_token: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True)
class DbConfig:
    engine: str
    path: str
    host: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    name: str
    max_connections: int


@dataclass(frozen=True)
class RedisConfig:
    host: str
    port: int
    db: int


@dataclass(frozen=True)
class KafkaConfig:
    brokers: tuple[str, ...]
    partitions: int
    request_timeout_ms: int
    gateway_linger_ms: int
    gateway_linger_from_rate: int
    commit_interval_ms: int
    retry_max_attempts: int
    retry_initial_backoff_ms: int
    retry_max_backoff_ms: int
    retry_multiplier: float
    enable_dlq: bool
    group_instance_id: str = ""
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1000


@dataclass(frozen=True)
class JwtConfig:
    secret: str = dataclasses.field(repr=False)
    ttl_seconds: int
    issuer: str
    refresh_ttl_seconds: int = 30 * 86400


@dataclass(frozen=True)
class AuthConfig:
    password_iterations: int


@dataclass(frozen=True)
class ChatConfig:
    edit_window_s: int = 86400
    recall_window_s: int = 120
    max_group_members: int = 2000


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str = ""
    previews: bool = False
    timeout_ms: int = 3000


@dataclass(frozen=True)
class RateLimitConfig:
    """Each limit is a common.ratelimit.Rate, or None (not limited)."""

    enabled: bool
    login_account: Any
    login_address: Any
    register_address: Any
    api_user: Any
    directory_user: Any
    ws_connection: Any
    ws_send_user: Any
    ws_typing_user: Any
    ws_sync_user: Any
    trusted_proxies: tuple
    proxy_header: str

    def rules(self) -> dict:
        """The shared (Redis) limits by name, for common.ratelimit.Limiter."""
        return {name: getattr(self, name) for name in (
            "login_account", "login_address", "register_address", "api_user", "directory_user",
            "ws_send_user", "ws_typing_user", "ws_sync_user")}


@dataclass(frozen=True)
class Config:
    app: AppConfig
    db: DbConfig
    redis: RedisConfig
    kafka: KafkaConfig
    jwt: JwtConfig
    auth: AuthConfig
    ratelimit: RateLimitConfig
    chat: ChatConfig = ChatConfig()
    notify: NotifyConfig = NotifyConfig()
    source: str = ""  # the YAML file that was read, for start-up logs

    @property
    def production(self) -> bool:
        return self.app.env == "production"

    def topic(self, name: str) -> str:
        """The full name of a topic (``send`` → ``pingme.send``)."""
        return f"{self.app.namespace}.{name}"

    def group(self, function: str) -> str:
        """A function's consumer group: one per function, so each scales on its own lag."""
        return f"{self.app.namespace}.{function}"

    def redis_key(self, *parts: object) -> str:
        """A namespaced Redis key or channel (``gw``, ``abc`` → ``pingme:gw:abc``)."""
        return ":".join((self.app.namespace, *map(str, parts)))


_SECTIONS = {"app": AppConfig, "db": DbConfig, "redis": RedisConfig, "kafka": KafkaConfig,
             "jwt": JwtConfig, "auth": AuthConfig, "ratelimit": RateLimitConfig, "chat": ChatConfig,
             "notify": NotifyConfig}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load(env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, the YAML file and ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    conf_path = env.get("APP_CONF")
    if conf_path:
        path = Path(conf_path)
        if not path.exists():
            raise ConfigError(f"APP_CONF: no such file {conf_path!r}")
    else:
        path = DEFAULT_CONF
    document = _read_yaml(path) if path.exists() else {}

    known_sections = set(_SECTIONS)
    for section, body in document.items():
        if section not in known_sections:
            raise ConfigError(f"{section}: unknown section (known: {', '.join(sorted(known_sections))})")
        if not isinstance(body, dict):
            raise ConfigError(f"{section}: expected a mapping")
    known_keys = {s.key for s in SETTINGS}
    for section, body in document.items():
        for name in body:
            if f"{section}.{name}" not in known_keys:
                raise ConfigError(f"{section}.{name}: unknown setting")

    values: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for setting in SETTINGS:
        section, name = setting.key.split(".")
        raw, label = setting.default, setting.key
        if name in document.get(section, {}):
            raw = document[section][name]
        if setting.env and env.get(setting.env) is not None:
            raw, label = env[setting.env], f"{setting.env} ({setting.key})"
        values[section][name] = setting.parse(raw, label)

    if not values["app"]["gateway_id"]:
        values["app"]["gateway_id"] = uuid.uuid4().hex[:12]
    config = Config(**{name: cls(**values[name]) for name, cls in _SECTIONS.items()},
                    source=str(path) if path.exists() else "")
    _check(config)
    return config


def _check(config: Config) -> None:
    k = config.kafka
    if k.retry_initial_backoff_ms > k.retry_max_backoff_ms:
        raise ConfigError("kafka.retry_initial_backoff_ms: must not exceed kafka.retry_max_backoff_ms")
    if k.heartbeat_interval_ms * 3 > k.session_timeout_ms:
        raise ConfigError("kafka.heartbeat_interval_ms: must be at most a third of kafka.session_timeout_ms")
    if config.app.operator_token and len(config.app.operator_token) < MIN_PRODUCTION_SECRET_LEN:
        raise ConfigError(f"OPERATOR_TOKEN (app.operator_token): at least {MIN_PRODUCTION_SECRET_LEN} characters")
    if config.production:
        secret = config.jwt.secret
        if not secret or secret == DEV_JWT_SECRET or len(secret) < MIN_PRODUCTION_SECRET_LEN:
            raise ConfigError(
                f"JWT_SECRET (jwt.secret): production needs a secret of at least "
                f"{MIN_PRODUCTION_SECRET_LEN} characters that is not the development default")
        if config.db.engine == "sqlite":
            raise ConfigError("DB_ENGINE (db.engine): sqlite is for the local run only; use mysql")


def markdown_table() -> str:
    rows = ["| Key (YAML) | Environment | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        if s.key == "jwt.secret":
            default = "(dev placeholder)"
        elif s.default == "":
            default = "(empty)"
        else:
            default = f"`{str(s.default).lower() if isinstance(s.default, bool) else s.default}`"
        rows.append(f"| `{s.key}` | `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if sys.argv[1:] == ["--markdown"]:
        print(markdown_table())
    else:
        try:
            print(load())
        except ConfigError as exc:
            sys.exit(f"config error: {exc}")
