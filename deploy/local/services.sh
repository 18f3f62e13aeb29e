#!/usr/bin/env bash
# Private loopback Kafka / Redis / MariaDB servers for tests and local runs.
#
#   deploy/local/services.sh {install|start|stop|status|env} [kafka|redis|mariadb ...]
#   deploy/local/services.sh venv DIR     (the project's Python virtualenv; see make_venv)
#   KAFKA_NODES=3 deploy/local/services.sh start kafka   (a three-node KRaft cluster instead)
#
# No names = all three. Runs as root on a bare Debian 12 machine: installs what
# is missing (apt: redis-server, mariadb-server, Java 17, Maven; Maven Central:
# the Kafka jars), then runs each server as a plain daemonised process with a
# pid file under the state dir. Nothing depends on systemd or init scripts.
# See deploy/local/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${PINGME_STATE_DIR:-$REPO/.state}"
CACHE="${PINGME_CACHE_DIR:-${HOME:-/root}/.cache/pingme}"
PYTHON="${PYTHON:-python3}"

KAFKA_VERSION=4.3.1
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
KAFKA_JAR="kafka_2.13-$KAFKA_VERSION.jar"

KAFKA_PORT="${PINGME_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${PINGME_KAFKA_CONTROLLER_PORT:-19093}"
REDIS_PORT="${PINGME_REDIS_PORT:-16379}"
MYSQL_PORT="${PINGME_MYSQL_PORT:-13306}"
HOST=127.0.0.1
# KAFKA_NODES=3: three combined broker+controller nodes on loopback (node i on KAFKA_PORT and
# KAFKA_CONTROLLER_PORT + 100 * (i - 1)), replication factor 3 and min.insync.replicas 2, in
# $STATE/kafka-cluster/node<i>. 1 (the default): the single node of $STATE/kafka.
KAFKA_NODES="${KAFKA_NODES:-1}"

# Throwaway credentials of the loopback dev/test database (not a secret).
DB_USER=pingme
DB_PASS=pingme

ALL=(kafka redis mariadb)

log() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }
die() { err "services.sh: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# shellcheck source=deploy/local/lib.sh
source "$HERE/lib.sh"   # apt_install

port_of() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    mariadb) echo "$MYSQL_PORT" ;;
  esac
}
dir_of() { echo "$STATE/$1"; }
pidfile_of() { echo "$STATE/$1/$1.pid"; }
logfile_of() { echo "$STATE/$1/$1.log"; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# A string that must appear in the process's command line for the pid to be
# "ours" (guards against a stale pid file pointing at a recycled pid).
marker_of() {
  case "$1" in
    kafka) echo "$STATE/kafka/server.properties" ;;
    redis) echo "$HOST:$REDIS_PORT" ;;   # redis-server sets its title to "redis-server 127.0.0.1:PORT"
    mariadb) echo "$STATE/mariadb/data" ;;
  esac
}

pid_matches() {  # pid_matches SERVICE PID
  local pid="$2" cmdline
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$(marker_of "$1")"* ]]
}

# Prints the pid of the running service (from its pid file), or fails.
running_pid() {
  local f pid
  f="$(pidfile_of "$1")"
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  pid_matches "$1" "$pid" || return 1
  echo "$pid"
}

show_log_tail() {
  local f
  f="$(logfile_of "$1")"
  if [[ -s "$f" ]]; then
    err "---- last lines of $f ----"
    tail -n 40 "$f" >&2
    err "----"
  else
    err "(no log at $f)"
  fi
}

rotate_log() {
  local f
  f="$(logfile_of "$1")"
  if [[ -e "$f" ]]; then mv -f "$f" "$f.1"; fi
}

# Serialises start/stop/install of concurrent invocations. Every server is
# launched with "9>&-" so that it does not inherit (and hold) this lock.
lock_state() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9
}

# ---------------------------------------------------------------- install ---

# The project's own Python environment. Debian's python3 is "externally managed" (PEP 668): pip
# refuses to install into it, so the packages go into a virtualenv under the state dir.
make_venv() {  # make_venv DIR
  local dir="$1" base="${BASE_PYTHON:-python3}"
  [[ -x $dir/bin/python ]] && return 0
  command -v "$base" >/dev/null 2>&1 || apt_install python3
  if ! "$base" -m venv "$dir" >/dev/null 2>&1; then
    rm -rf "$dir"
    apt_install python3-venv  # Debian ships venv's ensurepip separately
    "$base" -m venv "$dir" || die "could not create a virtualenv in $dir with $base"
  fi
  log "python: virtualenv $dir ($("$dir/bin/python" --version 2>&1))"
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  else
    command -v java
  fi
}

