"""Entry point: ``python -m functions NAME`` runs one function; ``all`` (or several names) runs
each in a child process, restarts a child that dies, and passes SIGTERM/SIGINT on for draining."""
from __future__ import annotations

import importlib
import logging
import signal
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


def supervise(names: list[str]) -> int:
    logs.setup("functions")
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def start(name: str) -> None:
        children[name] = subprocess.Popen([sys.executable, "-m", "functions", name])
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
