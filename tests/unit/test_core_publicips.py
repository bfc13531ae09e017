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
