#!/usr/bin/env bash
# Set up tcpq-top on Debian 12 (as root) and run it or its tests. Idempotent.
#   ./setup.sh run [tcpq-top args]   install what is missing, then start tcpq-top
#   ./setup.sh test [pytest args]    install what is missing, then run the whole test suite
#   ./setup.sh deps                  only the apt packages and .venv/
set -euo pipefail
cd "$(dirname "$0")"

APT_PKGS=(python3 python3-venv python3-pip python3-bpfcc bpfcc-tools bpftool linux-headers-amd64
          iproute2 nftables tmux procps libcap2-bin
          python3-prometheus-client python3-yaml python3-bcrypt prometheus openssl systemd
          podman runc busybox-static)  # podman: the real-container tests (tests/kernel/test_netns_names.py)

deps() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "setup.sh: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
      exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"
    apt-get update -q
    local rest=() prom=()
    for p in "${missing[@]}"; do
      if [ "$p" = prometheus ]; then prom+=("$p"); else rest+=("$p"); fi
    done
    [ ${#rest[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${rest[@]}"
    if [ ${#prom[@]} -gt 0 ]; then
      # The tests start their own Prometheus on loopback: no node-exporter (a Recommends),
      # and the packaged service (it listens on *:9090) stopped where systemd runs.
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
      if [ -d /run/systemd/system ]; then systemctl disable --now prometheus 2>/dev/null || true; fi
    fi
  fi
  # bcc is only in Debian's python (python3-bpfcc): the venv sees it through system site-packages.
  if [ ! -f .venv/.done ] || [ pyproject.toml -nt .venv/.done ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.done
  fi
  # Tracepoints are attached through tracefs; mount it where it is missing (root only).
  if [ "$(id -u)" -eq 0 ] && [ ! -e /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
  fi
}

cmd="${1:-run}"; shift || true
case "$cmd" in
  deps) deps ;;
  run)  deps; exec .venv/bin/tcpq-top "$@" ;;
  test) deps; exec bash tests/run.sh "$@" ;;
  *) echo "usage: ./setup.sh run|test|deps [args]" >&2; exit 2 ;;
esac
