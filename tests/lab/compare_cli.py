"""Differential check: Debian's stock `ctdb` tool against real ctdbd 4.17 and against pyctdbd,
both as 3-node clusters in network namespaces with the same addresses and the same state
changes. Prints every command's output from both (after normalising what differs by nature:
generation numbers, times, pids) and a summary of mismatches.

    python tests/lab/compare_cli.py [--keep]      (tests/lab/test_compare_cli.py runs it in CI)

Real ctdbd runs in CTDB_TEST_MODE (CTDB_BASE per node) so that three of them can share a host;
that mode changes no output format. Aggressive tunables make it start in ~15 s.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pyctdbd_netns import NetnsCluster  # noqa: E402

AGGRESSIVE = {"KeepaliveInterval": 1, "KeepaliveLimit": 2, "ElectionTimeout": 1,
              "RerecoveryTimeout": 1, "MonitorInterval": 1}


class RealCluster(NetnsCluster):
    """The same topology, running Debian's ctdbd in test mode."""

    def configure(self) -> None:
        (self.root / "shared").mkdir(parents=True, exist_ok=True)
        for pnn in range(self.n):
            d = self.node_dir(pnn)
            for sub in ("run", "var", "db/volatile", "db/persistent", "db/state", "events/legacy"):
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "nodes").write_text("".join(f"{ip}\n" for ip in self.node_ips))
            (d / "public_addresses").write_text("".join(f"{ip}/24 eth0\n" for ip in self.public))
            (d / "ctdb.tunables").write_text("".join(f"{k}={v}\n" for k, v in self.tunables.items()))
            (d / "ctdb.conf").write_text(
                f"[logging]\n location = file:{self.log(pnn)}\n log level = NOTICE\n"
                f"[cluster]\n cluster lock = {self.root / 'shared' / 'reclock'}\n"
                f"[database]\n volatile database directory = {d}/db/volatile\n"
                f" persistent database directory = {d}/db/persistent\n"
                f" state database directory = {d}/db/state\n"
                "[legacy]\n realtime scheduling = false\n")

    def start_node(self, pnn: int) -> None:
        d = self.node_dir(pnn)
        env = dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(d),
                   CTDB_TEST_HELPER_BINDIR="/usr/libexec/ctdb")
        subprocess.run(["ip", "netns", "exec", self.ns(pnn), "ctdbd"], env=env, check=True)

    def socket(self, pnn: int) -> str:
        return str(self.node_dir(pnn) / "run" / "ctdbd.socket")

    def ctdb(self, pnn: int, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(self.node_dir(pnn)),
                   CTDB_SOCKET=self.socket(pnn))
        return subprocess.run(["ctdb", *args], capture_output=True, text=True, env=env, timeout=60,
                              start_new_session=True)

    def stop(self) -> None:
        for pnn in range(self.n):
            pidfile = self.node_dir(pnn) / "run" / "ctdbd.pid"
            try:
                os.kill(int(pidfile.read_text()), 15)
            except (OSError, ValueError):
                pass
        time.sleep(1)
        super().stop()


def same_topology(c: NetnsCluster, subnet: int) -> None:
    c.subnet = subnet
    c.node_ips = [f"198.18.{subnet}.{i + 1}" for i in range(c.n)]
    c.public = [f"198.19.{subnet}.{k + 1}" for k in range(len(c.public))]
    c.client_ip = f"198.19.{subnet}.200"


NORMALISE = [
    (re.compile(r"/tmp/[^/\s]+/shared/reclock"), "<dir>/shared/reclock"),
    (re.compile(r"^Generation:\d+$", re.M), "Generation:<n>"),
    (re.compile(r"time=\d+\.\d+ sec"), "time=<t> sec"),
    (re.compile(r"\(\d{3} \d\d:\d\d:\d\d\) .*$", re.M), "(<duration>) <date>"),
    (re.compile(r":\s+[A-Z][a-z]{2} [A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d \d{4}$", re.M), ": <date>"),
    (re.compile(r"^Duration of last recovery/failover: \d+\.\d+ seconds$", re.M),
     "Duration of last recovery/failover: <t> seconds"),
]


VNNMAP = re.compile(r"^Size:\d+\n((?:hash:\d+ lmaster:\d+\n)*)", re.M)


