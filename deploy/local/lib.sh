# Shared by the local scripts (services.sh, tools.sh): installing Debian packages as root on a bare
# machine. The caller defines die() and STATE.

APT_UPDATED=0
apt_install() {
  local -a pkgs=("$@")
  [[ ${#pkgs[@]} -gt 0 ]] || return 0
  [[ $EUID -eq 0 ]] || die "need root to apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Never let a package's postinst start a system-wide service (Docker-style
  # policy); only if the machine has no policy of its own.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  local rc=0 aptlog="$STATE/apt-$$.log"
  mkdir -p "$STATE"
  : >"$aptlog"
  if [[ $APT_UPDATED -eq 0 ]]; then
    apt-get update -qq -o DPkg::Lock::Timeout=600 >>"$aptlog" 2>&1 || rc=$?
    APT_UPDATED=1
  fi
  if [[ $rc -eq 0 ]]; then
    # Another script of the project may be installing at the same time: wait for dpkg's lock.
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${pkgs[@]}" \
      >>"$aptlog" 2>&1 || rc=$?
  fi
  if [[ $own_policy -eq 1 ]]; then rm -f "$policy"; fi
  if [[ $rc -ne 0 ]]; then
    tail -n 30 "$aptlog" >&2
    die "apt-get install ${pkgs[*]} failed (exit $rc, log: $aptlog)"
  fi
}

