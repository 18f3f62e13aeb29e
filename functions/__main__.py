"""Entry point: ``python -m functions NAME`` runs one function; ``all`` (or several names) runs
each in a child process, restarts a child that dies (under the same static group membership, so
it takes its partitions back at once), and passes SIGTERM/SIGINT on for draining.

With ``app.function_port`` (``FUNCTION_PORT``) = P, a child serves its probes on P + its index in
:data:`functions.FUNCTIONS` (register P, login P+1, send P+2, ...), so ports never collide and
stay the same whichever functions are started; with 0 no child serves any."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from common import config as config_mod, logs
from common.models import init_db
from functions import FUNCTIONS, runtime

logger = logging.getLogger("functions")


def run_one(name: str) -> int:
    logs.setup(f"fn-{name}")
    runtime.set_switch_interval()
    stop = threading.Event()
    runtime.install_signal_handlers(stop)  # first: a SIGTERM during start-up still drains cleanly
    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as exc:
        logger.error("config error: %s", exc)
        return 2
    init_db(cfg.db)
    runtime.serve(name, importlib.import_module(f"functions.{name}"), cfg, stop)
    return 0


def probe_port(name: str, base_port: int) -> int:
    """The probe port of the child running ``name`` when the configured port is ``base_port``."""
    return base_port + FUNCTIONS.index(name) if base_port else 0


def supervise(names: list[str]) -> int:
    logs.setup("functions")
    try:
        base_port = config_mod.load().app.function_port
    except config_mod.ConfigError as exc:
        logger.error("config error: %s", exc)
        return 2
    if base_port and probe_port(FUNCTIONS[-1], base_port) > 65535:
        logger.error("config error: FUNCTION_PORT (app.function_port): %d + %d children exceeds 65535",
                     base_port, len(FUNCTIONS))
        return 2
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    # Static group membership for the children (docs/OPERATIONS.md, Failover): a child that dies is
    # restarted under the same group.instance.id and takes its partitions back at once. One name
    # per supervisor (each child is in its own function's group); an explicit setting wins.
    instance_id = os.environ.get("KAFKA_GROUP_INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"

    def start(name: str) -> None:
        env = {**os.environ, "FUNCTION_PORT": str(probe_port(name, base_port)),
               "KAFKA_GROUP_INSTANCE_ID": instance_id}
        children[name] = subprocess.Popen([sys.executable, "-m", "functions", name], env=env)
        logger.info("started %s (pid %d)", name, children[name].pid)

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for name in names:
        start(name)
    while not stopping:
        time.sleep(0.5)
        for name, child in list(children.items()):
            if child.poll() is not None and not stopping:
                logger.error("%s exited with %s; restarting in 1 s", name, child.returncode)
                time.sleep(1)
                start(name)
    for child in children.values():
        child.wait(timeout=30)
    return 0


def main(argv: list[str]) -> int:
    names = list(FUNCTIONS) if argv in (["all"], []) else argv
    unknown = [name for name in names if name not in FUNCTIONS]
    if unknown:
        print(f"unknown function(s): {', '.join(unknown)}; known: {', '.join(FUNCTIONS)}, all",
              file=sys.stderr)
        return 2
    return run_one(names[0]) if len(names) == 1 else supervise(names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
