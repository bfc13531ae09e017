"""NodeCore alone: what single events mean for one node (the cluster-level behaviour is in
test_sim_cluster.py)."""

from __future__ import annotations

import logging

import pytest

from ctdblab.daemon.core.election import ElectionSettings, LeaderChanged
from ctdblab.daemon.core.membership import DetectorSettings
from ctdblab.daemon.core.node import (
    Admin, DeathReport, DropAllIPs, DropPeer, EnterRecoveryMode, FailControls, LeaderWork, Log,
    NodeCore, NodeSettings, OwnFlagsChanged, PeerConnected, PeerDisconnected, PeerKeepalive,
    PeerState, SendState, SetBan, SetRunstate, Shutdown, Start, Tick,
)
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.protocol.constants import (
    BROADCAST_CONNECTED, KEEPALIVE_VERSION_4_17, UNKNOWN_PNN, NodeFlag, Runstate, keepalive_version,
)

START_WALL = 1_000_000.0


def core(pnn: int = 0, n: int = 3, *, mixed: bool = False, lock: bool = True) -> NodeCore:
    settings = NodeSettings(DetectorSettings(heartbeat_interval=0.1, dead_timeout=0.4),
                            ElectionSettings(lock_enabled=lock), drop_all_ips_after=3.0,
                            allow_mixed_versions=mixed)
    c = NodeCore(pnn, NodeMap.from_addresses([f"198.18.0.{i + 1}" for i in range(n)], pnn), settings,
                 now=0.0, wall_offset=-START_WALL, start_wall=START_WALL)
    c.step(Start(), 0.0)
    return c


def kinds(actions) -> list[type]:
    return [type(a) for a in actions]


def texts(actions) -> list[str]:
    return [a.text for a in actions if isinstance(a, Log)]


def test_connect_and_disconnect_are_logged_in_ctdbs_words_and_fail_pending_controls():
    c = core()
    up = c.step(PeerConnected(1), 1.0)
    assert "198.18.0.1:4379: connected to 198.18.0.2:4379 - 1 connected" in texts(up)
    assert SendState(1) in up
    # What waited on it was sent while it was not connected: it may never be answered.
    assert FailControls(1, gone=False) in up
    down = c.step(PeerDisconnected(1, "connection reset"), 2.0)
    assert "198.18.0.1:4379: node 198.18.0.2:4379 is dead: 0 connected (connection reset)" in texts(down)
    assert FailControls(1) in down
    assert c.nodemap.nodes[1].flags & NodeFlag.DISCONNECTED
    # The transport's own "down" after the core dropped a peer changes nothing.
    assert c.step(PeerDisconnected(1, "again"), 2.1) == []


def test_a_silent_watched_peer_is_declared_dead_dropped_and_reported():
    c = core()
    c.step(PeerConnected(1), 0.0)
    from ctdblab.daemon.core.node import HeartbeatMessage, Heartbeats
    c.step(HeartbeatMessage(1, 1), 0.0)           # node 1 asks us to watch it
    c.step(Heartbeats(((1, 0.05),)), 0.05)        # one heartbeat starts its clock
    actions = []
    t = 0.1
    while t < 1.0 and not any(isinstance(a, DropPeer) for a in actions):
        actions += c.step(Tick(), t)
        t += 0.05
    assert any(isinstance(a, DropPeer) and a.pnn == 1 for a in actions)
    assert any("dead count reached for node 1" in x for x in texts(actions))
    assert not c.nodemap.nodes[1].connected


def watched(c: NodeCore, pnn: int, at: float) -> None:
    """`pnn` asks `c` to watch it and its first fast heartbeat arrives."""
    from ctdblab.daemon.core.node import HeartbeatMessage, Heartbeats
    c.step(HeartbeatMessage(pnn, 1), at)
    c.step(Heartbeats(((pnn, at),)), at)


