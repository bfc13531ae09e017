"""The 32-byte header that starts every CTDB packet (`struct ctdb_req_header`).

Eight little-endian u32: length, magic, version, generation, operation, destnode, srcnode, reqid.
`length` is the whole packet including the header and any padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import CTDB_MAGIC, CTDB_PROTOCOL_VERSION, HEADER_SIZE, Operation
from .errors import ProtocolError

HEADER_STRUCT = struct.Struct("<8I")
assert HEADER_STRUCT.size == HEADER_SIZE


@dataclass(slots=True)
class Header:
    length: int
    magic: int = CTDB_MAGIC
    version: int = CTDB_PROTOCOL_VERSION
    generation: int = 0
    operation: int = 0
    destnode: int = 0
    srcnode: int = 0
    reqid: int = 0

    def pack(self) -> bytes:
        try:
            return HEADER_STRUCT.pack(
                self.length, self.magic, self.version, self.generation, self.operation,
                self.destnode, self.srcnode, self.reqid,
            )
        except struct.error as exc:
            raise ProtocolError(f"header: cannot encode {self!r}: {exc}") from None

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
        """Parse the 32 header bytes at `offset`. Only the size is checked here;
        :meth:`check` validates the fields."""
        if offset < 0 or len(buf) - offset < HEADER_SIZE:
            raise ProtocolError(
                f"header: need {HEADER_SIZE} bytes at offset {offset}, have {max(len(buf) - offset, 0)}"
            )
        return cls(*HEADER_STRUCT.unpack_from(buf, offset))

    def check(self) -> None:
        """Reject what ctdbd rejects: length < 32, wrong magic, wrong protocol version."""
        if self.length < HEADER_SIZE:
            raise ProtocolError(f"header: length {self.length} is shorter than the {HEADER_SIZE}-byte header")
        if self.magic != CTDB_MAGIC:
            raise ProtocolError(f"header: bad magic 0x{self.magic:08x} (expected 0x{CTDB_MAGIC:08x})")
        if self.version != CTDB_PROTOCOL_VERSION:
            raise ProtocolError(
                f"header: unsupported protocol version {self.version} (expected {CTDB_PROTOCOL_VERSION})"
            )


def keepalive_source(datagram: bytes) -> int | None:
    """The sending node of a heartbeat datagram (a whole REQ_KEEPALIVE packet with a valid
    header), or None for anything else. The fast channel reads many of these per second, so
    this checks the header in place without building objects."""
    if len(datagram) < HEADER_SIZE:
        return None
    length, magic, version, _gen, op, _dest, src, _reqid = HEADER_STRUCT.unpack_from(datagram)
    if length != len(datagram) or magic != CTDB_MAGIC or version != CTDB_PROTOCOL_VERSION \
            or op != Operation.REQ_KEEPALIVE:
        return None
    return src


def peek_operation(frame: bytes) -> int:
    """The operation of a whole framed packet, read in place (the framer checked the size)."""
    return _OPERATION.unpack_from(frame, 16)[0]


_OPERATION = struct.Struct("<I")