java_major() {  # prints the major version of the java found, or 0
  local j v
  j="$(java_bin 2>/dev/null)" || { echo 0; return; }
  v="$("$j" -version 2>&1 | awk -F'"' '/version/ { print $2; exit }')"
  v="${v%%.*}"
  [[ "$v" =~ ^[0-9]+$ ]] && echo "$v" || echo 0
}

install_kafka() {
  local -a pkgs=()
  if [[ $(java_major) -lt 17 ]]; then pkgs+=(openjdk-17-jre-headless); fi
  if [[ ! -f "$KAFKA_LIBS/$KAFKA_JAR" ]] && ! command -v mvn >/dev/null; then pkgs+=(maven); fi
  apt_install "${pkgs[@]}"
  if [[ $(java_major) -lt 17 ]]; then
    export JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
    [[ $(java_major) -ge 17 ]] || die "Kafka $KAFKA_VERSION needs Java 17+"
  fi

  if [[ ! -f "$KAFKA_LIBS/$KAFKA_JAR" ]]; then
    local tmp="$KAFKA_LIBS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$KAFKA_LIBS")"
    if ! (cd "$HERE/kafka" && mvn -q -B -f pom.xml dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.mvn.log" 2>&1); then
      tail -n 40 "$tmp.mvn.log" >&2 || true
      rm -rf "$tmp" "$tmp.mvn.log"
      die "could not fetch the Kafka jars with Maven"
    fi
    [[ -f "$tmp/$KAFKA_JAR" ]] || die "Maven did not produce $KAFKA_JAR"
    rm -rf "$KAFKA_LIBS" "$tmp.mvn.log"
    mv "$tmp" "$KAFKA_LIBS"  # atomic: a present kafka jar means a complete folder
  fi

  # The readiness check uses kafka-python (pinned in requirements.txt).
  if ! "$PYTHON" -c 'import kafka' 2>/dev/null; then
    local req
    req="$(grep -E '^kafka-python==' "$REPO/requirements.txt" 2>/dev/null | head -n1 || true)"
    mkdir -p "$STATE"
    if ! PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
        "$PYTHON" -m pip install -q "${req:-kafka-python==3.0.12}" >"$STATE/pip.log" 2>&1; then
      tail -n 30 "$STATE/pip.log" >&2
      die "could not pip install kafka-python for $PYTHON"
    fi
  fi
}

install_redis() {
  local -a pkgs=()
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v redis-cli >/dev/null || pkgs+=(redis-tools)
  apt_install "${pkgs[@]}"
}

mariadb_bin() {  # mariadb_bin NAME: from PATH or /usr/sbin (not on every root PATH)
  command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; }
}

install_mariadb() {
  local -a pkgs=()
  if ! mariadb_bin mariadbd >/dev/null || ! mariadb_bin mariadb-install-db >/dev/null; then
    pkgs+=(mariadb-server)
  fi
  if ! mariadb_bin mariadb-admin >/dev/null || ! mariadb_bin mariadb >/dev/null; then
    pkgs+=(mariadb-client)
  fi
  apt_install "${pkgs[@]}"
}

# ------------------------------------------------------------------ start ---

check_port_free() {  # check_port_free SERVICE PORT...
  local svc="$1" p
  shift
  for p in "$@"; do
    if port_open "$p"; then
      die "$svc: port $HOST:$p is already in use by a process this script did not start"
    fi
  done
}

start_fail() {  # start_fail SERVICE MESSAGE
  err "$1: $2"
  show_log_tail "$1"
  exit 1
}