def test_a_watcher_refutes_asks_or_believes_a_death_report_by_its_own_silence():
    from ctdblab.daemon.core.node import ProbePeer, Traffic
    c = core()                                     # dead timeout 400 ms
    c.step(PeerConnected(1), 0.0)
    c.step(PeerConnected(2), 0.0)
    # (Ticks come on time: a late tick would count as our own stall and refresh every peer.)
    for i in range(1, 21):
        c.step(Tick(), i * 0.05)
    watched(c, 1, 1.0)
    kept = c.step(DeathReport(1, 2, 2), 1.1)       # its last heartbeat came 100 ms ago
    assert DropPeer not in kinds(kept) and c.nodemap.nodes[1].connected
    assert "but we heard from it 100 ms ago: keeping it" in texts(kept)[0]
    # 250 ms: two heartbeats missed, not yet three quarters of the timeout: node 1 is asked,
    # and its answer keeps it (the reporter may be the one losing packets).
    for t in (1.05, 1.1, 1.15, 1.2, 1.25):
        c.step(Tick(), t)
    asked = c.step(DeathReport(1, 2, 2), 1.25)
    assert ProbePeer(1) in asked and DropPeer not in kinds(asked)
    c.step(Traffic(1), 1.26)
    kept = []
    for t in (1.3, 1.35, 1.4, 1.45):
        kept += c.step(Tick(), t)
    assert DropPeer not in kinds(kept) and c.nodemap.nodes[1].connected
    assert any("node 1 answered: keeping it" in t for t in texts(kept))
    for t in (1.5, 1.55):
        c.step(Tick(), t)
    believed = c.step(DeathReport(1, 2, 2), 1.26 + 0.31)  # 310 ms of silence >= 300 ms
    assert DropPeer in kinds(believed) and not c.nodemap.nodes[1].connected
    assert c.step(DeathReport(0, 2, 2), 1.6)[0].text.startswith("Node 2 declared this node dead")


def test_a_non_watcher_asks_the_reported_node_and_keeps_it_if_it_answers():
    from ctdblab.daemon.core.node import ProbePeer, Traffic
    c = core()
    c.step(PeerConnected(1), 0.0)
    c.step(PeerConnected(2), 0.0)
    first = c.step(DeathReport(1, 2, 2), 1.0)      # we do not watch node 1: no fresh evidence
    assert ProbePeer(1) in first and DropPeer not in kinds(first)
    assert c.step(DeathReport(1, 2, 2), 1.01) == []      # already asking
    assert c.next_deadline() <= 1.2 + 1e-9               # the answer is due in dead timeout / 2
    c.step(Traffic(1), 1.002)                             # the answer
    kept = c.step(Tick(), 1.2)
    assert DropPeer not in kinds(kept) and c.nodemap.nodes[1].connected
    assert any("node 1 answered: keeping it" in t for t in texts(kept))
    # Asked again later, and silent this time: believed at the deadline, not before. (Ticks
    # come on time: a late tick would count as our own stall and refresh every peer.)
    for t in (1.25, 1.3, 1.35, 1.4, 1.45):
        c.step(Tick(), t)
    assert ProbePeer(1) in c.step(DeathReport(1, 2, 2), 1.45)
    assert DropPeer not in kinds(c.step(Tick(), 1.5) + c.step(Tick(), 1.55) + c.step(Tick(), 1.6))
    gone = c.step(Tick(), 1.65)
    assert DropPeer in kinds(gone) and not c.nodemap.nodes[1].connected
    assert any("no answer within 200 ms" in t for t in texts(gone))


def test_death_reports_naming_another_reporter_or_from_strangers_are_ignored():
    c = core(n=4)
    c.step(PeerConnected(1), 0.0)
    c.step(PeerConnected(2), 0.0)
    # Node 3 is not connected (it crashed, say); a report on its address about node 1:
    ignored = c.step(DeathReport(1, 3, 3), 5.0)
    assert kinds(ignored) == [Log] and "not connected" in texts(ignored)[0]
    # Node 2's connection carrying a report in node 3's name:
    ignored = c.step(DeathReport(1, 3, 2), 5.0)
    assert kinds(ignored) == [Log] and "names node 3 as the reporter" in texts(ignored)[0]
    assert c.nodemap.nodes[1].connected


def test_what_peers_make_us_log_is_rate_limited():
    c = core(n=4)
    c.step(PeerConnected(1), 0.0)
    lines = []
    for i in range(1000):
        lines += texts(c.step(DeathReport(1, 3, 3), 1.0 + i * 0.001))
    assert len(lines) == 5
    later = texts(c.step(DeathReport(1, 3, 3), 12.0))
    assert len(later) == 1 and "(995 more like this in the last 10 s)" in later[0]


def test_becoming_inactive_enters_recovery_mode_and_drops_ips():
    c = core()
    actions = c.step(SetBan(60), 1.0)
    assert texts(actions)[0] == "Banning this node for 60 seconds"
    assert EnterRecoveryMode() in actions and DropAllIPs("node became inactive") in actions
    assert SendState(BROADCAST_CONNECTED) in actions and OwnFlagsChanged in kinds(actions)
    # The ban runs out on the core's own clock.
    assert c.next_deadline() <= 61.0
    expired = c.step(Tick(), 61.0)
    assert "Banning timed out" in texts(expired)
    assert not c.nodemap.me.flags & NodeFlag.BANNED


