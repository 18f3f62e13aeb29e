"""Redis and MariaDB (and a Kafka broker) of a test's or a tool's own, run by
deploy/local/services.sh in a private state dir on free ports: for faults that kill a server, which
must never be the shared ones of ``make services`` (others' tests run on them).

The ports are kept in ``<state_dir>/ports.json``, so a second user of the same dir (the next test
of a module, a second soak run) finds the servers where the first left them. No gevent here: the
tests import it as it is, tests/load/soak.py after monkey-patching.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.conftest import SERVICES, free_port

PIDFILES = {"redis": "redis/redis.pid", "mariadb": "mariadb/mariadb.pid", "kafka": "kafka/kafka.pid"}
PORTS = ("redis", "mariadb", "kafka", "kafka_controller", "kafka_proxied", "kafka_proxy")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class PrivateServers:
    """``names`` of redis, mariadb, kafka: the ones this dir runs (the rest: the shared ones)."""

    def __init__(self, state_dir: Path, names=("redis", "mariadb")):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports_file = self.state_dir / "ports.json"
        self.ports = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        if set(PORTS) - set(self.ports):
            self.ports.update({name: free_port() for name in PORTS if name not in self.ports})
            ports_file.write_text(json.dumps(self.ports))
        self.names = list(names)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PINGME_") and k != "KAFKA_NODES"}
        self.shared_env = clean  # services.sh on the shared state dir: only ever asked for `env`
        self.env = {**clean, "PINGME_STATE_DIR": str(self.state_dir), "KAFKA_NODES": "1",
                    "PINGME_REDIS_PORT": str(self.ports["redis"]), "PINGME_MYSQL_PORT": str(self.ports["mariadb"]),
                    "PINGME_KAFKA_PORT": str(self.ports["kafka"]),
                    "PINGME_KAFKA_CONTROLLER_PORT": str(self.ports["kafka_controller"]),
                    # A second listener of the broker, advertised as the proxy's port (services.sh;
                    # tests/load/soak.py's kafka-net fault runs the proxy).
                    "PINGME_KAFKA_PROXIED_PORT": str(self.ports["kafka_proxied"]),
                    "PINGME_KAFKA_PROXY_PORT": str(self.ports["kafka_proxy"])}

    def run(self, action: str, *names: str) -> str:
        """services.sh ACTION on ``names`` (default: all of this dir's)."""
        done = subprocess.run(["bash", str(SERVICES), action, *(names or self.names)], env=self.env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"services.sh {action} {names}: {done.stdout[-1500:]}{done.stderr[-2500:]}")
        return done.stdout

    def pid(self, name: str) -> int:
        return int((self.state_dir / PIDFILES[name]).read_text().strip())

    def kill(self, name: str, timeout: float = 15) -> None:
        """SIGKILL the server (a crash: no shutdown), and wait until it is gone."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} (pid {pid}) still alive {timeout:g} s after SIGKILL")
            time.sleep(0.05)

    def app_env(self) -> dict[str, str]:
        """The settings that point the system at these servers (Kafka: the shared broker unless
        this dir runs one)."""
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(self.ports["redis"]),
               "DB_ENGINE": "mysql", "DB_HOST": "127.0.0.1", "DB_PORT": str(self.ports["mariadb"]),
               "DB_USERNAME": "pingme", "DB_PASSWORD": "pingme"}
        if "kafka" in self.names:
            env["KAFKA_BROKERS"] = f"127.0.0.1:{self.ports['kafka']}"
        else:
            out = subprocess.run(["bash", str(SERVICES), "env", "kafka"], env=self.shared_env,
                                 capture_output=True, text=True, check=True).stdout
            brokers = re.search(r"KAFKA_BROKERS=(\S+)", out)
            if not brokers:
                raise RuntimeError("the shared Kafka of `make services` is not running")
            env["KAFKA_BROKERS"] = brokers.group(1).strip("'\"")
        return env
