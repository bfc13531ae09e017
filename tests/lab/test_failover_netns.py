"""pyctdbd's host effects end to end, in network namespaces (root; no Mininet needed).

Topology per test: namespaces ``<p>a`` (old owner A), ``<p>b`` (new owner B), ``<p>c``
(client C) and ``<p>s`` (a bridge), each node with one veth ``eth0`` on the bridge.
Addresses are in 198.19.252.0/24 only and IPv6 is disabled in every namespace, so no other
traffic appears. Everything runs in this process: the thread switches into a namespace
with setns(2) to create sockets there (a socket stays in the namespace it was created in).

Timings are printed (run with ``-s``) for the report; the assertions only check behaviour
and generous upper bounds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ctdblab.daemon.failover import (
    AddressManager,
    ArpAnnouncer,
    FailoverError,
    InterfaceNotFound,
    SockDiag,
    TcpSegmentSender,
    established_connections,
    kill_connections,
    release_ip,
)

pytestmark = pytest.mark.lab

SUBNET = "198.19.252"
NODE_IP = {"a": f"{SUBNET}.1", "b": f"{SUBNET}.2", "c": f"{SUBNET}.3"}
PUBLIC_X = f"{SUBNET}.100"
PUBLIC_Y = f"{SUBNET}.101"
PLEN = 24
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``ns``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def neigh_lladdr(ns: str, addr: str) -> str | None:
    out = ip("-n", ns, "neigh", "show", addr)
    words = out.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


@dataclass
class Lan:
    prefix: str
    namespaces: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str] = field(default_factory=dict)
    sockets: list[socket.socket] = field(default_factory=list)

    def ns(self, node: str) -> str:
        return self.namespaces[node]

    def track(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock


def _attach(net: Lan, node: str, port_name: str) -> None:
    """A veth from the bridge into ``node``, named eth0 there, up."""
    sw = net.ns("s")
    ip("-n", sw, "link", "add", f"{node}-eth0", "type", "veth", "peer", "name", port_name)
    ip("-n", sw, "link", "set", port_name, "master", "br0", "up")
    ip("-n", sw, "link", "set", f"{node}-eth0", "netns", net.ns(node), "name", "eth0")
    ip("-n", net.ns(node), "link", "set", "eth0", "up")
    net.macs[node] = ip("-n", net.ns(node), "-br", "link", "show", "eth0").split()[2]


@contextlib.contextmanager
def _build_lan(ipv6: bool) -> Iterator[Lan]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    net = Lan(prefix="fo" + secrets.token_hex(3))
    try:
        for role in ("s", "a", "b", "c"):
            name = f"{net.prefix}{role}"
            ip("netns", "add", name)
            net.namespaces[role] = name
            with inside(name):
                if ipv6:
                    # Only the link-local addresses the test adds: no SLAAC, no DAD delay.
                    write_sysctl("net/ipv6/conf/default/addr_gen_mode", "1")
                    write_sysctl("net/ipv6/conf/default/accept_dad", "0")
                    write_sysctl("net/ipv6/conf/default/router_solicitations", "0")
                else:
                    write_sysctl("net/ipv6/conf/all/disable_ipv6", "1")
                    write_sysctl("net/ipv6/conf/default/disable_ipv6", "1")
        sw = net.ns("s")
        ip("-n", sw, "link", "add", "br0", "type", "bridge")
        ip("-n", sw, "link", "set", "br0", "up")
        for node in ("a", "b", "c"):
            ip("-n", net.ns(node), "link", "set", "lo", "up")
            _attach(net, node, f"{node}-port")
            ip("-n", net.ns(node), "addr", "add", f"{NODE_IP[node]}/{PLEN}", "dev", "eth0")
            if ipv6:
                ip("-n", net.ns(node), "addr", "add", f"fe80::{NODE_IP[node].rsplit('.', 1)[1]}/64",
                   "dev", "eth0", "nodad")
        yield net
    finally:
        for sock in net.sockets:
            sock.close()
        for name in net.namespaces.values():
            ip("netns", "del", name, check=False)


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Three nodes on a bridge, IPv4 only."""
    with _build_lan(ipv6=False) as net:
        yield net


@pytest.fixture
def lan6() -> Iterator[Lan]:
    """The same with IPv6 on, for link-local Neighbour Advertisement tests."""
    with _build_lan(ipv6=True) as net:
        yield net


