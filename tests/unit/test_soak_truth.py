"""Ground-truth parsing: what the per-node shell printed, and ARP frames."""

from __future__ import annotations

import socket

from ctdblab.scenarios.probes.arp import arp_request, parse_arp_reply
from ctdblab.scenarios.truth import node_script, parse_node_output

IP_JSON = ('[{"ifname":"eth1","addr_info":[{"local":"198.19.8.1","prefixlen":20},'
           '{"local":"198.19.0.1","prefixlen":20}]},{"ifname":"lo","addr_info":[{"local":"127.0.0.1"}]}]')
STATUS = """|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|
|0|198.18.0.1|0|0|0|0|0|0|0|0|Y|
|1|198.18.0.2|1|0|0|0|1|0|1|0|N|
"""
SEP = "@@ctdblab@@"


def test_a_healthy_node_answers_everything():
    out = f"{IP_JSON}\n{SEP}\n1\n{SEP}0\n{STATUS}{SEP}0\n"
    parsed = parse_node_output(out, {"198.19.8.1", "198.19.8.2"})
    assert parsed == {"addrs": ["198.19.8.1"], "leader": 1,
                      "status": {"0": "OK", "1": "DISCONNECTED|UNHEALTHY"}}


def test_a_hung_daemon_is_no_answer_but_its_addresses_still_count():
    out = f"{IP_JSON}\n{SEP}\n{SEP}124\n{SEP}124\n"     # timeout(1) exits 124
    assert parse_node_output(out, {"198.19.8.1"}) == {"addrs": ["198.19.8.1"], "leader": None,
                                                       "status": None}


def test_a_shell_that_died_gives_nothing():
    assert parse_node_output("", {"198.19.8.1"}) == {"addrs": None, "leader": None, "status": None}


def test_the_node_script_bounds_every_daemon_call():
    script = node_script(1.0)
    assert script.count("timeout -k 0.3 1 ctdb") == 2 and "ip -j -4 addr" in script


def test_an_arp_request_parses_back_as_a_reply_once_its_opcode_is_two():
    mac = bytes.fromhex("02c700020004")
    frame = bytearray(arp_request(mac, "198.19.4.1", "198.19.8.1"))
    assert frame[:6] == b"\xff" * 6 and parse_arp_reply(bytes(frame)) is None   # a request
    frame[20:22] = b"\x00\x02"
    frame[28:32] = socket.inet_aton("198.19.8.1")                              # sender = target
    assert parse_arp_reply(bytes(frame)) == ("198.19.8.1", "02:c7:00:02:00:04")
    assert parse_arp_reply(b"\x00" * 10) is None
    assert parse_arp_reply(bytes(frame), to_ip="198.19.4.1") is None      # to itself: gratuitous
    frame[38:42] = socket.inet_aton("198.19.4.1")
    assert parse_arp_reply(bytes(frame), to_ip="198.19.4.1") == ("198.19.8.1", "02:c7:00:02:00:04")
