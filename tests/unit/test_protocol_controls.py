"""Per-control payload codecs, the control table, and the message codecs."""

from __future__ import annotations

import struct

import pytest

from ctdblab.daemon.protocol import (
    CONTROLS, STATUS_CONTROLS, TUNABLE_LISTVARS_ORDER, AddrInfo, BanState, Connection, Control,
    DbFlag, DbId, DbMap, DbVacuum, DisableMessage, EchoData, ElectionMessage, Iface, IfaceList,
    KeyData, LtdbHeader, NodeAndFlags, NodeFlagChange, NodeMap, NotifyData, PidSrvid,
    ProtocolError, PublicIp, PublicIpInfo, PublicIpList, PullDbExt, RecBuffer, RecBufferList, RecData, RecoveryDefer, SweepKeys,
    RecoveryScan, ScanResult, SockAddr,
    Srvid, SrvidMessage, TickleList, Timeval, TransDb, TraverseAll, TraverseAllExt, TraverseStart,
    TraverseStartExt, Tunable, TunableList, UNKNOWN_PNN, Uptime, VarList, VnnMap, pack_i32_reply,
    pack_message, pack_reply, pack_request, unpack_i32_reply, unpack_message, unpack_reply,
    unpack_request,
)
from ctdblab.daemon.protocol.messages import MESSAGES

IP = SockAddr("198.19.8.1")
CONN = Connection(SockAddr("198.19.4.1", 40000), SockAddr("198.19.8.1", 445))

# A sample value per codec name (scalars) or WireType class name.
SAMPLE_BY_CODEC = {
    "u32": 0xDEADBEEF,
    "i32": -7,
    "u64": 0x0102030405060708,
    "pid": 4242,
    "double": 0.125,
    "string": "/var/lib/ctdb/volatile/locking.tdb.0",
    "stringn": "KeepaliveInterval",
    "raw": b"\x00\x01\x02 stats",
    "db_id+pad": 0x7A19D84D,
    "SockAddr": IP,
    "Connection": CONN,
    "NodeMap": NodeMap([NodeAndFlags(0, 0, SockAddr("198.18.0.1")), NodeAndFlags(1, 0x8, SockAddr("198.18.0.2"))]),
    "PublicIp": PublicIp(1, IP),
    "PublicIpList": PublicIpList([PublicIp(0, IP), PublicIp(UNKNOWN_PNN, SockAddr("198.19.8.2"))]),
    "PublicIpInfo": PublicIpInfo(PublicIp(0, IP), 0, [Iface("eth1", 1, 1)]),
    "IfaceList": IfaceList([Iface("eth1", 1, 2), Iface("eth2", 0, 0)]),
    "Iface": Iface("eth1", 0, 0),
    "AddrInfo": AddrInfo(IP, 16, "eth1"),
    "TickleList": TickleList(IP, [CONN]),
    "BanState": BanState(1, 300),
    "NodeFlagChange": NodeFlagChange(1, 4, 0),
    "TransDb": TransDb(0x7A19D84D, 12345),
    "PidSrvid": PidSrvid(1234, 0xABCDEF0123456789),
    "DbMap": DbMap([DbId(0x7A19D84D, 0), DbId(0x7132C184, DbFlag.PERSISTENT)]),
    "VnnMap": VnnMap(77, [0, 1]),
    "Uptime": Uptime(Timeval(100, 1), Timeval(50, 0), Timeval(60, 0), Timeval(61, 500000)),
    "TunableList": TunableList(list(range(62))),
    "Tunable": Tunable("KeepaliveInterval", 2),
    "VarList": VarList(list(TUNABLE_LISTVARS_ORDER)),
    "KeyData": KeyData(0x7A19D84D, LtdbHeader(3, 1), b"key"),
    "RecData": RecData(1, b"k", b"v"),
    "RecBuffer": RecBuffer(0x7132C184, [RecData.with_header(0, b"k", LtdbHeader(2, 0), b"v")]),
    "RecoveryScan": RecoveryScan([0, 2], [0x7132C184, 0x4E66C2B2]),
    "ScanResult": ScanResult(0x1234, [RecBuffer(0x7132C184, [RecData.with_header(0, b"k", LtdbHeader(2, 0), b"v")])]),
    "SweepKeys": SweepKeys(0x7132C184, 2, [0, 1, 2], [3], [[0, 1, 2, 3], [], [0, 1, 2]]),
    "RecoveryDefer": RecoveryDefer(0x4321, [0, 1, 0], [RecBuffer(0x7132C184, []), RecBuffer(1, [RecData(0, b"k", b"")])]),
    "RecBufferList": RecBufferList([RecBuffer(0x7132C184, [RecData(0, b"k", b"")])]),
    "TraverseStart": TraverseStart(0x7A19D84D, 1, 0xBE00000000001234),
    "TraverseStartExt": TraverseStartExt(0x7A19D84D, 1, 0xBE00000000001234, True),
    "TraverseAll": TraverseAll(1, 2, 0, 3, 4),
    "TraverseAllExt": TraverseAllExt(1, 2, 0, 3, 4, True),
    "PullDbExt": PullDbExt(0x7A19D84D, UNKNOWN_PNN, Srvid.RECOVERY + 1),
    "DbVacuum": DbVacuum(0x7A19D84D, False),
    "NotifyData": NotifyData(0xFE00000000000009, b"notify"),
    "EchoData": EchoData(100, b"echo"),
}

