"""Database recovery on a real 3-node pyctdbd cluster (loopback, no root):

* **conformance**: Debian's own `/usr/libexec/ctdb/ctdb_recovery_helper` — ctdbd's recovery engine,
  which speaks only controls — recovers the cluster through one node's socket, and every node
  ends up with the records CTDB's rules pick;
* pyctdbd's own leader-side recovery (`ctdb recover`) does the same;
* `ctdb wipedb` (freeze, transaction, wipe, commit, thaw from the stock tool).

Records are written straight into each node's TDB files, with the headers each case needs, by
this process (opened with the daemon's flags, as smbd opens them). The helper is run as
ctdb-recoverd runs it (ctdb_recoverd.c helper_run / db_recovery_parallel): argv ``<write fd>
<daemon socket> <generation>``, CTDB_DBDIR_STATE set; on success it writes an int 0 to the fd and
exits 0, on failure it exits 1 without writing.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from ctdblab.daemon.protocol import (
    DisableMessage, LtdbHeader, ReqMessage, Srvid, TdbFlag, encode_packet, pack_message,
)
from ctdblab.daemon.protocol.constants import RecordFlag
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum
from ctdblab.daemon.store import DbKind, TdbFile, libtdb, tdb_flags

from pyctdbd_cluster import LocalCluster, have_ctdb_cli

HELPER = "/usr/libexec/ctdb/ctdb_recovery_helper"
LIBDIR = os.path.dirname(libtdb.__file__)
# Opens PATH with FLAGS as smbd does, takes the chain lock of "a", says so, and holds it until
# its stdin closes.
HOLD_CHAIN_LOCK = r"""
import os, sys
sys.path.insert(0, sys.argv[1]); import libtdb
ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR, 0o600, None, None)
assert libtdb.lib.tdb_chainlock(ctx, libtdb.key_data(b"a")) == 0
print("locked", flush=True)
sys.stdin.read()
"""
MWD = int(RecordFlag.MIGRATED_WITH_DATA)


pytestmark = [
    pytest.mark.skipif(not have_ctdb_cli() or not os.access(HELPER, os.X_OK),
                       reason="Debian's ctdb tool and recovery helper are not installed"),
]


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path, 3)
    c.start()
    try:
        c.wait_for("a settled cluster", c.settled, timeout=30)
        yield c
    finally:
        c.stop()


def db_path(cluster, pnn: int, name: str, kind: DbKind) -> str:
    sub = "persistent" if kind is DbKind.PERSISTENT else "volatile"
    return str(cluster.node_dir(pnn) / "db" / sub / f"{name}.{pnn}")


def write(cluster, pnn, name, kind, records) -> None:
    """records: key -> (rsn, dmaster, value[, flags]) written into node pnn's file."""
    with TdbFile(db_path(cluster, pnn, name, kind), 0, tdb_flags(kind), os.O_RDWR) as tdb:
        for key, (rsn, dmaster, value, *flags) in records.items():
            tdb.store_ltdb(key, LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags[0] if flags else 0),
                           value)


def read(cluster, pnn, name, kind, *, nolock: bool = False) -> dict[bytes, tuple[LtdbHeader, bytes]]:
    """A node's records; `nolock` reads a database that stays frozen (its lock is held), read
    only and without CLEAR_IF_FIRST (with TDB_NOLOCK that flag would wipe the file: the ACTIVE
    lock that tells a first opener apart is not taken)."""
    flags, mode = tdb_flags(kind), os.O_RDWR
    if nolock:
        flags, mode = (flags & ~TdbFlag.CLEAR_IF_FIRST) | TdbFlag.NOLOCK, os.O_RDONLY
    with TdbFile(db_path(cluster, pnn, name, kind), 0, flags, mode) as tdb:
        return {k: LtdbHeader.split(v) for k, v in tdb.items()}


def status(cluster, pnn) -> tuple[int, str]:
    out = cluster.ok(pnn, "status")
    generation = int(re.search(r"^Generation:(\d+)$", out, re.M).group(1))
    mode = re.search(r"^Recovery mode:(\w+)", out, re.M).group(1)
    return generation, mode


