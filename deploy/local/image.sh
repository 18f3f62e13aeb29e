#!/usr/bin/env bash
# Build and run PingMe's image with Podman on a machine without Docker or a reachable registry.
#
#   deploy/local/image.sh base            the base image: a minimal Debian bookworm root made with
#                                         debootstrap, imported as localhost/pingme-base:bookworm
#   deploy/local/image.sh build [IMAGE]   deploy/Dockerfile on that base (default localhost/pingme:dev)
#   deploy/local/image.sh podman ARGS...  podman with the flags this machine needs (see below)
#
# Where a registry is reachable, `podman build -f deploy/Dockerfile .` builds on the official Python
# image instead (docs/DEPLOY.md). Both are cached: the debootstrap root as a tarball under
# ~/.cache/pingme, the images in Podman's own store.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${PINGME_CACHE_DIR:-${HOME:-/root}/.cache/pingme}"
BASE=localhost/pingme-base:bookworm
SUITE=bookworm

die() { printf 'image.sh: %s\n' "$*" >&2; exit 1; }

# runc, not crun, and explicit rlimits: this machine lacks CAP_SYS_RESOURCE, so podman's defaults
# (which raise RLIMIT_NOFILE/NPROC above the host's) fail with "setrlimit: Operation not permitted".
pm() { podman --runtime runc "$@"; }
LIMITS=(--ulimit nofile=10000:10000 --ulimit nproc=4096:4096)

base() {
  bash "$HERE/tools.sh" ensure podman
  pm image exists "$BASE" && return 0
  local tarball="$CACHE/debian-$SUITE-minbase.tar"
  if [[ ! -s $tarball ]]; then
    local root
    root="$(mktemp -d)"
    mkdir -p "$CACHE"
    echo "image.sh: debootstrap $SUITE (minbase) into $root" >&2
    /usr/sbin/debootstrap --variant=minbase "$SUITE" "$root" >"$root.log" 2>&1 \
      || { tail -n 20 "$root.log" >&2; die "debootstrap failed (log $root.log)"; }
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root" "$root.log"
  fi
  pm import "$tarball" "$BASE" >/dev/null
}

build() {
  local image="${1:-localhost/pingme:dev}"
  base
  local -a pipconf=()
  # The machine's pip configuration (a private index or CA), handed to the build stage.
  [[ -f /etc/pip.conf ]] && pipconf+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  # The CA file goes to a path of its own: mounted over the image's CA bundle, it would break
  # Debian's ca-certificates package in the build.
  [[ -n ${PIP_CERT:-} ]] && pipconf+=(-v "$PIP_CERT:/run/pip-cert.pem:ro" --build-arg "PIP_CERT=/run/pip-cert.pem")
  [[ -n ${PIP_FIND_LINKS:-} && -d ${PIP_FIND_LINKS} ]] \
    && pipconf+=(-v "$PIP_FIND_LINKS:$PIP_FIND_LINKS:ro" --build-arg "PIP_FIND_LINKS=$PIP_FIND_LINKS")
  [[ -n ${PIP_INDEX_URL:-} ]] && pipconf+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
  # Docker format: the OCI format has no HEALTHCHECK.
  pm build "${LIMITS[@]}" --format docker --network host -f "$REPO/deploy/Dockerfile" -t "$image" \
    --build-arg "BASE_IMAGE=$BASE" \
    --build-arg "BUILD_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --build-arg "BUILD_TIME=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "${pipconf[@]}" "$REPO"
}

case "${1:-}" in
  base) base ;;
  build) shift; build "$@" ;;
  podman) shift; pm "$@" ;;
  *) echo "usage: $0 {base|build [IMAGE]|podman ARGS...}" >&2; exit 2 ;;
esac
