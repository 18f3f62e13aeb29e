#!/usr/bin/env bash
# The tools some tests need beyond the servers of services.sh, installed when missing:
#
#   deploy/local/tools.sh ensure NAME...   install what is missing (idempotent, prints nothing when done)
#   deploy/local/tools.sh path NAME        ensure it, then print the path of its main binary
#   deploy/local/tools.sh cached NAME      print that path without building anything
#
# Debian packages go through apt (as root, as in CI); Go tools are built once with `go install`
# into ~/.cache/pingme (cached across runs on one machine). The Python test tools (hadolint,
# check-jsonschema) come with requirements-test.txt into the project's virtualenv instead.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${PINGME_STATE_DIR:-$REPO/.state}"
CACHE="${PINGME_CACHE_DIR:-${HOME:-/root}/.cache/pingme}"

die() { printf 'tools.sh: %s\n' "$*" >&2; exit 1; }
# shellcheck source=deploy/local/lib.sh
source "$HERE/lib.sh"   # apt_install

# podman: containers for the image test (runc: podman's default crun cannot set the rlimits here).
ensure_podman() {
  local -a pkgs=()
  command -v podman >/dev/null || pkgs+=(podman)
  command -v runc >/dev/null || pkgs+=(runc)
  command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || pkgs+=(debootstrap)
  apt_install "${pkgs[@]}"
}
path_podman() { command -v podman; }

# kubeconform: validates the Kubernetes manifests offline (tests/deploy). Built once from its Go
# module into the cache; `go` comes from the machine (/usr/local/go/bin on these hosts).
KUBECONFORM_VERSION=v0.8.0
go_install() {  # go_install MODULE@VERSION DIR: build a Go command into DIR/bin, cached
  local module="$1" dir="$2" go
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x $go ]] || die "go is needed to build $module (not found on PATH or in /usr/local/go/bin)"
  mkdir -p "$dir"
  GOBIN="$dir/bin" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" \
    "$go" install "$module" || die "go install $module failed"
}
ensure_kubeconform() {
  [[ -x "$(path_kubeconform)" ]] ||
    go_install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
      "$CACHE/kubeconform-$KUBECONFORM_VERSION"
}
path_kubeconform() { echo "$CACHE/kubeconform-$KUBECONFORM_VERSION/bin/kubeconform"; }

# kustomize: renders deploy/k8s the way `kubectl apply -k` does (tests/deploy). v5.8.2 is the newest
# release that builds with Go 1.26 (v5.8.3 needs Go 1.27); ~20 s to build cold.
KUSTOMIZE_VERSION=v5.8.2
ensure_kustomize() {
  [[ -x "$(path_kustomize)" ]] ||
    go_install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" "$CACHE/kustomize-$KUSTOMIZE_VERSION"
}
path_kustomize() { echo "$CACHE/kustomize-$KUSTOMIZE_VERSION/bin/kustomize"; }

# chromium: Debian's browser, driven by Playwright for Python in tests/integration/browser (the web client).
# Never `playwright install` (it downloads its own browser, which fails here).
ensure_chromium() { [[ -x /usr/bin/chromium ]] || apt_install chromium; }
path_chromium() { echo /usr/bin/chromium; }

# prometheus: Debian's server (2.42) scrapes the gateway's and a function's /metrics in
# tests/integration/test_probes_metrics.py, run with its own config and data dir (apt_install keeps
# the package's system service from starting).
ensure_prometheus() { [[ -x /usr/bin/prometheus ]] || apt_install prometheus; }
path_prometheus() { echo /usr/bin/prometheus; }