def disable_recoveries(cluster, seconds: int) -> None:
    """SRVID_DISABLE_RECOVERIES, as ctdb-recoverd takes it: pyctdbd's own recovery must not run
    alongside the helper (the helper's SET_RECMODE ACTIVE asks for one). Sent to every node, not
    only the leader: a node the helper bans may be the leader, and the next one must hold off too
    (with the message to the leader alone, a loaded machine saw the new leader recover the
    databases while the test read them)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(cluster.socket(0))
    try:
        data = pack_message(Srvid.DISABLE_RECOVERIES, DisableMessage(0, 0, seconds))
        for pnn in range(3):
            sock.sendall(encode_packet(ReqMessage(Srvid.DISABLE_RECOVERIES, data), destnode=pnn,
                                       srcnode=0, reqid=1))
        time.sleep(0.2)
    finally:
        sock.close()


def seed(cluster) -> None:
    """Diverging copies: a volatile database everywhere and a persistent one, attached with the
    stock tool (the attach reaches every node); records written into each node's files."""
    cluster.ok(0, "attach", "rvol.tdb")
    cluster.ok(0, "attach", "rpers.tdb", "persistent")
    cluster.wait_for("the attaches on every node", lambda: all(
        "rvol.tdb" in cluster.ok(p, "getdbmap") and "rpers.tdb" in cluster.ok(p, "getdbmap")
        for p in range(3)))
    V, P = DbKind.VOLATILE, DbKind.PERSISTENT
    write(cluster, 0, "rvol.tdb", V, {b"a": (3, 0, b"a@0"), b"c": (6, 0, b"c@0")})
    write(cluster, 1, "rvol.tdb", V, {b"a": (5, 1, b"a@1"), b"b": (4, 1, b"b@1"),
                                      b"empty": (8, 1, b"")})
    write(cluster, 2, "rvol.tdb", V, {b"a": (9, 2, b"a@2"), b"b": (4, 2, b"b@2"),
                                      b"c": (6, 2, b"c@2"),
                                      b"ro": (2, 2, b"ro@2", int(RecordFlag.RO_HAVE_READONLY))})
    write(cluster, 0, "rpers.tdb", P, {DB_SEQNUM_TDB_KEY: (4, 0, pack_seqnum(4)),
                                       b"s": (4, 0, b"s@0"), b"stale": (2, 0, b"stale@0")})
    write(cluster, 1, "rpers.tdb", P, {DB_SEQNUM_TDB_KEY: (7, 1, pack_seqnum(7)),
                                       b"s": (7, 1, b"s@1")})
    write(cluster, 2, "rpers.tdb", P, {DB_SEQNUM_TDB_KEY: (7, 2, pack_seqnum(7)),
                                       b"s": (7, 2, b"s@2")})


def check_merged(cluster, leader: int) -> None:
    """CTDB's rules, with `leader` the node that ran the recovery: volatile — highest rsn wins;
    on a tie the copy held first (node order) stays unless it is the leader's; empty records
    dropped; dmaster = leader, MIGRATED_WITH_DATA, read-only flags stripped, and the leader's
    own store bumps the rsn. Persistent — the first node with the highest seqnum (node 1)."""
    b_winner = b"b@2" if leader == 1 else b"b@1"      # tie 4: node 1's copy, unless it leads
    c_winner = b"c@2" if leader == 0 else b"c@0"      # tie 6: node 0's copy, unless it leads
    for pnn in range(3):
        bump = 1 if pnn == leader else 0
        h = lambda rsn: LtdbHeader(rsn + bump, leader, 0, MWD)      # noqa: E731
        assert read(cluster, pnn, "rvol.tdb", DbKind.VOLATILE) == {
            b"a": (h(9), b"a@2"), b"b": (h(4), b_winner), b"c": (h(6), c_winner), b"ro": (h(2), b"ro@2"),
        }, f"node {pnn}"
        assert read(cluster, pnn, "rpers.tdb", DbKind.PERSISTENT) == {
            DB_SEQNUM_TDB_KEY: (LtdbHeader(7, 1), pack_seqnum(7)), b"s": (LtdbHeader(7, 1), b"s@1"),
        }, f"node {pnn}"