CASES = [
    (opcode, direction)
    for opcode, spec in sorted(CONTROLS.items())
    for direction, codec in (("request", spec.request), ("reply", spec.reply))
    if codec is not None
]


@pytest.mark.parametrize("opcode, direction", CASES, ids=lambda v: getattr(v, "name", v))
def test_every_control_codec_round_trips(opcode, direction):
    spec = CONTROLS[opcode]
    codec = getattr(spec, direction)
    value = SAMPLE_BY_CODEC[codec.name]
    pack, unpack = (pack_request, unpack_request) if direction == "request" else (pack_reply, unpack_reply)
    raw = pack(opcode, value)
    assert unpack(opcode, raw) == value
    if codec.name != "raw":  # raw keeps every byte by definition
        # Trailing bytes are ignored, as Samba's protocol library does.
        assert unpack(opcode, raw + b"\x00" * 8) == value
    if codec.name not in ("raw", "string"):  # those take any length by definition
        with pytest.raises(ProtocolError, match=Control(opcode).name):
            unpack(opcode, raw[:-1])


@pytest.mark.parametrize("opcode", sorted(CONTROLS), ids=lambda v: Control(v).name)
def test_empty_payloads(opcode):
    spec = CONTROLS[opcode]
    if spec.request is None:
        assert pack_request(opcode) == b""
        assert unpack_request(opcode, b"") is None
        with pytest.raises(ProtocolError, match="carries no request data"):
            pack_request(opcode, 5)
    if spec.reply is None:
        assert pack_reply(opcode) == b""
        assert unpack_reply(opcode, b"") is None


def test_every_live_control_but_push_record_has_a_codec():
    assert set(Control) - set(CONTROLS) == {Control.PUSH_RECORD}
    with pytest.raises(ProtocolError, match=r"no codec for control 162 \(PUSH_RECORD\)"):
        pack_request(Control.PUSH_RECORD, b"")
    with pytest.raises(ProtocolError, match="no codec for control 13 "):
        unpack_request(13, b"")  # obsolete PULL_DB
    with pytest.raises(ProtocolError, match="no codec for control 5000"):
        unpack_reply(5000, b"")


REQUIRED = """
GET_NODEMAP GET_RUNSTATE GETVNNMAP GET_RECMODE GET_IFACES PING UPTIME LIST_TUNABLES GET_TUNABLE
SET_TUNABLE GET_CAPABILITIES GET_PUBLIC_IPS GET_PUBLIC_IP_INFO GET_NODES_FILE DISABLE_NODE
ENABLE_NODE STOP_NODE CONTINUE_NODE SET_BAN_STATE GET_BAN_STATE RELEASE_IP TAKEOVER_IP IPREALLOCATED
START_IPREALLOCATE RELOAD_PUBLIC_IPS GET_TCP_TICKLE_LIST SET_TCP_TICKLE_LIST TCP_ADD_DELAYED_UPDATE
TCP_REMOVE TCP_ADD TCP_CLIENT SHUTDOWN GET_PID GET_DBMAP GET_DBNAME GETDBPATH DB_GET_HEALTH
GET_RECLOCK_FILE GET_DEBUG SET_DEBUG PROCESS_EXISTS CHECK_PID_SRVID SEND_GRATUITOUS_ARP GET_PNN
REGISTER_SRVID DEREGISTER_SRVID DB_ATTACH DB_ATTACH_PERSISTENT DB_OPEN_FLAGS ENABLE_SEQNUM
SET_DB_READONLY SCHEDULE_FOR_DELETION TRANS3_COMMIT UPDATE_RECORD TRAVERSE_START SET_RECMODE
SETVNNMAP MODIFY_FLAGS GET_ALL_TUNABLES SET_IFACE_LINK_STATE STARTUP RECD_PING ECHO_DATA
GET_DB_SEQNUM
""".split()


def test_brief_controls_are_covered():
    assert [name for name in REQUIRED if Control[name] not in CONTROLS] == []


