"""A node that finds a leader again lets go of the public IPs the leader gave to others while the
node was out of touch (server/public_ips.py `reconcile_with`): the leader's table is asked once,
and only what it assigns to another node is released, through the normal release path."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.core.publicips import PublicIPs
from ctdblab.daemon.failover.effects import RecordingEffects
from ctdblab.daemon.net.rpc import ControlError
from ctdblab.daemon.protocol import Control, PublicIpList, pack_reply
from ctdblab.daemon.server.public_ips import PublicIPService
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.server.wire import public_ip

ME = 2


class Messenger:
    def __init__(self, leader_view=None, error=None):
        self.leader_view, self.error = leader_view or {}, error
        self.asked: list[tuple[int, int]] = []

    async def control(self, pnn, opcode, data=b"", *, flags=0, timeout):
        self.asked.append((pnn, opcode))
        if self.error:
            raise self.error
        ips = PublicIpList([public_ip(owner, ip) for ip, owner in self.leader_view.items()])
        return SimpleNamespace(data=pack_reply(Control.GET_PUBLIC_IPS, ips))

    def deliver_local(self, srvid, data):
        pass


class Scripts:
    async def run(self, event, args=()):
        return SimpleNamespace(ok=True, timed_out=False, cancelled=False, failed_script=None)


def service(messenger):
    table = PublicIPs.from_config(ME, [("198.19.8.1", 20, ["eth1"]), ("198.19.8.2", 20, ["eth1"]),
                                       ("198.19.8.3", 20, ["eth1"])])
    for vnn in list(table):
        table.assign(vnn, "eth1")
    nodemap = NodeMap.from_addresses(["198.18.0.1", "198.18.0.2", "198.18.0.3"], ME)
    effects = RecordingEffects()
    svc = PublicIPService(table, nodemap, effects, SimpleNamespace(), Scripts(), messenger,
                          Tunables(), Tasks(), failover_disabled=False, ban_self=lambda why: None)
    return svc, effects


def held(svc):
    return sorted(v.ip for v in svc.table.held())


def test_the_ips_the_leader_gave_away_are_released_and_the_rest_kept():
    messenger = Messenger({"198.19.8.1": 0, "198.19.8.2": ME, "198.19.8.3": 0xFFFFFFFF})

    async def main():
        svc, effects = service(messenger)
        svc.reconcile_with(1)
        await asyncio.sleep(0.05)
        return svc, effects

    svc, effects = asyncio.run(main())
    assert messenger.asked == [(1, Control.GET_PUBLIC_IPS)]
    assert held(svc) == ["198.19.8.2", "198.19.8.3"]
    assert svc.find("198.19.8.1").pnn == 0          # where it went, as a RELEASE_IP would say


def test_nothing_is_asked_of_this_node_itself_or_of_nobody_and_a_failed_ask_keeps_everything():
    async def main(leader, messenger):
        svc, _ = service(messenger)
        svc.reconcile_with(leader)
        await asyncio.sleep(0.05)
        return svc

    quiet = Messenger({"198.19.8.1": 0})
    for leader in (ME, 0xFFFFFFFF):
        assert held(asyncio.run(main(leader, quiet))) == ["198.19.8.1", "198.19.8.2", "198.19.8.3"]
    assert quiet.asked == []
    failing = Messenger(error=ControlError("timed out"))
    assert held(asyncio.run(main(1, failing))) == ["198.19.8.1", "198.19.8.2", "198.19.8.3"]
    assert failing.asked == [(1, Control.GET_PUBLIC_IPS)]
