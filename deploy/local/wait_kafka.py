#!/usr/bin/env python3
"""Wait until a Kafka broker answers an admin "list topics" request.

usage: wait_kafka.py HOST:PORT TIMEOUT_SECONDS [PID]

Exit 0 when ready, 1 on timeout, 2 if PID (the broker process) has died.
"""
import logging
import os
import socket
import sys
import time

logging.getLogger("kafka").setLevel(logging.CRITICAL)  # no retry noise

from kafka import KafkaAdminClient  # noqa: E402


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main():
    bootstrap, timeout = sys.argv[1], float(sys.argv[2])
    pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if pid is not None and not alive(pid):
            print(f"wait_kafka: broker process {pid} exited", file=sys.stderr)
            return 2
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"wait_kafka: {bootstrap} not ready after {timeout:g}s: {last!r}", file=sys.stderr)
            return 1
        # Cheap TCP probe first: kafka-python backs off exponentially (up to
        # 30 s by default) after refused connections, which delays readiness.
        host, _, port = bootstrap.rpartition(":")
        if not port_open(host, int(port)):
            time.sleep(0.1)
            continue
        step = int(max(1.0, min(left, 5.0)) * 1000)
        admin = None
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="pingme-wait",
                                     bootstrap_timeout_ms=step, request_timeout_ms=step,
                                     reconnect_backoff_ms=50, reconnect_backoff_max_ms=250)
            admin.list_topics()
            return 0
        except Exception as exc:  # broker not up yet
            last = exc
        finally:
            if admin is not None:
                try:
                    admin.close()
                except Exception:
                    pass
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