def lmaster_set(match: re.Match) -> str:
    """pyctdbd keeps a lost node's vnnmap slots and gives them to survivors (slot-stable map,
    core/db/partial_recovery.py), where ctdbd rebuilds the map from the live nodes: after a loss
    the two print different slots. Compared: which nodes are lmasters."""
    pnns = sorted({int(p) for p in re.findall(r"lmaster:(\d+)", match.group(1))})
    return f"lmasters:{pnns}\n"


def normalise(text: str) -> str:
    for rx, repl in NORMALISE:
        text = rx.sub(repl, text)
    return VNNMAP.sub(lmaster_set, text)


TALLOC_HEADER = re.compile(r"full talloc report on '[^']*' \(total +\d+ bytes in +\d+ blocks\)")
TALLOC_LINE = re.compile(r" +(\S.* contains +\d+ bytes in +\d+ blocks \(ref \d+\).*|reference to: .*)")


def talloc_shape(text: str) -> str:
    """A memory dump's contents differ by nature; its shape (a talloc report) must not."""
    lines = text.splitlines()
    if not lines or not TALLOC_HEADER.fullmatch(lines[0]):
        return text
    bad = [line for line in lines[1:] if not TALLOC_LINE.fullmatch(line)]
    return f"<talloc report, {'every line well-formed' if not bad else f'bad lines: {bad[:3]}'}>\n"


HANG_SCRIPT = """#!/bin/sh
# Hangs in "monitor" while $CTDB_BASE/hang exists; notes its pid and the SIGTERM it gets.
[ "$1" = monitor ] && [ -e "$CTDB_BASE/hang" ] || exit 0
echo "hang script output before hanging"
trap 'echo TERM >> "$CTDB_BASE/hang.log"; exit 0' TERM
echo "start $$" >> "$CTDB_BASE/hang.log"
while :; do sleep 0.1; done
"""

DEBUG_SCRIPT = """#!/bin/sh
# [event] debug script: notes how it was called, then takes a moment, as a real one would.
echo "argc=$# arg0=$(basename "$0") pid=$1 event=$2 base=${CTDB_BASE:+set}" > "$CTDB_BASE/debug.log"
sleep 1
echo "debug done" >> "$CTDB_BASE/debug.log"
echo "debug stdout line"
"""


def install_hang_and_debug_scripts(c: NetnsCluster) -> None:
    for pnn in range(c.n):
        d = c.node_dir(pnn)
        for path, text in ((d / "events" / "legacy" / "99.hang.script", HANG_SCRIPT),
                           (d / "debug.sh", DEBUG_SCRIPT)):
            path.write_text(text)
            path.chmod(0o755)
        with open(d / "ctdb.conf", "a") as conf:
            conf.write("[event]\n  debug script = debug.sh\n")


def debug_script_story(c: NetnsCluster, pnn: int) -> str:
    """What the debug script saw and what happened to the hung script, with the pid replaced by
    what it must be (the hung script's)."""
    d = c.node_dir(pnn)
    hang = (d / "hang.log").read_text().split()
    debug = (d / "debug.log").read_text()
    hung_pid = hang[1] if len(hang) > 1 and hang[0] == "start" else "?"
    debug = debug.replace(f"pid={hung_pid} ", "pid=<the hung script> ")
    logged = [l.split("event_debug: ", 1)[1] for l in c.log(pnn).read_text().splitlines()
              if "event_debug: " in l]
    # Later monitor runs may start (and hang) again before the first one's SIGTERM: only
    # whether a hung script got its SIGTERM after the debug script is compared.
    term = "the hung script got SIGTERM" if "TERM" in hang else "no SIGTERM"
    return f"{debug}{term}\nlogged: {logged}\n"


