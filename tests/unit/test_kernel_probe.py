"""failover/kernel_probe.py: echo requests and the answers that count."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from ctdblab.daemon.failover.packets import internet_checksum as checksum
from ctdblab.daemon.failover.kernel_probe import ICMP_ECHO_REPLY, PAYLOAD, KernelProbe, echo_request, parse_echo_reply


def ipv4_header(src: str = "198.18.0.2") -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 1, 0,
                       socket.inet_aton(src), socket.inet_aton("198.18.0.1"))


def reply_to(request: bytes, v6: bool) -> bytes:
    kind = 129 if v6 else ICMP_ECHO_REPLY
    return bytes([kind]) + request[1:]


def test_an_ipv4_echo_request_carries_a_valid_checksum():
    req = echo_request(0x1234, 7, v6=False)
    assert req[0] == 8 and struct.unpack("!HH", req[4:8]) == (0x1234, 7)
    assert checksum(req) == 0                      # a correct checksum sums to zero
    assert checksum(b"\x01") == checksum(b"\x01\x00")


def test_only_echo_replies_to_our_identifier_count():
    req = echo_request(0x1234, 7, v6=False)
    assert parse_echo_reply(ipv4_header() + reply_to(req, False), 0x1234, v6=False)
    assert not parse_echo_reply(ipv4_header() + reply_to(req, False), 0x4321, v6=False)   # someone's ping
    assert not parse_echo_reply(ipv4_header() + req, 0x1234, v6=False)                  # a request
    other = reply_to(req, False)[:8] + b"not ours"
    assert not parse_echo_reply(ipv4_header() + other, 0x1234, v6=False)
    for junk in (b"", b"\x45", ipv4_header(), ipv4_header() + b"\x00\x00", b"\x60" + bytes(40)):
        assert not parse_echo_reply(junk, 0x1234, v6=False)
    req6 = echo_request(0x1234, 1, v6=True)
    assert req6[0] == 128 and req6.endswith(PAYLOAD)
    assert parse_echo_reply(reply_to(req6, True), 0x1234, v6=True)
    assert not parse_echo_reply(reply_to(req6, True)[:6], 0x1234, v6=True)


def test_unknown_or_deleted_nodes_are_not_asked():
    logged = []
    probe = KernelProbe(["198.18.0.1", None], {"198.18.0.1": 0}.get, logged.append)
    assert not probe.send(1) and not probe.send(2) and not probe.send(-1)
    assert probe.drain(0.0) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
def test_the_loopback_kernel_answers_with_a_timestamp_on_the_loop_clock():
    probe = KernelProbe(["127.0.0.1", "::1"], {"127.0.0.1": 0, "::1": 1}.get, print)
    before = time.time()
    assert probe.send(0) and probe.send(1)
    answers: list = []
    deadline = time.time() + 2
    while len(answers) < 2 and time.time() < deadline:
        time.sleep(0.005)
        answers += probe.drain(-before)            # loop clock: 0 at `before`
    probe.close()
    assert sorted(pnn for pnn, _ in answers) == [0, 1]
    assert all(0 <= at < 1.0 for _, at in answers)


def test_without_raw_sockets_the_probe_says_so_once_and_stays_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(socket, "socket", refuse)
    logged = []
    probe = KernelProbe(["198.18.0.1", "198.18.0.2"], {}.get, logged.append)
    assert not probe.send(0) and not probe.send(1)
    assert len(logged) == 1 and "cannot open a raw ICMP socket (Operation not permitted)" in logged[0]
