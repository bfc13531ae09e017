"""pyctdbd's own node-to-node messages, carried as ordinary REQ_MESSAGE packets.

The inter-node protocol is pyctdbd's own (mixing with real ctdbd nodes is not a goal), but it
keeps CTDB's packet layout. These SRVIDs sit in CTDB's reserved 0xF9.. range next to
PUSH_NODE_FLAGS, in a sub-range CTDB does not use:

=================  ==================  ======================================================
HEARTBEAT          0xF9A1000000000000  u32 kind: 1 watch me, 0 stop watching me, 2 heartbeat
                                       (the TCP fallback when the UDP fast channel is missing)
NODE_DEAD          0xF9A2000000000000  u32 dead pnn, u32 reporter pnn
NODE_STATE         0xF9A3000000000000  u32 pnn, u32 flags, u32 runstate, u32 capabilities
RECOVERY_WANTED    0xF9A4000000000000  u32 pnn: that node went into recovery mode on its own
                                       (`ctdb recover`), so the leader must run a recovery
NODE_DROPPED       0xF9A5000000000000  u32 dead pnn, u32 leader pnn (as NODE_DEAD): sent to the
                                       node itself by a peer that refuted the leader's report
                                       that it is dead, since the leader gives its IPs away
=================  ==================  ======================================================

`peek_heartbeat` reads a heartbeat message straight from a frame: it is most of a node's idle
traffic, so the packet router looks for it before decoding anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import HEADER_SIZE, Operation
from .errors import ProtocolError

HEARTBEAT = 0xF9A1000000000000
NODE_DEAD = 0xF9A2000000000000
NODE_STATE = 0xF9A3000000000000
RECOVERY_WANTED = 0xF9A4000000000000
NODE_DROPPED = 0xF9A5000000000000
INTERNAL = frozenset({HEARTBEAT, NODE_DEAD, NODE_STATE, RECOVERY_WANTED, NODE_DROPPED})
HEARTBEAT_UNWATCH = 0
HEARTBEAT_WATCH = 1
HEARTBEAT_BEAT = 2

_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")
_U32x4 = struct.Struct("<IIII")
# REQ_MESSAGE body after the header: u64 srvid, u32 datalen, then the data.
_MESSAGE_HEAD = struct.Struct("<QI")
_OPERATION_AT = 16
_MESSAGE_DATA_AT = HEADER_SIZE + _MESSAGE_HEAD.size


def pack_heartbeat(kind: int) -> bytes:
    return _U32.pack(kind)


def unpack_heartbeat(data: bytes) -> int:
    if len(data) < 4:
        raise ProtocolError(f"heartbeat: need 4 bytes, got {len(data)}")
    return _U32.unpack_from(data)[0]


def peek_heartbeat(frame: bytes) -> int | None:
    """The heartbeat kind if `frame` (a whole, framed packet) is a HEARTBEAT message, else
    None. Reads three fields in place; anything else is left to the full decoder."""
    if len(frame) < _MESSAGE_DATA_AT + 4 or _U32.unpack_from(frame, _OPERATION_AT)[0] != Operation.REQ_MESSAGE:
        return None
    srvid, datalen = _MESSAGE_HEAD.unpack_from(frame, HEADER_SIZE)
    if srvid != HEARTBEAT or datalen < 4:
        return None
    return _U32.unpack_from(frame, _MESSAGE_DATA_AT)[0]


@dataclass(frozen=True)
class NodeDead:
    """Node `reporter` declared node `dead` dead (its failure detector fired)."""

    dead: int
    reporter: int

    def pack(self) -> bytes:
        return _U32x2.pack(self.dead, self.reporter)

    @classmethod
    def unpack(cls, data: bytes) -> NodeDead:
        if len(data) < 8:
            raise ProtocolError(f"node-dead report: need 8 bytes, got {len(data)}")
        return cls(*_U32x2.unpack_from(data))


@dataclass(frozen=True)
class NodeState:
    pnn: int
    flags: int
    runstate: int
    capabilities: int

    def pack(self) -> bytes:
        return _U32x4.pack(self.pnn, self.flags, self.runstate, self.capabilities)

    @classmethod
    def unpack(cls, data: bytes) -> NodeState:
        if len(data) < 16:
            raise ProtocolError(f"node state: need 16 bytes, got {len(data)}")
        return cls(*_U32x4.unpack_from(data))


@dataclass(frozen=True)
class RecoveryWanted:
    """Node `pnn` is in recovery mode on its own and asks the leader for a recovery."""

    pnn: int

    def pack(self) -> bytes:
        return _U32.pack(self.pnn)

    @classmethod
    def unpack(cls, data: bytes) -> RecoveryWanted:
        if len(data) < 4:
            raise ProtocolError(f"recovery request: need 4 bytes, got {len(data)}")
        return cls(_U32.unpack_from(data)[0])
