"""Frames and segments that announce a moved public IP: pure byte builders, no I/O.

- gratuitous ARP request and unsolicited ARP reply (Ethernet + ARP), sender IP = target IP;
- IPv6 unsolicited Neighbour Advertisement to all-nodes (Ethernet + IPv6 + ICMPv6);
- a bare TCP segment inside an IPv4 or IPv6 header: the "tickle ACK" (ACK, seq 0, ack 0,
  window 1234) and the spoofed RST used to kill a connection whose sequence number we know.

Field values follow CTDB's ``ctdb/common/system_socket.c`` (facts, not code): ARP request
with a zero target hardware address, ARP reply with target hardware = our MAC, NA with only
the Override flag and a target link-layer address option, window 1234 so the segments are
easy to spot in a capture. Every checksum is computed here, so the bytes are final even
though the kernel rewrites the IPv4 id/checksum on an ``IP_HDRINCL`` socket.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58
ICMPV6_NEIGHBOUR_ADVERT = 136
ND_NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LINKADDR = 2

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

TICKLE_WINDOW = 1234
TICKLE_TTL = 255
BROADCAST_MAC = b"\xff" * 6
IPV6_ALL_NODES = ipaddress.IPv6Address("ff02::1")
IPV6_ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_NA = struct.Struct("!BBHI16sBB6s")


class PacketError(ValueError):
    """An argument that cannot go into a frame (bad MAC, address, port, family mix)."""


def parse_ip(value: str | IPAddress) -> IPAddress:
    """An IPv4 or IPv6 address from text; a v4-mapped IPv6 address becomes plain IPv4."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError as exc:
        raise PacketError(f"not an IP address: {value!r}") from exc
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_mac(mac: bytes | str) -> bytes:
    """Six bytes from ``b'\\x00...'`` or ``'00:11:22:33:44:55'``."""
    if isinstance(mac, str):
        parts = mac.split(":")
        try:
            raw = bytes(int(p, 16) for p in parts)
        except ValueError as exc:
            raise PacketError(f"not a MAC address: {mac!r}") from exc
        if len(parts) != 6 or any(len(p) not in (1, 2) for p in parts):
            raise PacketError(f"not a MAC address: {mac!r}")
        return raw
    if len(mac) != 6:
        raise PacketError(f"a MAC address has 6 bytes, got {len(mac)}")
    return bytes(mac)


