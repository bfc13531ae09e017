from __future__ import annotations

import pytest

from ctdblab.daemon.core.tickles import KERNEL, REMOTE, Connection, TickleTable, client_source

VIP = "198.19.8.1"


def conn(port, dport=445, vip=VIP):
    return Connection.make("198.19.4.1", port, vip, dport)


def table():
    return TickleTable(public_ips={VIP, "198.19.8.2"})


def test_add_remove_and_port_filter():
    t = table()
    assert t.add(conn(1000), client_source(7))
    assert not t.add(conn(1000), REMOTE)                 # known: another source only
    t.add(conn(1001, dport=139), REMOTE)
    assert t.connections(VIP) == [conn(1000), conn(1001, 139)]
    assert t.connections(VIP, port=139) == [conn(1001, 139)]
    assert t.remove(conn(1000)) and not t.remove(conn(1000))
    with pytest.raises(KeyError):
        t.add(conn(1, vip="198.19.9.9"), REMOTE)


def test_mapped_addresses_are_canonical():
    c = Connection.make("::ffff:198.19.4.1", 5, "::ffff:198.19.8.1", 445)
    assert c == conn(5)
    assert str(c) == "198.19.4.1:5 -> 198.19.8.1:445"


def test_client_disconnect_drops_only_its_entries():
    t = table()
    t.add(conn(1), client_source(1))
    t.add(conn(2), client_source(1))
    t.add(conn(2), KERNEL)
    t.add(conn(3), client_source(2))
    assert t.drop_client(1) == [conn(1)]
    assert set(t.connections(VIP)) == {conn(2), conn(3)}


def test_replace_keeps_local_sources():
    t = table()
    t.add(conn(1), REMOTE)
    t.add(conn(2), client_source(4))
    t.replace(VIP, [conn(9)])
    assert set(t.connections(VIP)) == {conn(2), conn(9)}
    t.replace(VIP, [])
    assert t.connections(VIP) == [conn(2)]


def test_kernel_sync_reports_new_and_gone():
    t = table()
    added, removed = t.sync_kernel(VIP, [conn(1), conn(2)])
    assert added == [conn(1), conn(2)] and removed == []
    t.add(conn(2), client_source(3))
    added, removed = t.sync_kernel(VIP, [conn(3)])
    assert added == [conn(3)] and removed == [conn(1)]   # conn(2) still held by the client
    assert set(t.connections(VIP)) == {conn(2), conn(3)}


def test_prune_after_takeover_and_dirty_marks():
    t = table()
    t.add(conn(1), REMOTE)
    t.add(conn(2), REMOTE)
    t.add(conn(3), client_source(1))
    assert t.take_dirty([VIP]) == [VIP]
    assert t.take_dirty([VIP]) == []
    assert t.prune_after_takeover(VIP, [conn(2)]) == [conn(1)]
    assert set(t.connections(VIP)) == {conn(2), conn(3)}
    assert t.take_dirty(["198.19.8.2"]) == []            # only held IPs are reported
    assert t.take_dirty([VIP]) == [VIP]


def test_public_ip_change_forgets_entries():
    t = table()
    t.add(conn(1), REMOTE)
    t.set_public_ips(["198.19.8.2"])
    assert t.connections(VIP) == [] and len(t) == 0
