"""pyctdbd failover after a hard reset, in network namespaces (root; no Mininet).

A client in its own namespace holds a TCP connection to a public IP, blocked in recv(), served
by a plain listener that never registers with the daemon (pyctdbd finds the connection with
sock_diag). The node hosting the IP is hard-reset (switch port cut, every process killed, link
deleted). Measured, from the cut: the survivors' detection ("dead count reached"), the takeover
("Takeover of IP"), and the client's ECONNRESET (from the tickle ACK).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from pyctdbd_netns import BLOCKED_CLIENT, HOLD_SERVER, NetnsCluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ctdb") is None,
                                reason="needs root and Debian's ctdb tool")


@pytest.fixture
def cluster(tmp_path):
    c = NetnsCluster(tmp_path, 3)
    try:
        c.start()
        c.wait_for("healthy cluster", c.healthy, timeout=30)
        for pnn in range(c.n):
            c.spawn(f"hold{pnn}", c.ns(pnn), HOLD_SERVER)
        time.sleep(0.3)
        yield c
    finally:
        c.stop()


def measure_failover(c: NetnsCluster, victim_is_leader: bool) -> dict[str, float]:
    leader = c.leader(0)
    ips = c.ips(0)
    if victim_is_leader:
        victim = leader
    else:
        victim = next(p for p in sorted(set(ips.values())) if p != leader)
    vip = next(ip for ip, owner in ips.items() if owner == victim)
    survivors = [p for p in range(c.n) if p != victim]
    client = c.spawn("client", c.client_ns, BLOCKED_CLIENT.replace("{vip}", vip))
    first = client.stdout.readline()
    assert first.startswith("connected"), first + client.stderr.read()
    # Nobody registers this connection: the owner sees its TCP counters move (polled every
    # 0.1 s), finds it with sock_diag and replicates it at once, so 1 s is plenty.
    c.wait_for("the connection replicated to the survivors", lambda: all(
        f"SRC: {c.client_ip}:" in c.ctdb(p, "gettickles", vip).stdout for p in survivors), timeout=1.0)
    t_cut = c.hard_reset(victim)
    line = client.stdout.readline().split()
    assert line and line[0] == "reset", f"client did not get a reset: {line} {client.stderr.read()}"
    t_reset = float(line[-1])
    c.wait_for("victim's IPs moved", lambda: victim not in c.ips(survivors[0]).values(), timeout=10)
    detect = [t for p in survivors for t, _ in c.log_events(p, rf"dead count reached for node {victim}\b", t_cut)]
    takeover = [t for p in survivors for t, _ in c.log_events(p, rf"Takeover of IP {vip}/", t_cut)]
    assert detect and takeover, c.describe()
    return {"victim": victim, "leader": leader, "detect": min(detect) - t_cut,
            "takeover": min(takeover) - t_cut, "reset": t_reset - t_cut}


@pytest.mark.parametrize("victim_is_leader", [False, True], ids=["non-leader", "leader"])
def test_hard_reset_moves_ip_and_resets_client(cluster, victim_is_leader, record_property):
    figures = measure_failover(cluster, victim_is_leader)
    for key, value in figures.items():
        record_property(key, value)
    print(f"\nfailover ({'leader' if victim_is_leader else 'non-leader'} victim): "
          + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    # Defaults: DeadTimeoutMs=400 with 100 ms heartbeats; well under a second end to end.
    assert figures["detect"] < 0.8
    assert figures["takeover"] < 0.9
    assert figures["reset"] < 1.0
    assert figures["takeover"] <= figures["reset"] + 0.01
