"""Byte-exact checks of the takeover frames, cross-checked against scapy's own encoders."""

from __future__ import annotations

import struct

import pytest

from ctdblab.daemon.failover import packets as P

scapy_all = pytest.importorskip("scapy.all")
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402

MAC = "02:00:c6:12:00:02"
MAC_BYTES = bytes.fromhex("0200c6120002")
IP4 = "198.19.8.1"
CLIENT4 = ("198.19.4.1", 44486)
SERVER4 = (IP4, 445)
IP6 = "2001:2::8:1"  # IPv6 benchmarking range; these bytes never leave the test
CLIENT6 = ("2001:2::4:1", 50123)
SERVER6 = (IP6, 445)


def test_internet_checksum_rfc1071_example():
    # RFC 1071 section 3 example: the words sum to 0xddf2, so the checksum is 0x220d.
    assert P.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # Odd length is padded with a zero byte.
    assert P.internet_checksum(b"\x01") == P.internet_checksum(b"\x01\x00")


def test_garp_request_matches_scapy():
    frame = P.garp_request(MAC, IP4)
    expected = Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC) / ARP(
        op=1, hwsrc=MAC, psrc=IP4, hwdst="00:00:00:00:00:00", pdst=IP4)
    assert frame == bytes(expected)
    assert len(frame) == 42
    parsed = Ether(frame)
    assert parsed[ARP].op == 1 and parsed[ARP].psrc == parsed[ARP].pdst == IP4


def test_garp_reply_matches_scapy():
    frame = P.garp_reply(MAC_BYTES, IP4)
    expected = Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC) / ARP(op=2, hwsrc=MAC, psrc=IP4, hwdst=MAC, pdst=IP4)
    assert frame == bytes(expected)


def test_unsolicited_na_matches_scapy_and_checksum_verifies():
    frame = P.unsolicited_na(MAC, IP6)
    expected = (Ether(dst="33:33:00:00:00:01", src=MAC)
                / IPv6(src=IP6, dst="ff02::1", hlim=255)
                / ICMPv6ND_NA(R=0, S=0, O=1, tgt=IP6)
                / ICMPv6NDOptDstLLAddr(lladdr=MAC))
    assert frame == bytes(expected)
    assert len(frame) == 86
    # Independent check: the ICMPv6 checksum over pseudo-header + body folds to zero.
    ip6, icmp = frame[14:54], frame[54:]
    pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert P.internet_checksum(pseudo + icmp) == 0
    na = Ether(frame)[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (0, 0, 1)


def test_announcement_frames_per_family():
    assert P.announcement_frames(MAC, IP4) == [P.garp_request(MAC, IP4), P.garp_reply(MAC, IP4)]
    assert P.announcement_frames(MAC, IP6) == [P.unsolicited_na(MAC, IP6)]
    # A v4-mapped IPv6 address is announced as IPv4.
    assert P.announcement_frames(MAC, "::ffff:" + IP4) == P.announcement_frames(MAC, IP4)


def test_ipv4_tickle_matches_scapy():
    segment = P.tickle_ack(SERVER4, CLIENT4)
    expected = IP(src=IP4, dst=CLIENT4[0], ttl=255, id=0, flags=0) / TCP(
        sport=445, dport=CLIENT4[1], seq=0, ack=0, flags="A", window=1234)
    assert segment == bytes(expected)
    assert len(segment) == 40
    assert P.internet_checksum(segment[:20]) == 0
    parsed = IP(segment)
    assert parsed[TCP].flags == "A" and parsed[TCP].window == 1234 and parsed.ttl == 255


def test_ipv6_tickle_matches_scapy():
    segment = P.tickle_ack(SERVER6, CLIENT6)
    expected = IPv6(src=IP6, dst=CLIENT6[0], hlim=255) / TCP(
        sport=445, dport=CLIENT6[1], seq=0, ack=0, flags="A", window=1234)
    assert segment == bytes(expected)
    assert len(segment) == 60


def test_tcp_checksum_verifies_independently():
    segment = P.tickle_ack(SERVER4, CLIENT4)
    ip, tcp = segment[:20], segment[20:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert P.internet_checksum(pseudo + tcp) == 0


@pytest.mark.parametrize("src,dst", [(SERVER4, CLIENT4), (SERVER6, CLIENT6)])
def test_reset_carries_seq_and_ack(src, dst):
    segment = P.tcp_reset(src, dst, seq=0xDEADBEEF, ack=0x01020304)
    layer = IP if ":" not in src[0] else IPv6
    expected = layer(src=src[0], dst=dst[0], **({"ttl": 255, "id": 0, "flags": 0} if layer is IP else {"hlim": 255})) / TCP(
        sport=src[1], dport=dst[1], seq=0xDEADBEEF, ack=0x01020304, flags="RA", window=1234)
    assert segment == bytes(expected)


def test_v4_mapped_addresses_build_ipv4_segments():
    assert P.tickle_ack(("::ffff:" + IP4, 445), ("::ffff:" + CLIENT4[0], CLIENT4[1])) == P.tickle_ack(SERVER4, CLIENT4)


@pytest.mark.parametrize("call", [
    lambda: P.garp_request("02:00:00:00:00", IP4),          # five octets
    lambda: P.garp_request("zz:00:00:00:00:00", IP4),
    lambda: P.garp_request(b"\x00" * 5, IP4),
    lambda: P.garp_request(MAC, IP6),                        # ARP is IPv4 only
    lambda: P.unsolicited_na(MAC, IP4),                      # NA is IPv6 only
    lambda: P.garp_request(MAC, "198.19.8.300"),
    lambda: P.tickle_ack(SERVER4, CLIENT6),                  # mixed families
    lambda: P.tickle_ack((IP4, 70000), CLIENT4),
    lambda: P.tickle_ack((IP4, -1), CLIENT4),
    lambda: P.tcp_reset(SERVER4, CLIENT4, seq=1 << 32),
    lambda: P.tcp_segment(SERVER4, CLIENT4, seq=0, ack=0, flags=0x10, ttl=0),
])
def test_bad_arguments_raise_packet_error(call):
    with pytest.raises(P.PacketError):
        call()
