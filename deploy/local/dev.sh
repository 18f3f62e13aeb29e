#!/usr/bin/env bash
# The local run: the gateway (gunicorn, gevent) and every function, against the project's own
# Kafka and Redis (deploy/local/services.sh) and the embedded SQLite database.
#
#   deploy/local/dev.sh {start|stop|status}
#
# start is idempotent (a running system is left alone); stop stops exactly what start started.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${PINGME_STATE_DIR:-$REPO/.state}/dev"
PYTHON="${PYTHON:-python3}"
PORT="${APP_PORT:-8080}"
mkdir -p "$STATE"
cd "$REPO"

alive() { [[ -s "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start_proc() {  # start_proc NAME COMMAND...
  local name="$1"; shift
  if alive "$name"; then
    echo "$name: already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  setsid nohup "$@" >>"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
  echo "$name: started (pid $!, log $STATE/$name.log)"
}

stop_proc() {
  local name="$1" pid
  alive "$name" || { rm -f "$STATE/$name.pid"; return 0; }
  pid="$(cat "$STATE/$name.pid")"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$STATE/$name.pid"
  echo "$name: stopped"
}

case "${1:-}" in
  start)
    "$PYTHON" -m common.cli db migrate
    "$PYTHON" -m common.cli topics ensure
    start_proc functions "$PYTHON" -m functions all
    start_proc gateway "$PYTHON" -m gunicorn -c gateway/gunicorn.conf.py gateway.wsgi:app
    for _ in $(seq 1 150); do
      if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        echo "PingMe web client on http://127.0.0.1:$PORT/ (open it in two windows, register two accounts, chat)"
        echo "API on http://127.0.0.1:$PORT/api/v1, WebSocket ws://127.0.0.1:$PORT/ws; 'make stop' stops everything"
        exit 0
      fi
      alive gateway || { tail -20 "$STATE/gateway.log"; exit 1; }
      sleep 0.2
    done
    echo "gateway not healthy after 30 s:"; tail -20 "$STATE/gateway.log"; exit 1 ;;
  stop)
    stop_proc gateway
    stop_proc functions ;;
  status)
    for name in gateway functions; do
      if alive "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
