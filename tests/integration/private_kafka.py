"""A Kafka broker (or a three-node cluster: ``nodes=3``, services.sh's KAFKA_NODES) of a test's
own, started by deploy/local/services.sh in a private state dir on free ports: for faults that
must not touch the shared broker other test sessions use (stopping a broker with SIGSTOP, killing
one)."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
from pathlib import Path

from tests.integration.conftest import SERVICES, free_port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _cluster_ports() -> tuple[int, int]:
    """Base broker and controller ports whose +100 and +200 (nodes 2 and 3) are free too."""
    for _ in range(200):
        port, controller = random.randrange(40000, 49000, 2), random.randrange(50000, 59000, 2)
        if all(_free(p + 100 * i) for p in (port, controller) for i in range(3)):
            return port, controller
    raise RuntimeError("no free ports for a three-node cluster")


class PrivateKafka:
    def __init__(self, state_dir: Path, nodes: int = 1):
        self.state_dir, self.nodes = state_dir, nodes
        if nodes == 1:
            self.port, self.controller_port = free_port(), free_port()
        else:
            self.port, self.controller_port = _cluster_ports()
        self.env = {**os.environ, "PINGME_STATE_DIR": str(state_dir), "PINGME_KAFKA_PORT": str(self.port),
                    "PINGME_KAFKA_CONTROLLER_PORT": str(self.controller_port), "KAFKA_NODES": str(nodes)}

    @property
    def brokers(self) -> str:
        return ",".join(f"127.0.0.1:{self.port + 100 * i}" for i in range(self.nodes))

    def node_pid(self, node: int) -> int:
        """The pid of node 1..3 of a cluster."""
        return int((self.state_dir / "kafka-cluster" / f"node{node}" / "kafka.pid").read_text().strip())

    def kill(self, node: int) -> None:
        os.kill(self.node_pid(node), signal.SIGKILL)

    def run(self, action: str) -> None:
        done = subprocess.run(["bash", str(SERVICES), action, "kafka"], env=self.env, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    def pid(self) -> int:
        return int((self.state_dir / "kafka" / "kafka.pid").read_text().strip())

    def pause(self) -> None:
        """The broker stops answering; its connections stay open (a stalled, not a dead, broker)."""
        os.kill(self.pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid(), signal.SIGCONT)
