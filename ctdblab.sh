#!/usr/bin/env bash
# ctdblab quick start.  Does all set-up on a fresh Debian 12 machine (run as root), then:
#
#   ./ctdblab.sh demo          3-node failover demo against pyctdbd and real CTDB; prints the
#                              path of the report and the plot it wrote
#   ./ctdblab.sh test [ARGS]   the test suite (unit tests and lab tests) on 2 pytest-xdist
#                              workers; ARGS go to pytest (e.g. tests/unit, -k failover, -n 0)
#   ./ctdblab.sh ARGS...       any other ctdblab command, e.g. ./ctdblab.sh up --nodes 3 --daemon ctdb
#
# Set-up is idempotent and quick when nothing changed: Debian packages are installed only if
# missing, the virtualenv (.venv, with the system site-packages, where Debian's Mininet lives)
# is refreshed only when pyproject.toml changes, pyctdbd's native heartbeat pacer is compiled
# only when its C source changes.  `ctdblab` and `pyctdbd` are linked into
# /usr/local/bin so they can be used from anywhere afterwards.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="$here/.venv"

APT_PACKAGES=(
    python3 python3-venv python3-tdb libtdb1 tdb-tools systemd openssh-client openssh-server
    mininet bridge-utils iproute2 ethtool iptables nftables procps psmisc
    iputils-ping iputils-arping tcpdump iperf3
    ctdb samba smbclient samba-testsuite samba-vfs-modules stress-ng keepalived
    etcd-server python3-etcd curl
    debootstrap
    gcc libc6-dev
)

say() { printf 'ctdblab.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the lab builds network namespaces and runs daemons as root)"
[ -r /etc/debian_version ] || die "needs Debian 12 (apt and Debian's mininet, ctdb and samba packages)"

ensure_packages() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    # The lab runs smbd and ctdbd inside its own nodes; keep the host's copies from starting.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2 || rc=$?
    [ $own_policy -eq 1 ] && rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get failed (exit $rc) installing: ${missing[*]}"
    # openssh-server is for the lab's SSH-only blades (tests/lab/test_remote_hosts.py), whose sshd
    # runs inside Mininet nodes: when we installed it, keep it from opening SSH on this machine's
    # real interfaces at the next boot.
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
        systemctl disable ssh.service ssh.socket >/dev/null 2>&1 || true
    fi
    # etcd-server is for `--lock etcd`, whose members run inside the lab's nodes
    # (cluster/etcd_lock.py): the package's own etcd in this machine's namespace is not wanted.
    if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
        systemctl disable --now etcd.service >/dev/null 2>&1 || true
    fi
}

ensure_venv() {
    local stamp="$venv/.ctdblab-installed" want
    want=$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)
    if [ ! -x "$venv/bin/python" ]; then
        say "creating $venv"
        /usr/bin/python3 -m venv --system-site-packages "$venv" || die "could not create the virtualenv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing ctdblab and its Python dependencies into $venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >&2 || die "pip upgrade failed"
        "$venv/bin/python" -m pip install -q -e "$here[lab,test]" >&2 || die "pip install failed"
        echo "$want" > "$stamp"
    fi
    ln -sfn "$venv/bin/ctdblab" /usr/local/bin/ctdblab
    ln -sfn "$venv/bin/pyctdbd" /usr/local/bin/pyctdbd
}

# pyctdbd's native parts (daemon/native/: the heartbeat pacer, the node plane): built again
# only when a source changed.
ensure_native() {
    local out
    out=$("$venv/bin/python" -c 'from ctdblab.daemon import native; print(all(native.library_path(s).exists() for s in native.SOURCES))') \
        || die "cannot check pyctdbd's native parts"
    [ "$out" = True ] && return 0
    say "building pyctdbd's native parts"
    "$venv/bin/python" -m ctdblab.daemon.native >/dev/null || die "building pyctdbd's native parts failed"
}

ensure_packages
ensure_venv
ensure_native

cmd=${1:-help}
case "$cmd" in
    test)
        shift
        cd "$here"
        # --durations: the slowest tests are listed at the end, so a CI log shows where the
        # suite's time goes (it has to stay well under 30 minutes on 2 cores).
        exec "$venv/bin/python" -m pytest -n 2 --durations=25 "$@"
        ;;
    help|-h|--help)
        exec "$venv/bin/ctdblab" --help
        ;;
    *)
        exec "$venv/bin/ctdblab" "$@"
        ;;
esac