@pytest.fixture
def node_b_effects(lan: Lan) -> Iterator[tuple[AddressManager, SockDiag]]:
    """Node b's address manager and sock_diag socket, opened inside its namespace."""
    with inside(lan.ns("b")):
        am = AddressManager()
        diag = SockDiag()
    try:
        yield am, diag
    finally:
        am.close()
        diag.close()


def listen(lan: Lan, node: str, addr: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    with inside(lan.ns(node)):
        sock = lan.track(socket.socket(family, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(64)
    return sock


def connect(lan: Lan, node: str, addr: str, port: int) -> socket.socket:
    with inside(lan.ns(node)):
        sock = lan.track(socket.create_connection((addr, port), timeout=5))
    return sock


def accept(listener: socket.socket, lan: Lan) -> socket.socket:
    listener.settimeout(5)
    conn, _ = listener.accept()
    return lan.track(conn)


class BlockedReader(threading.Thread):
    """Blocks in recv() on a client socket and records when and how it ended."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.ended_ns: int | None = None
        self.error: OSError | None = None
        self.data: bytes | None = None

    def run(self) -> None:
        self.sock.settimeout(None)
        try:
            self.data = self.sock.recv(100)
        except OSError as exc:
            self.error = exc
        self.ended_ns = time.monotonic_ns()


def _median_ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:.3f} ms (min {min(samples) * 1e3:.3f}, max {max(samples) * 1e3:.3f}, n={len(samples)})"


# --- (a) addresses -----------------------------------------------------------------------


def test_addresses_add_delete_where_and_promote_secondaries(lan: Lan):
    with inside(lan.ns("b")):
        am = AddressManager()
        try:
            # Control: with the kernel default (promote_secondaries=0) deleting the first
            # address of a subnet silently deletes the second. Shown on a spare veth.
            ip("-n", lan.ns("b"), "link", "add", "t0", "type", "veth", "peer", "name", "t1")
            ip("-n", lan.ns("b"), "link", "set", "t0", "up")
            assert open("/proc/sys/net/ipv4/conf/all/promote_secondaries").read().strip() == "0"
            assert am.add("t0", "198.19.253.10", 24) and am.add("t0", "198.19.253.11", 24)
            am.delete("t0", "198.19.253.10", 24)
            assert am.where("198.19.253.11") is None, "kernel trap not reproduced: control is void"

            am.ensure_promote_secondaries("eth0")
            for conf in ("all", "default", "eth0"):
                assert open(f"/proc/sys/net/ipv4/conf/{conf}/promote_secondaries").read().strip() == "1"

            add_times, del_times = [], []
            for _ in range(20):
                t0 = time.perf_counter()
                assert am.add("eth0", PUBLIC_X, PLEN) is True
                add_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert am.delete("eth0", PUBLIC_X, PLEN) is True
                del_times.append(time.perf_counter() - t0)
            print(f"\naddr add: {_median_ms(add_times)}; addr delete: {_median_ms(del_times)}")

            # Two public IPs in a new subnet: X is that subnet's primary, Y a secondary.
            assert am.add("eth0", "198.19.254.1", 24) is True
            assert am.add("eth0", "198.19.254.2", 24) is True
            assert am.add("eth0", "198.19.254.2", 24) is False  # idempotent
            entries = {e.ip: e for e in am.addresses(socket.AF_INET)}
            assert not entries["198.19.254.1"].secondary and entries["198.19.254.2"].secondary
            t0 = time.perf_counter()
            assert am.where("198.19.254.2") == "eth0"
            print(f"where: {(time.perf_counter() - t0) * 1e3:.3f} ms")
            assert am.delete("eth0", "198.19.254.1", 24) is True
            assert am.where("198.19.254.2") == "eth0", "secondary vanished with the primary"
            assert am.where("198.19.254.1") is None
            assert am.delete("eth0", "198.19.254.1", 24) is False  # idempotent
            assert am.delete("eth0", "198.19.254.2") is True       # prefix not needed for IPv4
            assert "198.19.254.2/24" not in ip("-n", lan.ns("b"), "-br", "addr", "show", "eth0")

            # The kernel agrees with what we report.
            am.add("eth0", PUBLIC_Y, PLEN)
            assert f"{PUBLIC_Y}/{PLEN}" in ip("-n", lan.ns("b"), "-br", "addr", "show", "eth0")

            # Link state and errors.
            assert am.link_up("eth0") is True
            assert am.interfaces()["eth0"] is True and am.interfaces()["lo"] is True
            ip("-n", lan.ns("b"), "link", "set", "t0", "down")
            assert am.link_up("t0") is False and am.interfaces()["t0"] is False
            for bad in ("nosuch0", "../../x", "a" * 16):
                with pytest.raises(InterfaceNotFound, match="nosuch0|not a valid"):
                    am.add(bad, PUBLIC_X, PLEN)
            with pytest.raises(InterfaceNotFound, match="nosuch0"):
                am.ensure_promote_secondaries("nosuch0")
            with pytest.raises(InterfaceNotFound):
                am.link_up("nosuch0")
        finally:
            am.close()


# --- (b) gratuitous ARP -----------------------------------------------------------------


def _ping(lan: Lan, src: str, dst: str) -> None:
    subprocess.run(["ip", "netns", "exec", lan.ns(src), "ping", "-c1", "-W1", dst],
                   capture_output=True, timeout=5, check=True)


def test_gratuitous_arp_moves_the_peer_neighbour_entry(lan: Lan):
    ip("-n", lan.ns("a"), "addr", "add", f"{PUBLIC_X}/{PLEN}", "dev", "eth0")
    _ping(lan, "c", PUBLIC_X)
    assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["a"]

    ip("-n", lan.ns("a"), "link", "set", "eth0", "down")  # A stops answering
    with inside(lan.ns("b")):
        announcer = ArpAnnouncer()
        am = AddressManager()
    try:
        # Opening B's socket from this (root) namespace would bind to the host's eth0.
        with pytest.raises(FailoverError, match="different network namespace"):
            announcer.prepare("eth0")
        with inside(lan.ns("b")):
            announcer.prepare("eth0")
        assert announcer.mac("eth0").hex(":") == lan.macs["b"]
        am.add("eth0", PUBLIC_X, PLEN)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert announcer.announce("eth0", PUBLIC_X) == 2
            times.append(time.perf_counter() - t0)
        print(f"\nannounce (GARP request + reply, open socket): {_median_ms(times)}")
        deadline = time.monotonic() + 1
        while neigh_lladdr(lan.ns("c"), PUBLIC_X) != lan.macs["b"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["b"]
        with inside(lan.ns("b")), pytest.raises(InterfaceNotFound, match="nosuch0"):
            announcer.announce("nosuch0", PUBLIC_X)
    finally:
        announcer.close()
        am.close()


def test_announcer_survives_interface_recreation(lan: Lan):
    """A node's eth0 replaced (new ifindex and MAC): the next announce reopens and works."""
    ip("-n", lan.ns("a"), "addr", "add", f"{PUBLIC_X}/{PLEN}", "dev", "eth0")
    _ping(lan, "c", PUBLIC_X)
    ip("-n", lan.ns("a"), "link", "set", "eth0", "down")
    with inside(lan.ns("b")):
        announcer = ArpAnnouncer()
        announcer.prepare("eth0")
    try:
        old_mac = lan.macs["b"]
        ip("-n", lan.ns("b"), "link", "del", "eth0")
        _attach(lan, "b", "b-port2")
        assert lan.macs["b"] != old_mac
        with inside(lan.ns("b")):  # the reopen happens in the daemon's own namespace
            assert announcer.announce("eth0", PUBLIC_X) == 2
        deadline = time.monotonic() + 1
        while neigh_lladdr(lan.ns("c"), PUBLIC_X) != lan.macs["b"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["b"]
    finally:
        announcer.close()


def test_unsolicited_na_moves_the_peer_ipv6_neighbour_entry(lan6: Lan):
    """IPv6 announce, on a link-local address (nothing routable leaves the namespaces)."""
    lan = lan6
    target = "fe80::100"
    ip("-n", lan.ns("a"), "addr", "add", f"{target}/64", "dev", "eth0", "nodad")
    subprocess.run(["ip", "netns", "exec", lan.ns("c"), "ping", "-6", "-c1", "-W1", f"{target}%eth0"],
                   capture_output=True, timeout=5, check=True)
    assert neigh_lladdr(lan.ns("c"), target) == lan.macs["a"]
    ip("-n", lan.ns("a"), "link", "set", "eth0", "down")
    with inside(lan.ns("b")):
        am, announcer = AddressManager(), ArpAnnouncer()
        announcer.prepare("eth0")
    try:
        assert am.add("eth0", target, 64) is True
        entry = next(e for e in am.addresses(socket.AF_INET6) if e.ip == target)
        assert not entry.tentative  # nodad: usable at once
        assert announcer.announce("eth0", target) == 1
        deadline = time.monotonic() + 1
        while neigh_lladdr(lan.ns("c"), target) != lan.macs["b"] and time.monotonic() < deadline:
            time.sleep(0.005)
        assert neigh_lladdr(lan.ns("c"), target) == lan.macs["b"]
        assert am.delete("eth0", target) is True and am.where(target) is None
    finally:
        am.close()
        announcer.close()


TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_SEND_QUEUE = 19, 20, 21, 2


def _next_seq(sock: socket.socket) -> int:
    """The sequence number ``sock`` sends next (TCP_REPAIR lets root read it)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        return sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF  # read as signed int
    finally:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 0)


@pytest.mark.parametrize("family,loopback", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                         ids=["ipv4", "ipv6"])
def test_spoofed_reset_with_the_exact_seq_resets_the_peer(lan6: Lan, family: int, loopback: str):
    """The raw-socket path end to end for both families: the kernel accepts our header and
    checksum only if they are right, and the RST only with the exact sequence number."""
    lan = lan6
    listener = listen(lan, "c", loopback, 5800, family=family)
    with inside(lan.ns("c")):
        client = lan.track(socket.create_connection((loopback, 5800), timeout=5))
        tickler = TcpSegmentSender()
        tickler.prepare()
    try:
        server = accept(listener, lan)
        server_end, client_end = server.getsockname()[:2], client.getsockname()[:2]
        seq = _next_seq(server)
        tickler.reset(server_end, client_end, (seq + 1000) & 0xFFFFFFFF)  # wrong: ignored
        tickler.tickle(server_end, client_end)                             # harmless while alive
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(10)
        tickler.reset(server_end, client_end, seq)
        client.settimeout(2)
        with pytest.raises(ConnectionResetError):
            client.recv(10)
    finally:
        tickler.close()


# --- (c) the takeover trick ---------------------------------------------------------------


@dataclass
class Takeover:
    client: socket.socket
    reader: BlockedReader
    client_addr: tuple[str, int]
    am: AddressManager
    announcer: ArpAnnouncer
    tickler: TcpSegmentSender


@contextlib.contextmanager
def served_then_orphaned(lan: Lan, port: int, b_knows_c: bool) -> Iterator[Takeover]:
    """C is connected to X on A and blocked in recv(); then A's link vanishes (hard reset).

    B's senders are already open, as they would be in a running daemon. With ``b_knows_c``
    B has C's MAC cached; otherwise B must ARP for C before the tickle can leave, and that
    request ("who-has C tell X", arp_announce=0) refreshes C's entry for X by itself.
    """
    if b_knows_c:
        _ping(lan, "b", NODE_IP["c"])
    ip("-n", lan.ns("a"), "addr", "add", f"{PUBLIC_X}/{PLEN}", "dev", "eth0")
    server = listen(lan, "a", PUBLIC_X, port)
    client = connect(lan, "c", PUBLIC_X, port)
    conn = accept(server, lan)
    conn.sendall(b"hello\n")
    assert client.recv(6) == b"hello\n"
    assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["a"]
    reader = BlockedReader(client)
    reader.start()
    ip("-n", lan.ns("a"), "link", "del", "eth0")  # takes the bridge port with it: A is gone
    with inside(lan.ns("b")):
        am, announcer, tickler = AddressManager(), ArpAnnouncer(), TcpSegmentSender()
        announcer.prepare("eth0")
        tickler.prepare()
    try:
        yield Takeover(client, reader, client.getsockname(), am, announcer, tickler)
    finally:
        am.close()
        announcer.close()
        tickler.close()
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        reader.join(2)


@pytest.mark.parametrize("b_knows_c", [True, False], ids=["B-has-C-mac", "B-must-arp"])
def test_takeover_resets_the_orphaned_client_connection(lan: Lan, b_knows_c: bool):
    with served_then_orphaned(lan, 5445, b_knows_c) as t:
        t0 = time.perf_counter_ns()
        t.am.add("eth0", PUBLIC_X, PLEN)
        t1 = time.perf_counter_ns()
        t.announcer.announce("eth0", PUBLIC_X)
        t2 = time.perf_counter_ns()
        tickle_sent_ns = time.monotonic_ns()
        t.tickler.tickle((PUBLIC_X, 5445), t.client_addr)
        t3 = time.perf_counter_ns()
        t.reader.join(3)
        assert t.reader.ended_ns is not None, "client still blocked: no reset"
        assert isinstance(t.reader.error, ConnectionResetError), repr(t.reader.error or t.reader.data)
        reset_after_ms = (t.reader.ended_ns - tickle_sent_ns) / 1e6
        print(f"\ntakeover ({'B has C cached' if b_knows_c else 'B must ARP for C'}): addr add {(t1 - t0) / 1e6:.3f} ms, announce {(t2 - t1) / 1e6:.3f} ms, "
              f"tickle send {(t3 - t2) / 1e6:.3f} ms; tickle -> client ECONNRESET {reset_after_ms:.3f} ms; "
              f"add -> ECONNRESET {(t.reader.ended_ns - tickle_sent_ns) / 1e6 + (t3 - t0) / 1e6:.3f} ms")
        assert reset_after_ms < 200
        assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["b"]


def test_tickle_without_garp_does_not_reset_then_garp_does(lan: Lan):
    """Negative control: the client's challenge ACK goes to A's dead MAC unless B announced."""
    with served_then_orphaned(lan, 5446, b_knows_c=True) as t:
        t.am.add("eth0", PUBLIC_X, PLEN)
        t.tickler.tickle((PUBLIC_X, 5446), t.client_addr)
        t.reader.join(0.6)
        assert t.reader.ended_ns is None, "reset without GARP: the control is void"
        assert neigh_lladdr(lan.ns("c"), PUBLIC_X) == lan.macs["a"]
        # The client rate-limits challenge ACKs (tcp_invalid_ratelimit, 500 ms): we waited 600.
        t.announcer.announce("eth0", PUBLIC_X)
        t.tickler.tickle((PUBLIC_X, 5446), t.client_addr)
        t.reader.join(3)
        assert isinstance(t.reader.error, ConnectionResetError), repr(t.reader.error or t.reader.data)


# --- (d) kill_connections -----------------------------------------------------------------


def test_kill_connections_resets_only_the_released_ip(lan: Lan, node_b_effects):
    am, diag = node_b_effects
    am.add("eth0", PUBLIC_X, PLEN)
    am.add("eth0", PUBLIC_Y, PLEN)
    lx, ly = listen(lan, "b", PUBLIC_X, 5500), listen(lan, "b", PUBLIC_Y, 5500)
    cx, cy = connect(lan, "c", PUBLIC_X, 5500), connect(lan, "c", PUBLIC_Y, 5500)
    sx, sy = accept(lx, lan), accept(ly, lan)

    assert kill_connections(PUBLIC_Y, ports=[9999], diag=diag) == 0  # port filter
    t0 = time.perf_counter()
    killed = kill_connections(PUBLIC_X, diag=diag)
    elapsed = time.perf_counter() - t0
    print(f"\nkill_connections: {killed} socket(s) in {elapsed * 1e3:.3f} ms")
    assert killed == 1
    # The client was not reading (no thread competing for the GIL during the timing);
    # its socket holds the reset: recv() raises at once.
    cx.settimeout(2)
    with pytest.raises(ConnectionResetError):
        cx.recv(10)
    sx.settimeout(1)
    with pytest.raises(OSError) as aborted:
        sx.recv(10)
    assert aborted.value.errno == errno.ECONNABORTED
    # The connection on the other public IP is untouched, both ways.
    cy.sendall(b"ping")
    sy.settimeout(2)
    assert sy.recv(4) == b"ping"
    sy.sendall(b"pong")
    cy.settimeout(2)
    assert cy.recv(4) == b"pong"
    # The listener on X survives too: new clients are served.
    again = connect(lan, "c", PUBLIC_X, 5500)
    accept(lx, lan).sendall(b"ok")
    assert again.recv(2) == b"ok"


def test_release_order_matters(lan: Lan, node_b_effects):
    """release_ip resets the client; killing only after the delete leaves the client hanging."""
    am, diag = node_b_effects
    results = {}
    for name, ip_addr, port in (("release_ip", PUBLIC_X, 5510), ("delete-then-kill", PUBLIC_Y, 5511)):
        am.add("eth0", ip_addr, PLEN)
        listener = listen(lan, "b", ip_addr, port)
        client = connect(lan, "c", ip_addr, port)
        accept(listener, lan)
        listener.close()
        if name == "release_ip":
            assert release_ip(am, "eth0", ip_addr, PLEN, diag=diag) == (1, True)
        else:
            assert am.delete("eth0", ip_addr, PLEN)
            assert kill_connections(ip_addr, diag=diag) == 1  # the local socket still goes
        client.settimeout(0.3)
        try:
            client.recv(10)
            results[name] = "data"
        except ConnectionResetError:
            results[name] = "reset"
        except TimeoutError:
            results[name] = "hangs"
    assert results == {"release_ip": "reset", "delete-then-kill": "hangs"}


# --- (e) established_connections --------------------------------------------------------


def test_established_connections_lists_exactly_our_public_connections(lan: Lan, node_b_effects):
    am, diag = node_b_effects
    am.add("eth0", PUBLIC_X, PLEN)
    am.add("eth0", PUBLIC_Y, PLEN)
    lx = listen(lan, "b", PUBLIC_X, 5600)
    dual = listen(lan, "b", "::", 5601, family=socket.AF_INET6)  # v4-mapped sockets
    own = listen(lan, "b", NODE_IP["b"], 5602)                   # not a public IP
    clients = [connect(lan, "c", PUBLIC_X, 5600), connect(lan, "c", PUBLIC_X, 5600),
               connect(lan, "c", PUBLIC_Y, 5601)]
    for listener in (lx, lx, dual):
        accept(listener, lan)
    connect(lan, "c", NODE_IP["b"], 5602)
    accept(own, lan)

    expected = {(c.getpeername()[:2], c.getsockname()[:2]) for c in clients}
    got = established_connections({PUBLIC_X, PUBLIC_Y}, diag=diag)
    assert len(got) == len(set(got)) == 3
    assert set(got) == expected
    assert set(established_connections({PUBLIC_Y}, diag=diag)) == {e for e in expected if e[0][0] == PUBLIC_Y}
    assert established_connections(set(), diag=diag) == []
    # The per-family fallback (kernels without the older one-walk request) agrees.
    fallback = SockDiag.__new__(SockDiag)
    fallback.__dict__.update(diag.__dict__, _compat_dump=False)
    assert set(established_connections({PUBLIC_X, PUBLIC_Y}, diag=fallback)) == expected
    # Works without a long-lived SockDiag too (in the namespace of the caller).
    with inside(lan.ns("b")):
        assert set(established_connections([PUBLIC_X])) == {e for e in expected if e[0][0] == PUBLIC_X}


def test_connection_poll_cost_with_thousands_of_sockets(lan: Lan, node_b_effects):
    """~3000 unrelated sockets plus 50 on a public IP: time one poll."""
    am, diag = node_b_effects
    am.add("eth0", PUBLIC_X, PLEN)
    busy = listen(lan, "b", "127.0.0.1", 5700)
    with inside(lan.ns("b")):
        for _ in range(1500):
            lan.track(socket.create_connection(("127.0.0.1", 5700)))
            lan.track(busy.accept()[0])
    public = listen(lan, "b", PUBLIC_X, 5701)
    for _ in range(50):
        connect(lan, "c", PUBLIC_X, 5701)
        accept(public, lan)

    samples = []
    for _ in range(30):
        t0 = time.perf_counter()
        got = established_connections({PUBLIC_X}, diag=diag)
        samples.append(time.perf_counter() - t0)
    assert len(got) == 50
    unfiltered = []
    for _ in range(10):
        t0 = time.perf_counter()
        every = diag.tcp_sockets(None)
        unfiltered.append(time.perf_counter() - t0)
    assert len(every) >= 3050
    print(f"\npoll of 50 public connections among {len(every)} sockets: {_median_ms(samples)}; "
          f"unfiltered dump of all: {_median_ms(unfiltered)}")
    assert statistics.median(samples) < 0.05
