"""The leader's scheduler and the health core, alone (their effect on a cluster is in
test_sim_cluster.py)."""

from __future__ import annotations

import logging

from ctdblab.daemon.core.health import Health, MonitorResult
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.core.scheduler import RETRY_MAX, LeaderScheduler, SchedulerSettings
from ctdblab.daemon.protocol.constants import UNKNOWN_PNN, NodeFlag


def nodemap(n: int = 3, connected: bool = True, healthy: bool = True) -> NodeMap:
    m = NodeMap.from_addresses([f"198.18.0.{i + 1}" for i in range(n)], 0)
    for node in m.nodes:
        if connected and node.pnn:
            m.mark_connected(node.pnn)
        if healthy:
            node.flags &= ~NodeFlag.UNHEALTHY
    return m


def leading(started_at: float = -100.0) -> LeaderScheduler:
    s = LeaderScheduler(0, started_at)
    s.leader_changed(UNKNOWN_PNN, 0)
    return s


def test_nothing_runs_unless_leading():
    s = LeaderScheduler(0, 0.0)
    s.request(recovery=True, takeover=True)
    assert s.next_job(10.0, nodemap(), {}, True).empty
    assert not s.need_recovery and not s.need_takeover


def test_a_due_recovery_and_takeover_run_together_and_requests_are_answered_by_that_run():
    s = leading()
    s.request(recovery=True, takeover=True, reply_to=(2, 0xAB))
    s.request(takeover=True, reply_to=(1, 0))          # srvid 0: nobody waits for an answer
    job = s.next_job(0.0, nodemap(), {}, True)
    assert job.recovery and job.takeover.requests == ((2, 0xAB),)
    assert s.next_job(0.1, nodemap(), {}, True).empty


def test_disabled_takeover_runs_wait_for_the_window_and_are_then_run():
    s = leading()
    s.disable_takeovers(0.0, 60)
    s.request(takeover=True)
    job = s.next_job(1.0, nodemap(), {}, True)
    assert job.takeover is None and job.wake_at == 60.0
    assert job.notes == ("Not running takeover run - disabled for 59.0 more seconds",)
    assert s.next_job(60.0, nodemap(), {}, True).takeover is not None
    s.disable_recoveries(0.0, 30)
    s.request(recovery=True)
    assert not s.next_job(10.0, nodemap(), {}, True).recovery
    s.disable_recoveries(10.0, 0)                      # re-enabled
    assert s.next_job(10.0, nodemap(), {}, True).recovery


def test_failed_runs_back_off_doubling_to_5_s_and_membership_changes_rerun_at_once():
    s = leading()
    delays = [s.finished(False, False) for _ in range(8)]
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and max(delays) == RETRY_MAX
    assert s.need_recovery and s.need_takeover
    assert s.finished(False, True) == 0.0
    assert s.finished(True, False) is None and s.retry_delay == 0.0


def test_requests_while_nobody_leads_are_answered_by_the_next_leader():
    s = LeaderScheduler(1, 0.0)
    assert not s.takeover_requested(2, 0xCD, UNKNOWN_PNN)
    s.leader_changed(UNKNOWN_PNN, 1)
    s.request(takeover=True)
    assert s.next_job(0.0, nodemap(), {}, True).takeover.requests == ((2, 0xCD),)
    # A leader that steps down forgets what it was asked.
    s.takeover_requested(0, 0xEF, 1)
    s.leader_changed(1, 0)
    assert s.requests == [] and s.orphan_requests == []


def test_ban_credits_two_per_node_within_the_grace_period():
    s = leading()
    s.settings = SchedulerSettings(enable_bans=True, ban_period=300, grace_period=120.0)
    bans = [s.blame(2, "TAKEOVER_IP failed", float(t), 3) for t in range(6)]
    assert bans[:5] == [None] * 5 and bans[5].pnn == 2 and bans[5].seconds == 300 and bans[5].credits == 6
    # Credits older than the grace period are forgotten.
    for t in range(5):
        assert s.blame(1, "x", float(t), 3) is None
    assert s.blame(1, "x", 200.0, 3) is None and s.ban_credits[1][0] == 1
    s.settings = SchedulerSettings(enable_bans=False)
    assert all(s.blame(0, "x", 300.0, 3) is None for _ in range(10))


def test_a_fresh_cluster_waits_for_nodes_that_are_still_starting():
    s = leading(started_at=0.0)
    s.request(takeover=True)
    m = nodemap(connected=False)                      # the others not connected yet
    job = s.next_job(1.0, m, {}, False)
    assert job.takeover is None and "still starting" in job.notes[0]
    assert s.next_job(3.5, m, {}, False).takeover is not None   # waited long enough
    s.request(takeover=True)
    assert s.next_job(1.0, nodemap(connected=False), {}, True).takeover is not None   # IPs hosted: no wait


def test_health_follows_monitor_results_with_ctdbs_timeout_count():
    h = Health(monitor_interval=15.0, timeout_limit=3)
    ok = h.result(MonitorResult(True), healthy_now=False)
    assert ok.healthy is True and ok.wait == 5.0
    assert [t for _, t in ok.logs] == ["monitor event OK - node re-enabled", "Node became HEALTHY"]
    assert h.result(MonitorResult(True), healthy_now=True).wait == 10.0       # doubling back up
    assert h.result(MonitorResult(True), healthy_now=True).wait == 15.0
    for i in range(2):
        v = h.result(MonitorResult(False, timed_out=True), healthy_now=True)
        assert v.healthy is None and v.logs == ((logging.ERROR, f"monitor event timed out ({i + 1} of 3)"),)
    assert h.result(MonitorResult(False, timed_out=True), healthy_now=True).healthy is False
    failed = h.result(MonitorResult(False, failure="50.samba: smbd not listening\n"), healthy_now=True)
    assert failed.healthy is False and "Node became UNHEALTHY (50.samba: smbd not listening)" in [t for _, t in failed.logs]
    cancelled = h.result(MonitorResult(False, cancelled=True), healthy_now=False)
    assert cancelled.healthy is None and cancelled.wait == 0.2


def test_the_culprit_of_a_failed_database_recovery_is_banned_after_two_such_recoveries():
    s = leading()
    assert s.blame(1, "database recovery failed", 0.0, 3, credits=3) is None
    ban = s.blame(1, "database recovery failed", 1.0, 3, credits=3)
    assert ban is not None and ban.pnn == 1 and ban.credits == 6


def test_a_recovery_culprit_needs_a_database_that_failed_every_attempt_because_of_it():
    from ctdblab.daemon.server.db_recovery_driver import RecoveryOutcome
    assert RecoveryOutcome(False, ban_credits={}).banning_culprit() is None
    assert RecoveryOutcome(False, ban_credits={2: 2}).banning_culprit() is None
    assert RecoveryOutcome(False, ban_credits={2: 3, 0: 1}).banning_culprit() == 2
    # one failed step per database of sixteen is still one node's fault: the most failures
    assert RecoveryOutcome(False, ban_credits={2: 16, 1: 30}).banning_culprit() == 1
    assert RecoveryOutcome(False, ban_credits={2: 5, 1: 5}).banning_culprit() == 1
