"""CTDB header, operation bodies, padding and stream framing."""

from __future__ import annotations

import struct

import pytest

from ctdblab.daemon.protocol import (
    BROADCAST_CONNECTED, CTDB_MAGIC, CURRENT_NODE, HEADER_SIZE, UNKNOWN_PNN, CallFlag, CallFunc,
    Connection, Control, ControlFlag, Header, Operation, PacketReader, ProtocolError, ReplyCall,
    ReplyControl, ReplyDmaster, ReplyError, ReqCall, ReqControl, ReqDmaster, ReqKeepalive,
    ReqMessage, ReqTunnel, SockAddr, Srvid, decode_packet, encode_packet, pack_request,
)

# GET_PNN exactly as Debian's 4.17 `ctdb pnn` sent it to a test socket (captured bytes).
CLI_GET_PNN = bytes.fromhex(
    "40000000" "42445443" "01000000" "00000000" "07000000" "010000f0" "ffffffff" "38ffff7f"
    "23000000" "00000000" "0000000000000000" "00000000" "00000000" "00000000"
    "00000000"  # padding to 64
)

BODIES = [
    ReqCall(CallFlag.IMMEDIATE_MIGRATION, 0x7A19D84D, CallFunc.NULL_FUNC, 0, b"key", b""),
    ReqCall(0, 1, CallFunc.FETCH_FUNC, 3, b"k" * 66, b"call data"),
    ReplyCall(0, b"value"),
    ReplyCall(-1, b""),
    ReqDmaster(0x7A19D84D, 12, 2, b"key", b"header+value", 0x10000),
    ReqDmaster(1, 2, 3, b"k", b"", None),
    ReplyDmaster(0x7A19D84D, 13, b"key", b"data", 0),
    ReplyError(-5, b"no such record"),
    ReqMessage(Srvid.LEADER, b"\x01\x00\x00\x00"),
    ReqMessage(0xFFFFFFFFFFFFFFFF, b""),
    ReqControl(Control.GET_PNN),
    ReqControl(Control.TCP_CLIENT, 0, 7, ControlFlag.NOREPLY, b"x" * 56),
    ReqControl(999, 0x1122334455667788, 1, 0x30000, b"opaque", 0),
    ReplyControl(0, b"\x01\x00\x00\x00"),
    ReplyControl(-1, b"", "Unknown db_id 0x12345678"),
    ReplyControl(3, b"", None),
    ReqKeepalive(0x00040011, 1234),
    ReqKeepalive(legacy=True),
    ReqTunnel(0xFFFFFFFF00000000, 1, b"tunnel payload"),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_packet_round_trip_and_padding(body):
    raw = encode_packet(body, destnode=1, srcnode=2, reqid=0x1234, generation=77)
    assert len(raw) % 8 == 0
    header = Header.unpack(raw)
    assert header.length == len(raw)
    assert (header.magic, header.version, header.generation, header.operation) == (CTDB_MAGIC, 1, 77, body.OPERATION)
    assert (header.destnode, header.srcnode, header.reqid) == (1, 2, 0x1234)
    packet = decode_packet(raw)
    assert packet.header == header
    expected = body
    if isinstance(body, (ReqDmaster, ReplyDmaster)) and body.record_flags is None and len(raw) - HEADER_SIZE - len(body.pack_body()) >= 4:
        # ctdbd reads padding after key+data as the record flags: zero.
        expected = type(body)(**{**{f: getattr(body, f) for f in body.__dataclass_fields__}, "record_flags": 0})
    assert packet.body == expected


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_unpadded_packets_decode(body):
    raw = encode_packet(body, destnode=CURRENT_NODE, srcnode=0, reqid=1, pad=False)
    assert Header.unpack(raw).length == len(raw) == HEADER_SIZE + len(body.pack_body())
    assert decode_packet(raw).body == body


def test_header_golden():
    raw = Header(length=64, generation=5, operation=7, destnode=CURRENT_NODE, srcnode=UNKNOWN_PNN, reqid=9).pack()
    assert len(raw) == 32
    assert raw == bytes.fromhex("40000000" "42445443" "01000000" "05000000" "07000000" "010000f0" "ffffffff" "09000000")
    assert raw[4:8] == b"BDTC"


def test_real_cli_get_pnn_decodes():
    packet = decode_packet(CLI_GET_PNN)
    assert packet.header.destnode == CURRENT_NODE and packet.header.srcnode == UNKNOWN_PNN
    assert packet.header.reqid == 0x7FFFFF38
    assert packet.body == ReqControl(Control.GET_PNN)
    # ... and we produce the identical bytes.
    assert encode_packet(ReqControl(Control.GET_PNN), destnode=CURRENT_NODE, srcnode=UNKNOWN_PNN,
                         reqid=0x7FFFFF38) == CLI_GET_PNN


def test_control_data_starts_at_byte_60():
    raw = encode_packet(ReqControl(Control.GETDBPATH, data=b"\x4d\xd8\x19\x7a"), destnode=0, srcnode=0, reqid=1)
    assert struct.unpack_from("<I", raw, 32)[0] == Control.GETDBPATH
    assert struct.unpack_from("<I", raw, 56)[0] == 4  # datalen
    assert raw[60:64] == b"\x4d\xd8\x19\x7a"
    assert len(raw) == 64


def test_message_and_reply_control_offsets():
    raw = encode_packet(ReqMessage(Srvid.RELEASE_IP, b"198.19.8.1\x00"), destnode=0, srcnode=0, reqid=0)
    assert struct.unpack_from("<QI", raw, 32) == (Srvid.RELEASE_IP, 11)
    assert raw[44:55] == b"198.19.8.1\x00"
    assert len(raw) == 56
    raw = encode_packet(ReplyControl(-1, b"", "nope"), destnode=0, srcnode=0, reqid=0)
    assert struct.unpack_from("<iII", raw, 32) == (-1, 0, 4)
    assert raw[44:48] == b"nope"  # ctdbd sends the text without its NUL


def test_reply_control_error_text_follows_data():
    # ctdbd's own layout: data first, then errorlen bytes of text.
    body = struct.pack("<iII", -1, 3, 5) + b"abc" + b"error"
    raw = struct.pack("<8I", 32 + len(body), CTDB_MAGIC, 1, 0, Operation.REPLY_CONTROL, 0, 0, 1) + body
    decoded = decode_packet(raw).body
    assert decoded == ReplyControl(-1, b"abc", "error")
    # The 4.17 client library's form (status != 0, text with NUL) decodes the same way.
    body = struct.pack("<iII", -1, 0, 6) + b"error\x00"
    raw = struct.pack("<8I", 32 + len(body), CTDB_MAGIC, 1, 0, Operation.REPLY_CONTROL, 0, 0, 1) + body
    assert decode_packet(raw).body == ReplyControl(-1, b"", "error")


def test_smbd_unpadded_tcp_client_116_bytes():
    conn = Connection(SockAddr("198.19.4.1", 50123), SockAddr("198.19.8.1", 445))
    data = bytearray(pack_request(Control.TCP_CLIENT, conn))
    data[16:28] = b"\xde\xad\xbe\xef" * 3  # the garbage smbd leaves after a sockaddr_in
    raw = struct.pack("<8I", 116, CTDB_MAGIC, 1, 0, Operation.REQ_CONTROL, CURRENT_NODE, 0, 77)
    raw += struct.pack("<IIQIII", Control.TCP_CLIENT, 0, 0, 0, ControlFlag.NOREPLY, 56) + bytes(data)
    assert len(raw) == 116
    packet = decode_packet(raw)
    assert packet.body.opcode == Control.TCP_CLIENT and packet.body.flags == ControlFlag.NOREPLY
    assert Connection.unpack(packet.body.data) == conn


def test_smbd_unpadded_req_call_122_bytes():
    raw = encode_packet(ReqCall(CallFlag.IMMEDIATE_MIGRATION, 0x7A19D84D, CallFunc.NULL_FUNC, 0, b"K" * 66),
                        destnode=CURRENT_NODE, srcnode=0, reqid=3, generation=0, pad=False)
    assert len(raw) == 122
    body = decode_packet(raw).body
    assert body.key == b"K" * 66 and body.callid == CallFunc.NULL_FUNC


def test_dmaster_trailing_flags_read_only_when_present():
    body = ReqDmaster(1, 2, 3, b"kk", b"ddd", 0x10000)
    raw = encode_packet(body, destnode=0, srcnode=1, reqid=0, pad=False)
    assert decode_packet(raw).body.record_flags == 0x10000
    raw = encode_packet(ReqDmaster(1, 2, 3, b"kk", b"ddd"), destnode=0, srcnode=1, reqid=0, pad=False)
    assert decode_packet(raw).body.record_flags is None


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:31], "need 32 bytes"),
        (lambda b: struct.pack("<I", 16) + b[4:], "length 16 is shorter"),
        (lambda b: b[:4] + b"XXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + struct.pack("<I", 2) + b[12:], "protocol version 2"),
        (lambda b: b[:16] + struct.pack("<I", 6) + b[20:], "unknown operation 6"),
        (lambda b: b[:16] + struct.pack("<I", 11) + b[20:], "unknown operation 11"),
        (lambda b: b + bytes(8), "header length 64 but 72"),
        (lambda b: b[:56] + struct.pack("<I", 5) + b[60:], "data of 5 bytes at offset 60 overruns"),
        (lambda b: b[:56] + struct.pack("<I", 0xFFFFFFFF) + b[60:], "overruns"),
    ],
)
def test_decode_rejects(mutate, message):
    raw = encode_packet(ReqControl(Control.GET_PNN), destnode=0, srcnode=0, reqid=0)
    with pytest.raises(ProtocolError, match=message):
        decode_packet(mutate(raw))


