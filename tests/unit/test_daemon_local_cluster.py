"""Three pyctdbd daemons on loopback addresses, driven by Debian's stock `ctdb` tool.

No root needed: public IPs use --fake-ip-effects. Each test costs a few seconds.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path

import pytest

from ctdblab.daemon.server.cluster_lock import OWN_HELPER
from pyctdbd_cluster import LocalCluster, have_ctdb_cli

pytestmark = pytest.mark.skipif(not have_ctdb_cli(), reason="Debian's ctdb tool is not installed")


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path, 3)
    c.start()
    try:
        c.wait_for("a settled cluster with all IPs hosted", c.settled, timeout=30)
        yield c
    finally:
        c.stop()


def test_status_and_basic_commands(cluster):
    out = cluster.ok(0, "status")
    assert "Number of nodes:3" in out
    assert re.search(r"^pnn:0 \S+\s+OK \(THIS NODE\)$", out, re.M)
    assert "Recovery mode:NORMAL (0)" in out
    assert re.search(r"^Generation:\d+$", out, re.M) and "Size:3" in out
    leader = int(re.search(r"^Leader:(\d+)$", out, re.M).group(1))
    assert cluster.ok(1, "leader").strip() == str(leader)
    assert cluster.ok(2, "pnn").strip() == "2"
    assert "RUNNING" in cluster.ok(1, "runstate")
    assert "LEADER: YES" in cluster.ok(0, "getcapabilities")
    assert re.match(r"response from 1 time=\d+\.\d+ sec  \(\d+ clients\)", cluster.ok(0, "-n", "1", "ping"))
    assert cluster.ok(0, "listnodes").split() == cluster.addresses
    assert "Ctdbd start time" in cluster.ok(0, "uptime")
    machine = cluster.ok(0, "-X", "status").splitlines()
    assert machine[0] == "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|"
    assert machine[1] == f"|0|{cluster.addresses[0]}|0|0|0|0|0|0|0|0|Y|"


def test_ip_views_agree_and_moveip(cluster):
    views = [cluster.ips(p) for p in range(3)]
    assert views[0] == views[1] == views[2]
    assert sorted(views[0].values()) == [0, 1, 2]
    ip = cluster.public[0]
    target = (views[0][ip] + 1) % 3
    cluster.ok(0, "moveip", ip, str(target))
    cluster.wait_for("moveip", lambda: all(cluster.ips(p)[ip] == target for p in range(3)))
    own = cluster.ok(target, "ip")
    assert f"{ip} {target}" in own


def test_tunables(cluster):
    names = [line.split()[0] for line in cluster.ok(0, "listvars").splitlines()]
    assert names[0] == "SeqnumInterval" and "HeartbeatIntervalMs" in names
    assert names.index("AllowMixedVersions") < names.index("HeartbeatIntervalMs")
    cluster.ok(1, "setvar", "MonitorInterval", "9")
    assert cluster.ok(1, "getvar", "monitorinterval").split() == ["monitorinterval", "=", "9"]
    assert cluster.ok(0, "getvar", "MonitorInterval").split()[-1] == "15"   # per node, as CTDB
    bad = cluster.ctdb(0, "getvar", "NoSuchThing")
    assert bad.returncode != 0 and "No such tunable" in bad.stdout


def test_disable_enable_stop_continue_ban_unban(cluster):
    def flags_of(pnn):
        return cluster.status_flags(0)[pnn]

    cluster.ok(0, "-n", "1", "disable")
    assert flags_of(1) == "DISABLED"
    cluster.wait_for("IPs off the disabled node", lambda: 1 not in cluster.ips(0).values())
    cluster.ok(0, "-n", "1", "enable")
    cluster.wait_for("node 1 enabled and hosting again",
                     lambda: flags_of(1) == "OK" and 1 in cluster.ips(0).values())
    started = time.monotonic()
    cluster.ok(2, "stop")
    assert time.monotonic() - started < 5
    assert flags_of(2) == "STOPPED|INACTIVE"
    cluster.wait_for("IPs off the stopped node", lambda: 2 not in cluster.ips(0).values())
    cluster.ok(2, "continue")
    cluster.wait_for("node 2 back", lambda: flags_of(2) == "OK")
    cluster.ok(1, "ban", "100")
    assert flags_of(1) == "BANNED|INACTIVE"
    cluster.wait_for("IPs off the banned node", lambda: 1 not in cluster.ips(0).values())
    cluster.ok(1, "unban")
    cluster.wait_for("node 1 unbanned", lambda: flags_of(1) == "OK")


def test_leader_stop_hands_over_at_once(cluster):
    leader = int(cluster.ok(0, "leader"))
    started = time.monotonic()
    cluster.ok(leader, "stop")
    others = [p for p in range(3) if p != leader]
    cluster.wait_for("a new leader", lambda: int(cluster.ok(others[0], "leader")) in others, timeout=5)
    assert time.monotonic() - started < 3


def test_tickles_replicate(cluster):
    ip = cluster.public[1]
    cluster.ok(0, "addtickle", "198.19.4.1:40000", f"{ip}:445")
    cluster.ok(0, "addtickle", "198.19.4.2:40001", f"{ip}:139")

    def listed(pnn, port=None):
        args = ["gettickles", ip] + ([str(port)] if port else [])
        return cluster.ok(pnn, *args)

    cluster.wait_for("tickles on every node", lambda: all("Num connections: 2" in listed(p) for p in range(3)))
    assert "SRC: 198.19.4.1:40000   DST: " + ip + ":445" in listed(2)
    assert "Num connections: 1" in listed(1, 139)
    cluster.ok(1, "deltickle", "198.19.4.1:40000", f"{ip}:445")
    cluster.wait_for("removal everywhere", lambda: all("Num connections: 1" in listed(p) for p in range(3)))


def test_sigstopped_node_is_declared_dead_and_comes_back(cluster):
    victim = (int(cluster.ok(0, "leader")) + 1) % 3
    watcher = (victim + 1) % 3
    cluster.signal(victim, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        took = cluster.wait_for("victim DISCONNECTED",
                                lambda: cluster.status_flags(watcher)[victim].startswith("DISCONNECTED"),
                                timeout=5, interval=0.02)
        # DeadTimeoutMs=400 plus at most one 100 ms tick, plus polling: well under a second on
        # an idle machine (the simulated-cluster tests pin the logic; this bound only tells the
        # millisecond path from CTDB's 25 s keepalive count on a loaded one).
        assert took < 2.0, took
        cluster.wait_for("victim's IP moved", lambda: victim not in cluster.ips(watcher).values())
    finally:
        cluster.signal(victim, signal.SIGCONT)
    cluster.wait_for("victim back", lambda: cluster.healthy(), timeout=15)
    assert time.monotonic() - stopped < 20


def test_shutdown_leaves_cluster_consistent(cluster):
    victim = 2
    cluster.ok(victim, "shutdown")
    assert cluster.procs[victim].wait(10) == 0
    cluster.wait_for("node 2 disconnected and its IPs moved", lambda: (
        cluster.status_flags(0)[victim].startswith("DISCONNECTED")
        and set(cluster.ips(0).values()) <= {0, 1}))


def test_malformed_client_bytes_are_logged_and_survived(cluster):
    import socket as socketmod
    s = socketmod.socket(socketmod.AF_UNIX)
    s.connect(cluster.socket(0))
    s.sendall(b"\x20\x00\x00\x00GARBAGE-GARBAGE-GARBAGE-GARBAGE!")
    s.settimeout(2)
    assert s.recv(100) == b""          # disconnected
    s.close()
    # with the clients in the native plane (PYCTDBD_CLIENT_PLANE=1) its thread closes the socket
    # and the loop writes the line a moment later
    cluster.wait_for("the log line", lambda: "malformed data" in cluster.log(0).read_text(), timeout=5)
    assert cluster.ok(0, "pnn").strip() == "0"


class RawClient:
    """Just enough of a CTDB client: controls and messages over the Unix socket."""

    def __init__(self, path):
        import socket as socketmod
        from ctdblab.daemon.protocol import PacketReader
        self.sock = socketmod.socket(socketmod.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(5)
        self.reader = PacketReader()
        self.pending = []
        self.reqid = 100

    def _next(self):
        from ctdblab.daemon.protocol import decode_packet
        while not self.pending:
            self.pending += self.reader.feed(self.sock.recv(65536))
        return decode_packet(self.pending.pop(0))

    def control(self, opcode, srvid=0, data=b"", dest=None):
        from ctdblab.daemon.protocol import CURRENT_NODE, ReqControl, encode_packet
        self.reqid += 1
        self.sock.sendall(encode_packet(ReqControl(opcode, srvid, 0, 0, data),
                                        destnode=CURRENT_NODE if dest is None else dest,
                                        srcnode=0xFFFFFFFF, reqid=self.reqid))
        while True:
            packet = self._next()
            if packet.header.reqid == self.reqid and hasattr(packet.body, "errmsg"):
                return packet.body

    def message(self, dest, srvid, data):
        from ctdblab.daemon.protocol import ReqMessage, encode_packet
        self.sock.sendall(encode_packet(ReqMessage(srvid, data), destnode=dest, srcnode=0, reqid=0))

    def receive(self):
        return self._next()


def test_messages_route_between_clients_on_different_nodes(cluster):
    from ctdblab.daemon.protocol import BROADCAST_CONNECTED, Control
    srvid, everyone = 0xAE00000000001234, 0xAE00000000005678
    receivers = [RawClient(cluster.socket(p)) for p in range(3)]
    for r in receivers:
        assert r.control(Control.REGISTER_SRVID, everyone).status == 0
    assert receivers[1].control(Control.REGISTER_SRVID, srvid).status == 0
    sender = RawClient(cluster.socket(0))
    sender.message(1, srvid, b"to node 1")                       # remote, one node
    got = receivers[1].receive()
    assert got.body.srvid == srvid and got.body.data == b"to node 1" and got.header.srcnode == 0
    sender.message(BROADCAST_CONNECTED, everyone, b"to all")     # broadcast, this node included
    for r in receivers:
        got = r.receive()
        assert got.body.srvid == everyone and got.body.data == b"to all"
    # A control for another node is forwarded and its reply matched to our reqid.
    reply = sender.control(Control.GET_PNN, dest=2)
    assert reply.status == 2
    assert receivers[1].control(Control.DEREGISTER_SRVID, srvid).status == 0
    assert receivers[1].control(Control.DEREGISTER_SRVID, srvid).status != 0


def test_reloadips_adds_and_drops_addresses(cluster):
    extra = "198.19.15.77"
    for pnn in range(3):
        path = cluster.node_dir(pnn) / "public_addresses"
        lines = path.read_text().splitlines()
        dropped = lines[0].split("/")[0]
        path.write_text("\n".join(lines[1:] + [f"{extra}/20 lo"]) + "\n")
    cluster.ok(0, "reloadips", "all")
    cluster.wait_for("new IP hosted, old one gone", lambda: (
        extra in cluster.ips(0) and dropped not in cluster.ips(0)
        and all(o in (0, 1, 2) for o in cluster.ips(0).values())))


def test_node_failing_takeip_is_banned_and_monitor_failure_makes_unhealthy(tmp_path):
    c = LocalCluster(tmp_path, 3)
    c.configure()
    bad = c.node_dir(2) / "events" / "legacy" / "20.failtake.script"
    bad.write_text("#!/bin/sh\n[ \"$1\" = takeip ] && { echo 'cannot take'; exit 1; }\n"
                   "[ \"$1\" = monitor ] && [ -e \"$CTDB_BASE/sick\" ] && { echo sick; exit 1; }\nexit 0\n")
    bad.chmod(0o755)
    for pnn in range(3):
        c.start_node(pnn)
    try:
        # Node 2 fails every takeip: the leader gives it ban credits until it is banned.
        c.wait_for("node 2 banned", lambda: c.status_flags(0)[2] == "BANNED|INACTIVE", timeout=40)
        c.wait_for("IPs on nodes 0 and 1", lambda: set(c.ips(0).values()) <= {0, 1} and len(c.ips(0)) == 3)
        assert "banning credits" in "".join(c.log(p).read_text() for p in range(3))
        script = bad.read_text()
        bad.unlink()
        c.ok(2, "unban")
        c.wait_for("node 2 back with an IP", lambda: 2 in c.ips(0).values())
        # Monitor failure: node 1 turns UNHEALTHY and loses its IPs.
        (c.node_dir(1) / "sick").write_text("")
        (c.node_dir(1) / "events" / "legacy" / "20.failtake.script").write_text(script)
        (c.node_dir(1) / "events" / "legacy" / "20.failtake.script").chmod(0o755)
        c.ok(1, "setvar", "MonitorInterval", "1")
        c.wait_for("node 1 unhealthy", lambda: c.status_flags(0)[1] == "UNHEALTHY", timeout=20)
        c.wait_for("node 1 without IPs", lambda: 1 not in c.ips(0).values())
    finally:
        c.stop()


def test_election_without_a_cluster_lock(tmp_path):
    c = LocalCluster(tmp_path, 3, lock=False)
    c.configure()
    for pnn in range(3):            # staggered, so "longest running" is well defined
        c.start_node(pnn)
        time.sleep(0.7)
    try:
        c.wait_for("settled", c.settled, timeout=30)
        leaders = {c.ok(p, "leader").strip() for p in range(3)}
        assert len(leaders) == 1, c.describe()
        leader = int(leaders.pop())
        # CTDB's rule: the longest-running node wins; node 0 started first.
        assert leader == 0, c.describe()
        started = time.monotonic()
        c.stop_node(leader, signal.SIGKILL)
        others = [p for p in range(3) if p != leader]
        c.wait_for("a new leader everywhere", lambda: len({c.ok(p, "leader").strip() for p in others}) == 1
                   and int(c.ok(others[0], "leader")) in others, timeout=10)
        assert time.monotonic() - started < 3
        assert int(c.ok(others[0], "leader")) == min(others)      # the next oldest
    finally:
        c.stop()


def test_a_frozen_leader_loses_the_lock_after_its_lease_and_the_other_node_takes_over(tmp_path):
    """pyctdbd's own lock helper has a lease (1 s here): the frozen leader's event loop stops
    renewing it, the helper releases the lock, the other node takes it and serves every IP."""
    c = LocalCluster(tmp_path, 2, public_ips=2)
    c.start()
    try:
        c.wait_for("settled", c.settled, timeout=30)
        leader = int(c.ok(0, "leader"))
        other = 1 - leader
        c.signal(leader, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            c.wait_for("the other node leads", lambda: c.ok(other, "leader").strip() == str(other), timeout=15)
            took = time.monotonic() - frozen
            c.wait_for("it hosts every IP", lambda: all(p == other for p in c.ips(other).values()), timeout=10)
        finally:
            c.signal(leader, signal.SIGCONT)
        # lease 1 s + a lock retry; generous for a loaded machine
        assert took < 8.0, took
        # Thawed, the old leader relays what its helper said and learns it lost the lock.
        c.wait_for("the helper's reason logged", lambda: "no word from the daemon" in c.log(leader).read_text(),
                   timeout=10)
        c.wait_for("recovered", c.healthy, timeout=20)
    finally:
        c.stop()


def test_node_cut_off_from_every_leader_drops_its_ips(tmp_path):
    """With a lock helper that holds the lock for a stopped daemon (Debian's fcntl helper, as
    `cluster lock = !...` can name), the other node stays leaderless and drops its IPs after
    RecoveryDropAllIPs."""
    c = LocalCluster(tmp_path, 2, public_ips=2, tunables={"RecoveryDropAllIPs": 2},
                     lock_command=f"{sys.executable} -S -E {OWN_HELPER} {tmp_path}/reclock")
    c.start()
    try:
        c.wait_for("settled", c.settled, timeout=30)
        leader = int(c.ok(0, "leader"))
        other = 1 - leader
        assert other in c.ips(other).values()
        # The leader freezes: its lock helper (no lease) keeps the cluster lock, so `other` cannot lead.
        c.signal(leader, signal.SIGSTOP)
        try:
            c.wait_for("leaderless node drops its IPs", lambda: "dropping all public IPs" in c.log(other).read_text(),
                       timeout=15)
            c.wait_for("its IPs gone", lambda: "Public IPs on node" in c.ok(other, "ip")
                       and f" {other}" not in "".join(c.ok(other, "ip").splitlines()[1:]), timeout=5)
        finally:
            c.signal(leader, signal.SIGCONT)
        c.wait_for("recovered", c.healthy, timeout=20)
    finally:
        c.stop()


def test_hung_lock_helper_is_logged_and_does_not_stall_the_daemon(tmp_path):
    hang = tmp_path / "hanging-lock-helper"
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    c = LocalCluster(tmp_path, 1, public_ips=1, lock_command=str(hang))
    c.start()
    try:
        # The daemon answers while its lock helper hangs...
        c.wait_for("daemon up", lambda: c.ok(0, "pnn").strip() == "0", timeout=10)
        started = time.monotonic()
        assert c.ok(0, "runstate").strip() in ("FIRST_RECOVERY", "INIT", "SETUP")
        assert time.monotonic() - started < 2
        # ...and says why there is no leader.
        c.wait_for("the hung helper logged", lambda: "did not answer within" in c.log(0).read_text(),
                   timeout=20)
        assert c.ok(0, "-t", "1", "leader").strip() == "UNKNOWN"
    finally:
        c.stop()


def test_hostile_peer_and_stranger_are_logged_and_change_nothing(tmp_path):
    """A peer listed in `nodes` that sends controls with hostile payloads, then bytes that are
    not CTDB packets, and a host that is not in `nodes` at all: each gets a log line, the
    daemon keeps serving and the cluster state (flags, IP owners, tickles) stays as it was."""
    import socket as socketmod

    from ctdblab.daemon.protocol import Control, ReqControl, encode_packet

    c = LocalCluster(tmp_path, 4)          # node 3 is in the nodes file but never started
    c.configure()
    for pnn in range(3):
        c.start_node(pnn)
    try:
        c.wait_for("three settled nodes", lambda: c.settled([0, 1, 2]), timeout=30)
        before = (c.status_flags(0), c.ips(0), c.ok(0, "gettickles", c.public[0]))

        peer = socketmod.socket()
        peer.bind((c.addresses[3], 0))
        peer.connect((c.addresses[0], c.port))
        hostile = [(Control.SET_TCP_TICKLE_LIST, b"\xff" * 13),
                   (Control.TCP_ADD, b"\x02\x00"),
                   (Control.TAKEOVER_IP, b"\x00" * 7),
                   (Control.RELEASE_IP, b""),
                   (0xDEAD, b"junk")]
        for reqid, (opcode, data) in enumerate(hostile, start=1):
            peer.sendall(encode_packet(ReqControl(opcode, 0, 0, 0, data),
                                       destnode=0, srcnode=3, reqid=reqid))
        time.sleep(0.5)
        peer.sendall(b"\x40\x00\x00\x00" + b"NOT-A-CTDB-PACKET" * 4)
        peer.settimeout(3)
        assert peer.recv(100) == b""            # the daemon dropped the connection
        peer.close()

        stranger = socketmod.socket()
        stranger.bind((f"{c.addresses[0].rsplit('.', 1)[0]}.99", 0))
        stranger.connect((c.addresses[0], c.port))
        stranger.settimeout(3)
        assert stranger.recv(100) == b""        # refused
        stranger.close()

        c.wait_for("the log lines", lambda: "refusing node connection" in c.log(0).read_text(),
                   timeout=5)
        log_text = c.log(0).read_text()
        for name in ("SET_TCP_TICKLE_LIST", "TCP_ADD", "TAKEOVER_IP", "RELEASE_IP"):
            assert f"Malformed control {name}" in log_text, name
        assert "Unsupported control" in log_text
        assert "malformed data: stream: bad magic" in log_text
        assert f"refusing node connection from {c.addresses[0].rsplit('.', 1)[0]}.99" in log_text
        assert c.procs[0].poll() is None        # still running
        after = (c.status_flags(0), c.ips(0), c.ok(0, "gettickles", c.public[0]))
        assert after == before
    finally:
        c.stop()


def test_no_ip_failback_keeps_a_returning_node_empty(cluster):
    """NoIPFailback=1 (on every node, as CTDB's docs ask): a node that comes back gets no IPs
    until an admin moves some; with it off, the same return rebalances at once."""
    for pnn in range(3):
        cluster.ok(pnn, "setvar", "NoIPFailback", "1")
    victim = 2
    cluster.ok(victim, "disable")
    cluster.wait_for("node 2 emptied", lambda: victim not in cluster.ips(0).values())
    cluster.ok(victim, "enable")
    cluster.wait_for("node 2 OK again", lambda: cluster.status_flags(0)[victim] == "OK")
    time.sleep(2.0)                        # several takeover runs' worth
    assert victim not in cluster.ips(0).values(), cluster.ips(0)
    for pnn in range(3):
        cluster.ok(pnn, "setvar", "NoIPFailback", "0")
    cluster.ok(0, "ipreallocate")
    cluster.wait_for("node 2 given an IP back", lambda: victim in cluster.ips(0).values())


@pytest.mark.parametrize("pacer", ["native", "Python"])
def test_fast_heartbeats_are_paced_by_a_thread_and_a_frozen_node_is_still_declared_dead(
        tmp_path, monkeypatch, pacer, native_pacer_library):
    """20 ms heartbeats (the fast profile's): every daemon hands them to its pacer thread (the
    native one, or the Python one it falls back to), the cluster stays whole while idle, a
    SIGSTOPped node is declared dead by the millisecond path (not CTDB's keepalive count), and
    setting a slow interval at run time stops the pacer."""
    if pacer == "Python":
        monkeypatch.setenv("PYCTDBD_NATIVE", "0")
    c = LocalCluster(tmp_path, 3, tunables={"HeartbeatIntervalMs": 20, "DeadTimeoutMs": 60})
    c.start()
    try:
        c.wait_for("settled", c.settled, timeout=30)
        for pnn in range(3):
            said = "are sent by a pacer thread; the loop looks every 120 ms (%s" % pacer
            assert said in c.log(pnn).read_text(), c.log(pnn).read_text()[-1500:]
        time.sleep(2.0)
        assert c.healthy(), c.describe()
        assert not any("dead" in c.log(p).read_text().lower() for p in range(3))
        victim = (int(c.ok(0, "leader")) + 1) % 3
        watcher = (victim + 1) % 3
        c.signal(victim, signal.SIGSTOP)
        try:
            try:
                c.wait_for("victim DISCONNECTED",
                           lambda: c.status_flags(watcher)[victim].startswith("DISCONNECTED"),
                           timeout=5, interval=0.02)
            except AssertionError as exc:
                # Seen once in a full suite run (2026-12-06), not reproduced alone or under
                # stress-ng: say what the victim and every node were doing.
                state = Path(f"/proc/{c.procs[victim].pid}/stat").read_text().split()[2]
                stderr = {p: (c.node_dir(p) / "stderr").read_text()[-2000:] for p in range(3)}
                raise AssertionError(f"{exc}\nvictim {victim} state {state}; stderr {stderr}") from None
        finally:
            c.signal(victim, signal.SIGCONT)
        # One of its two watchers declares it; the other may hear that verdict first.
        assert any(re.search(r"dead count reached for node \d+ \(no traffic for \d+ ms", c.log(p).read_text())
                   for p in range(3) if p != victim), "the millisecond path did not declare the frozen node dead"
        c.wait_for("victim back", c.healthy, timeout=20)
        c.ok(0, "setvar", "HeartbeatIntervalMs", "500")
        c.wait_for("pacer stopped on node 0",
                   lambda: "Heartbeats are sent from the event loop again" in c.log(0).read_text(), timeout=5)
    finally:
        c.stop()
