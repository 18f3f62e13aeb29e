#!/usr/bin/env bash
# A real one-node Kubernetes (v1.37.2) on this machine, with KEDA, for the autoscaling test.
#
#   deploy/local/cluster.sh {start|stop|status|apply|env|kubectl ARGS...}
#
# start   installs what is missing and starts, each as a plain process with a pid file under
#         .state/cluster: etcd (Debian etcd-server), kube-apiserver, kube-controller-manager,
#         kube-scheduler (built from the k8s.io/kubernetes module, deploy/local/kube), containerd
#         (Debian, with runc) and the kubelet; imports the pause image and the project's image
#         (deploy/local/image.sh) into containerd; installs KEDA's CRDs (../shared/vendor/crds) and
#         runs KEDA v2.20.2's operator and metrics adapter (deploy/local/keda) as plain processes.
#         Idempotent: what runs is left alone. Builds are cached under ~/.cache/pingme.
# stop    stops all of it (every pod's containers too) and unmounts what the pods mounted; etcd's
#         data and containerd's images stay, so the next start is quick.
# apply   deploys deploy/k8s/overlays/local (namespace pingme) on the host's Kafka, Redis and
#         MariaDB of deploy/local/services.sh (start them first: `make services`).
# env     prints `export KUBECONFIG=...` (the admin's kubeconfig).
# kubectl runs the built kubectl with that kubeconfig.
#
# What this cluster is not: every pod uses the host's network (there is no CNI network and no
# kube-proxy, so Service IPs do not route); every component listens on 127.0.0.1 only, except that
# the node must report a non-loopback address (the kubelet refuses loopback): the machine's own
# address of its default route, never contacted by anything here. Every component authenticates
# with a static token in the group system:masters: a throw-away cluster for tests, never a model.
# docs/DEPLOY.md ("A local one-node cluster") has what it proves and the measured costs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${PINGME_STATE_DIR:-$REPO/.state}"
CACHE="${PINGME_CACHE_DIR:-${HOME:-/root}/.cache/pingme}"
C="$STATE/cluster"
VENDOR="${PINGME_VENDOR_DIR:-}"

ETCD_PORT="${PINGME_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${PINGME_ETCD_PEER_PORT:-12380}"
APISERVER_PORT="${PINGME_APISERVER_PORT:-16443}"
CONTROLLER_MANAGER_PORT="${PINGME_CONTROLLER_MANAGER_PORT:-20257}"
SCHEDULER_PORT="${PINGME_SCHEDULER_PORT:-20259}"
KUBELET_PORT="${PINGME_KUBELET_PORT:-20250}"
KUBELET_HEALTHZ_PORT="${PINGME_KUBELET_HEALTHZ_PORT:-20248}"
KEDA_ADAPTER_PORT="${PINGME_KEDA_ADAPTER_PORT:-16445}"
KEDA_GRPC_PORT="${PINGME_KEDA_GRPC_PORT:-19666}"
KEDA_OPERATOR_METRICS_PORT="${PINGME_KEDA_OPERATOR_METRICS_PORT:-18091}"
KEDA_OPERATOR_PROBE_PORT="${PINGME_KEDA_OPERATOR_PROBE_PORT:-18092}"
KEDA_ADAPTER_METRICS_PORT="${PINGME_KEDA_ADAPTER_METRICS_PORT:-18093}"
HOST=127.0.0.1
NODE=pingme-node
KEDA_VERSION=v2.20.2  # tools.sh KEDA_VERSION
PAUSE_IMAGE=localhost/pingme-pause:1
APP_IMAGE="${PINGME_CLUSTER_IMAGE:-localhost/pingme:dev}"
SOCK="$C/containerd/containerd.sock"
# The HPA controller's period (the default, 15 s): how often a ScaledObject's HPA is re-evaluated.
HPA_SYNC="${PINGME_HPA_SYNC_PERIOD:-15s}"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet keda-operator keda-adapter)

log() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }
die() { err "cluster.sh: $*"; exit 1; }
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# shellcheck source=deploy/local/lib.sh
source "$HERE/lib.sh"   # apt_install

tool() { bash "$HERE/tools.sh" path "$1"; }
pidfile() { echo "$C/run/$1.pid"; }
logfile() { echo "$C/logs/$1.log"; }

# A pid is ours if it is alive and its command line holds our state folder (guards against a stale
# pid file pointing at a recycled pid).
running_pid() {
  local f pid cmdline
  f="$(pidfile "$1")"
  [[ -s $f ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ $cmdline == *"$C"* ]] || return 1
  echo "$pid"
}

lock_state() {
  mkdir -p "$C"
  exec 9>"$C/.lock"
  flock 9
}

# launch NAME ENV... -- COMMAND...: a daemon in its own session, its log under logs/.
launch() {
  local name="$1" pid
  shift
  local -a envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  mkdir -p "$C/run" "$C/logs"
  [[ -e "$(logfile "$name")" ]] && mv -f "$(logfile "$name")" "$(logfile "$name").1"
  (cd "$C" && exec env "${envs[@]}" setsid "$@" >>"$(logfile "$name")" 2>&1 </dev/null 9>&-) &
  pid=$!
  echo "$pid" >"$(pidfile "$name")"
}

# wait_until NAME SECONDS COMMAND...: poll COMMAND until it succeeds; fail if NAME's process exits.
wait_until() {
  local name="$1" timeout="$2" pid deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    # (Alive is enough here: right after launch the pid may not have exec'd its program yet.)
    pid="$(tr -dc '0-9' <"$(pidfile "$name")" 2>/dev/null)"
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || start_fail "$name" "exited during start-up"
    ((SECONDS < deadline)) || start_fail "$name" "not ready after ${timeout}s"
    sleep 0.3
  done
}

start_fail() {
  err "$1: $2"
  if [[ -s "$(logfile "$1")" ]]; then
    err "---- last lines of $(logfile "$1") ----"
    tail -n 30 "$(logfile "$1")" >&2
    err "----"
  fi
  exit 1
}

# ---------------------------------------------------------------- install ---

install() {
  local -a pkgs=()
  command -v containerd >/dev/null || pkgs+=(containerd)
  command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || pkgs+=(runc)
  [[ -x /usr/bin/etcd ]] || pkgs+=(etcd-server)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v ip >/dev/null || pkgs+=(iproute2)
  [[ -x /usr/lib/cni/loopback ]] || pkgs+=(containernetworking-plugins)
  command -v gcc >/dev/null && [[ -e /usr/lib/x86_64-linux-gnu/libc.a || -e /usr/lib/aarch64-linux-gnu/libc.a ]] \
    || pkgs+=(gcc libc6-dev)
  apt_install "${pkgs[@]}"
  local name
  # One Go build at a time (each peaks at 2-3 GB); all cached after the first start.
  for name in etcd kubectl kustomize kube_apiserver kube_controller_manager kube_scheduler kubelet \
              keda_operator keda_adapter; do
    [[ -x "$(bash "$HERE/tools.sh" cached "$name")" ]] && continue
    local t="$EPOCHREALTIME"
    log "cluster: building $name (cached under $CACHE)"
    bash "$HERE/tools.sh" ensure "$name"
    log "cluster: built $name in $(elapsed "$t")s"
  done
}

vendor_dir() {
  if [[ -n $VENDOR ]]; then echo "$VENDOR"; return; fi
  local d="$REPO"
  while [[ $d != / ]]; do
    d="$(dirname "$d")"
    [[ -d "$d/shared/vendor/crds" ]] && { echo "$d/shared/vendor"; return; }
  done
  [[ -d /work/shared/vendor/crds ]] && { echo /work/shared/vendor; return; }
  die "KEDA's CRDs not found: set PINGME_VENDOR_DIR to the folder holding crds/ (../shared/vendor)"
}

# ------------------------------------------------------------ credentials ---