def test_the_leader_is_asked_to_act_on_flag_changes_only_while_leading():
    c = core(lock=False)
    c.step(PeerConnected(1), 0.0)
    assert LeaderWork not in kinds(c.step(PeerState(1, 1, NodeFlag.PERMANENTLY_DISABLED, Runstate.RUNNING, 0), 0.1))
    c.election.leader = 0                          # as if elected
    work = c.step(PeerState(1, 1, 0, Runstate.RUNNING, 0), 0.2)
    assert LeaderWork(False, True, "node 1 flags 0x4 (DISABLED) -> 0x0 (OK)") in work
    assert c.step(PeerState(2, 1, 0, 0, 0), 0.3) == [Log(logging.WARNING, "Node 2 sent the state of node 1: ignored")]


def test_admin_commands_change_own_flags_with_ctdbs_log_lines():
    c = core()
    assert texts(c.step(Admin("disable"), 0.0))[0] == "Disable node"
    assert c.nodemap.me.flags & NodeFlag.PERMANENTLY_DISABLED
    assert texts(c.step(Admin("enable"), 0.1))[0] == "Enable node"
    with pytest.raises(ValueError):
        c.step(Admin("explode"), 0.2)


def test_runstates_are_logged_and_running_is_announced():
    c = core()
    assert texts(c.step(SetRunstate(Runstate.STARTUP), 0.0)) == ["Set runstate to STARTUP (4)"]
    running = c.step(SetRunstate(Runstate.RUNNING), 0.1)
    assert texts(running) == ["Set runstate to RUNNING (5)"] and SendState(BROADCAST_CONNECTED) in running
    assert c.step(SetRunstate(Runstate.RUNNING), 0.2) == []


def test_no_leader_for_drop_all_ips_after_seconds_drops_the_ips():
    from ctdblab.daemon.core.node import LeaderAnnounced
    c = core()
    c.step(PeerConnected(1), 0.0)
    c.step(LeaderAnnounced(1, 1), 0.1)
    assert c.leader == 1
    lost = c.step(PeerDisconnected(1, "connection reset"), 1.0)
    assert LeaderChanged(1, UNKNOWN_PNN, "leader node 1 is dead") in lost
    # The lock attempt of the election never answers: nobody leads for 3 s.
    actions = []
    for t in (2.0, 3.0, 3.9):
        actions += c.step(Tick(), t)
    assert DropAllIPs("no leader") not in actions
    actions = c.step(Tick(), 4.05)
    assert DropAllIPs("no leader") in actions


def _lost_the_leader_with_peers_left(n=5):
    """Node 0 of `n`, connected to all, follows node 1, then loses its link to node 1 only."""
    from ctdblab.daemon.core.node import LeaderAnnounced
    c = core(n=n)
    for p in range(1, n):
        c.step(PeerConnected(p), 0.0)
    c.step(LeaderAnnounced(1, 1), 0.1)
    c.step(PeerDisconnected(1, "no traffic"), 1.0)
    assert c.leader == UNKNOWN_PNN
    return c


def test_a_peer_following_a_leader_this_node_cannot_reach_makes_it_drop_its_ips_once():
    from ctdblab.daemon.core.node import LeaderAnnounced, LeaderElsewhere
    c = _lost_the_leader_with_peers_left()
    actions = c.step(LeaderElsewhere(1, 2), 1.3)
    assert DropAllIPs("cut off from leader 1") in actions
    assert any("Node 2 follows leader 1, which this node cannot reach" in t for t in texts(actions))
    assert c.step(LeaderElsewhere(1, 3), 1.6) == []           # once per loss of the leader
    c.step(PeerConnected(1), 2.0)
    c.step(LeaderAnnounced(1, 1), 2.1)                        # the leader reaches us again
    c.step(PeerDisconnected(1, "no traffic"), 5.0)
    assert DropAllIPs("cut off from leader 1") in c.step(LeaderElsewhere(1, 2), 5.3)


