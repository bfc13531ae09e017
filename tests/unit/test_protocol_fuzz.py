"""Hostile bytes: arbitrary and mutated input into every decoder may raise only ProtocolError.

Default budget keeps the file to a few seconds; set CTDBLAB_FUZZ_EXAMPLES (e.g. 20000) for a
longer run.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctdblab.daemon.protocol import (
    CONTROLS, CTDB_MAGIC, MESSAGES, AddrInfo, BanState, Connection, DbId, DbMap, DbVacuum,
    DisableMessage, EchoData, ElectionMessage, Header, Iface, IfaceList, KeyData, LtdbHeader,
    NodeAndFlags, NodeFlagChange, NodeMap, NotifyData, PacketReader, PidSrvid, ProtocolError,
    PublicIp, PublicIpInfo, PublicIpList, PullDbExt, RecBuffer, RecData, SockAddr, SrvidMessage,
    TickleList, Timeval, TransDb, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
    Tunable, TunableList, Uptime, VarList, VnnMap, decode_packet, encode_packet, pack_reply,
    pack_request, unpack_message, unpack_reply, unpack_request, unpack_string, unpack_stringn,
)

from test_protocol_controls import SAMPLE_BY_CODEC
from test_protocol_packets import BODIES

EXAMPLES = int(os.environ.get("CTDBLAB_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TYPES = [
    SockAddr, Connection, NodeAndFlags, NodeMap, PublicIp, PublicIpList, Iface, IfaceList,
    PublicIpInfo, AddrInfo, TickleList, BanState, NodeFlagChange, TransDb, PidSrvid, DbId, DbMap,
    VnnMap, Timeval, Uptime, ElectionMessage, SrvidMessage, DisableMessage, TraverseStart,
    TraverseStartExt, TraverseAll, TraverseAllExt, PullDbExt, DbVacuum, NotifyData, EchoData,
    TunableList, Tunable, VarList, LtdbHeader, KeyData, RecData, RecBuffer,
]

# Every decoder that takes a payload: (name, function).
DECODERS = (
    [(f"{t.__name__}.unpack", t.unpack) for t in TYPES]
    + [(f"request {op}", lambda d, op=op: unpack_request(op, d)) for op in CONTROLS]
    + [(f"reply {op}", lambda d, op=op: unpack_reply(op, d)) for op in CONTROLS]
    + [(f"message {srvid:#x}", lambda d, s=srvid: unpack_message(s, d)) for srvid in MESSAGES]
    + [("stringn", unpack_stringn), ("string", unpack_string)]
)

# Valid payloads to mutate: every control codec's sample encoding.
VALID_PAYLOADS = []
for opcode, spec in CONTROLS.items():
    if spec.request is not None:
        VALID_PAYLOADS.append((opcode, "request", pack_request(opcode, SAMPLE_BY_CODEC[spec.request.name])))
    if spec.reply is not None:
        VALID_PAYLOADS.append((opcode, "reply", pack_reply(opcode, SAMPLE_BY_CODEC[spec.reply.name])))

VALID_PACKETS = [encode_packet(b, destnode=0, srcnode=1, reqid=i, generation=3) for i, b in enumerate(BODIES)]
VALID_PACKETS += [
    encode_packet(b, destnode=0, srcnode=1, reqid=9, pad=False) for b in BODIES
]


def only_protocol_error(fn, *args):
    try:
        return fn(*args)
    except ProtocolError as exc:
        assert str(exc), "ProtocolError without a message"
        return None


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """Flip bytes, overwrite u32 fields with extreme values, truncate or extend."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["byte", "u32", "cut", "extend"]))
        if kind == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "u32" and len(data) >= 4:
            pos = draw(st.integers(0, len(data) - 4))
            value = draw(st.sampled_from([0, 1, 7, 8, 31, 32, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                                          len(data), len(data) + 1, len(data) - 1]))
            data[pos:pos + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        elif kind == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif kind == "extend":
            data += draw(st.binary(max_size=16))
    return bytes(data)


packet_inputs = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(VALID_PACKETS).flatmap(mutated),
    # A valid header around an arbitrary body, so body decoders see hostile bytes.
    st.tuples(st.integers(0, 12), st.binary(max_size=200)).map(
        lambda t: struct.pack("<8I", 32 + len(t[1]), CTDB_MAGIC, 1, 0, t[0], 0, 0, 0) + t[1]
    ),
)


@FUZZ
@given(packet_inputs)
def test_decode_packet_raises_only_protocol_error(raw):
    packet = only_protocol_error(decode_packet, raw)
    if packet is not None:
        assert packet.header.length == len(raw)
        # Whatever decodes re-encodes without error.
        encode_packet(packet.body, destnode=0, srcnode=0, reqid=0)


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(VALID_PACKETS).flatmap(mutated)), max_size=6),
       st.booleans(), st.integers(32, 4096))
def test_packet_reader_raises_only_protocol_error(chunks, node_transport, limit):
    reader = PacketReader(max_packet_size=limit, node_transport=node_transport)
    for chunk in chunks:
        frames = only_protocol_error(reader.feed, chunk)
        if frames is None:
            break
        for frame in frames:
            assert Header.unpack(frame).length == len(frame) <= limit
            only_protocol_error(decode_packet, frame)


@FUZZ
@given(st.sampled_from(DECODERS), st.binary(max_size=300))
def test_payload_decoders_on_arbitrary_bytes(decoder, data):
    only_protocol_error(decoder[1], data)


@FUZZ
@given(st.sampled_from(VALID_PAYLOADS).flatmap(lambda p: st.tuples(st.just(p), mutated(p[2]))))
def test_control_decoders_on_mutated_payloads(case):
    (opcode, direction, _valid), data = case
    unpack = unpack_request if direction == "request" else unpack_reply
    value = only_protocol_error(unpack, opcode, data)
    if value is not None:
        # Anything accepted can be re-encoded.
        (pack_request if direction == "request" else pack_reply)(opcode, value)


@FUZZ
@given(st.sampled_from(TYPES), st.binary(max_size=64))
def test_types_decode_from_any_offset(cls, data):
    for offset in (0, 1, len(data), len(data) + 5):
        try:
            cls.unpack_from(data, offset)
        except ProtocolError:
            pass
