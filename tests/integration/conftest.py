"""Integration fixtures: the real servers of deploy/local/services.sh, functions as separate
processes, and the gateway under gunicorn's gevent worker.

Each test session gets its own namespace (Kafka topics, consumer groups, Redis keys) and its own
freshly migrated database ``pingme_test_<namespace>``, dropped at its end, so sessions that run at
the same time on one machine never see or break each other's data.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pymysql
import pytest

from common import bus, chat, config as config_mod
from common.models import init_db
from common.migrations import migrate

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "deploy" / "local" / "services.sh"
LOGS = REPO / ".state" / "test-logs"

pytestmark = pytest.mark.integration


def _services_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(SERVICES), "env"], capture_output=True, text=True, check=True)
    env = {}
    for line in out.stdout.splitlines():
        line = line.strip().removeprefix("export ")
        if "=" in line:
            key, value = line.split("=", 1)
            env[key] = value.strip("'\"")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def base_env() -> dict[str, str]:
    """Environment for every process of this session: real servers, private namespace."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("APP_", "DB_", "REDIS_", "KAFKA_", "RETRY_", "JWT_", "PINGME_"))}
    env.update(_services_env())
    namespace = f"t{uuid.uuid4().hex[:8]}"
    env.update({
        "APP_CONF": os.devnull,
        "APP_ENV": "test",
        "DB_ENGINE": "mysql",
        "DB_NAME": f"pingme_test_{namespace}",
        "PINGME_NAMESPACE": namespace,
        "PASSWORD_ITERATIONS": "1000",
        # Many users from one address and fast senders: the rate limits are tested on their own
        # (tests/integration/test_security.py turns them on with small budgets).
        "RATE_LIMIT_ENABLED": "false",
        "KAFKA_PARTITIONS": "2",
        "JWT_SECRET": "integration-test-secret-" + uuid.uuid4().hex,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _server_sql(cfg, statement: str) -> None:
    """Run one statement on the MariaDB server, outside any database (creating or dropping one)."""
    conn = pymysql.connect(host=cfg.db.host, port=cfg.db.port, user=cfg.db.username,
                           password=cfg.db.password, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def cfg(base_env):
    cfg = config_mod.load(base_env)
    for attempt in range(30):
        try:
            _server_sql(cfg, f"CREATE DATABASE IF NOT EXISTS `{cfg.db.name}` CHARACTER SET utf8mb4")
            database = init_db(cfg.db)
            chat.forget_cached_conversations()  # another test's database may have filled it
            migrate()
            bus.ensure_topics(cfg)
            break
        except Exception:
            if attempt == 29:
                pytest.fail("the real servers are not reachable: run `make services` "
                            "(deploy/local/services.sh start) first")
            time.sleep(1)
    yield cfg
    database.close()  # this session's database: unit tests may have pointed the models elsewhere since
    _server_sql(cfg, f"DROP DATABASE IF EXISTS `{cfg.db.name}`")


@pytest.fixture(scope="session")
def redis_client(cfg):
    client = bus.make_redis(cfg)
    yield client
    client.close()


class Proc:
    """A child process of the test, with its log kept under .state/test-logs."""

    def __init__(self, args: list[str], env: dict[str, str], name: str):
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=self._log,
                                      stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()
        finally:
            self._log.close()


class Api:
    """A tiny JSON client for the gateway (urllib: no extra package)."""

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


class Procs:
    """The functions and gateways one fixture scope started; :meth:`stop` ends them all.

    Scoped, so that nothing outlives its test or module: idle workers left running kept
    rebalancing consumer groups and loading the two cores, and a restarted broker then took
    longer than its tests wait."""

    def __init__(self, base_env):
        self.base_env = base_env
        self.procs: list[Proc] = []

    def function(self, name: str, ready: bool = True, **env) -> Proc:
        """Start ``python -m functions NAME`` with optional env overrides. With ``ready`` it
        returns once the worker has joined its group and got its partitions."""
        proc = Proc([sys.executable, "-m", "functions", name], {**self.base_env, **env}, f"fn-{name}")
        self.procs.append(proc)
        if ready:
            wait_for(lambda: "partitions assigned" in proc.log(), timeout=60, what=f"{name} to join its group")
        return proc

    def gateway(self, **env) -> Api:
        """Start the gateway under gunicorn (gevent worker) and wait until it answers /health;
        on a free port, or on ``APP_PORT`` (a restart where the old one listened)."""
        port = int(env.get("APP_PORT") or free_port())
        proc = Proc([sys.executable, "-m", "gunicorn", "-c", "gateway/gunicorn.conf.py",
                     "gateway.wsgi:app"],
                    {**self.base_env, "APP_HOST": "127.0.0.1", "APP_PORT": str(port), **env}, "gateway")
        self.procs.append(proc)
        api = Api(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                pytest.fail(f"gateway exited:\n{proc.log()[-3000:]}")
            try:
                status, _ = api.call("GET", "/health")
                if status == 200:
                    api.proc = proc
                    return api
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"gateway not healthy in 30 s:\n{proc.log()[-3000:]}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def procs(base_env, cfg):
    procs = Procs(base_env)
    yield procs
    procs.stop()


@pytest.fixture
def start_function(procs):
    """Start a function for this test (stopped at its end)."""
    return procs.function


@pytest.fixture
def start_gateway(procs):
    """Start a gateway for this test (stopped at its end)."""
    return procs.gateway


@pytest.fixture(scope="module")
def module_procs(base_env, cfg):
    procs = Procs(base_env)
    yield procs
    procs.stop()


@pytest.fixture(scope="module")
def system(module_procs):
    """Every chat function as its own process and two gateways (clients on either see each other)."""
    for name in ("register", "login", "send", "deliver"):
        module_procs.function(name)
    return module_procs.gateway(), module_procs.gateway()


@pytest.fixture(scope="module")
def gw1(system):
    return system[0]


@pytest.fixture(scope="module")
def gw2(system):
    return system[1]


@pytest.fixture(scope="session")
def services():
    """Stop and start single real services (for outage tests)."""
    def run(action: str, name: str) -> None:
        subprocess.run(["bash", str(SERVICES), action, name], check=True, capture_output=True)
    return run


def group_assignment(cfg, function: str) -> dict[str, set[int]]:
    """Each member of the function's consumer group and the partitions it holds, once the group is
    stable (empty while it rebalances) — what `kafka-consumer-groups --describe` shows an operator."""
    from kafka import KafkaAdminClient
    admin = KafkaAdminClient(bootstrap_servers=list(cfg.kafka.brokers))
    try:
        group = admin.describe_groups([cfg.group(function)])[cfg.group(function)]
    finally:
        admin.close()
    if group["group_state"] != "Stable":
        return {}
    return {m["member_id"]: {p for a in m["member_assignment"]["assigned_partitions"] for p in a["partitions"]}
            for m in group["members"]}


def wait_for(predicate, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