def test_decode_rejects_short_fixed_body():
    raw = struct.pack("<8I", 40, CTDB_MAGIC, 1, 0, Operation.REQ_CONTROL, 0, 0, 0) + bytes(8)
    with pytest.raises(ProtocolError, match="REQ_CONTROL: body needs 28 bytes"):
        decode_packet(raw)
    raw = struct.pack("<8I", 36, CTDB_MAGIC, 1, 0, Operation.REQ_KEEPALIVE, 0, 0, 0) + bytes(4)
    with pytest.raises(ProtocolError, match="REQ_KEEPALIVE"):
        decode_packet(raw)


def test_encode_rejects_bad_values():
    with pytest.raises(ProtocolError):
        encode_packet(ReqMessage(-1), destnode=0, srcnode=0, reqid=0)
    with pytest.raises(ProtocolError):
        encode_packet(ReqControl(Control.PING), destnode=2**32, srcnode=0, reqid=0)
    with pytest.raises(ProtocolError):
        encode_packet("not a body", destnode=0, srcnode=0, reqid=0)  # type: ignore[arg-type]


def _stream(*bodies):
    return [encode_packet(b, destnode=0, srcnode=1, reqid=i) for i, b in enumerate(bodies)]


def test_reader_frames_across_arbitrary_chunking():
    frames = _stream(*BODIES)
    frames.append(encode_packet(ReqCall(0, 1, 2, 3, b"k"), destnode=0, srcnode=1, reqid=5, pad=False))
    stream = b"".join(frames)
    for chunk in (1, 3, 7, 31, 32, 33, 100, len(stream)):
        reader = PacketReader()
        got = []
        for i in range(0, len(stream), chunk):
            got += reader.feed(stream[i:i + chunk])
        assert got == frames
        assert reader.buffered == 0


