"""This node's public-IP table: runtime additions and deletions as ctdbd makes them
(`ctdb addip` / `ctdb delip`, docs/ctdbd-gaps-spec.md §1), and availability."""

from __future__ import annotations

from ctdblab.daemon.core.publicips import PublicIPs
from ctdblab.daemon.protocol.constants import UNKNOWN_PNN


def table() -> PublicIPs:
    return PublicIPs.from_config(0, [("198.19.8.1", 24, ["eth1"]), ("198.19.8.2", 24, ["eth1"])])


def test_addip_adds_an_unowned_ip_once():
    t = table()
    assert t.add("198.19.8.10", 24, ["eth2"])
    vnn = t.find("198.19.8.10")
    assert vnn.pnn == UNKNOWN_PNN and vnn.iface is None and "eth2" in t.ifaces
    assert t.available(vnn, node_can_host=True)
    assert not t.add("198.19.8.10", 16, ["eth1"])          # already known: nothing changes
    assert t.find("198.19.8.10").prefixlen == 24


def test_delip_of_a_hosted_ip_waits_for_its_release_and_it_is_no_longer_available():
    t = table()
    vnn = t.find("198.19.8.1")
    t.assign(vnn, "eth1")
    assert t.delete("198.19.8.1") == "pending"
    assert t.find("198.19.8.1") is vnn and vnn.delete_pending
    assert not t.available(vnn, node_can_host=True)


def test_delip_of_an_ip_hosted_elsewhere_goes_at_once_and_unknown_ips_are_reported():
    t = table()
    t.find("198.19.8.2").pnn = 3
    assert t.delete("198.19.8.2") == "deleted" and t.find("198.19.8.2") is None
    assert t.delete("198.19.8.77") == "unknown"


def test_what_the_leader_gave_away_while_out_of_touch_is_let_go():
    from ctdblab.daemon.core.publicips import given_away

    held = ["198.19.8.1", "198.19.8.2", "198.19.8.3", "198.19.8.4"]
    leader_view = [("198.19.8.1", 0),            # moved to node 0 while this node was away
                   ("198.19.8.2", 2),            # still ours
                   ("198.19.8.3", UNKNOWN_PNN),  # the leader left it unassigned: keep serving
                   ("198.19.8.9", 1)]            # not ours; .4 unknown to the leader: keep
    assert given_away(held, leader_view, my_pnn=2) == [("198.19.8.1", 0)]
    assert given_away([], leader_view, my_pnn=2) == []
    assert given_away(["2001:db8::1"], [("2001:db8:0::1", 1)], my_pnn=2) == [("2001:db8::1", 1)]