def run_both(real: RealCluster, ours: NetnsCluster, pnn: int, args: list[str],
             report: list[tuple[str, bool]], *, mask: tuple[str, str] | None = None) -> None:
    """`mask` (regex, replacement): a part of both outputs that is not compared."""
    a = real.ctdb(pnn, *args)
    b = ours.ctdb(pnn, *args)
    if mask is not None:
        a.stdout, b.stdout = re.sub(*mask, a.stdout, flags=re.M), re.sub(*mask, b.stdout, flags=re.M)
    if args == ["getpid"]:                  # a pid is a pid: only its form is compared
        a.stdout = re.sub(r"^\d+$", "<pid>", a.stdout, flags=re.M)
        b.stdout = re.sub(r"^\d+$", "<pid>", b.stdout, flags=re.M)
    if args[-1] in ("dumpmemory", "rddumpmemory"):
        a.stdout, b.stdout = talloc_shape(a.stdout), talloc_shape(b.stdout)
    ra = f"rc={a.returncode}\n{normalise(a.stdout)}{normalise(a.stderr)}"
    rb = f"rc={b.returncode}\n{normalise(b.stdout)}{normalise(b.stderr)}"
    label = f"node {pnn}: ctdb {' '.join(args)}"
    same = ra == rb
    report.append((label, same))
    print(f"=== {label}: {'SAME' if same else 'DIFFERENT'}")
    if same:
        print(ra.rstrip())
    else:
        print("".join(difflib.unified_diff(ra.splitlines(True), rb.splitlines(True),
                                           "real ctdbd", "pyctdbd")))


