"""A leader that stops leading while its run waits for controls abandons the run
(server/leader.py): no later stage is sent. Found in the lab: a leader cut off from the
majority between two deaths went on with the recovery and takeover run it had begun for the
first death, alone: it left the recovery mode it had entered to protect persistent commits and
gave itself every public IP while the majority served them too."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.core.nodes import NodeMap
from ctdblab.daemon.protocol import Control, PublicIpList, pack_reply, unpack_request
from ctdblab.daemon.protocol.constants import RecMode
from ctdblab.daemon.server.leader import LeaderService
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.server.wire import public_ip

IPS = ["198.19.8.1", "198.19.8.2", "198.19.8.3"]


class Node:
    """What LeaderService reads of the node core."""

    def __init__(self):
        self.my_pnn = 0
        self.is_leader = True
        self.nodemap = NodeMap.from_addresses(["198.18.0.1", "198.18.0.2", "198.18.0.3"], 0)
        for pnn in (1, 2):
            self.nodemap.mark_connected(pnn)
        for node in self.nodemap.nodes:
            node.flags = 0
        self.leader = 0
        self.connected_at = {}

    def lmaster_pnns(self):
        return self.nodemap.active_pnns()


class Messenger:
    """Answers every control; the node loses the lead while control `step_down_on` is under way."""

    def __init__(self, node, step_down_on):
        self.node, self.step_down_on = node, step_down_on
        self.sent: list[tuple[int, Control, bytes]] = []

    def _note(self, pnn, opcode, data):
        self.sent.append((pnn, opcode, data))
        if opcode == self.step_down_on:
            self.node.is_leader = False

    async def controls(self, pnns, opcode, data=b"", *, flags=0, timeout):
        for pnn in pnns:
            self._note(pnn, opcode, data)
        await asyncio.sleep(0)
        if opcode == Control.GET_PUBLIC_IPS:
            ips = PublicIpList([public_ip(pnn, ip) for pnn, ip in enumerate(IPS)])
            return {p: SimpleNamespace(data=pack_reply(Control.GET_PUBLIC_IPS, ips)) for p in pnns}
        return {p: SimpleNamespace(data=b"") for p in pnns}

    async def control(self, pnn, opcode, data=b"", *, flags=0, timeout):
        return (await self.controls([pnn], opcode, data, timeout=timeout))[pnn]

    def is_connected(self, pnn):
        return True

    def send_message(self, *args):
        pass


class DatabaseRecovery:
    """No database attached: the database stage succeeds at once."""

    async def recover(self, targets, generation, *, old_map, new_map):
        return Outcome()


class Outcome:
    def __bool__(self):
        return True

    def banning_culprit(self):
        return None


def leader(step_down_on):
    node = Node()
    messenger = Messenger(node, step_down_on)
    service = LeaderService(node, messenger, Tunables(), Tasks(), started_at=0.0, clock=lambda: 100.0,
                            failover_disabled=False, ips_hosted=lambda: True, ban_this_node=lambda pnn: None)
    service.db_recovery = DatabaseRecovery()
    return service, messenger


def opcodes(messenger):
    return [(op, data and unpack_request(op, data)) for _, op, data in messenger.sent]


def test_a_recovery_stops_when_the_node_no_longer_leads():
    service, messenger = leader(step_down_on=Control.START_RECOVERY)
    assert asyncio.run(service._recover()) is False
    sent = opcodes(messenger)
    assert (Control.SET_RECMODE, RecMode.ACTIVE) in sent
    assert (Control.SET_RECMODE, RecMode.NORMAL) not in sent      # the nodes stay in recovery mode
    assert not any(op == Control.SETVNNMAP for op, _ in sent)


def test_a_takeover_run_stops_before_moving_ips_when_the_node_no_longer_leads():
    service, messenger = leader(step_down_on=Control.GET_PUBLIC_IPS)
    assert asyncio.run(service._takeover_run(())) is False
    sent = [op for op, _ in opcodes(messenger)]
    assert Control.GET_PUBLIC_IPS in sent
    assert Control.RELEASE_IP not in sent and Control.TAKEOVER_IP not in sent


def test_a_run_of_a_node_that_still_leads_goes_to_the_end():
    service, messenger = leader(step_down_on=None)
    assert asyncio.run(service._recover()) is True
    assert (Control.SET_RECMODE, RecMode.NORMAL) in opcodes(messenger)