def test_status_controls():
    assert STATUS_CONTROLS == {Control.GET_PNN, Control.GET_PID, Control.PING, Control.GET_RECMODE,
                               Control.PROCESS_EXISTS, Control.CHECK_PID_SRVID}
    for opcode in STATUS_CONTROLS:
        assert CONTROLS[opcode].reply is None


def test_specific_layouts():
    assert pack_request(Control.GET_DB_SEQNUM, 0x7132C184) == bytes.fromhex("84c13271" "00000000")
    assert pack_request(Control.DB_ATTACH, "locking.tdb") == b"locking.tdb\x00"
    assert pack_reply(Control.DB_ATTACH, 0x7A19D84D) == bytes.fromhex("4dd8197a")
    assert pack_reply(Control.GETDBPATH, "/p") == b"/p\x00"
    assert pack_request(Control.GET_TUNABLE, "EnableBans") == struct.pack("<I", 11) + b"EnableBans\x00"
    assert pack_reply(Control.DB_OPEN_FLAGS, 0x1C41) == struct.pack("<i", 0x1C41)
    assert pack_request(Control.PROCESS_EXISTS, 4242) == struct.pack("<i", 4242)
    assert len(pack_request(Control.CHECK_PID_SRVID, PidSrvid(1, 2))) == 12
    assert pack_reply(Control.GET_RECLOCK_FILE, None) == b""
    assert unpack_reply(Control.GET_RECLOCK_FILE, b"") is None
    assert unpack_reply(Control.DB_GET_HEALTH, b"") is None
    assert len(pack_reply(Control.GET_ALL_TUNABLES, SAMPLE_BY_CODEC["TunableList"])) == 248


def test_pack_type_mismatch_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="expected a NodeMap"):
        pack_reply(Control.GET_NODEMAP, PublicIpList())
    with pytest.raises(ProtocolError):
        pack_request(Control.SET_RECMODE, -1)
    with pytest.raises(ProtocolError):
        pack_request(Control.DB_ATTACH, b"bytes, not str")


MESSAGE_SAMPLES = {
    Srvid.LEADER: 2,
    Srvid.BANNING: 1,
    Srvid.ELECTION: ElectionMessage(3, Timeval(1, 2), 0, 0),
    Srvid.RECONFIGURE: None,
    Srvid.RELEASE_IP: "198.19.8.1",
    Srvid.TAKE_IP: "198.19.8.2",
    Srvid.SET_NODE_FLAGS: NodeFlagChange(0, 2, 0),
    Srvid.RECD_UPDATE_IP: PublicIp(1, IP),
    Srvid.VACUUM_FETCH: RecBuffer(1, [RecData(0, b"k", b"v")]),
    Srvid.DETACH_DATABASE: 0x7A19D84D,
    Srvid.MEM_DUMP: SrvidMessage(1, 5),
    Srvid.GETLOG: None,
    Srvid.CLEARLOG: None,
    Srvid.PUSH_NODE_FLAGS: NodeFlagChange(1, 0, 2),
    Srvid.RELOAD_NODES: None,
    Srvid.TAKEOVER_RUN: SrvidMessage(0, Srvid.tool(1234)),
    Srvid.REBALANCE_NODE: 2,
    Srvid.DISABLE_TAKEOVER_RUNS: DisableMessage(0, 7, 60),
    Srvid.DISABLE_RECOVERIES: DisableMessage(0, 7, 0),
    Srvid.DISABLE_IP_CHECK: 20,
}


def test_message_table_is_fully_sampled():
    assert set(MESSAGE_SAMPLES) == set(MESSAGES)


@pytest.mark.parametrize("srvid", sorted(MESSAGE_SAMPLES), ids=hex)
def test_message_round_trip(srvid):
    value = MESSAGE_SAMPLES[srvid]
    assert unpack_message(srvid, pack_message(srvid, value)) == value


def test_message_layouts():
    assert pack_message(Srvid.LEADER, 1) == b"\x01\x00\x00\x00"
    assert pack_message(Srvid.RELEASE_IP, "198.19.8.1") == b"198.19.8.1\x00"
    assert pack_message(Srvid.RECONFIGURE, None) == b""
    assert unpack_message(0x1234, b"samba message") == b"samba message"  # pid srvid: raw
    assert Srvid.tool(0x12345) == 0xCE01000023450000
    assert pack_i32_reply(-1) == b"\xff\xff\xff\xff" and unpack_i32_reply(b"\x02\x00\x00\x00") == 2
    with pytest.raises(ProtocolError, match="srvid 0xf101000000000000"):
        unpack_message(Srvid.LEADER, b"\x01")
    with pytest.raises(ProtocolError):
        unpack_i32_reply(b"\x01")
    with pytest.raises(ProtocolError):
        pack_message(Srvid.RECONFIGURE, b"x")
