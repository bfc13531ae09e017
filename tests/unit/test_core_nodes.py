from __future__ import annotations

import pytest

from ctdblab.daemon.core.nodes import NodeMap, flags_text
from ctdblab.daemon.protocol.constants import NodeFlag, Runstate

D, U, PD, B, DEL, S = (NodeFlag.DISCONNECTED, NodeFlag.UNHEALTHY, NodeFlag.PERMANENTLY_DISABLED,
                       NodeFlag.BANNED, NodeFlag.DELETED, NodeFlag.STOPPED)


def make(n=3, me=0, **kw):
    return NodeMap.from_addresses([f"198.18.0.{i + 1}" for i in range(n)], me, **kw)


def test_initial_flags_follow_ctdbd():
    nm = NodeMap.from_addresses(["198.18.0.1", None, "198.18.0.3"], 0)
    assert nm.me.flags == U                       # unhealthy until the first monitor
    assert nm.nodes[1].flags == DEL and nm.nodes[1].address == "0.0.0.0"
    assert nm.nodes[2].flags == D | U
    assert nm.connected_pnns() == [0]
    assert [n.pnn for n in nm.peers()] == [2]


def test_start_as_disabled_and_stopped():
    nm = make(start_disabled=True, start_stopped=True)
    assert nm.me.flags == U | PD | S
    assert nm.inactive


def test_bad_pnn_rejected():
    with pytest.raises(ValueError):
        NodeMap.from_addresses(["198.18.0.1", None], 1)


def test_connect_push_and_death():
    nm = make()
    ch = nm.mark_connected(1)
    assert ch.old_flags == D | U and ch.new_flags == U
    assert nm.mark_connected(1) is None
    ch = nm.apply_pushed_state(1, 0, Runstate.RUNNING)
    assert ch.new_flags == 0 and nm.nodes[1].runstate == Runstate.RUNNING
    # A push cannot clear our local DISCONNECTED view nor set DELETED.
    nm.mark_disconnected(2)
    nm.apply_pushed_state(2, DEL | PD, Runstate.RUNNING)
    assert nm.nodes[2].flags == D | PD
    ch = nm.mark_disconnected(1)
    assert ch.new_flags == D | U and nm.nodes[1].runstate == Runstate.UNKNOWN
    assert nm.mark_disconnected(1) is None
    # Pushes about ourselves are ignored.
    assert nm.apply_pushed_state(0, B) is None


def test_admin_transitions_and_masks():
    nm = make()
    nm.set_runstate(Runstate.RUNNING)
    assert not nm.can_host_ips()                  # still unhealthy
    assert nm.set_healthy(True).new_flags == 0
    assert nm.can_host_ips()
    assert nm.disable().new_flags == PD
    assert nm.disable() is None
    assert not nm.can_host_ips() and not nm.inactive
    assert nm.enable().new_flags == 0
    nm.stop()
    assert nm.inactive and not nm.can_host_ips()
    assert nm.active_pnns() == []
    nm.cont()
    assert nm.active_pnns() == [0]


def test_ban_expires():
    nm = make()
    ch = nm.set_ban(30, now=100.0)
    assert ch.new_flags & B and nm.ban_remaining(110.0) == 20
    assert nm.expire_ban(129.0) is None
    assert nm.expire_ban(130.0).new_flags & B == 0
    nm.set_ban(30, now=0.0)
    assert nm.set_ban(0, now=1.0).new_flags & B == 0
    with pytest.raises(ValueError):
        nm.set_ban(-1, now=0.0)


def test_flags_text_matches_ctdb_spelling():
    assert flags_text(0) == "OK"
    assert flags_text(D | U) == "DISCONNECTED|UNHEALTHY|INACTIVE"
    assert flags_text(PD) == "DISABLED"
    assert flags_text(B | S) == "BANNED|STOPPED|INACTIVE"