def run_both_at_once(real: RealCluster, ours: NetnsCluster, pnn: int, args: list[str],
                     report: list[tuple[str, bool]]) -> None:
    """run_both for a command that takes long by design (the tool's retries), in parallel."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda c: c.ctdb(pnn, *args), (real, ours))
    ra = f"rc={a.returncode}\n{normalise(a.stdout)}{normalise(a.stderr)}"
    rb = f"rc={b.returncode}\n{normalise(b.stdout)}{normalise(b.stderr)}"
    label = f"node {pnn}: ctdb {' '.join(args)}"
    report.append((label, ra == rb))
    print(f"=== {label}: {'SAME' if ra == rb else 'DIFFERENT'}")
    print(ra.rstrip() if ra == rb else "".join(difflib.unified_diff(
        ra.splitlines(True), rb.splitlines(True), "real ctdbd", "pyctdbd")))


def settle(c: NetnsCluster, check, timeout=30.0) -> None:
    c.wait_for("state to settle", check, timeout=timeout)
    time.sleep(1.5)


def same_allocation(real: NetnsCluster, ours: NetnsCluster) -> None:
    """Give real ctdbd's public IPs the layout pyctdbd chose, with `ctdb moveip`, before
    comparing. Started together, real ctdbd's nodes 1 and 2 join node 0 (which took every IP
    alone) in one takeover run or in two, and the IPs they get depend on which (one suite run
    in three differed); pyctdbd serves nothing until a majority is up and allocates once. The
    allocation itself is checked against CTDB's own test vectors (tests/unit); this test is
    about what the tool prints, from the same state."""
    want = ours.ips(0)
    for ip, pnn in sorted(want.items()):
        if real.ips(0).get(ip) != pnn:
            print(f"--- aligning real ctdbd: ctdb moveip {ip} {pnn}")
            real.ctdb(0, "moveip", ip, str(pnn))
            settle(real, lambda ip=ip, pnn=pnn: real.ips(0).get(ip) == pnn)
    settle(real, lambda: real.ips(0) == want)


def compare(keep_dir: Path | None = None) -> list[tuple[str, bool]]:
    """Run both clusters through the same commands; return (command, same output) in order."""
    subnet = 77
    with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
        real = RealCluster(Path(t1), 3, tunables=AGGRESSIVE)
        ours = NetnsCluster(Path(t2), 3, tunables=AGGRESSIVE)
        same_topology(real, subnet)
        same_topology(ours, subnet)
        report: list[tuple[str, bool]] = []
        try:
            # Node 0 leads in both clusters, so "Leader:" is the same state on both sides. Real
            # ctdbd's node 0, started 2 s before the others, takes the cluster lock alone.
            # pyctdbd's does not lead without a majority (core/quorum.py); started together,
            # nodes 1 and 2 could form one between themselves before node 0's redial (every
            # 1 s, as CTDB) reached them, and node 1 would lead (one full suite run of
            # 2026-12-07). So node 1 starts next, where node 0 races first (core/node.py
            # LOCK_STAGGER), and node 2 once pyctdbd's node 0 leads.
            for c in (real, ours):
                c.build_network()
                c.configure()
                install_hang_and_debug_scripts(c)
                c.start_node(0)
            time.sleep(2)
            for c in (real, ours):
                c.start_node(1)
            ours.wait_for("node 0 to lead", lambda: ours.ctdb(0, "leader").stdout.strip() == "0",
                          timeout=30, interval=0.2)
            for c in (real, ours):
                for pnn in range(2, c.n):
                    c.start_node(pnn)
            settle(real, real.healthy, 90)
            settle(ours, ours.healthy, 30)
            same_allocation(real, ours)
            basic = [["status"], ["-X", "status"], ["ip"], ["ip", "all"], ["-X", "ip", "all"],
                     ["ping"], ["-n", "1", "ping"], ["pnn"], ["listnodes"], ["uptime"],
                     ["leader"], ["runstate"], ["runstate", "RUNNING"], ["getcapabilities"],
                     ["-X", "getcapabilities"], ["getvar", "KeepaliveInterval"],
                     ["getvar", "NoSuchTunable"], ["gettickles", real.public[0]],
                     ["-X", "gettickles", real.public[0]], ["getreclock"], ["getpid"]]
            for cmd in basic:
                run_both(real, ours, 0, cmd, report)
            # listvars: ours lists pyctdbd's own tunables after CTDB's.
            a = real.ctdb(0, "listvars").stdout.splitlines()
            b = ours.ctdb(0, "listvars").stdout.splitlines()
            names_a = [l.split()[0] for l in a]
            names_b = [l.split()[0] for l in b]
            same = names_b[:len(names_a)] == names_a
            report.append(("listvars: CTDB's names in CTDB's order, then ours", same))
            print(f"=== listvars: {len(names_a)} CTDB tunables, pyctdbd adds "
                  f"{names_b[len(names_a):]}: {'SAME prefix' if same else 'DIFFERENT'}")
            for cmd, check in [
                (["-n", "1", "disable"], lambda c: c.flags(0)[1] == "DISABLED"),
                (["-n", "1", "enable"], lambda c: c.flags(0)[1] == "OK"),
                (["-n", "2", "stop"], lambda c: c.flags(0)[2] == "STOPPED|INACTIVE"),
                (["-n", "2", "continue"], lambda c: c.flags(0)[2] == "OK"),
                (["-n", "1", "ban", "60"], lambda c: c.flags(0)[1] == "BANNED|INACTIVE"),
            ]:
                for c in (real, ours):
                    r = c.ctdb(0, *cmd)
                    print(f"--- {type(c).__name__}: ctdb {' '.join(cmd)} -> rc={r.returncode} {r.stderr.strip()}")
                    settle(c, lambda c=c, check=check: check(c))
                run_both(real, ours, 0, ["status"], report)
                run_both(real, ours, 0, ["-X", "status"], report)
                run_both(real, ours, 0, ["ip", "all"], report)
            for c in (real, ours):
                c.ctdb(0, "-n", "1", "unban")
                settle(c, c.healthy, 60)
            run_both(real, ours, 0, ["status"], report)
            run_both(real, ours, 0, ["ip", "all"], report)
            # Memory dumps: the daemon's (DUMP_MEMORY) and the recovery daemon's (a MEM_DUMP
            # message answered on the tool's own srvid).
            run_both(real, ours, 0, ["dumpmemory"], report)
            run_both(real, ours, 0, ["-T", "10", "rddumpmemory"], report)
            run_both(real, ours, 1, ["-n", "2", "-T", "10", "rddumpmemory"], report)
            # addip / delip: runtime changes; the tool asks the leader to rebalance onto the node.
            extra = f"198.19.{subnet}.50"
            run_both(real, ours, 0, ["addip", f"{extra}/24", "eth0"], report)
            for c in (real, ours):
                settle(c, lambda c=c: c.ips(0).get(extra) == 0)
            run_both(real, ours, 0, ["ip", "all"], report)
            run_both(real, ours, 0, ["addip", f"{extra}/24", "eth0"], report)
            run_both(real, ours, 0, ["addip", f"198.19.{subnet}.51", "eth0"], report)
            run_both_at_once(real, ours, 0, ["addip", f"198.19.{subnet}.52/24", "nosuchif0"], report)
            run_both(real, ours, 0, ["delip", f"198.19.{subnet}.77"], report)
            run_both(real, ours, 0, ["delip", f"{extra}/24"], report)
            run_both(real, ours, 0, ["delip", extra], report)
            run_both(real, ours, 0, ["ip", "all"], report)          # hosted until the next run
            run_both(real, ours, 0, ["ipreallocate"], report)
            for c in (real, ours):
                settle(c, lambda c=c: extra not in c.ips(0))
            run_both(real, ours, 0, ["ip", "all"], report)
            owner = real.ips(0)[real.public[0]]
            target = (owner + 1) % 3
            for c in (real, ours):
                r = c.ctdb(0, "moveip", c.public[0], str(target))
                print(f"--- {type(c).__name__}: ctdb moveip -> rc={r.returncode} {r.stderr.strip()}")
                settle(c, lambda c=c: c.ips(0)[c.public[0]] == target)
            run_both(real, ours, 0, ["ip", "all"], report)
            run_both(real, ours, target, ["ip"], report)
            for c in (real, ours):
                c.ctdb(0, "addtickle", "198.19.77.200:40000", f"{c.public[0]}:445")
                time.sleep(0.5)
            run_both(real, ours, 0, ["gettickles", real.public[0]], report)
            run_both(real, ours, 0, ["setvar", "MonitorInterval", "2"], report)
            run_both(real, ours, 0, ["getvar", "MonitorInterval"], report)
            run_both(real, ours, 0, ["deltickle", "198.19.77.200:40000", f"{real.public[0]}:445"], report)
            run_both(real, ours, 0, ["gettickles", real.public[0]], report)
            # [event] debug script: a monitor script on node 2 hangs past EventScriptTimeout.
            for c in (real, ours):
                c.ctdb(2, "setvar", "EventScriptTimeout", "3")
                (c.node_dir(2) / "hang").touch()
            for c in (real, ours):
                c.wait_for("the debug script and the hung script's SIGTERM",
                           lambda c=c: "TERM" in (c.node_dir(2) / "hang.log").read_text()
                           and "event_debug: debug stdout line" in c.log(2).read_text(), timeout=30)
                (c.node_dir(2) / "hang").unlink()
            stories = [debug_script_story(c, 2) for c in (real, ours)]
            same = stories[0] == stories[1]
            report.append(("[event] debug script on a hung monitor event", same))
            print(f"=== [event] debug script: {'SAME' if same else 'DIFFERENT'}\n" + (
                stories[0] if same else "".join(difflib.unified_diff(
                    stories[0].splitlines(True), stories[1].splitlines(True), "real ctdbd", "pyctdbd"))))
            for c in (real, ours):
                c.ctdb(2, "setvar", "EventScriptTimeout", "30")
            for c in (real, ours):
                r = c.ctdb(2, "shutdown")
                print(f"--- {type(c).__name__}: ctdb shutdown on node 2 -> rc={r.returncode}")
                settle(c, lambda c=c: c.flags(0)[2].startswith("DISCONNECTED")
                       and 2 not in c.ips(0).values(), 60)
            run_both(real, ours, 0, ["status"], report)
            run_both(real, ours, 0, ["-X", "status"], report)
        finally:
            real.stop()
            ours.stop()
            if keep_dir is not None:
                import shutil
                shutil.copytree(t1, keep_dir / "real", dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.socket", "*.tdb*"))
                shutil.copytree(t2, keep_dir / "ours", dirs_exist_ok=True, ignore_dangling_symlinks=True,
                                ignore=shutil.ignore_patterns("*.socket"))
                print(f"logs kept in {keep_dir}")
        print("\nSUMMARY")
        for label, same in report:
            print(f"  {'SAME     ' if same else 'DIFFERENT'} {label}")
        return report


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--keep", action="store_true", help="copy the node directories (logs) aside")
    args = p.parse_args()
    report = compare(Path(tempfile.mkdtemp(prefix="compare-cli-")) if args.keep else None)
    return 0 if report and all(same for _, same in report) else 1


if __name__ == "__main__":
    sys.exit(main())
