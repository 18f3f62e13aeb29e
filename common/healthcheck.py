"""The image's HEALTHCHECK: exit 0 when this container's process answers ``/healthz`` with 200.

The same image runs the gateway or a function, so the probe asks the process that is PID 1 what it
is: a function worker (``python -m functions NAME``) serves ``/healthz`` on ``FUNCTION_PORT``, the
gateway on ``APP_PORT``. Exit 1 (unhealthy) otherwise, with the reason on stderr.
"""
from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def probe_url(cmdline: list[str], env: dict[str, str]) -> str:
    """The liveness URL of the process started with ``cmdline``."""
    is_function = "functions" in cmdline and "-m" in cmdline
    port = env.get("FUNCTION_PORT", "0") if is_function else env.get("APP_PORT", "8080")
    if not port.isdigit() or int(port) == 0:
        raise ValueError("this function serves no probes (FUNCTION_PORT is 0)")
    return f"http://127.0.0.1:{int(port)}/healthz"


def main() -> int:
    cmdline = Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0")
    try:
        url = probe_url(cmdline, dict(os.environ))
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
