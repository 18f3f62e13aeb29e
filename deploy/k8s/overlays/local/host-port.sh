#!/bin/sh
# Runs a function worker on the host's network (deploy/local/cluster.sh): every pod shares the
# node's ports, so each worker serves its probes on a free port of its own instead of the image's
# fixed FUNCTION_PORT, written to /tmp/probe-port for probe.sh.
set -eu
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "$port" >/tmp/probe-port
FUNCTION_PORT=$port exec "$@"