# Made once: the service-account key, a front-proxy CA and client (the aggregation layer, which
# KEDA's metrics adapter needs), KEDA's own CA and certificate (the gRPC link between its operator and
# adapter, and the adapter's HTTPS), the static tokens and a kubeconfig per component.
pki() {
  local p="$C/pki"
  mkdir -p "$p"
  chmod 700 "$p"
  [[ -e $p/done ]] && return 0
  (
    cd "$p"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=pingme-front-proxy-ca \
      -keyout front-proxy-ca.key -out front-proxy-ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=front-proxy-client \
      -keyout front-proxy-client.key -out front-proxy-client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -extfile client.ext -out front-proxy-client.crt 2>/dev/null
    mkdir -p keda
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=pingme-keda-ca \
      -keyout keda/ca.key -out keda/ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=keda -keyout keda/tls.key -out keda/tls.csr 2>/dev/null
    printf '%s\n' 'extendedKeyUsage=serverAuth,clientAuth' \
      'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-operator.keda.svc,DNS:keda-metrics-apiserver.keda.svc' >keda.ext
    openssl x509 -req -in keda/tls.csr -CA keda/ca.crt -CAkey keda/ca.key -CAcreateserial -days 3650 \
      -extfile keda.ext -out keda/tls.crt 2>/dev/null
    rm -f ./*.csr keda/*.csr
    local who
    : >tokens.csv
    for who in admin:pingme-admin kube-controller-manager:system:kube-controller-manager \
               kube-scheduler:system:kube-scheduler kubelet:system:node:$NODE keda:pingme-keda; do
      local file="${who%%:*}" user="${who#*:}" token groups='system:masters'
      token="$(openssl rand -hex 24)"
      [[ $file == kubelet ]] && groups='system:nodes,system:masters'
      printf '%s,%s,%s,"%s"\n' "$token" "$user" "$user" "$groups" >>tokens.csv
      printf '%s\n' "$token" >"$file.token"
    done
    chmod 600 ./*.key keda/*.key tokens.csv ./*.token
  )
  touch "$p/done"
}

kubeconfig_of() { echo "$C/pki/$1.kubeconfig"; }

# The API server writes its self-signed serving certificate at its first start: the kubeconfigs
# trust exactly that one.
kubeconfigs() {
  local who
  for who in admin kube-controller-manager kube-scheduler kubelet keda; do
    cat >"$(kubeconfig_of "$who")" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: pingme-local
    cluster:
      server: https://$HOST:$APISERVER_PORT
      certificate-authority: $C/apiserver/certs/apiserver.crt
users:
  - name: $who
    user:
      token: $(cat "$C/pki/$who.token")
contexts:
  - name: pingme-local
    context: {cluster: pingme-local, user: $who}
current-context: pingme-local
EOF
    chmod 600 "$(kubeconfig_of "$who")"
  done
}

kc() { "$(tool kubectl)" --kubeconfig "$(kubeconfig_of admin)" "$@"; }

# ------------------------------------------------------------ components ---

start_etcd() {
  local url="http://$HOST:$ETCD_PORT" peer="http://$HOST:$ETCD_PEER_PORT"
  launch etcd -- "$(tool etcd)" --name pingme-local --data-dir "$C/etcd" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "pingme-local=$peer" --quota-backend-bytes 2147483648
  wait_until etcd 30 curl -fsS "$url/health"
}

start_kube_apiserver() {
  local p="$C/pki"
  # --watch-cache=false: Debian's etcd 3.4.23 sends no progress notifications, so the API server's
  # watch cache cannot tell it is current: a watch from a listed resourceVersion failed with "Too
  # large resource version" until a change of that kind came by (informers relisted, a pod watch
  # saw nothing). Served by etcd instead, fine for one node.
  launch kube-apiserver GOMAXPROCS=2 -- "$(tool kube_apiserver)" \
    "--etcd-servers=http://$HOST:$ETCD_PORT" \
    "--bind-address=$HOST" "--advertise-address=$HOST" "--secure-port=$APISERVER_PORT" \
    "--cert-dir=$C/apiserver/certs" \
    --endpoint-reconciler-type=none \
    "--token-auth-file=$p/tokens.csv" --anonymous-auth=false --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    "--service-account-key-file=$p/sa.pub" "--service-account-signing-key-file=$p/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --profiling=false \
    "--requestheader-client-ca-file=$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-extra-headers-prefix=X-Remote-Extra- --requestheader-group-headers=X-Remote-Group \
    --requestheader-username-headers=X-Remote-User \
    "--proxy-client-cert-file=$p/front-proxy-client.crt" "--proxy-client-key-file=$p/front-proxy-client.key" \
    --enable-aggregator-routing=false \
    --watch-cache=false
  wait_until kube-apiserver 90 apiserver_ready
  kubeconfigs
}
apiserver_ready() {
  [[ -s $C/apiserver/certs/apiserver.crt ]] &&
    [[ "$(curl -fsS --cacert "$C/apiserver/certs/apiserver.crt" -H "Authorization: Bearer $(cat "$C/pki/admin.token")" \
      "https://$HOST:$APISERVER_PORT/readyz")" == ok ]]
}

start_kube_controller_manager() {
  local kcfg
  kcfg="$(kubeconfig_of kube-controller-manager)"
  launch kube-controller-manager GOMAXPROCS=2 -- "$(tool kube_controller_manager)" \
    "--kubeconfig=$kcfg" "--authentication-kubeconfig=$kcfg" "--authorization-kubeconfig=$kcfg" \
    "--bind-address=$HOST" "--secure-port=$CONTROLLER_MANAGER_PORT" --leader-elect=false \
    "--service-account-private-key-file=$C/pki/sa.key" "--root-ca-file=$C/apiserver/certs/apiserver.crt" \
    --use-service-account-credentials=true "--horizontal-pod-autoscaler-sync-period=$HPA_SYNC" \
    "--cert-dir=$C/controller-manager"
  wait_until kube-controller-manager 60 curl -fsSk "https://$HOST:$CONTROLLER_MANAGER_PORT/healthz"
}

start_kube_scheduler() {
  local kcfg
  kcfg="$(kubeconfig_of kube-scheduler)"
  launch kube-scheduler GOMAXPROCS=2 -- "$(tool kube_scheduler)" \
    "--kubeconfig=$kcfg" "--authentication-kubeconfig=$kcfg" "--authorization-kubeconfig=$kcfg" \
    "--bind-address=$HOST" "--secure-port=$SCHEDULER_PORT" --leader-elect=false \
    "--cert-dir=$C/scheduler"
  wait_until kube-scheduler 60 curl -fsSk "https://$HOST:$SCHEDULER_PORT/healthz"
}

containerd_config() {
  local d="$C/containerd"
  mkdir -p "$d" "$C/cni"
  # The CRI plugin calls the node's network ready only with a CNI configuration: a loopback-only
  # one (host-network pods never use it; a pod without hostNetwork would get no network).
  cat >"$C/cni/10-pingme-loopback.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "pingme-loopback", "plugins": [{"type": "loopback"}]}
EOF
  cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc || echo /usr/sbin/runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$C/cni"
EOF
}

ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }

start_containerd() {
  containerd_config
  launch containerd -- "$(command -v containerd)" --config "$C/containerd/config.toml"
  wait_until containerd 30 ctr --address "$SOCK" version
}

has_image() {  # (not `ctr | grep -q`: grep's early exit fails the pipeline under pipefail)
  local names
  names="$(ctr_ images ls -q)"
  grep -qxF "$1" <<<"$names"
}

# import_image IMAGE [NAME]: podman's image into containerd's k8s.io namespace (as NAME too, by
# default IMAGE) when its id changed.
import_image() {
  local image="$1" name="${2:-$1}" id stamp
  id="$(bash "$HERE/image.sh" podman image inspect --format '{{.Id}}' "$image")"
  stamp="$C/images/$(tr '/:' '__' <<<"$name").id"
  mkdir -p "$C/images"
  if [[ "$(cat "$stamp" 2>/dev/null)" == "$id" ]] && has_image "$name"; then
    return 0
  fi
  # Through a file: containerd's import wants to seek in the archive.
  local tar="$C/images/import.tar"
  bash "$HERE/image.sh" podman save -q --format docker-archive -o "$tar" "$image"
  ctr_ images import "$tar" >/dev/null
  rm -f "$tar"
  [[ $name == "$image" ]] || ctr_ images tag --force "$image" "$name" >/dev/null
  has_image "$name" || die "containerd did not get $name"
  echo "$id" >"$stamp"
  log "cluster: imported $image into containerd${2:+ as $name}"
}

images() {
  # The pause image: a static binary in an empty image (no registry to pull one from).
  if ! bash "$HERE/image.sh" podman image exists "$PAUSE_IMAGE"; then
    local tmp
    tmp="$(mktemp -d)"
    gcc -static -O2 -o "$tmp/pause" "$HERE/cluster/pause.c"
    tar -C "$tmp" -cf "$tmp/pause.tar" pause
    bash "$HERE/image.sh" podman import --change 'ENTRYPOINT ["/pause"]' "$tmp/pause.tar" "$PAUSE_IMAGE" >/dev/null
    rm -rf "$tmp"
  fi
  import_image "$PAUSE_IMAGE"
  # The project's image, built when what goes into it changed: Podman's store is the machine's, shared
  # by every clone, so the build is tagged with its tree's digest (a fixed tag would let another
  # clone's build replace the image this cluster imports), and containerd knows it as $APP_IMAGE.
  local t="$EPOCHREALTIME" sum built
  sum="$(cd "$REPO" && tar -c --sort=name --mtime=@0 --owner=0 --group=0 --exclude=__pycache__ \
           common functions gateway requirements.txt deploy/Dockerfile | sha256sum | cut -d' ' -f1)"
  built="localhost/pingme-cluster:${sum:0:16}"
  if ! bash "$HERE/image.sh" podman image exists "$built"; then
    mkdir -p "$C/logs"
    bash "$HERE/image.sh" build "$built" >"$C/logs/image-build.log" 2>&1 ||
      { tail -n 30 "$C/logs/image-build.log" >&2; die "building $built failed (log $C/logs/image-build.log)"; }
    log "cluster: $built built in $(elapsed "$t")s"
  fi
  import_image "$built" "$APP_IMAGE"
}

node_ip() {  # the address of the default route's interface (the kubelet refuses loopback)
  local dev
  dev="$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')"
  [[ -n $dev ]] || die "no default route: the node needs a non-loopback address"
  ip -4 -o addr show dev "$dev" scope global | awk '{ split($4, a, "/"); print a[1]; exit }'
}

# The cgroup holding this node's pods, one per state folder: the kubelet's default (/kubepods) is
# the machine's, and a second cluster's kubelet (another clone's) would treat the first one's pod
# cgroups as orphans of its own and remove them.
cgroup_root() { echo "/pingme-$(printf '%s' "$C" | sha256sum | cut -c1-12)"; }
cgroup_dirs() {  # the cgroup root's folder in every mounted hierarchy (v1), or the v2 one
  local root m
  root="$(cgroup_root)"
  if [[ -e /sys/fs/cgroup/cgroup.controllers ]]; then echo "/sys/fs/cgroup$root"; return; fi
  for m in /sys/fs/cgroup/*/; do
    [[ -e ${m}tasks ]] && echo "${m%/}$root"
  done
}
make_cgroup_root() {  # the kubelet wants it present in every hierarchy
  local d
  for d in $(cgroup_dirs); do
    mkdir -p "$d"
    # A new cpuset cgroup has no CPUs or memory nodes: its parent's.
    if [[ -e $d/cpuset.cpus && -z "$(cat "$d/cpuset.cpus")" ]]; then
      cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}
remove_cgroup_root() {  # once no pod is left: the (empty) cgroups, deepest first
  local d
  for d in $(cgroup_dirs); do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

start_kubelet() {
  local k="$C/kubelet"
  mkdir -p "$k/root" "$C/pod-logs"
  make_cgroup_root
  # Paths the kubelet uses outside its root dir: removed again at stop if this start made them.
  local d
  for d in /var/lib/kubelet /var/log/containers; do
    [[ -e $d ]] || { mkdir -p "$d"; echo "$d" >>"$C/run/made-dirs"; }
  done
  cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $HOST
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: $HOST
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: $(cgroup_root)
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
podLogsDir: $C/pod-logs
resolvConf: /etc/resolv.conf
serializeImagePulls: false
maxPods: 60
evictionHard:
  memory.available: 200Mi
  nodefs.available: 5%
  imagefs.available: 5%
EOF
  launch kubelet -- "$(tool kubelet)" --config "$k/config.yaml" --kubeconfig "$(kubeconfig_of kubelet)" \
    --root-dir "$k/root" --cert-dir "$k/pki" --hostname-override "$NODE" --node-ip "$(node_ip)"
  wait_until kubelet 60 curl -fsS "http://$HOST:$KUBELET_HEALTHZ_PORT/healthz"
  wait_until kubelet 120 node_ready
}
node_ready() {
  [[ "$(kc get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]] &&
    [[ -z "$(kc get node "$NODE" -o 'jsonpath={.spec.taints}')" ]]
}

keda_objects() {
  local v
  v="$(vendor_dir)"
  kc apply --server-side --force-conflicts -f "$v/crds/keda.sh_scaledobjects.yaml" \
    -f "$v/crds/keda.sh_scaledjobs.yaml" -f "$v/crds/keda.sh_triggerauthentications.yaml" \
    -f "$v/crds/keda.sh_clustertriggerauthentications.yaml" >/dev/null
  # KEDA's operator also watches its eventing kinds: their CRDs come from KEDA's module (the build's).
  local bases="$CACHE/go/mod/github.com/kedacore/keda/v2@$KEDA_VERSION/config/crd/bases"
  kc apply --server-side --force-conflicts -f "$bases/eventing.keda.sh_cloudeventsources.yaml" \
    -f "$bases/eventing.keda.sh_clustercloudeventsources.yaml" >/dev/null
  # Polled, not `kubectl wait`: on a new cluster the CRDs are this instant's, and `kubectl wait` fails
  # at once ("status.conditions accessor error") on an object that has no conditions yet.
  local crd
  for crd in scaledobjects.keda.sh cloudeventsources.eventing.keda.sh clustercloudeventsources.eventing.keda.sh; do
    wait_until kube-apiserver 60 crd_established "$crd"
  done
  # The metrics adapter is a plain process on 127.0.0.1: the API server's aggregation layer reaches
  # it through an ExternalName Service (resolved by the API server itself, no kube-proxy needed).
  kc apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: keda
---
apiVersion: v1
kind: Service
metadata:
  name: keda-metrics-apiserver
  namespace: keda
spec:
  type: ExternalName
  externalName: localhost
  ports:
    - name: https
      port: $KEDA_ADAPTER_PORT
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.external.metrics.k8s.io
spec:
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $(base64 -w0 <"$C/pki/keda/ca.crt")
  service:
    name: keda-metrics-apiserver
    namespace: keda
    port: $KEDA_ADAPTER_PORT
EOF
}

crd_established() {
  [[ "$(kc get crd "$1" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')" == True ]]
}

keda_env() {
  echo "KUBECONFIG=$(kubeconfig_of keda)" KEDA_CLUSTER_OBJECT_NAMESPACE=keda POD_NAMESPACE=keda WATCH_NAMESPACE=
}

start_keda_operator() {
  keda_objects
  # shellcheck disable=SC2046
  launch keda-operator $(keda_env) -- "$(tool keda_operator)" --leader-elect=false \
    "--metrics-bind-address=$HOST:$KEDA_OPERATOR_METRICS_PORT" \
    "--health-probe-bind-address=$HOST:$KEDA_OPERATOR_PROBE_PORT" \
    "--metrics-service-bind-address=$HOST:$KEDA_GRPC_PORT" \
    "--cert-dir=$C/pki/keda" --enable-cert-rotation=false --ca-dir="$C/pki/keda" \
    --zap-log-level=info
  wait_until keda-operator 90 curl -fsS "http://$HOST:$KEDA_OPERATOR_PROBE_PORT/readyz"
}

start_keda_adapter() {
  local kcfg
  kcfg="$(kubeconfig_of keda)"
  # shellcheck disable=SC2046
  launch keda-adapter $(keda_env) -- "$(tool keda_adapter)" \
    "--secure-port=$KEDA_ADAPTER_PORT" "--bind-address=$HOST" "--port=$KEDA_ADAPTER_METRICS_PORT" \
    "--cert-dir=$C/pki/keda" "--tls-cert-file=$C/pki/keda/tls.crt" "--tls-private-key-file=$C/pki/keda/tls.key" \
    "--lister-kubeconfig=$kcfg" "--authentication-kubeconfig=$kcfg" "--authorization-kubeconfig=$kcfg" \
    "--metrics-service-address=$HOST:$KEDA_GRPC_PORT" --v=0
  wait_until keda-adapter 90 apiservice_available
}
apiservice_available() {
  [[ "$(kc get apiservice v1beta1.external.metrics.k8s.io \
        -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}')" == True ]]
}

start_one() {
  local name="$1" pid t
  if pid="$(running_pid "$name")"; then
    log "$name: already running (pid $pid)"
    [[ $name == kube-apiserver ]] && kubeconfigs
    return 0
  fi
  t="$EPOCHREALTIME"
  "start_${name//-/_}"
  log "$name: started pid $(running_pid "$name") in $(elapsed "$t")s"
}

start() {
  local t0="$EPOCHREALTIME" name
  lock_state
  mkdir -p "$C/run" "$C/logs"
  install
  pki
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd; do start_one "$name"; done
  images
  for name in kubelet keda-operator keda-adapter; do start_one "$name"; done
  log "cluster: ready in $(elapsed "$t0")s (kubectl: deploy/local/cluster.sh kubectl ...)"
}

# ------------------------------------------------------------------- stop ---

terminate() {  # terminate NAME: TERM, 20 s, KILL
  local name="$1" pid i
  pid="$(running_pid "$name")" || { rm -f "$(pidfile "$name")"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    err "$name: pid $pid still alive after 20s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile "$name")"
  log "$name: stopped (pid $pid)"
}

# Every pod container and sandbox goes (their shims outlive containerd otherwise), then whatever the
# pods left mounted under the state folder.
stop_pods() {
  if running_pid containerd >/dev/null; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$task" >/dev/null 2>&1 || true; done
    local i
    for ((i = 0; i < 50; i++)); do
      [[ -z "$(ctr_ tasks ls -q 2>/dev/null | while read -r t; do ctr_ tasks ls 2>/dev/null | awk -v t="$t" '$1 == t && $3 != "STOPPED"'; done)" ]] && break
      sleep 0.2
    done
    for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$task" >/dev/null 2>&1 || true; done
    for task in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$task" >/dev/null 2>&1 || true; done
  fi
}

unmount_leftovers() {
  local m
  # Deepest first.
  awk -v c="$C/" 'index($2, c) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

kill_shims() {
  local pid cmdline
  for pid in $(pgrep -f containerd-shim 2>/dev/null); do
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
    [[ $cmdline == *"$SOCK"* ]] && kill -KILL "$pid" 2>/dev/null || true
  done
}

stop() {
  lock_state
  local name
  terminate keda-adapter
  terminate keda-operator
  terminate kubelet
  stop_pods
  terminate containerd
  kill_shims
  unmount_leftovers
  remove_cgroup_root
  terminate kube-scheduler
  terminate kube-controller-manager
  terminate kube-apiserver
  terminate etcd
  # The machine-wide folders the kubelet wanted, if this start made them and no other cluster's
  # kubelet (another clone's) uses them now.
  if [[ -s $C/run/made-dirs ]] && ! pgrep -x kubelet >/dev/null; then
    while read -r name; do rm -rf "$name"; done <"$C/run/made-dirs"
    rm -f "$C/run/made-dirs"
  fi
  rm -rf "$C/pod-logs"
}

status() {
  local name pid
  for name in "${COMPONENTS[@]}"; do
    if pid="$(running_pid "$name")"; then log "$name: running (pid $pid)"; else log "$name: stopped"; fi
  done
  if running_pid kube-apiserver >/dev/null && apiserver_ready; then
    log "node $NODE: $(node_ready && echo Ready || echo 'not Ready')"
    log "external metrics API (KEDA): $(apiservice_available && echo Available || echo 'not Available')"
  fi
}

# ----------------------------------------------------------------- apply ---

apply() {
  running_pid kube-apiserver >/dev/null || die "the cluster is not running: $0 start"
  [[ "$(bash "$HERE/services.sh" status)" == *"kafka: running"* ]] ||
    die "the host's Kafka is not running: make services (deploy/local/services.sh start)"
  kc apply --server-side -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: pingme
EOF
  # The servers' addresses as services.sh has them (its PINGME_*_PORT variables), not the overlay's
  # defaults.
  local KAFKA_BROKERS REDIS_HOST REDIS_PORT DB_HOST DB_PORT DB_USERNAME DB_PASSWORD DB_NAME
  eval "$(bash "$HERE/services.sh" env)"
  # The Secret: a JWT secret made once for this cluster, the loopback database's throw-away password.
  [[ -s $C/pki/jwt-secret ]] || openssl rand -hex 32 >"$C/pki/jwt-secret"
  kc -n pingme create secret generic pingme-secrets --from-literal=JWT_SECRET="$(cat "$C/pki/jwt-secret")" \
    --from-literal=DB_PASSWORD="$DB_PASSWORD" --dry-run=client -o yaml | kc apply --server-side -f - >/dev/null
  mkdir -p "$C/apply"
  cat >"$C/apply/kustomization.yaml" <<EOF
# Made by deploy/local/cluster.sh apply: the local overlay on the servers services.sh runs (a
# relative path: kustomize refuses an absolute one).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(realpath --relative-to="$C/apply" "$REPO/deploy/k8s/overlays/local")
patches:
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: pingme-config
        namespace: pingme
      data:
        KAFKA_BROKERS: "$KAFKA_BROKERS"
        REDIS_HOST: "$REDIS_HOST"
        REDIS_PORT: "$REDIS_PORT"
        DB_HOST: "$DB_HOST"
        DB_PORT: "$DB_PORT"
        DB_USERNAME: "$DB_USERNAME"
replacements:
  - source: {kind: ConfigMap, name: pingme-config, fieldPath: data.KAFKA_BROKERS}
    targets:
      - select: {kind: ScaledObject}
        fieldPaths: [spec.triggers.0.metadata.bootstrapServers]
EOF
  "$(tool kustomize)" build "$C/apply" | kc apply --server-side --force-conflicts -f -
  kc -n pingme wait --for=condition=complete --timeout=120s job/pingme-migrate
  kc -n pingme rollout status deployment --timeout=180s
}

usage() {
  err "usage: $0 {start|stop|status|apply|env|kubectl ARGS...}"
  exit 2
}

main() {
  case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    apply) apply ;;
    env) echo "export KUBECONFIG=$(kubeconfig_of admin)" ;;
    kubectl) shift; kc "$@" ;;
    *) usage ;;
  esac
}

# Sourced (by a test, or to run one step by hand), it only defines the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
