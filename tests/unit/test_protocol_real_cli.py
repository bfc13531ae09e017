"""The codec against Debian's real `ctdb` CLI (Samba 4.17).

A throw-away fake ctdbd on a Unix socket (CTDB_SOCKET points the 4.17 CLI at it) decodes what
the CLI sends with our decoder and answers with our encoder. A command's output then proves our
replies have CTDB's layout, and the decoded requests prove our request decoders do.
Skipped, with the reason shown, only when /usr/bin/ctdb is missing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, Callable

import pytest

from ctdblab.daemon.protocol import (
    CAP_DEFAULT, CURRENT_NODE, UNKNOWN_PNN, AddrInfo, BanState, Connection, Control, ControlFlag,
    DbFlag, DbId, DbMap, DebugLevel, Iface, IfaceList, NodeAndFlags, NodeFlag, NodeMap, Packet,
    PacketReader, ProtocolError, PublicIp, PublicIpInfo, PublicIpList, RecMode, ReplyControl,
    ReqControl, ReqMessage, Runstate, SockAddr, Srvid, SrvidMessage, TickleList, Timeval, Tunable,
    TUNABLE_LISTVARS_ORDER, Uptime, VarList, VnnMap, decode_packet, encode_packet,
    pack_i32_reply, pack_message, pack_reply, unpack_message, unpack_request,
)

CTDB = "/usr/bin/ctdb"
pytestmark = pytest.mark.skipif(not os.path.exists(CTDB), reason=f"{CTDB} (Debian package ctdb) is not installed")

Handler = Callable[[ReqControl], tuple[int, Any]]


class FakeCtdbd:
    """Answers controls from `handlers` (opcode -> (status, reply value)); records every packet."""

    def __init__(self, pnn: int, handlers: dict[int, Handler]) -> None:
        self.pnn = pnn
        self.handlers = handlers
        self.packets: list[tuple[bytes, Packet]] = []
        self.errors: list[BaseException] = []
        self.dir = tempfile.mkdtemp(prefix="ctdbp")
        self.path = os.path.join(self.dir, "ctdbd.socket")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = PacketReader()
        try:
            while chunk := conn.recv(65536):
                for frame in reader.feed(chunk):
                    packet = decode_packet(frame)
                    self.packets.append((frame, packet))
                    for reply in self._answer(packet):
                        conn.sendall(reply)
        except OSError:
            pass
        except BaseException as exc:  # surfaced by run() so a codec bug fails the test
            self.errors.append(exc)
        finally:
            conn.close()

    def _send(self, body: Any, to: int, reqid: int) -> bytes:
        return encode_packet(body, destnode=to, srcnode=self.pnn, reqid=reqid)

    def _answer(self, packet: Packet) -> list[bytes]:
        body, head = packet.body, packet.header
        out = []
        if isinstance(body, ReqControl):
            if body.opcode == Control.GET_PNN:
                reply = ReplyControl(self.pnn)
            elif body.opcode in (Control.REGISTER_SRVID, Control.DEREGISTER_SRVID):
                reply = ReplyControl(0)
            elif body.opcode in self.handlers:
                status, value = self.handlers[body.opcode](body)
                reply = ReplyControl(status, pack_reply(body.opcode, value))
            else:
                reply = ReplyControl(-1, b"", f"fake ctdbd does not implement control {body.opcode}")
            if not body.flags & ControlFlag.NOREPLY:
                out.append(self._send(reply, head.srcnode, head.reqid))
            if body.opcode == Control.REGISTER_SRVID and body.srvid == Srvid.LEADER:
                out.append(self._send(ReqMessage(Srvid.LEADER, pack_message(Srvid.LEADER, self.pnn)), head.srcnode, 0))
        elif isinstance(body, ReqMessage) and body.srvid == Srvid.TAKEOVER_RUN:
            request = unpack_message(body.srvid, body.data)
            if request.srvid:
                out.append(self._send(ReqMessage(request.srvid, pack_i32_reply(self.pnn)), request.pnn, 0))
        return out

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CTDB_SOCKET=self.path, CTDB_BASE=self.dir)
        result = subprocess.run([CTDB, *args], env=env, capture_output=True, text=True, timeout=15)
        if self.errors:
            raise self.errors[0]
        return result

    def controls(self, opcode: int) -> list[ReqControl]:
        return [p.body for _, p in self.packets if isinstance(p.body, ReqControl) and p.body.opcode == opcode]

    def messages(self, srvid: int) -> list[ReqMessage]:
        return [p.body for _, p in self.packets if isinstance(p.body, ReqMessage) and p.body.srvid == srvid]


@pytest.fixture
def fake():
    servers: list[FakeCtdbd] = []

    def make(pnn: int = 0, handlers: dict[int, Handler] | None = None) -> FakeCtdbd:
        server = FakeCtdbd(pnn, handlers or {})
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def ok(value: Any = None) -> Handler:
    return lambda body: (0, value)


def test_ctdb_pnn_real_bytes(fake):
    server = fake(pnn=3)
    result = server.run("pnn")
    assert (result.returncode, result.stdout, result.stderr) == (0, "3\n", "")
    first_raw, first = server.packets[0]
    # GET_PNN, padded to 64, to CTDB_CURRENT_NODE from CTDB_UNKNOWN_PNN, control data at byte 60.
    assert len(first_raw) == 64 and first.header.length == 64
    assert (first.header.destnode, first.header.srcnode) == (CURRENT_NODE, UNKNOWN_PNN)
    assert first.header.generation == 0
    assert first.body == ReqControl(Control.GET_PNN)
    assert first_raw[32:36] == b"\x23\x00\x00\x00" and first_raw[56:60] == b"\x00\x00\x00\x00"
    # Then the CLI registers for leader broadcasts, now addressed to and from our pnn.
    _, second = server.packets[1]
    assert second.body.opcode == Control.REGISTER_SRVID and second.body.srvid == Srvid.LEADER
    assert (second.header.destnode, second.header.srcnode) == (3, 3)


def test_status_value_controls_and_scalars(fake):
    uptime = Uptime(Timeval(1000, 5), Timeval(900, 0), Timeval(950, 0), Timeval(951, 500000))
    server = fake(pnn=1, handlers={
        Control.PING: lambda b: (4, None),
        Control.GET_PID: lambda b: (4242, None),
        Control.UPTIME: ok(uptime),
        Control.GET_RUNSTATE: ok(Runstate.RUNNING),
        Control.GET_CAPABILITIES: ok(CAP_DEFAULT),
        Control.GET_RECLOCK_FILE: ok("/clusterfs/.ctdb/reclock"),
        Control.GET_DEBUG: ok(DebugLevel.NOTICE),
        Control.SET_DEBUG: ok(),
        Control.PROCESS_EXISTS: lambda b: (0 if unpack_request(b.opcode, b.data) == 123 else -1, None),
    })
    assert "(4 clients)" in server.run("ping").stdout
    assert server.run("getpid").stdout == "4242\n"
    out = server.run("uptime").stdout
    assert "Duration of last recovery/failover: 1.500000 seconds" in out
    assert server.run("runstate").stdout == "RUNNING\n"
    assert server.run("getcapabilities").stdout == "LEADER: YES\nLMASTER: YES\n"
    assert server.run("getreclock").stdout == "/clusterfs/.ctdb/reclock\n"
    assert server.run("getdebug").stdout == "NOTICE\n"
    assert server.run("setdebug", "INFO").returncode == 0
    assert unpack_request(Control.SET_DEBUG, server.controls(Control.SET_DEBUG)[0].data) == DebugLevel.INFO
    assert server.run("process-exists", "123").stdout == "PID 123 exists\n"
    assert server.run("process-exists", "124").returncode != 0


def test_tunables(fake):
    values = {name: i for i, name in enumerate(TUNABLE_LISTVARS_ORDER)}
    server = fake(handlers={
        Control.LIST_TUNABLES: ok(VarList(list(TUNABLE_LISTVARS_ORDER))),
        Control.GET_TUNABLE: lambda b: (0, values[unpack_request(b.opcode, b.data)]),
        Control.SET_TUNABLE: ok(),
    })
    lines = server.run("listvars").stdout.splitlines()
    assert [line.split("=")[0].strip() for line in lines] == list(TUNABLE_LISTVARS_ORDER)
    assert [int(line.split("=")[1]) for line in lines] == list(range(len(TUNABLE_LISTVARS_ORDER)))
    assert server.run("getvar", "KeepaliveInterval").stdout.split() == ["KeepaliveInterval", "=", "4"]
    assert server.run("setvar", "KeepaliveInterval", "2").returncode == 0
    request = server.controls(Control.SET_TUNABLE)[0]
    assert unpack_request(Control.SET_TUNABLE, request.data) == Tunable("KeepaliveInterval", 2)


def test_status_nodemap_vnnmap_ifaces(fake):
    nodemap = NodeMap([
        NodeAndFlags(0, 0, SockAddr("198.18.0.1")),
        NodeAndFlags(1, NodeFlag.UNHEALTHY, SockAddr("198.18.0.2")),
        NodeAndFlags(2, NodeFlag.DISCONNECTED | NodeFlag.BANNED, SockAddr("198.18.0.3")),
    ])
    server = fake(pnn=0, handlers={
        Control.GET_NODEMAP: ok(nodemap),
        Control.GET_RUNSTATE: ok(Runstate.RUNNING),
        Control.GETVNNMAP: ok(VnnMap(77, [0, 1])),
        Control.GET_RECMODE: lambda b: (RecMode.NORMAL, None),
        Control.GET_IFACES: ok(IfaceList([Iface("eth1", 1, 2), Iface("eth2", 0, 0)])),
    })
    out = server.run("status").stdout
    assert "Number of nodes:3" in out
    assert "pnn:1 198.18.0.2       UNHEALTHY" in out
    assert "pnn:2 198.18.0.3       DISCONNECTED|BANNED|INACTIVE" in out
    assert "Generation:77\nSize:2\nhash:0 lmaster:0\nhash:1 lmaster:1\n" in out
    assert "Recovery mode:NORMAL (0)" in out and "Leader:0" in out
    assert server.run("-X", "ifaces").stdout == "|Name|LinkStatus|References|\n|eth1|1|2|\n|eth2|0|0|\n"


def test_public_ips_v4_and_v6(fake):
    ips = PublicIpList([PublicIp(0, SockAddr("198.19.8.1")), PublicIp(UNKNOWN_PNN, SockAddr("2001:db8::5"))])

    def ipinfo(body):
        addr = unpack_request(body.opcode, body.data)
        return 0, PublicIpInfo(PublicIp(0, addr), 0, [Iface("eth1", 1, 1), Iface("eth2", 0, 0)])

    server = fake(pnn=0, handlers={
        Control.GET_NODEMAP: ok(NodeMap([NodeAndFlags(0, 0, SockAddr("198.18.0.1"))])),
        Control.GET_PUBLIC_IPS: ok(ips),
        Control.GET_PUBLIC_IP_INFO: ipinfo,
    })
    assert server.run("ip").stdout == "Public IPs on node 0\n198.19.8.1 0\n2001:db8::5 -1\n"
    out = server.run("ipinfo", "198.19.8.1").stdout
    assert "IP:198.19.8.1\nCurrentNode:0\nNumInterfaces:2\n" in out
    assert "Interface[1]: Name:eth1 Link:up References:1 (active)" in out
    assert "Interface[2]: Name:eth2 Link:down References:0" in out
    requested = [unpack_request(Control.GET_PUBLIC_IP_INFO, c.data) for c in server.controls(Control.GET_PUBLIC_IP_INFO)]
    # `ctdb ip` asks for the info of every address (an IPv6 sockaddr built by the CLI), then ipinfo.
    assert requested == [SockAddr("198.19.8.1"), SockAddr("2001:db8::5"), SockAddr("198.19.8.1")]


def test_dbmap_and_seqnum(fake):
    names = {0x7A19D84D: "locking.tdb", 0x7132C184: "secrets.tdb"}
    server = fake(handlers={
        Control.GET_DBMAP: ok(DbMap([DbId(0x7A19D84D, 0), DbId(0x7132C184, DbFlag.PERSISTENT)])),
        Control.GET_DBNAME: lambda b: (0, names[unpack_request(b.opcode, b.data)]),
        Control.GETDBPATH: lambda b: (0, f"/var/lib/ctdb/{names[unpack_request(b.opcode, b.data)]}.0"),
        Control.DB_GET_HEALTH: ok(None),
        Control.GET_DB_SEQNUM: ok(42),
    })
    out = server.run("getdbmap").stdout
    assert "Number of databases:2" in out
    assert "dbid:0x7a19d84d name:locking.tdb path:/var/lib/ctdb/locking.tdb.0\n" in out
    assert "dbid:0x7132c184 name:secrets.tdb path:/var/lib/ctdb/secrets.tdb.0 PERSISTENT" in out
    assert server.run("getdbseqnum", "secrets.tdb").stdout == "0x2a\n"
    request = server.controls(Control.GET_DB_SEQNUM)[0]
    assert len(request.data) == 8 and unpack_request(Control.GET_DB_SEQNUM, request.data) == 0x7132C184


def test_tickles_and_gratarp(fake):
    public = SockAddr("198.19.8.1")
    conn = Connection(SockAddr("198.19.4.1", 50000), SockAddr("198.19.8.1", 445))
    server = fake(handlers={
        Control.GET_TCP_TICKLE_LIST: lambda b: (0, TickleList(unpack_request(b.opcode, b.data), [conn])),
        Control.TCP_ADD_DELAYED_UPDATE: ok(),
        Control.TCP_REMOVE: ok(),
        Control.SEND_GRATUITOUS_ARP: ok(),
    })
    out = server.run("-X", "gettickles", "198.19.8.1").stdout
    assert out.splitlines()[1] == "|198.19.4.1|50000|198.19.8.1|445|"
    assert unpack_request(Control.GET_TCP_TICKLE_LIST, server.controls(Control.GET_TCP_TICKLE_LIST)[0].data) == public
    assert server.run("addtickle", "198.19.4.1:50000", "198.19.8.1:445").returncode == 0
    assert unpack_request(Control.TCP_ADD_DELAYED_UPDATE, server.controls(Control.TCP_ADD_DELAYED_UPDATE)[0].data) == conn
    assert server.run("deltickle", "198.19.4.1:50000", "198.19.8.1:445").returncode == 0
    assert unpack_request(Control.TCP_REMOVE, server.controls(Control.TCP_REMOVE)[0].data) == conn
    assert server.run("gratarp", "198.19.8.1", "eth1").returncode == 0
    info = unpack_request(Control.SEND_GRATUITOUS_ARP, server.controls(Control.SEND_GRATUITOUS_ARP)[0].data)
    # The 4.17 CLI leaves `mask` uninitialised for gratarp: only address and interface matter.
    assert isinstance(info, AddrInfo) and (info.addr, info.iface) == (public, "eth1")


def test_ban_and_disable_with_takeover_run_message(fake):
    node = NodeAndFlags(0, 0, SockAddr("198.18.0.1"))

    def set_flag(flag: NodeFlag, on: Callable[[ReqControl], bool]) -> Handler:
        def handler(body: ReqControl) -> tuple[int, Any]:
            node.flags = node.flags | flag if on(body) else node.flags & ~flag
            return 0, None
        return handler

    server = fake(pnn=0, handlers={
        # A second, healthy node: with every node banned the CLI waits forever.
        Control.GET_NODEMAP: lambda b: (0, NodeMap([node, NodeAndFlags(1, 0, SockAddr("198.18.0.2"))])),
        Control.GET_CAPABILITIES: ok(CAP_DEFAULT),
        Control.SET_BAN_STATE: set_flag(NodeFlag.BANNED, lambda b: unpack_request(b.opcode, b.data).time > 0),
        Control.DISABLE_NODE: set_flag(NodeFlag.PERMANENTLY_DISABLED, lambda b: True),
    })
    assert server.run("ban", "30").returncode == 0
    assert unpack_request(Control.SET_BAN_STATE, server.controls(Control.SET_BAN_STATE)[0].data) == BanState(0, 30)
    assert node.flags == NodeFlag.BANNED
    node.flags = 0
    assert server.run("disable").returncode == 0
    assert node.flags == NodeFlag.PERMANENTLY_DISABLED
    takeover_runs = [unpack_message(m.srvid, m.data) for m in server.messages(Srvid.TAKEOVER_RUN)]
    assert len(takeover_runs) == 2
    for request in takeover_runs:
        assert isinstance(request, SrvidMessage) and request.pnn == 0
        assert request.srvid & Srvid.RANGE_MASK == Srvid.TOOL_RANGE


def test_fake_rejects_what_the_decoder_rejects():
    # Guard for the harness itself: a broken frame surfaces as ProtocolError, not a hang.
    with pytest.raises(ProtocolError):
        PacketReader().feed(b"\x08\x00\x00\x00")
