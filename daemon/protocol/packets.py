"""CTDB packets: one dataclass per operation body, encode/decode, and stream framing.

Body layouts (offsets from the end of the 32-byte header; reference §2.3):

=============  ==================================================================================
REQ_CALL       u32 flags, db_id, callid, hopcount, keylen, calldatalen; key; calldata
REPLY_CALL     i32 status, u32 datalen; data
REQ_DMASTER    u32 db_id, 4 pad, u64 rsn, u32 dmaster, keylen, datalen; key; data; [u32 rec flags]
REPLY_DMASTER  u32 db_id, 4 pad, u64 rsn, u32 keylen, datalen; key; data; [u32 rec flags]
REPLY_ERROR    i32 status, u32 msglen; msg
REQ_MESSAGE    u64 srvid, u32 datalen; data
REQ_CONTROL    u32 opcode, u32 pad, u64 srvid, u32 client_id, flags, datalen; data (packet byte 60)
REPLY_CONTROL  i32 status, u32 datalen, u32 errorlen; data; error text
REQ_KEEPALIVE  u32 version, u32 uptime (a header-only keepalive is the pre-4.x form)
REQ_TUNNEL     u64 tunnel_id, u32 flags, u32 datalen; data
=============  ==================================================================================

Decoding reads only the declared inner lengths: bytes after them (padding, or the optional
trailing record flags of the DMASTER packets) are allowed. Encoding pads to a multiple of 8 with
zeros and `header.length` counts the padding, as ctdbd does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from ._wire import U32, Buffer, as_bytes, decode_text, encode_text, pad8
from .constants import CTDB_MAGIC, CTDB_PROTOCOL_VERSION, HEADER_SIZE, PACKET_ALIGNMENT, Operation
from .errors import ProtocolError
from .header import HEADER_STRUCT, Header

_REQ_CALL = struct.Struct("<6I")
_STATUS_LEN = struct.Struct("<iI")
_DMASTER_REQ = struct.Struct("<I4xQIII")
_DMASTER_REPLY = struct.Struct("<I4xQII")
_REQ_MESSAGE = struct.Struct("<QI")
_REQ_CONTROL = struct.Struct("<IIQIII")
_REPLY_CONTROL = struct.Struct("<iII")
_KEEPALIVE = struct.Struct("<II")
_REQ_TUNNEL = struct.Struct("<QII")

#: Default ceiling for one packet. CTDB itself has none; a persistent-DB commit (TRANS3_COMMIT)
#: or a recovery pull is the largest legitimate packet and stays far below this.
DEFAULT_MAX_PACKET_SIZE = 64 * 1024 * 1024


def _fixed(st: struct.Struct, buf: Buffer, offset: int, end: int, what: str) -> tuple:
    if end - offset < st.size:
        raise ProtocolError(
            f"{what}: body needs {st.size} bytes at offset {offset}, packet length leaves {max(end - offset, 0)}"
        )
    return st.unpack_from(buf, offset)


def _blobs(buf: Buffer, offset: int, end: int, what: str, *named_lengths: tuple[str, int]) -> list[bytes]:
    """Consecutive blobs of the declared lengths; all must lie inside the packet."""
    out = []
    for name, length in named_lengths:
        if length > end - offset:
            raise ProtocolError(
                f"{what}: {name} of {length} bytes at offset {offset} overruns the packet (length {end})"
            )
        out.append(bytes(buf[offset:offset + length]))
        offset += length
    return out


def _pack(st: struct.Struct, what: str, *values: object) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ProtocolError(f"{what}: cannot encode {values!r}: {exc}") from None


@dataclass(slots=True)
class ReqCall:
    """Run a call function on a record (smbd: NULL_FUNC + IMMEDIATE_MIGRATION to migrate)."""

    OPERATION: ClassVar[Operation] = Operation.REQ_CALL
    flags: int
    db_id: int
    callid: int
    hopcount: int
    key: bytes
    calldata: bytes = b""

    def pack_body(self) -> bytes:
        key = as_bytes(self.key, "REQ_CALL key")
        calldata = as_bytes(self.calldata, "REQ_CALL calldata")
        return _pack(_REQ_CALL, "REQ_CALL", self.flags, self.db_id, self.callid, self.hopcount,
                     len(key), len(calldata)) + key + calldata

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqCall:
        flags, db_id, callid, hopcount, keylen, datalen = _fixed(_REQ_CALL, buf, offset, end, "REQ_CALL")
        key, calldata = _blobs(buf, offset + _REQ_CALL.size, end, "REQ_CALL",
                               ("key", keylen), ("calldata", datalen))
        return cls(flags, db_id, callid, hopcount, key, calldata)


@dataclass(slots=True)
class ReplyCall:
    OPERATION: ClassVar[Operation] = Operation.REPLY_CALL
    status: int
    data: bytes = b""

    def pack_body(self) -> bytes:
        data = as_bytes(self.data, "REPLY_CALL data")
        return _pack(_STATUS_LEN, "REPLY_CALL", self.status, len(data)) + data

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReplyCall:
        status, datalen = _fixed(_STATUS_LEN, buf, offset, end, "REPLY_CALL")
        (data,) = _blobs(buf, offset + 8, end, "REPLY_CALL", ("data", datalen))
        return cls(status, data)


def _trailing_flags(buf: Buffer, offset: int, end: int) -> int | None:
    """ctdbd appends the record flags after key+data and reads them only if the packet is
    long enough; padding bytes therefore read as flags 0, exactly as in ctdbd."""
    if end - offset >= 4:
        return U32.unpack_from(buf, offset)[0]
    return None


@dataclass(slots=True)
class ReqDmaster:
    """Node to node: the old dmaster hands the record to the lmaster for `dmaster`."""

    OPERATION: ClassVar[Operation] = Operation.REQ_DMASTER
    db_id: int
    rsn: int
    dmaster: int
    key: bytes
    data: bytes
    record_flags: int | None = None

    def pack_body(self) -> bytes:
        key = as_bytes(self.key, "REQ_DMASTER key")
        data = as_bytes(self.data, "REQ_DMASTER data")
        out = _pack(_DMASTER_REQ, "REQ_DMASTER", self.db_id, self.rsn, self.dmaster, len(key), len(data)) + key + data
        if self.record_flags is not None:
            out += _pack(U32, "REQ_DMASTER record_flags", self.record_flags)
        return out

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqDmaster:
        db_id, rsn, dmaster, keylen, datalen = _fixed(_DMASTER_REQ, buf, offset, end, "REQ_DMASTER")
        offset += _DMASTER_REQ.size
        key, data = _blobs(buf, offset, end, "REQ_DMASTER", ("key", keylen), ("data", datalen))
        return cls(db_id, rsn, dmaster, key, data, _trailing_flags(buf, offset + keylen + datalen, end))


@dataclass(slots=True)
class ReplyDmaster:
    """Node to node: the lmaster gives the record to its new dmaster."""

    OPERATION: ClassVar[Operation] = Operation.REPLY_DMASTER
    db_id: int
    rsn: int
    key: bytes
    data: bytes
    record_flags: int | None = None

    def pack_body(self) -> bytes:
        key = as_bytes(self.key, "REPLY_DMASTER key")
        data = as_bytes(self.data, "REPLY_DMASTER data")
        out = _pack(_DMASTER_REPLY, "REPLY_DMASTER", self.db_id, self.rsn, len(key), len(data)) + key + data
        if self.record_flags is not None:
            out += _pack(U32, "REPLY_DMASTER record_flags", self.record_flags)
        return out

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReplyDmaster:
        db_id, rsn, keylen, datalen = _fixed(_DMASTER_REPLY, buf, offset, end, "REPLY_DMASTER")
        offset += _DMASTER_REPLY.size
        key, data = _blobs(buf, offset, end, "REPLY_DMASTER", ("key", keylen), ("data", datalen))
        return cls(db_id, rsn, key, data, _trailing_flags(buf, offset + keylen + datalen, end))


@dataclass(slots=True)
class ReplyError:
    """Failure answer to a REQ_CALL (smbd treats it as EIO)."""

    OPERATION: ClassVar[Operation] = Operation.REPLY_ERROR
    status: int
    msg: bytes = b""

    def pack_body(self) -> bytes:
        msg = as_bytes(self.msg, "REPLY_ERROR msg")
        return _pack(_STATUS_LEN, "REPLY_ERROR", self.status, len(msg)) + msg

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReplyError:
        status, msglen = _fixed(_STATUS_LEN, buf, offset, end, "REPLY_ERROR")
        (msg,) = _blobs(buf, offset + 8, end, "REPLY_ERROR", ("msg", msglen))
        return cls(status, msg)


@dataclass(slots=True)
class ReqMessage:
    """A message to every client that registered `srvid` on the destination node."""

    OPERATION: ClassVar[Operation] = Operation.REQ_MESSAGE
    srvid: int
    data: bytes = b""

    def pack_body(self) -> bytes:
        data = as_bytes(self.data, "REQ_MESSAGE data")
        return _pack(_REQ_MESSAGE, "REQ_MESSAGE", self.srvid, len(data)) + data

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqMessage:
        srvid, datalen = _fixed(_REQ_MESSAGE, buf, offset, end, "REQ_MESSAGE")
        (data,) = _blobs(buf, offset + _REQ_MESSAGE.size, end, "REQ_MESSAGE", ("data", datalen))
        return cls(srvid, data)


@dataclass(slots=True)
class ReqControl:
    """A control request. `opcode` is kept as a plain int on decode (unknown opcodes must
    reach the dispatcher so it can answer with an error); it compares equal to `Control`.
    `data` is the raw payload; see :mod:`.controls` for the typed codecs."""

    OPERATION: ClassVar[Operation] = Operation.REQ_CONTROL
    opcode: int
    srvid: int = 0
    client_id: int = 0
    flags: int = 0
    data: bytes = b""
    pad: int = 0

    def pack_body(self) -> bytes:
        data = as_bytes(self.data, "REQ_CONTROL data")
        return _pack(_REQ_CONTROL, "REQ_CONTROL", self.opcode, self.pad, self.srvid, self.client_id,
                     self.flags, len(data)) + data

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqControl:
        opcode, pad, srvid, client_id, flags, datalen = _fixed(_REQ_CONTROL, buf, offset, end, "REQ_CONTROL")
        (data,) = _blobs(buf, offset + _REQ_CONTROL.size, end, "REQ_CONTROL", ("data", datalen))
        return cls(opcode, srvid, client_id, flags, data, pad)


@dataclass(slots=True)
class ReplyControl:
    """A control reply: `data` then the error text (ctdbd's layout). The 4.17 client library
    reads the error text only when status != 0 and then expects it at the start of the tail,
    so send errors with empty `data` (as ctdbd does)."""

    OPERATION: ClassVar[Operation] = Operation.REPLY_CONTROL
    status: int
    data: bytes = b""
    errmsg: str | None = None

    def pack_body(self) -> bytes:
        data = as_bytes(self.data, "REPLY_CONTROL data")
        # ctdbd sends the text without its NUL (errorlen = strlen).
        err = encode_text(self.errmsg, "REPLY_CONTROL errmsg") if self.errmsg is not None else b""
        return _pack(_REPLY_CONTROL, "REPLY_CONTROL", self.status, len(data), len(err)) + data + err

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReplyControl:
        status, datalen, errorlen = _fixed(_REPLY_CONTROL, buf, offset, end, "REPLY_CONTROL")
        data, err = _blobs(buf, offset + _REPLY_CONTROL.size, end, "REPLY_CONTROL",
                           ("data", datalen), ("errmsg", errorlen))
        return cls(status, data, decode_text(err) if errorlen else None)


@dataclass(slots=True)
class ReqKeepalive:
    """Node-to-node liveness. `legacy=True` is the header-only (32-byte) form that ctdbd
    treats as a peer running an incompatible version."""

    OPERATION: ClassVar[Operation] = Operation.REQ_KEEPALIVE
    version: int = 0
    uptime: int = 0
    legacy: bool = False

    def pack_body(self) -> bytes:
        if self.legacy:
            return b""
        return _pack(_KEEPALIVE, "REQ_KEEPALIVE", self.version, self.uptime)

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqKeepalive:
        if end == offset:
            return cls(legacy=True)
        version, uptime = _fixed(_KEEPALIVE, buf, offset, end, "REQ_KEEPALIVE")
        return cls(version, uptime)


@dataclass(slots=True)
class ReqTunnel:
    OPERATION: ClassVar[Operation] = Operation.REQ_TUNNEL
    tunnel_id: int
    flags: int
    data: bytes = b""

    def pack_body(self) -> bytes:
        data = as_bytes(self.data, "REQ_TUNNEL data")
        return _pack(_REQ_TUNNEL, "REQ_TUNNEL", self.tunnel_id, self.flags, len(data)) + data

    @classmethod
    def unpack_body(cls, buf: Buffer, offset: int, end: int) -> ReqTunnel:
        tunnel_id, flags, datalen = _fixed(_REQ_TUNNEL, buf, offset, end, "REQ_TUNNEL")
        (data,) = _blobs(buf, offset + _REQ_TUNNEL.size, end, "REQ_TUNNEL", ("data", datalen))
        return cls(tunnel_id, flags, data)


Body = Union[ReqCall, ReplyCall, ReqDmaster, ReplyDmaster, ReplyError, ReqMessage, ReqControl,
             ReplyControl, ReqKeepalive, ReqTunnel]

BODY_TYPES: dict[int, type] = {
    cls.OPERATION: cls
    for cls in (ReqCall, ReplyCall, ReqDmaster, ReplyDmaster, ReplyError, ReqMessage, ReqControl,
                ReplyControl, ReqKeepalive, ReqTunnel)
}


@dataclass(slots=True)
class Packet:
    header: Header
    body: Body


def encode_packet(
    body: Body, *, destnode: int, srcnode: int, reqid: int, generation: int = 0, pad: bool = True
) -> bytes:
    """Header + body, zero-padded to a multiple of 8 (`length` includes the padding).
    `pad=False` builds an unpadded packet the way smbd sends them (for tests)."""
    try:
        operation = body.OPERATION
    except AttributeError:
        raise ProtocolError(f"encode_packet: {type(body).__name__} is not a packet body") from None
    payload = body.pack_body()
    length = HEADER_SIZE + len(payload)
    total = pad8(length) if pad else length
    try:
        head = HEADER_STRUCT.pack(total, CTDB_MAGIC, CTDB_PROTOCOL_VERSION, generation, operation,
                                  destnode, srcnode, reqid)
    except struct.error as exc:
        raise ProtocolError(f"encode_packet: bad header field: {exc}") from None
    return head + payload + bytes(total - length)


def decode_packet(buf: Buffer) -> Packet:
    """Decode one complete packet. `buf` must be exactly `header.length` bytes (what
    PacketReader yields); unpadded packets are fine. Raises ProtocolError on anything else."""
    header = Header.unpack(buf)
    header.check()
    if header.length != len(buf):
        raise ProtocolError(f"packet: header length {header.length} but {len(buf)} bytes given")
    body_type = BODY_TYPES.get(header.operation)
    if body_type is None:
        raise ProtocolError(f"packet: unknown operation {header.operation} (reqid {header.reqid})")
    body = body_type.unpack_body(buf, HEADER_SIZE, header.length)
    return Packet(header, body)


class PacketReader:
    """Sans-I/O framing of a CTDB byte stream.

    ``feed(chunk)`` returns the complete frames (each exactly `header.length` bytes) found so far.
    It raises ProtocolError as soon as a header shows a length < 32 or > `max_packet_size`, a
    wrong magic or version — or, with ``node_transport=True``, a length that is not a multiple
    of 8 (ctdbd drops a peer connection for that). After an error the reader stays broken: the
    caller must close the connection.
    """

    __slots__ = ("max_packet_size", "node_transport", "_buf", "_pos", "_error")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE, *, node_transport: bool = False) -> None:
        if max_packet_size < HEADER_SIZE:
            raise ValueError(f"max_packet_size must be at least {HEADER_SIZE}")
        self.max_packet_size = max_packet_size
        self.node_transport = node_transport
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos

    def _fail(self, message: str) -> None:
        self._error = ProtocolError(message)
        raise self._error

    def feed(self, data: Buffer) -> list[bytes]:
        if self._error is not None:
            raise ProtocolError(f"stream already failed: {self._error}")
        self._buf += data
        frames: list[bytes] = []
        buf = self._buf
        pos = self._pos
        while True:
            avail = len(buf) - pos
            if avail < 4:
                break
            length = U32.unpack_from(buf, pos)[0]
            if length < HEADER_SIZE:
                self._fail(f"stream: packet length {length} is shorter than the {HEADER_SIZE}-byte header")
            if length > self.max_packet_size:
                self._fail(f"stream: packet length {length} exceeds the limit of {self.max_packet_size}")
            if self.node_transport and length % PACKET_ALIGNMENT:
                self._fail(f"stream: node packet length {length} is not a multiple of {PACKET_ALIGNMENT}")
            if avail >= 8:
                magic = U32.unpack_from(buf, pos + 4)[0]
                if magic != CTDB_MAGIC:
                    self._fail(f"stream: bad magic 0x{magic:08x} (expected 0x{CTDB_MAGIC:08x})")
            if avail >= 12:
                version = U32.unpack_from(buf, pos + 8)[0]
                if version != CTDB_PROTOCOL_VERSION:
                    self._fail(f"stream: unsupported protocol version {version}")
            if avail < length:
                break
            frames.append(bytes(buf[pos:pos + length]))
            pos += length
        # Compact once the consumed prefix dominates, keeping feed() amortised O(n).
        if pos and pos * 2 >= len(buf):
            del buf[:pos]
            pos = 0
        self._pos = pos
        return frames

