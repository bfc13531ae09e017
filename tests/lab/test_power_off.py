"""power_off is a sysrq-b: after the cut nothing leaves the node, not even later.

The victim holds TCP connections in every state that makes a killed process's kernel send
FIN/RST (idle, unread data, full send queue, victim-initiated) and sends UDP noise.  A capture on
the client must show no packet from the victim after the cut — neither while it is off nor after
power_on brings back a node with the same IP and MAC (orphaned sockets of the old incarnation
would retransmit their FIN as soon as a path reopens).
"""

from __future__ import annotations

import time


VICTIM_SETUP = r"""
import socket, time, sys
client = sys.argv[1]
held = []
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9100)); srv.listen(8); held.append(srv)
s = socket.create_connection((client, 9001)); held.append(s)     # victim-initiated, idle
s2 = socket.create_connection((client, 9002)); held.append(s2)   # client never reads it
for _ in range(2):     # the client connects; one of them sends data the victim never reads
    c, _ = srv.accept(); held.append(c)
s2.setblocking(False)
try:
    while True:
        s2.send(b"x" * 65536)
except BlockingIOError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
while True:
    u.sendto(b"noise", (client, 9999)); time.sleep(0.01)
"""

CLIENT_SETUP = r"""
import socket, sys, time
victim = sys.argv[1]
held = []
for port in (9001, 9002):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port)); l.listen(4); held.append(l)
print("listening", flush=True)
conns = [held[0].accept()[0], held[1].accept()[0]]   # 9002: never read
time.sleep(0.3)
a = socket.create_connection((victim, 9100))          # idle
b = socket.create_connection((victim, 9100)); b.send(b"unread data")
held += conns + [a, b]
print("connected", flush=True)
time.sleep(3600)
"""


def _start(host, code, *args):
    import subprocess
    import sys
    proc = host.popen([sys.executable, "-u", "-c", code, *args], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    return proc


def _wait_line(proc, word, timeout=10.0):
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if word in line:
                return
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"no {word!r} from probe: {proc.stderr.read() if proc.poll() is not None else ''}")


def test_power_off_leaks_nothing_even_after_power_on(lab_network, tmp_path):
    from scapy.all import rdpcap   # slow import: only here

    net = lab_network(nodes=2, clients=1)
    victim, client = net.node(0), net.client(0)
    victim_if, client_if = net.iface(victim, "public"), net.iface(client, "public")
    victim_ip = victim.ips[victim_if].split("/")[0]
    client_ip = client.ips[client_if].split("/")[0]
    victim_mac = victim.macs[victim_if]

    pcap = tmp_path / "client.pcap"
    capture = client.popen(["tcpdump", "-i", client_if, "--immediate-mode", "-n",
                            "-U", "-w", str(pcap), "ether", "src", victim_mac])
    client_proc = _start(client, CLIENT_SETUP, victim_ip)
    _wait_line(client_proc, "listening")
    victim_proc = _start(victim, VICTIM_SETUP, client_ip)
    _wait_line(client_proc, "connected")
    _wait_line(victim_proc, "ready")
    time.sleep(0.5)

    result = net.power_off(victim)
    t_cut = result["t_cut"]
    assert result["t_killed"] - t_cut < 1.0
    time.sleep(3.5)                         # FIN retransmits would come by now (RTO ~0.2..3 s)
    t_on = net.power_on(victim)
    time.sleep(4.0)                         # ... or as soon as a path reopens
    capture.terminate()
    capture.wait(5)

    packets = rdpcap(str(pcap))
    before = [p for p in packets if float(p.time) < t_cut]
    after = [(float(p.time) - t_cut, p.summary()) for p in packets if float(p.time) >= t_cut]
    assert len(before) > 10, "the capture saw no traffic from the victim before the cut"
    assert after == [], f"packets from the victim after the cut: {after[:10]}"
    assert t_on > t_cut