def _port(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise PacketError(f"not a TCP port: {value!r}")
    return value


def _u32(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise PacketError(f"{name} must be an unsigned 32-bit number, got {value!r}")
    return value


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, proto)


# --- ARP / Neighbour Discovery ----------------------------------------------------------


def arp_frame(mac: bytes | str, ip: str | IPAddress, *, reply: bool) -> bytes:
    """A broadcast gratuitous ARP for ``ip`` from ``mac`` (request, or unsolicited reply).

    Both carry sender IP = target IP = ``ip``; the request has a zero target MAC, the
    reply repeats our MAC there. 42 bytes (the NIC pads to 60).
    """
    hw = parse_mac(mac)
    addr = parse_ip(ip)
    if addr.version != 4:
        raise PacketError(f"ARP is for IPv4 only, got {addr}")
    op = ARPOP_REPLY if reply else ARPOP_REQUEST
    target_hw = hw if reply else b"\0" * 6
    return _ETH.pack(BROADCAST_MAC, hw, ETH_P_ARP) + _ARP.pack(
        ARPHRD_ETHER, ETH_P_IP, 6, 4, op, hw, addr.packed, target_hw, addr.packed
    )


def garp_request(mac: bytes | str, ip: str | IPAddress) -> bytes:
    return arp_frame(mac, ip, reply=False)


def garp_reply(mac: bytes | str, ip: str | IPAddress) -> bytes:
    return arp_frame(mac, ip, reply=True)


def unsolicited_na(mac: bytes | str, ip: str | IPAddress) -> bytes:
    """An unsolicited Neighbour Advertisement for ``ip`` (Override set) to ff02::1.

    Source address is ``ip`` itself, hop limit 255 (RFC 4861 requires it), with a
    target link-layer address option carrying ``mac``. 86 bytes.
    """
    hw = parse_mac(mac)
    addr = parse_ip(ip)
    if addr.version != 6:
        raise PacketError(f"Neighbour Advertisement is for IPv6 only, got {addr}")
    body = _NA.pack(ICMPV6_NEIGHBOUR_ADVERT, 0, 0, ND_NA_FLAG_OVERRIDE, addr.packed,
                    ND_OPT_TARGET_LINKADDR, 1, hw)
    checksum = internet_checksum(_pseudo_header(addr, IPV6_ALL_NODES, IPPROTO_ICMPV6, len(body)) + body)
    body = body[:2] + struct.pack("!H", checksum) + body[4:]
    ip6 = _IPV6.pack(6 << 28, len(body), IPPROTO_ICMPV6, 255, addr.packed, IPV6_ALL_NODES.packed)
    return _ETH.pack(IPV6_ALL_NODES_MAC, hw, ETH_P_IPV6) + ip6 + body


def announcement_frames(mac: bytes | str, ip: str | IPAddress) -> list[bytes]:
    """What one announce round sends: GARP request + reply for IPv4, one NA for IPv6."""
    addr = parse_ip(ip)
    if addr.version == 4:
        return [garp_request(mac, addr), garp_reply(mac, addr)]
    return [unsolicited_na(mac, addr)]


# --- TCP ----------------------------------------------------------------------------------


def tcp_segment(
    src: Endpoint,
    dst: Endpoint,
    *,
    seq: int,
    ack: int,
    flags: int,
    window: int = TICKLE_WINDOW,
    ttl: int = TICKLE_TTL,
) -> bytes:
    """A 20-byte TCP header without payload, inside an IPv4 (20 B) or IPv6 (40 B) header.

    ``src`` and ``dst`` are ``(ip, port)``; both must be the same family (v4-mapped IPv6
    counts as IPv4). The IPv4 id is 0 (the kernel fills it in on a raw socket).
    """
    src_ip, dst_ip = parse_ip(src[0]), parse_ip(dst[0])
    if src_ip.version != dst_ip.version:
        raise PacketError(f"cannot mix address families: {src_ip} -> {dst_ip}")
    if not 0 <= window <= 0xFFFF or not 0 <= flags <= 0xFF or not 1 <= ttl <= 255:
        raise PacketError(f"bad window/flags/ttl: {window}, {flags:#x}, {ttl}")
    tcp = _TCP.pack(_port(src[1]), _port(dst[1]), _u32("seq", seq), _u32("ack", ack),
                    5 << 4, flags, window, 0, 0)
    checksum = internet_checksum(_pseudo_header(src_ip, dst_ip, IPPROTO_TCP, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", checksum) + tcp[18:]
    if src_ip.version == 4:
        header = _IPV4.pack(0x45, 0, 20 + len(tcp), 0, 0, ttl, IPPROTO_TCP, 0,
                            src_ip.packed, dst_ip.packed)
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    else:
        header = _IPV6.pack(6 << 28, len(tcp), IPPROTO_TCP, ttl, src_ip.packed, dst_ip.packed)
    return header + tcp


def tickle_ack(server: Endpoint, client: Endpoint) -> bytes:
    """The tickle ACK: from the public IP:port to the client, ACK only, seq 0, ack 0.

    Out of the client's window, so the client answers with a challenge ACK carrying its
    real numbers; the new owner has no socket for it and its kernel resets the connection.
    """
    return tcp_segment(server, client, seq=0, ack=0, flags=TCP_ACK)


def tcp_reset(src: Endpoint, dst: Endpoint, seq: int, ack: int = 0) -> bytes:
    """A spoofed RST (with ACK, as CTDB sends it) from ``src`` to ``dst``.

    Linux accepts it only if ``seq`` equals the receiver's next expected sequence number.
    """
    return tcp_segment(src, dst, seq=seq, ack=ack, flags=TCP_RST | TCP_ACK)
