"""A Kafka broker of a test's own, started by deploy/local/services.sh in a private state dir on
free ports: for faults that must not touch the shared broker other test sessions use (stopping the
broker with SIGSTOP, killing it)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.integration.conftest import SERVICES, free_port


class PrivateKafka:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.port, self.controller_port = free_port(), free_port()
        self.env = {**os.environ, "PINGME_STATE_DIR": str(state_dir), "PINGME_KAFKA_PORT": str(self.port),
                    "PINGME_KAFKA_CONTROLLER_PORT": str(self.controller_port)}

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

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
