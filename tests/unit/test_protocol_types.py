"""Embedded CTDB wire types: golden layouts (sizes, offsets) and round trips."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from ctdblab.daemon.protocol import (
    TUNABLE_LISTVARS_ORDER, TUNABLE_NAMES, AddrInfo, BanState, Connection, DbFlag, DbId, DbMap,
    DbVacuum, DisableMessage, EchoData, ElectionMessage, Iface, IfaceList, KeyData, LtdbHeader,
    NodeAndFlags, NodeFlag, NodeFlagChange, NodeMap, NotifyData, PidSrvid, ProtocolError, PublicIp,
    PublicIpInfo, PublicIpList, PullDbExt, RawBytes, RecBuffer, RecData, SockAddr, SrvidMessage,
    TickleList, Timeval, TransDb, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
    Tunable, TunableList, Uptime, VarList, VnnMap, iter_records, pack_stringn, tunable_index,
    unpack_string, unpack_stringn,
)

V4 = SockAddr("198.18.0.1", 445)
V4_CLIENT = SockAddr("198.19.4.1", 50000)
V6 = SockAddr("2001:db8::5", 445, flowinfo=0, scope_id=3)

# One value of every type; each must survive pack -> unpack unchanged.
SAMPLES = [
    V4,
    V6,
    SockAddr(),
    Connection(V4_CLIENT, V4),
    NodeAndFlags(2, NodeFlag.BANNED | NodeFlag.DISCONNECTED, SockAddr("198.18.0.3")),
    NodeMap([NodeAndFlags(0, 0, SockAddr("198.18.0.1")), NodeAndFlags(1, 2, SockAddr("198.18.0.2"))]),
    NodeMap([]),
    PublicIp(0xFFFFFFFF, SockAddr("198.19.8.1")),
    PublicIpList([PublicIp(0, SockAddr("198.19.8.1")), PublicIp(1, V6)]),
    Iface("eth1", 1, 3),
    Iface("a" * 17, 0, 0),
    IfaceList([Iface("eth1"), Iface("eth2", 0, 0)]),
    PublicIpInfo(PublicIp(1, SockAddr("198.19.8.2")), 1, [Iface("eth1", 1, 1), Iface("eth2", 0, 0)]),
    AddrInfo(SockAddr("198.19.8.1"), 16, "eth1"),
    AddrInfo(SockAddr("198.19.8.1"), 16, None),
    TickleList(SockAddr("198.19.8.1"), [Connection(V4_CLIENT, SockAddr("198.19.8.1", 445))]),
    TickleList(SockAddr("198.19.8.1"), []),
    BanState(1, 300),
    NodeFlagChange(1, 0x4, 0x0),
    TransDb(0x7A19D84D, 77),
    PidSrvid(-5, 0xFEDCBA9876543210),
    DbId(0x7132C184, DbFlag.PERSISTENT),
    DbMap([DbId(1, 0), DbId(2, DbFlag.PERSISTENT | DbFlag.STICKY)]),
    VnnMap(77, [0, 2, 5]),
    VnnMap(1, []),
    Timeval(1_700_000_000, 999_999),
    Uptime(Timeval(10, 1), Timeval(5, 2), Timeval(6, 3), Timeval(7, 4)),
    ElectionMessage(3, Timeval(123, 456), 2, 0x20),
    SrvidMessage(1, 0xCE01000012340001),
    DisableMessage(0, 0xCE01000012340002, 60),
    TraverseStart(0x7A19D84D, 9, 0xBE00000000001234),
    TraverseStartExt(0x7A19D84D, 9, 0xBE00000000001234, True),
    TraverseAll(1, 2, 3, 4, 5),
    TraverseAllExt(1, 2, 3, 4, 5, False),
    PullDbExt(1, 0xFFFFFFFF, 0xF001000000000007),
    DbVacuum(7, True),
    NotifyData(0xFE00000000000001, b"xyz"),
    EchoData(1000, b"\x00\x01hello"),
    TunableList(list(range(100, 162))),
    Tunable("KeepaliveInterval", 2),
    Tunable(None, 0),
    VarList(["MaxRedirectCount", "SeqnumInterval"]),
    VarList([]),
    LtdbHeader(5, 1, 0, 0x10000),
    KeyData(0x7A19D84D, LtdbHeader(9, 2, 0, 0), b"key\x00"),
    RecData(7, b"k", b"v"),
    RecData(0, b"", b""),
    RecData.with_header(3, b"key", LtdbHeader(1, 0), b"value"),
    RecBuffer(0x7132C184, [RecData(0, b"a", b"1"), RecData(1, b"bb", b"22")]),
    RecBuffer(5, []),
    RawBytes(b"\x01\x02"),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_round_trip(value):
    raw = value.pack()
    assert type(value).unpack(raw) == value
    if type(value).SIZE is not None:
        assert len(raw) == type(value).SIZE
    # unpack_from honours offsets and returns the end of the structure.
    if isinstance(value, RawBytes):
        return  # takes everything to the end of the buffer by design
    decoded, end = type(value).unpack_from(b"\xAA" * 3 + raw + b"\xBB" * 5, 3)
    assert decoded == value
    assert end == 3 + len(raw)


@pytest.mark.parametrize("value", [v for v in SAMPLES if not isinstance(v, RawBytes)],
                         ids=lambda v: type(v).__name__)
def test_every_truncation_is_a_protocol_error(value):
    raw = value.pack()
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            type(value).unpack(raw[:cut])


def test_sockaddr_ipv4_layout():
    raw = SockAddr("198.18.0.1", 445).pack()
    # family AF_INET=2 little-endian, port big-endian, address, zero tail.
    assert raw == bytes.fromhex("0200" "01bd" "c6120001") + bytes(20)
    assert len(raw) == 28


def test_sockaddr_ipv6_layout():
    raw = SockAddr("2001:db8::5", 8080, flowinfo=0x01020304, scope_id=7).pack()
    assert raw[:2] == b"\x0a\x00"  # AF_INET6 = 10
    assert raw[2:4] == b"\x1f\x90"  # 8080 big-endian
    assert raw[4:8] == b"\x01\x02\x03\x04"  # flowinfo, network order
    assert raw[8:24] == IPv6Address("2001:db8::5").packed
    assert raw[24:28] == struct.pack("<I", 7)


def test_sockaddr_ignores_garbage_after_ipv4():
    # smbd 4.17 leaves stack garbage after the sockaddr_in: it must not affect equality.
    clean = SockAddr("198.19.8.1", 445).pack()
    dirty = clean[:16] + bytes(range(0xE0, 0xEC))
    assert SockAddr.unpack(dirty) == SockAddr.unpack(clean)
    assert hash(SockAddr.unpack(dirty)) == hash(SockAddr("198.19.8.1", 445))


def test_sockaddr_v4_mapped_canonical():
    mapped = SockAddr("::ffff:198.19.8.1", 445)
    assert mapped != SockAddr("198.19.8.1", 445)
    assert mapped.canonical() == SockAddr("198.19.8.1", 445)
    assert mapped.same_ip(SockAddr("198.19.8.1", 1))
    assert isinstance(mapped.canonical().ip, IPv4Address)
    conn = Connection(SockAddr("::ffff:198.19.4.1", 5), mapped).canonical()
    assert conn == Connection(SockAddr("198.19.4.1", 5), SockAddr("198.19.8.1", 445))


def test_sockaddr_flowinfo_not_compared_but_scope_is():
    assert SockAddr("fe80::1", 1, flowinfo=5) == SockAddr("fe80::1", 1, flowinfo=9)
    assert SockAddr("fe80::1", 1, scope_id=2) != SockAddr("fe80::1", 1, scope_id=3)


def test_sockaddr_rejects_unknown_family_and_bad_text():
    with pytest.raises(ProtocolError, match="unknown address family 1"):
        SockAddr.unpack(b"\x01\x00" + bytes(26))
    with pytest.raises(ProtocolError):
        SockAddr("not-an-ip")
    with pytest.raises(ProtocolError, match="sock_addr"):
        SockAddr("198.18.0.1", 70000).pack()


def test_connection_is_client_then_server_56_bytes():
    raw = Connection(V4_CLIENT, V4).pack()
    assert len(raw) == 56
    assert raw[:28] == V4_CLIENT.pack() and raw[28:] == V4.pack()


def test_ltdb_header_golden():
    raw = LtdbHeader(rsn=0x0102030405060708, dmaster=3, reserved1=0, flags=0x10000).pack()
    assert raw == bytes.fromhex("0807060504030201" "03000000" "00000000" "00000100" "00000000")
    header, value = LtdbHeader.split(raw + b"value")
    assert header.dmaster == 3 and value == b"value"


def test_node_and_flags_and_map_golden():
    raw = NodeMap([NodeAndFlags(1, 0x21, SockAddr("198.18.0.2"))]).pack()
    assert len(raw) == 4 + 36
    assert raw[:12] == bytes.fromhex("01000000" "01000000" "21000000")
    assert raw[12:20] == bytes.fromhex("0200" "0000" "c6120002")


def test_public_ip_golden():
    raw = PublicIp(2, SockAddr("198.19.8.1")).pack()
    assert len(raw) == 32 and raw[:4] == b"\x02\x00\x00\x00" and raw[4:6] == b"\x02\x00"
    assert len(PublicIpList([PublicIp(0, V4)] * 3).pack()) == 4 + 3 * 32


def test_dbid_golden():
    assert DbId(0x7A19D84D, DbFlag.PERSISTENT).pack() == bytes.fromhex("4dd8197a" "01" "000000")
    assert len(DbMap([DbId(1), DbId(2)]).pack()) == 4 + 2 * 8


def test_iface_golden():
    raw = Iface("eth1", 1, 2).pack()
    assert raw == b"eth1" + bytes(14) + b"\x01\x00" + b"\x02\x00\x00\x00"
    assert len(raw) == 24
    with pytest.raises(ProtocolError, match="longer than 17"):
        Iface("x" * 18).pack()
    # The C reader forces byte 17 to NUL: an unterminated name is cut at 17 bytes.
    assert Iface.unpack(b"y" * 18 + bytes(6)).name == "y" * 17


def test_public_ip_info_layout():
    info = PublicIpInfo(PublicIp(1, SockAddr("198.19.8.2")), 1, [Iface("eth1"), Iface("eth2", 0, 0)])
    raw = info.pack()
    assert len(raw) == 32 + 4 + 4 + 2 * 24
    assert raw[32:36] == b"\x01\x00\x00\x00"  # active_idx
    assert raw[36:40] == b"\x02\x00\x00\x00"  # number of interfaces
    assert raw[40:44] == b"eth1"


def test_uptime_is_four_timevals():
    up = Uptime(Timeval(1, 2), Timeval(3, 4), Timeval(5, 6), Timeval(7, 8))
    raw = up.pack()
    assert len(raw) == 64
    assert struct.unpack("<8q", raw) == (1, 2, 3, 4, 5, 6, 7, 8)


def test_timeval_from_seconds():
    assert Timeval.from_seconds(1.5) == Timeval(1, 500000)
    assert Timeval.from_seconds(1.9999999) == Timeval(2, 0)
    assert Timeval(3, 250000).to_seconds() == 3.25


def test_tunable_list_golden_and_names():
    assert len(TUNABLE_NAMES) == 62
    values = list(range(62))
    raw = TunableList(values).pack()
    assert len(raw) == 248
    assert raw[4 * 4:4 * 5] == struct.pack("<I", 4)  # KeepaliveInterval is wire slot 4
    tl = TunableList.unpack(raw)
    assert tl.get("keepaliveinterval") == 4 and tunable_index("KeepaliveInterval") == 4
    assert tl.get("LCP2PublicIPs") == 41 and tl.get("AllowMixedVersions") == 61
    assert TunableList.from_mapping(tl.as_dict()) == tl
    with pytest.raises(ProtocolError):
        TunableList([1, 2, 3])
    with pytest.raises(ProtocolError, match="missing"):
        TunableList.from_mapping({"KeepaliveInterval": 5})


def test_listvars_order_differs_from_wire_order_in_two_places():
    assert TUNABLE_LISTVARS_ORDER.index("LCP2PublicIPs") == TUNABLE_LISTVARS_ORDER.index("DeterministicIPs") + 1
    assert TUNABLE_LISTVARS_ORDER.index("VacuumFastPathCount") == TUNABLE_LISTVARS_ORDER.index("VacuumLimit") + 1
    assert TUNABLE_NAMES.index("VacuumFastPathCount") == 40 and TUNABLE_NAMES.index("LCP2PublicIPs") == 41


def test_election_message_golden():
    raw = ElectionMessage(2, Timeval(5, 6), 1, 0x20).pack()
    assert raw == bytes.fromhex(
        "02000000" "00000000" "0500000000000000" "0600000000000000" "01000000" "20000000"
    )


def test_srvid_and_disable_message_golden():
    assert SrvidMessage(1, 0xFB00000000000000).pack() == bytes.fromhex("01000000" "00000000" "00000000000000fb")
    raw = DisableMessage(2, 0x10, 60).pack()
    assert raw == bytes.fromhex("02000000" "00000000" "1000000000000000" "3c000000" "00000000")


def test_pid_srvid_is_packed_12_bytes():
    raw = PidSrvid(0x1234, 0x1122334455667788).pack()
    assert raw == bytes.fromhex("34120000" "8877665544332211")


def test_small_structs_golden():
    assert BanState(1, 300).pack() == bytes.fromhex("01000000" "2c010000")
    assert NodeFlagChange(1, 4, 0).pack() == bytes.fromhex("01000000" "04000000" "00000000")
    assert TransDb(7, 8).pack() == bytes.fromhex("07000000" "08000000")
    assert TraverseStart(1, 2, 3).pack() == bytes.fromhex("01000000" "02000000" "0300000000000000")
    assert TraverseStartExt(1, 2, 3, True).pack() == bytes.fromhex(
        "01000000" "02000000" "0300000000000000" "01" "00000000000000")
    assert DbVacuum(7, True).pack() == bytes.fromhex("07000000" "01")
    assert VnnMap(9, [1, 2]).pack() == bytes.fromhex("09000000" "02000000" "01000000" "02000000")


def test_bool_must_be_zero_or_one():
    raw = bytearray(TraverseStartExt(1, 2, 3, False).pack())
    raw[16] = 2
    with pytest.raises(ProtocolError, match="not 0 or 1"):
        TraverseStartExt.unpack(bytes(raw))


def test_key_data_layout():
    raw = KeyData(0x11, LtdbHeader(rsn=2, dmaster=1), b"KEY").pack()
    assert len(raw) == 36 + 3
    assert raw[:8] == bytes.fromhex("11000000" "00000000")
    assert raw[32:36] == b"\x03\x00\x00\x00" and raw[36:] == b"KEY"


def test_tunable_and_stringn_layout():
    assert Tunable("KeepaliveInterval", 2).pack() == (
        b"\x02\x00\x00\x00" + struct.pack("<I", 18) + b"KeepaliveInterval\x00")
    assert pack_stringn(None) == b"\x00\x00\x00\x00"
    assert unpack_stringn(pack_stringn("eth1")) == ("eth1", 9)
    with pytest.raises(ProtocolError, match="NUL"):
        pack_stringn("a\x00b")
    with pytest.raises(ProtocolError, match="overrun|need"):
        unpack_stringn(struct.pack("<I", 50) + b"short")


def test_string_decoding_never_fails_and_round_trips_bytes():
    weird = b"\xff\xfe-name"
    text = unpack_string(weird + b"\x00junk")
    assert text.encode("utf-8", "surrogateescape") == weird
    assert unpack_string(b"") is None


def test_var_list_layout_and_strtok():
    raw = VarList(["A", "B"]).pack()
    assert raw == b"\x04\x00\x00\x00A:B\x00"
    assert VarList.unpack(b"\x06\x00\x00\x00::A::\x00").names == ["A"]
    with pytest.raises(ProtocolError):
        VarList(["a:b"]).pack()


def test_rec_data_layout_and_strict_length():
    raw = RecData(7, b"k", b"vv").pack()
    assert raw == struct.pack("<IIII", 19, 7, 1, 2) + b"kvv"
    bad = struct.pack("<IIII", 40, 7, 1, 2) + b"kvv" + bytes(21)
    with pytest.raises(ProtocolError, match="length 40"):
        RecData.unpack(bad)
    rec = RecData.with_header(1, b"key", LtdbHeader(5, 2), b"val")
    assert rec.split_header() == (LtdbHeader(5, 2), b"val")
    assert list(iter_records(raw + RecData(8, b"", b"").pack())) == [RecData(7, b"k", b"vv"), RecData(8, b"", b"")]


def test_rec_buffer_rejects_impossible_count_without_allocating():
    with pytest.raises(ProtocolError, match="count"):
        RecBuffer.unpack(struct.pack("<II", 1, 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="count"):
        NodeMap.unpack(struct.pack("<I", 0x10000000))
    with pytest.raises(ProtocolError):
        VnnMap.unpack(struct.pack("<II", 1, 0x40000000))


def test_encode_rejects_out_of_range_values():
    with pytest.raises(ProtocolError):
        BanState(-1, 0).pack()
    with pytest.raises(ProtocolError):
        VnnMap(1, [2**32]).pack()
    with pytest.raises(ProtocolError):
        RecData(0, "text", b"").pack()  # type: ignore[arg-type]