def test_a_peer_that_dropped_its_leader_for_an_election_still_names_it_while_it_hears_it():
    """PYCTDB_LEADER's answer: a node that lost its link to a live leader calls an election,
    and its peers drop that leader; asked who leads, they name the leader they still hear."""
    from ctdblab.daemon.core.node import LeaderAnnounced, Traffic
    c = core(n=4)
    for p in (1, 2, 3):
        c.step(PeerConnected(p), 0.0)
    c.step(LeaderAnnounced(1, 1), 0.1)
    assert c.leader_followed(0.1) == 1
    c.step(Traffic(1), 1.0)
    c.step(LeaderAnnounced(2, UNKNOWN_PNN), 1.0)             # node 2 calls an election
    assert c.leader == UNKNOWN_PNN
    assert c.leader_followed(1.1) == 1                        # heard 100 ms ago
    assert c.leader_followed(1.25) == UNKNOWN_PNN             # silent for half the dead timeout
    c.step(Traffic(1), 1.3)
    assert c.leader_followed(1.35) == 1
    c.step(PeerDisconnected(1, "no traffic"), 1.4)            # a leader we no longer reach
    assert c.leader_followed(1.4) == UNKNOWN_PNN
    d = core(n=4)
    for p in (1, 2, 3):
        d.step(PeerConnected(p), 0.0)
    d.step(LeaderAnnounced(1, 1), 0.1)
    d.step(LeaderAnnounced(3, 3), 0.2)                        # a new leader, announced
    assert d.leader_followed(0.2) == 3


def test_a_leader_this_node_reaches_or_an_unknown_one_or_a_stranger_witness_drops_nothing():
    from ctdblab.daemon.core.node import LeaderElsewhere
    c = _lost_the_leader_with_peers_left()
    assert c.step(LeaderElsewhere(2, 3), 1.3) == []            # node 2 leads: we reach it
    assert c.step(LeaderElsewhere(UNKNOWN_PNN, 3), 1.3) == []  # the peer has no leader either
    assert c.step(LeaderElsewhere(0, 3), 1.3) == []            # "you lead": not elsewhere
    c.step(PeerDisconnected(4, "no traffic"), 1.4)
    assert c.step(LeaderElsewhere(1, 4), 1.5) == []            # a witness we do not reach
    from ctdblab.daemon.core.node import LeaderAnnounced
    d = core(n=5)
    for p in range(1, 5):
        d.step(PeerConnected(p), 0.0)
    d.step(LeaderAnnounced(2, 2), 0.1)                         # we follow a leader ourselves
    assert d.step(LeaderElsewhere(1, 3), 0.5) == []


# -- CTDB's keepalive version rule (docs/ctdbd-gaps-spec.md §4.1, measured on ctdbd 4.17) ------
NEWER = keepalive_version(4, 18)


def test_a_peer_of_another_version_that_has_been_up_longer_shuts_this_node_down():
    c = core()
    my_uptime = 10                                 # seconds since START_WALL at now=10
    actions = c.step(PeerKeepalive(2, NEWER, my_uptime + 600), 10.0)
    assert texts(actions) == ["Keepalive version mismatch 0x00040011 != 0x00040012 from node 2",
                              "CTDB Cluster with mixed versions, cannot continue"]
    assert Shutdown in kinds(actions)


def test_a_younger_peer_of_another_version_is_ignored_it_leaves_itself():
    c = core()
    assert c.step(PeerKeepalive(2, NEWER, 0), 10.0) == []
    # Equal uptimes: the lower version leaves.
    assert c.step(PeerKeepalive(2, keepalive_version(4, 16), 10), 10.0) == []
    assert Shutdown in kinds(c.step(PeerKeepalive(2, NEWER, 10), 10.0))


def test_a_header_only_keepalive_is_a_missing_version():
    actions = core().step(PeerKeepalive(1, None, 0), 5.0)
    assert texts(actions)[0] == "Keepalive version missing from node 1" and Shutdown in kinds(actions)


def test_allow_mixed_versions_turns_the_check_off_and_the_same_version_passes():
    assert core(mixed=True).step(PeerKeepalive(2, NEWER, 10_000), 10.0) == []
    assert core().step(PeerKeepalive(2, KEEPALIVE_VERSION_4_17, 10_000), 10.0) == []


def test_nodes_reaching_a_majority_together_race_for_the_lock_lowest_pnn_first():
    from ctdblab.daemon.core.election import TakeLock
    first = core(pnn=0)
    assert TakeLock() in first.step(PeerConnected(1), 1.0)          # the lowest PNN at once
    later = core(pnn=2)
    assert TakeLock() not in later.step(PeerConnected(0), 1.0)      # a lower PNN is there
    assert TakeLock() not in later.step(Tick(), 1.05)
    assert TakeLock() in later.step(Tick(), 1.1)                     # 0.1 s per lower PNN


