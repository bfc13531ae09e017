"""keepalived.conf generation (cluster/keepalived_conf.py) and the keepalived launcher's choices."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from ctdblab.cluster.keepalived_conf import (KeepalivedConfigError, advert_interval, instance_name,
                                             keepalived_conf, priority)
from ctdblab.cluster.launchers import KeepalivedLauncher, get_launcher
from ctdblab.cluster.profiles import get_profile
from ctdblab.errors import UserError

NODE_IPS = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
PUBLIC_IPS = ["198.19.8.1", "198.19.8.2", "198.19.8.3"]


def conf(pnn: int, node_ips=NODE_IPS, public_ips=PUBLIC_IPS, advert_s=0.1, prefixlen=20) -> str:
    return keepalived_conf(pnn, node_ips, public_ips, private_iface=f"n{pnn}-eth0",
                           public_iface=f"n{pnn}-eth1", prefixlen=prefixlen, advert_s=advert_s,
                           notify_fifo="/run/ctdb/k.fifo")


def instances(text: str) -> dict[str, str]:
    """{instance name: its block} of a generated keepalived.conf."""
    return dict(re.findall(r"vrrp_instance (\S+) \{\n(.*?)\n\}", text, re.S))


def field(block: str, name: str) -> str:
    (value,) = re.findall(rf"^\s+{name} (\S+)$", block, re.M)
    return value


def block_list(block: str, name: str) -> list[str]:
    (inner,) = re.findall(rf"{name} \{{\n(.*?)\n\s+\}}", block, re.S)
    return [line.strip() for line in inner.splitlines()]


# -- priorities: each public IP has one MASTER, spread like CTDB spreads IPs ----------------------
@pytest.mark.parametrize("nodes", [2, 3, 5, 8])
def test_every_ip_has_exactly_one_master_and_the_masters_are_spread(nodes):
    masters = []
    for k in range(nodes):
        prios = [priority(p, k, nodes) for p in range(nodes)]
        assert len(set(prios)) == nodes, "equal priorities would leave the winner to the IP address"
        assert all(1 <= x <= 254 for x in prios)
        masters.append(prios.index(max(prios)))
    assert masters == list(range(nodes))          # IP k is node k's: one IP per node


def test_backups_follow_the_master_in_pnn_order():
    # IP 1 of 4 nodes: node 1 first, then 2, 3, and 0 last.
    order = sorted(range(4), key=lambda p: -priority(p, 1, 4))
    assert order == [1, 2, 3, 0]


def test_priorities_in_the_generated_files_match():
    for pnn in range(3):
        blocks = instances(conf(pnn))
        assert list(blocks) == [instance_name(ip) for ip in PUBLIC_IPS]
        for k, block in enumerate(blocks.values()):
            assert int(field(block, "priority")) == priority(pnn, k, 3)
            assert int(field(block, "virtual_router_id")) == k + 1
            assert field(block, "state") == "BACKUP"


def test_more_nodes_than_priorities_is_refused():
    with pytest.raises(KeepalivedConfigError, match="priorities"):
        priority(0, 0, 255)


# -- unicast peers on the private network, VIPs on the public interface ---------------------------
def test_unicast_peers_are_the_other_nodes_private_addresses():
    for pnn in range(3):
        for block in instances(conf(pnn)).values():
            assert field(block, "unicast_src_ip") == NODE_IPS[pnn]
            assert block_list(block, "unicast_peer") == [ip for p, ip in enumerate(NODE_IPS) if p != pnn]
            assert field(block, "interface") == f"n{pnn}-eth0"
            assert block_list(block, "track_interface") == [f"n{pnn}-eth1"]


def test_each_instance_holds_its_public_ip_on_the_public_interface():
    blocks = instances(conf(1))
    for ip, block in zip(PUBLIC_IPS, blocks.values()):
        assert block_list(block, "virtual_ipaddress") == [f"{ip}/20 dev n1-eth1"]


def test_vrrp_version_3_and_state_changes_to_the_fifo():
    text = conf(0)
    assert "vrrp_version 3" in text and "vrrp_notify_fifo /run/ctdb/k.fifo" in text
    assert "notify " not in text.replace("vrrp_notify_fifo", "")      # no fork per change


# -- advert interval ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [(0.1, "0.1"), (0.01, "0.01"), ("1", "1"), (40.95, "40.95")])
def test_advert_interval_accepts_vrrpv3_centiseconds(value, expected):
    assert advert_interval(value) == Decimal(expected)
    block = next(iter(instances(conf(0, advert_s=value)).values()))
    assert field(block, "advert_int") == expected


@pytest.mark.parametrize("value, message", [
    (0.005, "outside VRRPv3's range 0.01..40.95 s"),
    (0, "outside"),
    (-1, "outside"),
    (41, "outside"),
    (0.015, "whole number of centiseconds"),
    ("fast", "not a number"),
    (float("nan"), "outside"),
])
def test_advert_interval_refuses_what_keepalived_cannot_do(value, message):
    with pytest.raises(KeepalivedConfigError, match=re.escape(message)):
        advert_interval(value)
    with pytest.raises(UserError):                       # a clear one-line error for the CLI
        conf(0, advert_s=value)


def test_profiles_give_the_advert_interval():
    assert get_profile("default").vrrp_advert_s == 0.1     # lab.md Part C: 0.35 s, no flapping
    assert get_profile("fast").vrrp_advert_s == 0.01       # VRRPv3's minimum
    for name in ("default", "aggressive", "aggressive_lt2", "fast"):
        advert_interval(get_profile(name).vrrp_advert_s)


# -- bad cluster descriptions ----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"node_ips": NODE_IPS[:1]}, "at least 2 nodes"),
    ({"public_ips": []}, "no public IPs"),
    ({"public_ips": ["198.19.8.1", "198.19.8.1"]}, "public IPs repeat"),
    ({"node_ips": ["198.18.0.1", "198.18.0.1", "198.18.0.3"]}, "node IPs repeat"),
    ({"public_ips": ["198.19.8.300"]}, "is not an IPv4 address"),
    ({"prefixlen": 33}, "prefix length"),
])
def test_bad_cluster_descriptions_are_refused(kwargs, message):
    with pytest.raises(KeepalivedConfigError, match=message):
        conf(0, **kwargs)


def test_a_node_outside_the_cluster_is_refused():
    with pytest.raises(KeepalivedConfigError, match="not one of the 3 nodes"):
        conf(3)


def test_too_many_public_ips_for_router_ids():
    ips = [f"198.19.{8 + i // 250}.{i % 250 + 1}" for i in range(256)]
    with pytest.raises(KeepalivedConfigError, match="router ids"):
        conf(0, public_ips=ips)


# -- the launcher --------------------------------------------------------------------------------
def test_keepalived_runs_a_standalone_smbd_and_refuses_a_clustered_one():
    launcher = get_launcher("keepalived")
    assert isinstance(launcher, KeepalivedLauncher)
    assert launcher.smb_clustered is False
    assert get_launcher("keepalived", smb_clustered=False).smb_clustered is False
    with pytest.raises(UserError, match="no clustered database"):
        get_launcher("keepalived", smb_clustered=True)


def test_keepalived_has_no_ctdb_tool_and_says_which_metrics_do_not_apply():
    launcher = get_launcher("keepalived")
    assert not launcher.answers_ctdb_tool and not launcher.sends_tickles
    assert set(launcher.not_applicable) == {"detect_s", "rejoin_s", "tickled_reset_s"}
    for daemon in ("ctdb", "pyctdbd"):
        other = get_launcher(daemon)
        assert other.answers_ctdb_tool and other.sends_tickles and other.not_applicable == {}


def test_state_changes_become_log_lines_the_lab_log_reader_finds(tmp_path):
    from ctdblab.cluster.daemonlog import find_events, parse_line
    from ctdblab.cluster.keepalived_notify import instance_ip, log_line

    assert instance_ip(instance_name("198.19.8.2")) == "198.19.8.2"
    assert instance_ip("VI_1") is None and instance_ip("vip_1_2_3") is None
    t = 1796450941.826311
    lines = [log_line(f'INSTANCE "vip_198_19_8_2" {state} 253\n', t + i, prefixlen=20,
                      iface="n1-eth1", pid=42, host="vm")
             for i, state in enumerate(("BACKUP", "MASTER", "FAULT"))]
    parsed = [parse_line(line.rstrip("\n")) for line in lines]
    assert [p.program for p in parsed] == ["keepalived-notify"] * 3
    assert parsed[1].t == pytest.approx(t + 1, abs=1e-6)             # microseconds kept
    ((line, groups),) = find_events(parsed, "takeover")
    assert "entered MASTER" in line.message and groups["ip"] == "198.19.8.2"
    assert find_events(parsed, "release") == []                       # BACKUP at start is no release
    assert log_line('GROUP "g" MASTER 0', t, prefixlen=20, iface="x", pid=1, host="h") is None


def test_the_fifo_reader_logs_what_keepalived_writes(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from ctdblab.cluster.daemonlog import find_events, read_log

    fifo, log = tmp_path / "k.fifo", tmp_path / "k.log"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-m", "ctdblab.cluster.keepalived_notify", str(fifo),
                               str(log), "20", "n1-eth1"])
    try:
        before = time.time()
        with open(fifo, "w") as writer:             # as keepalived does: one line per change
            writer.write('INSTANCE "vip_198_19_8_3" MASTER 254\n')
        deadline = time.time() + 10
        while not (log.exists() and log.read_text()) and time.time() < deadline:
            time.sleep(0.02)
        ((line, groups),) = find_events(read_log(log), "takeover")
        assert groups["ip"] == "198.19.8.3" and before <= line.t <= time.time()
    finally:
        reader.kill()
        reader.wait(5)


def test_ground_truth_reads_the_public_ips_out_of_ip_json():
    from ctdblab.cluster.lab import ClusterNotReady, configured_addresses

    text = ('[{"ifname": "n1-eth1", "addr_info": [{"family": "inet", "local": "198.19.0.2", '
            '"prefixlen": 20}, {"family": "inet", "local": "198.19.8.3", "prefixlen": 20}]}]')
    assert configured_addresses(text, set(PUBLIC_IPS)) == {"198.19.8.3"}   # not the node's own
    assert configured_addresses("", set(PUBLIC_IPS)) == set()
    with pytest.raises(ClusterNotReady, match="unreadable"):
        configured_addresses("not json", set(PUBLIC_IPS))