def run_helper(cluster, pnn: int, generation: int) -> tuple[int, bytes, str]:
    """ctdb-recoverd's helper_run: (exit status, what the helper wrote to its fd, its log).
    ctdbd hands its children CTDB_LOGGING / CTDB_DEBUGLEVEL (without them the helper exits)."""
    rfd, wfd = os.pipe()
    helper_log = cluster.node_dir(pnn) / "recovery-helper.log"
    try:
        env = dict(os.environ, CTDB_DBDIR_STATE=str(cluster.node_dir(pnn) / "db" / "state"),
                   CTDB_SOCKET=cluster.socket(pnn), CTDB_LOGGING=f"file:{helper_log}",
                   CTDB_DEBUGLEVEL="INFO")
        proc = subprocess.run([HELPER, str(wfd), cluster.socket(pnn), str(generation)],
                              pass_fds=(wfd,), env=env, capture_output=True, text=True, timeout=90)
        os.close(wfd)
        wfd = -1
        result = b""
        while chunk := os.read(rfd, 64):
            result += chunk
        text = helper_log.read_text() if helper_log.exists() else ""
        return proc.returncode, result, proc.stderr + text
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


@pytest.mark.parametrize("via", [0, 2])
def test_debian_recovery_helper_recovers_a_pyctdbd_cluster(cluster, via):
    seed(cluster)
    disable_recoveries(cluster, 60)
    generation = 0x1234567 + via
    status_code, result, stderr = run_helper(cluster, via, generation)
    assert status_code == 0 and result == struct.pack("i", 0), stderr + cluster.describe()
    check_merged(cluster, via)
    for pnn in range(3):
        assert status(cluster, pnn) == (generation, "NORMAL")
        dbmap = cluster.ok(pnn, "getdbmap")
        assert "rvol.tdb" in dbmap and "rpers.tdb" in dbmap
    # the databases are thawed: the stock tool's own transaction (freeze .. thaw) goes through
    cluster.ok(1, "wipedb", "rvol.tdb")
    assert all(read(cluster, p, "rvol.tdb", DbKind.VOLATILE) == {} for p in range(3))
    assert read(cluster, 0, "rpers.tdb", DbKind.PERSISTENT) != {}