def test_a_node_cut_off_from_the_majority_enters_recovery_mode_so_it_commits_nothing():
    """A commit acknowledged by a node alone would be lost to the majority's copy when it
    rejoins; in recovery mode the persistent commit service refuses it."""
    c = core(pnn=1)
    c.step(PeerConnected(0), 1.0)
    c.step(PeerConnected(2), 1.0)
    assert EnterRecoveryMode() not in c.step(PeerDisconnected(0, "test"), 2.0)    # 2 of 3: fine
    actions = c.step(PeerDisconnected(2, "test"), 2.1)                            # 1 of 3
    assert EnterRecoveryMode() in actions
    assert any(isinstance(a, DropAllIPs) for a in actions)
    assert any("recovery mode until it is recovered again" in t for t in texts(actions))


def test_a_stall_says_how_much_cpu_the_daemon_used_meanwhile():
    """Busy (its own work blocked the loop) or not running (the machine did not schedule it):
    the two call for different fixes, and the log line tells them apart."""
    c = core()
    c.step(PeerConnected(1), 0.0)
    watched(c, 1, 0.0)
    for i in range(1, 5):
        c.step(Tick(cpu=1.0 + i * 0.001), i * 0.1)
    starved = texts(c.step(Tick(cpu=1.010), 1.0))         # 600 ms late, 6 ms of CPU
    assert any(t.startswith("Event loop stalled: timer ran") and
               "(this daemon used 6 ms of CPU in the last 600 ms)" in t for t in starved), starved
    for i in range(11, 15):
        c.step(Tick(cpu=1.010 + (i - 10) * 0.001), i * 0.1)
    busy = texts(c.step(Tick(cpu=1.6), 2.0))               # 600 ms late, 586 ms of CPU
    assert any("(this daemon used 586 ms of CPU in the last 600 ms)" in t for t in busy), busy
    for i in range(21, 25):
        c.step(Tick(cpu=1.6 + (i - 20) * 0.001, waited=0.1), i * 0.1)
    queued = texts(c.step(Tick(cpu=1.606, waited=0.680), 3.0))   # 580 ms waiting for a CPU
    assert any("(this daemon used 2 ms of CPU and waited 580 ms for one in the last 600 ms)" in t
               for t in queued), queued


def test_a_node_cut_off_from_the_majority_says_why_it_must_not_host_ips():
    """The public IP service asks this before it takes an IP (server/public_ips.py)."""
    c = core(pnn=1)
    c.step(PeerConnected(0), 1.0)
    c.step(PeerConnected(2), 1.0)
    assert c.hosting_refusal() is None
    c.step(PeerDisconnected(0, "test"), 2.0)
    assert c.hosting_refusal() is None                     # 2 of 3: still the majority
    c.step(PeerDisconnected(2, "test"), 2.1)
    assert c.hosting_refusal() == "cut off from the majority (1 of 3 nodes connected)"
    c.step(PeerConnected(2), 3.0)
    assert c.hosting_refusal() is None


def test_a_watched_peer_whose_kernel_answers_is_held_and_reports_of_its_death_refuted():
    from ctdblab.daemon.core.membership import ProbeKernel
    from ctdblab.daemon.core.node import KernelAnswers
    c = core()                                     # heartbeat 100 ms, dead timeout 400 ms
    c.step(PeerConnected(1), 0.0)
    c.step(PeerConnected(2), 0.0)
    for i in range(1, 21):
        c.step(Tick(), i * 0.05)
    watched(c, 1, 1.0)                             # its last heartbeat
    probes = []
    for t in (1.1, 1.2, 1.3):                      # asked once its deadline (1.4) is within 150 ms
        probes += c.step(Tick(), t)
    assert ProbeKernel(1) in probes
    c.step(KernelAnswers(((1, 1.301),)), 1.31)
    held = c.step(Tick(), 1.45)                    # past its timeout: held, not dropped
    assert DropPeer not in kinds(held) and c.nodemap.nodes[1].connected
    kept = c.step(DeathReport(1, 2, 2), 1.46)
    assert DropPeer not in kinds(kept)
    assert "reports node 1 dead, but its kernel answers: keeping it" in texts(kept)[0]
    # It stays silent and its kernel stops answering: dead one timeout after the last answer.
    dead = []
    for t in (1.5, 1.55, 1.6, 1.65, 1.7, 1.71):    # on time: a late tick would be our own stall
        dead += c.step(Tick(), t)
    assert any(isinstance(a, DropPeer) and a.pnn == 1 for a in dead)
    assert any("its kernel last answered 409 ms ago" in x for x in texts(dead))
