#!/usr/bin/env bash
# The tools some tests need beyond the servers of services.sh, installed when missing:
#
#   deploy/local/tools.sh ensure NAME...   install what is missing (idempotent, prints nothing when done)
#   deploy/local/tools.sh path NAME        ensure it, then print the path of its main binary
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

main() {
  [[ $# -ge 2 ]] || { echo "usage: $0 {ensure NAME...|path NAME}" >&2; exit 2; }
  local cmd="$1" name
  shift
  for name in "$@"; do
    declare -F "ensure_$name" >/dev/null || die "unknown tool: $name"
  done
  case "$cmd" in
    ensure) for name in "$@"; do "ensure_$name"; done ;;
    path) [[ $# -eq 1 ]] || die "path takes one name"; "ensure_$1"; "path_$1" ;;
    *) die "unknown command: $cmd" ;;
  esac
}

main "$@"
