"""Pure checks of the sock_diag encoding: the local-address filter program and message parsing.

The filter program is run through a small model of the kernel's ``inet_diag_bc_audit`` and
``inet_diag_bc_run`` (net/ipv4/inet_diag.c), so a program the kernel would reject with
EINVAL, or one that accepts the wrong sockets, fails here without root.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ctdblab.daemon.failover import netlink, sockdiag
from ctdblab.daemon.failover.sockdiag import local_address_filter

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6


def _audit(program: bytes) -> None:
    """The kernel's checks: every op reachable by 'yes' steps, jumps 4-aligned and in range."""
    def valid_cc(target_len: int) -> bool:
        length, pos = len(program), 0
        while length >= 0:
            if target_len > length:
                return False
            if target_len == length:
                return True
            yes = program[pos + 1]
            if yes < 4 or yes & 3:
                return False
            length -= yes
            pos += yes
        return False

    length, pos = len(program), 0
    while length > 0:
        code, yes, no = struct.unpack_from("=BBH", program, pos)
        min_len = 4
        if code == sockdiag.INET_DIAG_BC_S_COND:
            family, plen, _port = struct.unpack_from("=BBxxi", program, pos + 4)
            addr_len = {AF_INET: 4, AF_INET6: 16, 0: 0}[family]
            min_len += 8 + addr_len
            assert length >= min_len and plen <= 8 * addr_len
        else:
            assert code == sockdiag.INET_DIAG_BC_JMP
        assert min_len <= no <= length + 4 and not no & 3, "bad 'no' jump"
        if no < length:
            assert valid_cc(length - no), "'no' jumps into the middle of an op"
        assert min_len <= yes <= length + 4 and not yes & 3, "bad 'yes' step"
        pos += yes
        length -= yes
    assert length == 0


def _run(program: bytes, family: int, local: bytes, port: int = 445) -> bool:
    """inet_diag_bc_run for S_COND/JMP: True if the socket is accepted."""
    length, pos = len(program), 0
    while length > 0:
        code, yes_step, no_step = struct.unpack_from("=BBH", program, pos)
        yes = True
        if code == sockdiag.INET_DIAG_BC_JMP:
            yes = False
        else:
            cfam, plen, cport = struct.unpack_from("=BBxxi", program, pos + 4)
            caddr = program[pos + 12: pos + 12 + (4 if cfam == AF_INET else 16)]
            if cport != -1 and cport != port:
                yes = False
            elif cfam != family:
                mapped = family == AF_INET6 and cfam == AF_INET and local[:12] == b"\0" * 10 + b"\xff\xff"
                yes = mapped and local[12:] == caddr
            else:
                yes = local[: plen // 8] == caddr[: plen // 8]
        step = yes_step if yes else no_step
        pos += step
        length -= step
    return length == 0


IPS = [ipaddress.ip_address(a) for a in ("198.19.8.1", "198.19.8.2", "2001:2::8:3")]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_filter_program_passes_the_kernel_audit(count):
    _audit(local_address_filter(IPS[:count]))


def test_filter_accepts_exactly_the_listed_addresses():
    program = local_address_filter(IPS)
    v4 = lambda a: ipaddress.ip_address(a).packed  # noqa: E731
    assert _run(program, AF_INET, v4("198.19.8.1"))
    assert _run(program, AF_INET, v4("198.19.8.2"))
    assert not _run(program, AF_INET, v4("198.19.8.3"))
    assert _run(program, AF_INET6, ipaddress.ip_address("2001:2::8:3").packed)
    assert not _run(program, AF_INET6, ipaddress.ip_address("2001:2::8:4").packed)
    # A dual-stack socket with a v4-mapped local address matches the IPv4 condition.
    assert _run(program, AF_INET6, ipaddress.ip_address("::ffff:198.19.8.2").packed)
    assert not _run(program, AF_INET6, ipaddress.ip_address("::ffff:198.19.8.9").packed)


def test_single_address_filter_rejects_others():
    program = local_address_filter(IPS[:1])
    assert _run(program, AF_INET, IPS[0].packed)
    assert not _run(program, AF_INET, IPS[1].packed)


def test_filter_needs_addresses():
    with pytest.raises(ValueError):
        local_address_filter([])


def _diag_msg(family: int, state: int, src: str, sport: int, dst: str, dport: int, inode: int = 7) -> bytes:
    def raw(a: str) -> bytes:
        packed = ipaddress.ip_address(a).packed
        return packed + b"\0" * (16 - len(packed))
    sockid = struct.pack(">HH16s16s", sport, dport, raw(src), raw(dst)) + struct.pack("=III", 0, 1, 2)
    return struct.pack("=BBBB", family, state, 0, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, 0, inode)


def test_parse_message_ipv4_and_v4_mapped():
    info = sockdiag._parse_message(_diag_msg(AF_INET, 1, "198.19.8.1", 445, "198.19.4.1", 50000, inode=99))
    assert info.local == ("198.19.8.1", 445) and info.remote == ("198.19.4.1", 50000)
    assert info.state_name == "ESTABLISHED" and info.inode == 99 and len(info.raw_id) == 48
    mapped = sockdiag._parse_message(
        _diag_msg(AF_INET6, 1, "::ffff:198.19.8.1", 445, "::ffff:198.19.4.1", 50000))
    assert mapped.family == AF_INET6
    assert mapped.local == ("198.19.8.1", 445) and mapped.remote == ("198.19.4.1", 50000)


def test_parse_message_rejects_short_or_foreign_messages():
    good = _diag_msg(AF_INET, 1, "198.19.8.1", 445, "198.19.4.1", 50000)
    assert sockdiag._parse_message(good[:71]) is None
    assert sockdiag._parse_message(b"") is None
    assert sockdiag._parse_message(bytes([1]) + good[1:]) is None  # AF_UNIX


def test_parse_attrs_survives_hostile_bytes():
    ok = netlink.attr(1, b"abc") + netlink.attr(2, b"\x01\x02\x03\x04")
    assert netlink.parse_attrs(ok, 0, len(ok)) == {1: b"abc", 2: b"\x01\x02\x03\x04"}
    for bad in (b"\xff\xff\x01\x00abcd", b"\x02\x00\x01\x00", b"\x08\x00", ok[:-3]):
        netlink.parse_attrs(bad, 0, len(bad))  # must not raise
    assert netlink.parse_attrs(ok[:-3], 0, len(ok) - 3) == {1: b"abc"}


def test_state_masks():
    assert sockdiag.ESTABLISHED_ONLY == 1 << 1
    assert not sockdiag.CONNECTED_STATES & (1 << sockdiag.TCP_LISTEN)
    assert not sockdiag.CONNECTED_STATES & (1 << sockdiag.TCP_TIME_WAIT)


def test_connection_counter_moves_when_a_connection_opens():
    """The cheap /proc/net/snmp look the daemon polls before deciding to dump sockets."""
    from ctdblab.daemon.failover.effects import HostEffects

    effects = HostEffects()
    try:
        before = effects.connection_counter()
        assert before is not None and len(before) == 5
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            with socket.create_connection(listener.getsockname()) as client:
                server, _ = listener.accept()
                server.close()
                assert client is not None
        after = effects.connection_counter()
        # ActiveOpens and PassiveOpens each went up by one (other processes may add more).
        assert int(after[0]) >= int(before[0]) + 1 and int(after[1]) >= int(before[1]) + 1
    finally:
        effects.close()