# kube-apiserver + etcd: a real API server for the server-side dry-run of deploy/k8s
# (tests/deploy/test_k8s_apiserver.py). kube-apiserver is built from the k8s.io/kubernetes module
# through the wrapper module deploy/local/kube (go.mod maps the staging modules to their published
# v0.37.2; go.sum pins them): 10-13 min and ~3 GB of Go cache the first time on this 2-core box, then
# cached. Built under `nice -n 19`, as other work shares the machine. etcd is Debian's etcd-server.
KUBE_VERSION=v1.37.2
# kube_build NAME: k8s.io/kubernetes/cmd/NAME into $CACHE/NAME-$KUBE_VERSION/bin, once. The same
# module builds the node's other programs for deploy/local/cluster.sh (kubelet 2-3 min with a warm
# Go cache, controller manager ~1 min, scheduler ~15 s); one at a time, each `go build` peaks at
# 2-3 GB. KUBE_BUILD_P sets `go build -p` (default: Go's, the number of cores).
kube_build() {
  local name="$1" out go ldflags="" pkg
  out="$CACHE/$name-$KUBE_VERSION/bin/$name"
  [[ -x $out ]] && return 0
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x $go ]] || die "go is needed to build $name (not found on PATH or in /usr/local/go/bin)"
  # The version the server reports (/version); the module zip carries none of git's.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1"
    ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$(dirname "$out")"
  (cd "$HERE/kube" && GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=readonly -buildvcs=false" \
    nice -n 19 "$go" build ${KUBE_BUILD_P:+-p "$KUBE_BUILD_P"} -ldflags "-s -w$ldflags" -o "$out.tmp" \
      "k8s.io/kubernetes/cmd/$name") || die "go build $name failed"
  mv "$out.tmp" "$out"
}
ensure_kube_apiserver() { kube_build kube-apiserver; }
path_kube_apiserver() { echo "$CACHE/kube-apiserver-$KUBE_VERSION/bin/kube-apiserver"; }
ensure_kube_controller_manager() { kube_build kube-controller-manager; }
path_kube_controller_manager() { echo "$CACHE/kube-controller-manager-$KUBE_VERSION/bin/kube-controller-manager"; }
ensure_kube_scheduler() { kube_build kube-scheduler; }
path_kube_scheduler() { echo "$CACHE/kube-scheduler-$KUBE_VERSION/bin/kube-scheduler"; }
ensure_kubelet() { kube_build kubelet; }
path_kubelet() { echo "$CACHE/kubelet-$KUBE_VERSION/bin/kubelet"; }
ensure_kubectl() { kube_build kubectl; }
path_kubectl() { echo "$CACHE/kubectl-$KUBE_VERSION/bin/kubectl"; }

# KEDA's operator and metrics adapter, for deploy/local/cluster.sh: built from the Go module proxy
# through the wrapper module deploy/local/keda (KEDA's replace block copied; go.sum pins all), into
# $CACHE/keda-$KEDA_VERSION/bin. Operator ~6 min, adapter ~1 min with the module cache filled.
KEDA_VERSION=v2.20.2
keda_build() {  # keda_build operator|adapter
  local name="$1" out go pkg=github.com/kedacore/keda/v2/version
  out="$CACHE/keda-$KEDA_VERSION/bin/keda-$name"
  [[ -x $out ]] && return 0
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x $go ]] || die "go is needed to build KEDA's $name (not found on PATH or in /usr/local/go/bin)"
  mkdir -p "$(dirname "$out")"
  (cd "$HERE/keda" && GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOFLAGS="-mod=readonly -buildvcs=false" \
    nice -n 19 "$go" build ${KUBE_BUILD_P:+-p "$KUBE_BUILD_P"} -ldflags "-s -w -X $pkg.Version=${KEDA_VERSION#v}" \
      -o "$out.tmp" "github.com/kedacore/keda/v2/cmd/$name") || die "go build keda $name failed"
  mv "$out.tmp" "$out"
}
ensure_keda_operator() { keda_build operator; }
path_keda_operator() { echo "$CACHE/keda-$KEDA_VERSION/bin/keda-operator"; }
ensure_keda_adapter() { keda_build adapter; }
path_keda_adapter() { echo "$CACHE/keda-$KEDA_VERSION/bin/keda-adapter"; }
ensure_etcd() { [[ -x /usr/bin/etcd ]] || apt_install etcd-server; }
path_etcd() { echo /usr/bin/etcd; }

main() {
  [[ $# -ge 2 ]] || { echo "usage: $0 {ensure NAME...|path NAME|cached NAME}" >&2; exit 2; }
  local cmd="$1" name
  shift
  for name in "$@"; do
    declare -F "ensure_$name" >/dev/null || die "unknown tool: $name"
  done
  case "$cmd" in
    ensure) for name in "$@"; do "ensure_$name"; done ;;
    path) [[ $# -eq 1 ]] || die "path takes one name"; "ensure_$1"; "path_$1" ;;
    cached) [[ $# -eq 1 ]] || die "cached takes one name"; "path_$1" ;;  # the path, built or not
    *) die "unknown command: $cmd" ;;
  esac
}

main "$@"
