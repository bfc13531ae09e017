"""A node cut off from the majority hosts no public IP, whoever asks (server/public_ips.py): it
offers none as available, refuses TAKEOVER_IP, and lets go of an IP whose takeover was under way
when it was cut off. Found in the lab: a leader cut off between two deaths ran the takeover it
had begun and gave itself every IP while the majority served them too."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.core.publicips import PublicIPs
from ctdblab.daemon.failover.effects import RecordingEffects
from ctdblab.daemon.protocol.constants import Runstate, Srvid
from ctdblab.daemon.server.public_ips import PublicIPService
from ctdblab.daemon.server.tasks import Tasks

ME = 0
IPS = ["198.19.8.1", "198.19.8.2"]


class Messenger:
    def __init__(self):
        self.messages: list[tuple[int, int]] = []

    def deliver_local(self, srvid, data):
        pass

    def send_message(self, pnn, srvid, data):
        self.messages.append((pnn, srvid))


class Connections:
    def ip_taken(self):
        pass

    def connections(self, ip):
        return []

    def after_takeover(self, *args, **kwargs):
        pass


class Scripts:
    """takeip runs `on_takeip` (the moment the node is cut off, in one test)."""

    def __init__(self, on_takeip=None):
        self.on_takeip = on_takeip

    async def run(self, event, args=()):
        if event == "takeip" and self.on_takeip is not None:
            self.on_takeip()
        return SimpleNamespace(ok=True, timed_out=False, cancelled=False, failed_script=None)


def service(refusal, scripts=None):
    table = PublicIPs.from_config(ME, [(ip, 20, ["eth1"]) for ip in IPS])
    nodemap = NodeMap.from_addresses(["198.18.0.1", "198.18.0.2", "198.18.0.3"], ME)
    nodemap.me.runstate = Runstate.RUNNING
    nodemap.me.flags = 0
    effects = RecordingEffects()
    svc = PublicIPService(table, nodemap, effects, Connections(), scripts or Scripts(), Messenger(),
                          Tunables(), Tasks(), failover_disabled=False, ban_self=lambda why: None,
                          hosting_refusal=lambda: refusal[0])
    return svc, effects


def test_a_cut_off_node_offers_no_ip_and_refuses_to_take_one():
    refusal = ["cut off from the majority (1 of 3 nodes connected)"]
    svc, effects = service(refusal)
    assert svc.available() == []
    result = asyncio.run(svc.takeover(IPS[0], ME))
    assert result.status == -1 and "cut off from the majority" in result.errmsg
    assert effects.held == {}
    refusal[0] = None                                   # back among the majority
    assert [v.ip for v in svc.available()] == IPS
    assert asyncio.run(svc.takeover(IPS[0], ME)).status == 0
    assert IPS[0] in effects.held


def test_an_ip_taken_while_the_node_was_cut_off_is_released_at_once():
    refusal = [None]

    def cut_off():
        refusal[0] = "cut off from the majority (1 of 3 nodes connected)"

    svc, effects = service(refusal, Scripts(on_takeip=cut_off))
    result = asyncio.run(svc.takeover(IPS[1], ME))
    assert result.status == -1
    assert effects.held == {}
    assert svc.held_ips() == []


def test_a_node_back_among_the_majority_asks_the_leader_for_a_takeover_run_once():
    """The runs while it was cut off gave it nothing, and nothing else would make the leader
    run again: a node that rejoined through several peers one after the other stayed empty."""
    refusal = ["cut off from the majority (2 of 5 nodes connected)"]
    svc, _ = service(refusal)
    for vnn in svc.table:
        vnn.pnn = 2                              # the majority serves them all
    assert svc.available() == []                 # the leader's run while it was cut off
    svc.verify(10.0, leader=1)
    assert svc.messenger.messages == []          # still cut off: nothing to ask for
    refusal[0] = None
    svc.verify(11.0, leader=1)
    assert svc.messenger.messages == [(1, Srvid.TAKEOVER_RUN)]
    svc._asked_until = 0.0                       # the run it asked for ended
    svc.verify(12.0, leader=1)
    assert svc.messenger.messages == [(1, Srvid.TAKEOVER_RUN)]     # once


def test_a_cut_off_node_does_not_acknowledge_an_ip_it_still_holds():
    """Its release of every IP may still be under way: a stale TAKEOVER_IP for one of them is
    refused too, so no leader counts on it."""
    refusal = [None]
    svc, effects = service(refusal)
    assert asyncio.run(svc.takeover(IPS[0], ME)).status == 0
    refusal[0] = "cut off from the majority (1 of 3 nodes connected)"
    assert asyncio.run(svc.takeover(IPS[0], ME)).status == -1
