"""Each fault does what it says, seen from inside the cluster (pyctdbd: it starts in seconds),
and the nemesis records it in the history."""

from __future__ import annotations

import re
import time

import pytest

from ctdblab import chaos
from ctdblab.history import History, read_history


@pytest.fixture
def cluster(lab_cluster):
    # A standalone smbd: these tests check what each fault itself kills or stops, and a clustered
    # smbd exits by itself once its daemon is gone ("cluster fatal event", as with ctdbd).
    return lab_cluster(3, daemon="pyctdbd", tunables="aggressive", clustered_smbd=False)


@pytest.fixture
def history(tmp_path):
    with History(tmp_path / "h.jsonl") as history:
        yield history


@pytest.fixture
def nemesis(cluster, history):
    return chaos.Nemesis(cluster, history)


def faults(history: History) -> list[tuple[str, str, str | None]]:
    return [(e["fault"], e["phase"], e.get("step")) for e in read_history(history.path)
            if e["kind"] == "fault"]


def states(cluster, observer):
    return {s.pnn: s.state() for s in cluster.status(observer)}


def test_crash_kills_only_the_daemon_and_peers_notice(cluster, nemesis, history):
    victim = 2
    smbd_before = [p for p in cluster.node(victim).processes() if chaos.program_name(p) == "smbd"]
    pid = nemesis.inject(chaos.Crash(victim))
    cluster.wait_until(lambda: states(cluster, 0)[victim] != "OK", 5, "node 2 seen as not OK")
    cluster.wait_until(lambda: victim not in cluster.ip_all(0).values(), 10, "node 2's IP moved")
    assert pid not in cluster.node(victim).processes()
    assert all(p in cluster.node(victim).processes() for p in smbd_before), "crash killed smbd"
    assert faults(history) == [("crash", "begin", None), ("crash", "end", None)]


def test_freeze_then_thaw(cluster, nemesis, history):
    pids = nemesis.inject(chaos.Freeze(1))
    assert pids
    cluster.wait_until(lambda: "DISCONNECTED" in states(cluster, 0)[1], 5, "frozen node 1 dead")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "T"      # stopped
    nemesis.inject(chaos.Thaw(1, pids))
    cluster.wait_until(lambda: states(cluster, 0)[1] == "OK", 30, "thawed node 1 OK again")
    assert [f for f, phase, _ in faults(history) if phase == "end"] == ["freeze", "thaw"]


def test_partition_and_heal_only_touch_the_private_network(cluster, nemesis, history):
    ip0, ip2 = cluster.plan.private_ip(0), cluster.plan.private_ip(2)
    ping = lambda a, b: cluster.node(a).run(["ping", "-c1", "-W1", b], timeout=5).returncode == 0
    nemesis.inject(chaos.Partition([[0, 1], [2]]))
    assert not ping(0, ip2) and not ping(2, ip0)
    assert ping(0, cluster.plan.private_ip(1))
    assert ping(2, cluster.plan.node_public_ip(0))          # the public network is untouched
    nemesis.inject(chaos.Heal())
    assert ping(0, ip2) and ping(2, ip0)
    assert [f for f, phase, _ in faults(history) if phase == "end"] == ["partition", "heal"]


def test_flap_takes_the_link_down_for_a_while(cluster, nemesis, history):
    t0 = time.time()
    nemesis.inject(chaos.Flap(2, 1.0, "private"))
    assert 1.0 <= time.time() - t0 < 3.0
    assert cluster.node(0).run(["ping", "-c1", "-W2", cluster.plan.private_ip(2)],
                               timeout=5).returncode == 0
    recorded = [e for e in read_history(history.path) if e["kind"] == "fault"]
    assert [(e["phase"], e.get("step")) for e in recorded] == [
        ("begin", None), ("step", "down"), ("step", "up"), ("end", None)]
    assert recorded[2]["t"] - recorded[1]["t"] >= 1.0


def test_loss_drops_about_the_asked_share(cluster, nemesis):
    nemesis.inject(chaos.Loss(1, 50, "public"))
    client = cluster.client(0)
    out = client.run(["ping", "-c", "200", "-i", "0.01", "-W", "1", "-q",
                      cluster.plan.node_public_ip(1)], timeout=30).stdout
    lost = float(re.search(r"([\d.]+)% packet loss", out).group(1))
    # Both directions drop 50 %, so a round trip survives 25 % of the time (binomial spread).
    assert 60 <= lost <= 90, out
    nemesis.inject(chaos.ClearLoss(1))
    out = client.run(["ping", "-c", "50", "-i", "0.01", "-q", cluster.plan.node_public_ip(1)],
                     timeout=30).stdout
    assert " 0% packet loss" in out


@pytest.mark.parametrize("daemon", ["pyctdbd", "ctdb"])
def test_dead_smbd_makes_the_node_unhealthy(lab_cluster, history, daemon):
    cluster = lab_cluster(3, daemon=daemon, tunables="aggressive")      # MonitorInterval=5
    chaos.Nemesis(cluster, history).inject(chaos.KillSmbd(1))
    cluster.wait_until(lambda: "UNHEALTHY" in states(cluster, 0)[1], 30, "node 1 UNHEALTHY")
    cluster.wait_until(lambda: 1 not in cluster.ip_all(0).values(), 15, "node 1's IP moved away")