start_kafka() {
  local d props data pid t0 rc
  d="$(dir_of kafka)"; props="$d/server.properties"; data="$d/data"
  mkdir -p "$d" "$data"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@KAFKA_DATA_DIR@|$data|g" \
      "$HERE/kafka/server.properties" >"$props"
  check_port_free kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
  # Tests only (tests/load/soak.py, fault kafka-net): PINGME_KAFKA_PROXIED_PORT adds a listener
  # that advertises PINGME_KAFKA_PROXY_PORT, where the test's TCP proxy forwards to it, so a client
  # that bootstraps through the proxy reaches the broker only through it (a later key wins).
  if [[ -n "${PINGME_KAFKA_PROXIED_PORT:-}" ]]; then
    check_port_free kafka "$PINGME_KAFKA_PROXIED_PORT"
    cat >>"$props" <<PROPS

listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,PROXIED://$HOST:$PINGME_KAFKA_PROXIED_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,PROXIED://$HOST:${PINGME_KAFKA_PROXY_PORT:?the proxy port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT
PROPS
  fi
  rotate_log kafka
  t0="$(now)"
  local java
  java="$(java_bin)"
  local -a jvm=(-Xms512m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20
                -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
                "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.xml"
                -cp "$KAFKA_LIBS/*")
  if [[ ! -f "$data/meta.properties" ]]; then
    local cid
    cid="$(cat "$d/cluster.id" 2>/dev/null || true)"
    if [[ -z "$cid" ]]; then
      cid="$("$java" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$(logfile_of kafka)" | tail -n1)"
      [[ -n "$cid" ]] || start_fail kafka "could not generate a cluster id"
      echo "$cid" >"$d/cluster.id"
    fi
    "$java" "${jvm[@]}" kafka.tools.StorageTool format -t "$cid" -c "$props" --ignore-formatted \
      >>"$(logfile_of kafka)" 2>&1 || start_fail kafka "formatting the storage in $data failed"
  fi
  # Twice at most: on the loaded 2-core CI box a restarted broker has (rarely) not opened its port
  # within 90 s. Before giving up on an attempt its JVM thread dump goes to the log (evidence).
  local attempt
  for attempt in 1 2; do
    (cd "$d" && exec setsid "$java" "${jvm[@]}" kafka.Kafka "$props" \
        >>"$(logfile_of kafka)" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$(pidfile_of kafka)"
    rc=0
    "$PYTHON" "$HERE/wait_kafka.py" "$HOST:$KAFKA_PORT" 90 "$pid" 2>>"$(logfile_of kafka)" || rc=$?
    [[ $rc -eq 0 ]] && break
    kill -QUIT "$pid" 2>/dev/null && sleep 1
    terminate kafka "$pid"
    rm -f "$(pidfile_of kafka)"
    err "kafka: attempt $attempt not ready on $HOST:$KAFKA_PORT (wait_kafka exit $rc; thread dump in $(logfile_of kafka))"
  done
  [[ $rc -eq 0 ]] || start_fail kafka "not ready on $HOST:$KAFKA_PORT (wait_kafka exit $rc)"
  log "kafka: started pid $pid on $HOST:$KAFKA_PORT in $(elapsed "$t0")s"
}