def test_recovery_helper_fails_when_a_node_cannot_freeze(cluster):
    """Proof that the conformance check can fail: a process on node 1 holds a chain lock of
    rvol.tdb (as smbd would), so node 1's DB_FREEZE waits for it; the helper tries the database
    three times (RecoverTimeout each), bans node 1 (RecoveryBanPeriod), writes nothing and fails.
    (Samba 4.17's helper then aborts on its own talloc type check, "Type mismatch:
    name[struct ban_node_state] expected[struct node_ban_state]", leaving a core file where
    cores are on: its bug, seen with every ban it makes; the exit is still a failure.) No node's
    copy has changed, and rvol.tdb stays frozen (read without locks here)."""
    seed(cluster)
    disable_recoveries(cluster, 60)
    before = {p: read(cluster, p, "rvol.tdb", DbKind.VOLATILE) for p in range(3)}
    cluster.ok(0, "setvar", "RecoverTimeout", "1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CHAIN_LOCK, LIBDIR,
                               db_path(cluster, 1, "rvol.tdb", DbKind.VOLATILE),
                               hex(tdb_flags(DbKind.VOLATILE))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status_code, result, log = run_helper(cluster, 0, 4242)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert status_code != 0 and result == b""
    assert "control FREEZE_DB failed for db rvol.tdb on node 1" in log
    assert "Banning node 1 for 300 seconds" in log
    cluster.wait_for("node 1 banned", lambda: "BANNED" in cluster.status_flags(0).get(1, ""))
    assert {p: read(cluster, p, "rvol.tdb", DbKind.VOLATILE, nolock=True) for p in range(3)} == before


def test_pyctdbd_leader_recovers_the_databases(cluster):
    seed(cluster)
    leader = int(cluster.ok(0, "leader"))
    before = status(cluster, 0)[0]
    cluster.ok(0, "recover")
    cluster.wait_for("a new generation everywhere, recovery mode NORMAL", lambda: all(
        status(cluster, p)[0] != before and status(cluster, p)[1] == "NORMAL" for p in range(3)))
    check_merged(cluster, leader)


def test_pyctdbd_recovery_time_for_ten_thousand_records_per_node(cluster):
    cluster.ok(0, "attach", "big.tdb")
    cluster.wait_for("big.tdb everywhere", lambda: all("big.tdb" in cluster.ok(p, "getdbmap")
                                                        for p in range(3)))
    per_node = 10_000
    for pnn in range(3):
        write(cluster, pnn, "big.tdb", DbKind.VOLATILE, {
            (b"shared%05d" % i if i % 2 else b"n%d-%05d" % (pnn, i)): (pnn + 1, pnn, b"v" * 64)
            for i in range(per_node)})
    before = status(cluster, 0)[0]
    started = time.monotonic()
    cluster.ok(0, "recover")
    cluster.wait_for("the recovery", lambda: all(
        status(cluster, p)[0] != before and status(cluster, p)[1] == "NORMAL" for p in range(3)),
        timeout=60, interval=0.02)
    took = time.monotonic() - started
    expected = per_node // 2 + 3 * (per_node // 2)
    for pnn in range(3):
        assert len(read(cluster, pnn, "big.tdb", DbKind.VOLATILE)) == expected
    leader = int(cluster.ok(0, "leader"))
    [driver] = re.findall(r"1 of 1 databases recovered \(([\d.]+) ms", cluster.log(leader).read_text())[-1:]
    print(f"\npyctdbd recovery of 3 x {per_node} records ({expected} merged): {took:.2f} s "
          f"from `ctdb recover` to NORMAL on all nodes; the database part {float(driver):.0f} ms")
    # the same data recovered by Debian's helper against the pyctdbd nodes, for comparison
    disable_recoveries(cluster, 60)
    started = time.monotonic()
    status_code, result, log = run_helper(cluster, 1, 777)
    took = time.monotonic() - started
    assert status_code == 0, log
    for pnn in range(3):
        records = read(cluster, pnn, "big.tdb", DbKind.VOLATILE)
        assert len(records) == expected
        assert {h.dmaster for h, _ in records.values()} == {1}
    print(f"ctdb_recovery_helper on the same cluster: {took:.2f} s")
    assert cluster.healthy()


def test_a_restarted_node_gets_the_databases_and_records_it_missed(cluster):
    """With the stock tool's record traffic: pstore (TRANS3_COMMIT) and writekey (migration);
    node 2 is down while a database is created and records written; the recovery that takes it
    back creates the database there (ATTACH_RECOVERY) and hands it every record."""
    cluster.ok(0, "attach", "p.tdb", "persistent")
    cluster.ok(0, "pstore", "p.tdb", "key1", "value1")
    cluster.ok(0, "attach", "v.tdb")
    cluster.ok(1, "writekey", "v.tdb", "vk", "vv")
    cluster.stop_node(2)
    cluster.wait_for("node 2 gone", lambda: "DISCONNECTED" in cluster.status_flags(0).get(2, ""))
    cluster.ok(0, "attach", "late.tdb")
    cluster.ok(0, "writekey", "late.tdb", "lk", "lv")
    cluster.ok(1, "pstore", "p.tdb", "key2", "value2")
    cluster.start_node(2)
    cluster.wait_for("node 2 back", cluster.settled, timeout=30)
    assert "late.tdb" in cluster.ok(2, "getdbmap")
    assert cluster.ok(2, "pfetch", "p.tdb", "key1").strip() == "value1"
    assert cluster.ok(2, "pfetch", "p.tdb", "key2").strip() == "value2"
    assert cluster.ok(2, "getdbseqnum", "p.tdb").strip() == "0x2"
    assert "ptr:[lv]" in cluster.ok(2, "readkey", "late.tdb", "lk")
    assert "ptr:[vv]" in cluster.ok(2, "readkey", "v.tdb", "vk")
