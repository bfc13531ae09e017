"""arp probe: who answers ARP for each public IP, as a client on the public network sees it.

    python -m ctdblab.scenarios.probes.arp --iface c0-eth0 --period 0.5 IP [IP ...] [--process NAME]

Every ``period`` seconds it broadcasts one who-has per IP from the client's own address and
collects every reply for ``window`` seconds (default 80 % of the period).  One raw socket, no
subprocesses: a round costs a few packets.  Two nodes configuring the same address both answer,
which is exactly what a client on a split cluster would see.

Events (``kind: capture``, ``probe: arp``):

``answers``   once per round: ``answers`` {IP: sorted list of the MACs that replied (empty: none)},
              ``t``: when the window closed (what was seen is known then), ``t_sent``: when
              the requests went out, ``t_replied``: when the round's last reply arrived
              (absent when none did) -- every answer of the round arrived between ``t_sent``
              and ``t_replied``, which is what places the round against a fault's undo
``error``     a send or receive failed (``error``); the probe goes on with the next round

SIGTERM/SIGINT: the probe finishes the round and exits 0.
"""

from __future__ import annotations

import argparse
import fcntl
import select
import socket
import struct
import time

from .common import (STOP, Emitter, Waker, add_process_option, install_stop_signals, ipv4_address,
                     positive_float, run_main)

ETH_P_ARP = 0x0806
SIOCGIFADDR = 0x8915
SIOCGIFHWADDR = 0x8927


def arp_request(src_mac: bytes, src_ip: str, target_ip: str) -> bytes:
    """A broadcast Ethernet frame asking who has ``target_ip``."""
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src_mac, socket.inet_aton(src_ip),
                      b"\0" * 6, socket.inet_aton(target_ip))
    return eth + arp


def parse_arp_reply(frame: bytes, to_ip: str | None = None) -> tuple[str, str] | None:
    """(sender IP, sender MAC) of an ARP reply frame; None for anything else.  With ``to_ip``
    only a reply to that address counts: a gratuitous ARP (sent by a node taking an IP over,
    addressed to the IP itself) is not an answer to our question."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    _, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if op != 2 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    if to_ip is not None and socket.inet_ntoa(frame[38:42]) != to_ip:
        return None
    mac = ":".join(f"{b:02x}" for b in frame[22:28])
    return socket.inet_ntoa(frame[28:32]), mac


def _iface_addresses(sock: socket.socket, iface: str) -> tuple[bytes, str]:
    name = struct.pack("256s", iface.encode()[:15])
    mac = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, name)[18:24]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        ip = socket.inet_ntoa(fcntl.ioctl(udp.fileno(), SIOCGIFADDR, name)[20:24])
    return mac, ip


def probe_round(sock: socket.socket, src_mac: bytes, src_ip: str, ips: list[str],
                window: float) -> tuple[dict[str, list[str]], float | None]:
    """Ask for every IP once and gather the replies that arrive within ``window`` seconds:
    (IP -> sorted MACs that replied, wall time of the last reply or None)."""
    answers: dict[str, set[str]] = {ip: set() for ip in ips}
    last_reply = None
    for ip in ips:
        sock.send(arp_request(src_mac, src_ip, ip))
    deadline = time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        parsed = parse_arp_reply(sock.recv(2048), to_ip=src_ip)
        if parsed and parsed[0] in answers:
            answers[parsed[0]].add(parsed[1])
            last_reply = time.time()
    return {ip: sorted(macs) for ip, macs in answers.items()}, last_reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ips", nargs="+", type=ipv4_address)
    parser.add_argument("--iface", required=True)
    parser.add_argument("--period", type=positive_float, default=0.5)
    parser.add_argument("--window", type=positive_float, default=None,
                        help="seconds to collect replies per round (default: 0.8 x period)")
    add_process_option(parser, "arp")
    args = parser.parse_args(argv)
    window = args.window if args.window is not None else 0.8 * args.period
    emitter = Emitter("arp", args.process)
    waker = Waker()
    emitter.on_broken = lambda: waker.post(STOP)
    install_stop_signals(waker)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((args.iface, ETH_P_ARP))
        src_mac, src_ip = _iface_addresses(sock, args.iface)
        while not emitter.broken:
            t0 = time.time()
            try:
                answers, last_reply = probe_round(sock, src_mac, src_ip, args.ips, window)
            except OSError as e:
                emitter.capture("error", error=str(e))
            else:
                replied = {} if last_reply is None else {"t_replied": round(last_reply, 6)}
                emitter.capture("answers", answers=answers, t_sent=round(t0, 6), **replied)
            if STOP in waker.wait(max(0.0, args.period - (time.time() - t0))):
                break
    return 0


if __name__ == "__main__":
    run_main(main)