start_redis() {
  local d pidf logf pid t0 deadline
  d="$(dir_of redis)"; pidf="$(pidfile_of redis)"; logf="$(logfile_of redis)"
  mkdir -p "$d"
  check_port_free redis "$REDIS_PORT"
  rotate_log redis
  rm -f "$pidf"
  t0="$(now)"
  (cd "$d" && redis-server --port "$REDIS_PORT" --bind "$HOST" --save '' --appendonly no \
      --daemonize yes --pidfile "$pidf" --logfile "$logf" --dir "$d" \
      </dev/null >>"$logf" 2>&1 9>&-) || start_fail redis "redis-server failed to start"
  deadline=$((SECONDS + 30))
  while :; do
    if [[ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && pid="$(running_pid redis)"; then
      break
    fi
    if [[ -s "$pidf" ]] && ! kill -0 "$(tr -dc '0-9' <"$pidf")" 2>/dev/null; then
      rm -f "$pidf"
      start_fail redis "redis-server exited during start-up"
    fi
    ((SECONDS < deadline)) || start_fail redis "no PONG on $HOST:$REDIS_PORT after 30s"
    sleep 0.1
  done
  log "redis: started pid $pid on $HOST:$REDIS_PORT in $(elapsed "$t0")s"
}

mysql_sock() { echo "$STATE/mariadb/mysql.sock"; }

mariadb_bootstrap_sql() {
  # mariadb-install-db also creates root@<hostname>, which --skip-name-resolve
  # warns about at every start: drop it (and the anonymous user).
  local h
  h="$(hostname 2>/dev/null || true)"
  case "$h" in
    '' | localhost | 127.0.0.1 | ::1) ;;
    *) echo "DROP USER IF EXISTS 'root'@'$h';" ;;
  esac
  cat <<SQL
CREATE DATABASE IF NOT EXISTS \`pingme\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE DATABASE IF NOT EXISTS \`pingme_test\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
DROP USER IF EXISTS ''@'localhost';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`pingme%\`.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`pingme%\`.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_mariadb() {
  local d data sock pidf logf pid t0 deadline
  d="$(dir_of mariadb)"; data="$d/data"; sock="$(mysql_sock)"
  pidf="$(pidfile_of mariadb)"; logf="$(logfile_of mariadb)"
  local mariadbd installdb admin client
  mariadbd="$(mariadb_bin mariadbd)"; installdb="$(mariadb_bin mariadb-install-db)"
  admin="$(mariadb_bin mariadb-admin)"; client="$(mariadb_bin mariadb)"
  local -a as_user=()
  if [[ $EUID -eq 0 ]]; then as_user=(--user=root); fi
  mkdir -p "$d" "$d/tmp"
  check_port_free mariadb "$MYSQL_PORT"
  rotate_log mariadb
  rm -f "$pidf" "$sock" "$sock.lock"
  t0="$(now)"
  if [[ ! -d "$data/mysql" ]]; then
    rm -rf "$data"
    if ! "$installdb" --no-defaults --datadir="$data" "${as_user[@]}" \
          --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve --force \
          >>"$logf" 2>&1; then
      rm -rf "$data"
      start_fail mariadb "mariadb-install-db failed"
    fi
  fi
  (cd "$d" && exec setsid "$mariadbd" --no-defaults --datadir="$data" \
      --port="$MYSQL_PORT" --bind-address="$HOST" --socket="$sock" \
      --pid-file="$pidf" --log-error="$logf" --tmpdir="$d/tmp" "${as_user[@]}" \
      --skip-log-bin --skip-name-resolve --log-warnings=1 --innodb-buffer-pool-size=128M \
      --innodb-flush-log-at-trx-commit=2 --max-connections=500 \
      --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
      </dev/null >>"$logf" 2>&1 9>&-) &
  pid=$!
  echo "$pid" >"$pidf"   # mariadbd rewrites it with the same pid once up
  deadline=$((SECONDS + 30))
  until "$admin" --no-defaults --socket="$sock" -uroot --connect-timeout=2 ping >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidf"; start_fail mariadb "mariadbd exited during start-up"; }
    if ((SECONDS >= deadline)); then
      terminate mariadb "$pid"
      rm -f "$pidf"
      start_fail mariadb "no answer on $sock after 30s"
    fi
    sleep 0.1
  done
  echo "$pid" >"$pidf"
  mariadb_bootstrap_sql | "$client" --no-defaults --socket="$sock" -uroot \
    || start_fail mariadb "creating the pingme databases/user failed"
  port_open "$MYSQL_PORT" || start_fail mariadb "not listening on $HOST:$MYSQL_PORT"
  log "mariadb: started pid $pid on $HOST:$MYSQL_PORT in $(elapsed "$t0")s"
}

start_one() {
  local svc="$1" pid port
  if [[ $svc == kafka && $KAFKA_NODES -ne 1 ]]; then start_kafka_cluster; return; fi
  port="$(port_of "$svc")"
  if pid="$(running_pid "$svc")"; then
    if port_open "$port"; then
      log "$svc: already running (pid $pid on $HOST:$port)"
      return 0
    fi
    # Alive but not listening: still starting (another invocation) or hung.
    local deadline=$((SECONDS + 30))
    [[ $svc == kafka ]] && deadline=$((SECONDS + 90))
    until port_open "$port"; do
      if ! pid_matches "$svc" "$pid"; then break; fi
      ((SECONDS < deadline)) || start_fail "$svc" "pid $pid is alive but $HOST:$port does not answer; run '$0 stop $svc'"
      sleep 0.2
    done
    if pid_matches "$svc" "$pid"; then
      log "$svc: already running (pid $pid on $HOST:$port)"
      return 0
    fi
  fi
  rm -f "$(pidfile_of "$svc")"
  "start_$svc"
}

# ------------------------------------------------------- a Kafka cluster ---

node_port() { echo $((KAFKA_PORT + 100 * ($1 - 1))); }
node_cport() { echo $((KAFKA_CONTROLLER_PORT + 100 * ($1 - 1))); }
node_dir() { echo "$STATE/kafka-cluster/node$1"; }

node_pid() {  # node_pid I: the pid of running node I (checked against its command line), or fail
  local f pid cmdline
  f="$(node_dir "$1")/kafka.pid"
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$(node_dir "$1")/server.properties"* ]] || return 1
  echo "$pid"
}

cluster_list() {  # cluster_list FN: "FN 1,FN 2,FN 3" (each node's FN output, joined by commas)
  local i out=""
  for ((i = 1; i <= KAFKA_NODES; i++)); do out+="${out:+,}$("$1" "$i")"; done
  echo "$out"
}
voter_of() { echo "$1@$HOST:$(node_cport "$1")"; }
broker_of() { echo "$HOST:$(node_port "$1")"; }

# Starts the nodes that are not running (all of them at first: a quorum needs two), then waits
# until each answers. Small heaps: three JVMs share two cores.
start_kafka_cluster() {
  [[ $KAFKA_NODES -eq 3 ]] || die "KAFKA_NODES must be 1 or 3 (got $KAFKA_NODES)"
  local java i d props cid t0 pid rc
  local -a started=()
  java="$(java_bin)"
  local -a jvm=(-Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
                -Djava.awt.headless=true "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.xml" -cp "$KAFKA_LIBS/*")
  t0="$(now)"
  mkdir -p "$STATE/kafka-cluster"
  cid="$(cat "$STATE/kafka-cluster/cluster.id" 2>/dev/null || true)"
  if [[ -z "$cid" ]]; then
    cid="$("$java" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    [[ -n "$cid" ]] || die "kafka: could not generate a cluster id"
    echo "$cid" >"$STATE/kafka-cluster/cluster.id"
  fi
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    if pid="$(node_pid "$i")"; then log "kafka node $i: already running (pid $pid)"; continue; fi
    d="$(node_dir "$i")"; props="$d/server.properties"
    mkdir -p "$d/data"
    check_port_free "kafka node $i" "$(node_port "$i")" "$(node_cport "$i")"
    [[ -e "$d/kafka.log" ]] && mv -f "$d/kafka.log" "$d/kafka.log.1"
    # The single node's template, then what makes a cluster (a later key wins in a properties file).
    { sed -e "s|@KAFKA_PORT@|$(node_port "$i")|g" -e "s|@KAFKA_CONTROLLER_PORT@|$(node_cport "$i")|g" \
          -e "s|@KAFKA_DATA_DIR@|$d/data|g" "$HERE/kafka/server.properties"
      cat <<PROPS

# KAFKA_NODES=$KAFKA_NODES: a cluster (services.sh)
node.id=$i
controller.quorum.voters=$(cluster_list voter_of)
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
PROPS
    } >"$props"
    if [[ ! -f "$d/data/meta.properties" ]]; then
      "$java" "${jvm[@]}" kafka.tools.StorageTool format -t "$cid" -c "$props" --ignore-formatted \
        >>"$d/kafka.log" 2>&1 || { tail -n 20 "$d/kafka.log" >&2; die "kafka node $i: formatting failed"; }
    fi
    (cd "$d" && exec setsid "$java" "${jvm[@]}" kafka.Kafka "$props" >>"$d/kafka.log" 2>&1 </dev/null 9>&-) &
    echo "$!" >"$d/kafka.pid"
    started+=("$i")
  done
  for i in "${started[@]}"; do
    d="$(node_dir "$i")"; rc=0
    "$PYTHON" "$HERE/wait_kafka.py" "$(broker_of "$i")" 120 "$(cat "$d/kafka.pid")" 2>>"$d/kafka.log" || rc=$?
    if [[ $rc -ne 0 ]]; then
      tail -n 40 "$d/kafka.log" >&2
      die "kafka node $i: not ready on $(broker_of "$i") (wait_kafka exit $rc)"
    fi
  done
  log "kafka: ${#started[@]} of $KAFKA_NODES nodes started ($(cluster_list broker_of)) in $(elapsed "$t0")s"
}

stop_kafka_cluster() {
  local i pid
  # All at once: the last node stopped alone has no quorum and waits for it until KILLed.
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    if pid="$(node_pid "$i")"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    if pid="$(node_pid "$i")"; then
      terminate "kafka node $i" "$pid"
      log "kafka node $i: stopped (pid $pid)"
    else
      log "kafka node $i: not running"
    fi
    rm -f "$(node_dir "$i")/kafka.pid"
  done
}

status_kafka_cluster() {
  local i pid
  for ((i = 1; i <= KAFKA_NODES; i++)); do
    if pid="$(node_pid "$i")"; then log "kafka node $i: running (pid $pid, $(broker_of "$i"))"
    else log "kafka node $i: stopped"; fi
  done
}

# ------------------------------------------------------------------- stop ---

# TERM, wait up to 20 s, then KILL.
terminate() {  # terminate SERVICE PID
  local svc="$1" pid="$2" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  err "$svc: pid $pid still alive after 20s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
}

stop_one() {
  local svc="$1" pid pidf
  if [[ $svc == kafka && $KAFKA_NODES -ne 1 ]]; then stop_kafka_cluster; return; fi
  pidf="$(pidfile_of "$svc")"
  if ! pid="$(running_pid "$svc")"; then
    rm -f "$pidf"
    log "$svc: not running"
    return 0
  fi
  terminate "$svc" "$pid"
  rm -f "$pidf"
  if [[ $svc == mariadb ]]; then rm -f "$(mysql_sock)" "$(mysql_sock).lock"; fi
  log "$svc: stopped (pid $pid)"
}

# ------------------------------------------------------- status and env ---

status_one() {
  local svc="$1" pid port
  if [[ $svc == kafka && $KAFKA_NODES -ne 1 ]]; then status_kafka_cluster; return; fi
  port="$(port_of "$svc")"
  if pid="$(running_pid "$svc")"; then
    if port_open "$port"; then
      log "$svc: running (pid $pid, $HOST:$port)"
    else
      log "$svc: running (pid $pid) but $HOST:$port is not answering"
    fi
  elif port_open "$port"; then
    log "$svc: stopped ($HOST:$port is in use by a process this script did not start)"
  else
    log "$svc: stopped"
  fi
}

env_one() {
  local svc="$1"
  if [[ $svc == kafka && $KAFKA_NODES -ne 1 ]]; then
    node_pid 1 >/dev/null || node_pid 2 >/dev/null || node_pid 3 >/dev/null \
      || { err "# kafka: no node running"; return 0; }
    echo "export KAFKA_BROKERS=$(cluster_list broker_of)"
    return 0
  fi
  if ! running_pid "$svc" >/dev/null; then
    err "# $svc: not running"
    return 0
  fi
  case "$svc" in
    kafka)
      echo "export KAFKA_BROKERS=$HOST:$KAFKA_PORT" ;;
    redis)
      echo "export REDIS_HOST=$HOST"
      echo "export REDIS_PORT=$REDIS_PORT" ;;
    mariadb)
      echo "export DB_HOST=$HOST"
      echo "export DB_PORT=$MYSQL_PORT"
      echo "export DB_USERNAME=$DB_USER"
      echo "export DB_PASSWORD=$DB_PASS"
      echo "export DB_NAME=pingme" ;;
  esac
}

# ------------------------------------------------------------------- main ---

usage() {
  err "usage: $0 {install|start|stop|status|env} [kafka|redis|mariadb ...] | venv DIR"
  exit 2
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd="$1"
  shift
  if [[ $cmd == venv ]]; then
    [[ $# -eq 1 ]] || usage
    make_venv "$1"
    return
  fi
  local -a svcs=()
  if [[ $# -eq 0 ]]; then svcs=("${ALL[@]}"); else svcs=("$@"); fi
  local s
  for s in "${svcs[@]}"; do
    case "$s" in kafka | redis | mariadb) ;; *) err "unknown service: $s"; usage ;; esac
  done

  case "$cmd" in
    install)
      lock_state
      for s in "${svcs[@]}"; do "install_$s"; done ;;
    start)
      lock_state
      for s in "${svcs[@]}"; do
        if [[ $s == kafka && $KAFKA_NODES -ne 1 ]]; then
          install_kafka  # idempotent; the cluster's nodes are checked one by one
        else
          running_pid "$s" >/dev/null || "install_$s"
        fi
        start_one "$s"
      done ;;
    stop)
      lock_state
      for s in "${svcs[@]}"; do stop_one "$s"; done ;;
    status)
      for s in "${svcs[@]}"; do status_one "$s"; done ;;
    env)
      for s in "${svcs[@]}"; do env_one "$s"; done ;;
    -h | --help | help) usage ;;
    *) err "unknown command: $cmd"; usage ;;
  esac
}

main "$@"; exit $?