def test_reader_rejects_bad_length_and_magic_early():
    with pytest.raises(ProtocolError, match="shorter"):
        PacketReader().feed(struct.pack("<I", 8))
    with pytest.raises(ProtocolError, match="bad magic"):
        PacketReader().feed(struct.pack("<II", 64, 0xDEADBEEF))  # rejected before the rest arrives
    with pytest.raises(ProtocolError, match="version"):
        PacketReader().feed(struct.pack("<III", 64, CTDB_MAGIC, 9))
    with pytest.raises(ProtocolError, match="exceeds"):
        PacketReader(max_packet_size=1024).feed(struct.pack("<I", 1025))


def test_reader_stays_failed():
    reader = PacketReader()
    with pytest.raises(ProtocolError):
        reader.feed(b"\x00" * 8)
    with pytest.raises(ProtocolError, match="already failed"):
        reader.feed(_stream(ReqControl(Control.PING))[0])


def test_node_transport_requires_multiple_of_8():
    unpadded = encode_packet(ReqCall(0, 1, 2, 3, b"k"), destnode=0, srcnode=1, reqid=5, pad=False)
    assert len(unpadded) % 8
    assert PacketReader().feed(unpadded) == [unpadded]  # clients may send it
    with pytest.raises(ProtocolError, match="multiple of 8"):
        PacketReader(node_transport=True).feed(unpadded)
    padded = encode_packet(ReqCall(0, 1, 2, 3, b"k"), destnode=0, srcnode=1, reqid=5)
    assert PacketReader(node_transport=True).feed(padded) == [padded]


def test_reader_returns_complete_frames_only():
    frame = _stream(ReqMessage(BROADCAST_CONNECTED, b"x" * 100))[0]
    reader = PacketReader()
    assert reader.feed(frame[:50]) == []
    assert reader.buffered == 50
    assert reader.feed(frame[50:] + frame[:10]) == [frame]
    assert reader.buffered == 10
