"""Payloads of pyctdbd's own recovery controls, sent only between pyctdbd nodes (a real ctdbd
answers them as unknown controls). They let the leader recover the databases after nodes were
lost or joined without freezing or copying them: each node reports the keys whose hand-off the
generation change cut off (`RecoveryScan` -> `ScanResult`, PYCTDB_RECOVERY_HANDOFFS), every node
records the change (`RecoveryDefer`), and a key's lmaster later gathers every node's copy of a
key it settles (`RecBufferList`, PYCTDB_GATHER_COPIES). Decisions are in `core/db/unsettled.py`.

Layouts (little-endian, as CTDB's own payloads):

* `RecoveryScan`: u32 nnodes, u32 ndbs, nnodes × u32 pnn (the nodes being recovered: every
  other node counts as lost), ndbs × u32 db_id (the volatile databases to report on).
* `ScanResult`: u32 came_from (the generation this node was recovered into and served in last,
  INVALID_GENERATION if none), u32 nbuf, nbuf × `ctdb_rec_buffer` (one per listed database;
  the reported keys, without data).
* `RecBufferList`: u32 nbuf, nbuf × `ctdb_rec_buffer` — PYCTDB_GATHER_COPIES's request (the
  keys whose copies the lmaster wants, with empty data) and reply (the copies this node has,
  with their ltdb headers; keys it does not have are left out).
* `RecoveryDefer`: see the class (PYCTDB_RECOVERY_DEFER).
* `SweepKeys`: see the class (PYCTDB_SWEEP_KEYS, the request of a node sweeping its keys after
  a membership change, `core/db/sweep.py`); its reply is a `RecBufferList` of one buffer: the
  keys with their ltdb headers and no data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ._wire import Buffer, need, pack_or_raise
from .errors import ProtocolError
from .types import RecBuffer, WireType

_U32x2 = struct.Struct("<II")
#: At most this many nodes or databases in one request (the fields are u32; a larger count is a
#: malformed payload, not a reason to allocate).
MAX_ITEMS = 1 << 16


def _u32_list(buf: Buffer, offset: int, count: int, what: str) -> tuple[list[int], int]:
    need(buf, offset, 4 * count, what)
    return list(struct.unpack_from(f"<{count}I", buf, offset)), offset + 4 * count


def _buffers(buf: Buffer, offset: int, count: int, what: str) -> tuple[list[RecBuffer], int]:
    if count > MAX_ITEMS or count * 8 > len(buf) - offset:
        raise ProtocolError(f"{what}: {count} buffers cannot fit in {len(buf) - offset} bytes")
    buffers = []
    for _ in range(count):
        rb, offset = RecBuffer.unpack_from(buf, offset)
        buffers.append(rb)
    return buffers, offset


@dataclass(slots=True)
class RecoveryScan(WireType):
    nodes: list[int] = field(default_factory=list)
    db_ids: list[int] = field(default_factory=list)

    def pack(self) -> bytes:
        return (pack_or_raise(_U32x2, "recovery_scan", len(self.nodes), len(self.db_ids))
                + struct.pack(f"<{len(self.nodes)}I{len(self.db_ids)}I", *self.nodes, *self.db_ids))

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RecoveryScan, int]:
        need(buf, offset, 8, "recovery_scan")
        nnodes, ndbs = _U32x2.unpack_from(buf, offset)
        if nnodes > MAX_ITEMS or ndbs > MAX_ITEMS:
            raise ProtocolError(f"recovery_scan: {nnodes} nodes, {ndbs} databases")
        nodes, offset = _u32_list(buf, offset + 8, nnodes, "recovery_scan nodes")
        db_ids, offset = _u32_list(buf, offset, ndbs, "recovery_scan db_ids")
        return cls(nodes, db_ids), offset


def _pack_headed(what: str, head: int, packed_buffers: list[bytes]) -> bytes:
    """u32 head, u32 nbuf, then the buffers (already packed)."""
    return pack_or_raise(_U32x2, what, head, len(packed_buffers)) + b"".join(packed_buffers)


def _unpack_headed(buf: Buffer, offset: int, what: str) -> tuple[int, list[RecBuffer], int]:
    need(buf, offset, 8, what)
    head, count = _U32x2.unpack_from(buf, offset)
    buffers, offset = _buffers(buf, offset + 8, count, what)
    return head, buffers, offset


@dataclass(slots=True)
class ScanResult(WireType):
    came_from: int
    buffers: list[RecBuffer] = field(default_factory=list)

    def pack(self) -> bytes:
        return pack_scan_result(self.came_from, [b.pack() for b in self.buffers])

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[ScanResult, int]:
        came_from, buffers, offset = _unpack_headed(buf, offset, "scan_result")
        return cls(came_from, buffers), offset


@dataclass(slots=True)
class RecoveryDefer(WireType):
    """PYCTDB_RECOVERY_DEFER: u32 generation, u32 nmap, nmap × u32 pnn (the vnnmap before the
    membership change), u32 nbuf, nbuf × `ctdb_rec_buffer` (one per database the recovery
    covers; for a volatile one, the keys whose hand-off the change cut off, without data)."""

    generation: int
    old_map: list[int] = field(default_factory=list)
    buffers: list[RecBuffer] = field(default_factory=list)

    def pack(self) -> bytes:
        return (pack_or_raise(_U32x2, "recovery_defer", self.generation, len(self.old_map))
                + struct.pack(f"<{len(self.old_map)}I", *self.old_map)
                + struct.pack("<I", len(self.buffers)) + b"".join(b.pack() for b in self.buffers))

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RecoveryDefer, int]:
        need(buf, offset, 8, "recovery_defer")
        generation, nmap = _U32x2.unpack_from(buf, offset)
        if nmap > MAX_ITEMS:
            raise ProtocolError(f"recovery_defer: a map of {nmap} slots")
        old_map, offset = _u32_list(buf, offset + 8, nmap, "recovery_defer map")
        need(buf, offset, 4, "recovery_defer nbuf")
        (count,) = struct.unpack_from("<I", buf, offset)
        buffers, offset = _buffers(buf, offset + 4, count, "recovery_defer")
        return cls(generation, old_map, buffers), offset


@dataclass(slots=True)
class RecBufferList(WireType):
    buffers: list[RecBuffer] = field(default_factory=list)

    def pack(self) -> bytes:
        return struct.pack("<I", len(self.buffers)) + b"".join(b.pack() for b in self.buffers)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RecBufferList, int]:
        need(buf, offset, 4, "rec_buffer_list")
        (count,) = struct.unpack_from("<I", buf, offset)
        buffers, offset = _buffers(buf, offset + 4, count, "rec_buffer_list")
        return cls(buffers), offset


def pack_scan_result(came_from: int, packed_buffers: list[bytes]) -> bytes:
    """A ScanResult from buffers already packed (a child packs a big scan's records)."""
    return _pack_headed("scan_result", came_from, packed_buffers)


def iter_scan_result(buf: Buffer) -> tuple[int, list[tuple[int, int, int]]]:
    """A ScanResult's came_from and, per buffer, (db_id, count, offset of its first record),
    without decoding the records (read them with `RecData.unpack_from`, a few at a time)."""
    need(buf, 0, 8, "scan_result")
    came_from, nbuf = _U32x2.unpack_from(buf, 0)
    if nbuf > MAX_ITEMS:
        raise ProtocolError(f"scan_result: {nbuf} buffers")
    offset, out = 8, []
    for _ in range(nbuf):
        need(buf, offset, 8, "scan_result buffer")
        db_id, count = _U32x2.unpack_from(buf, offset)
        start = offset + 8
        offset = start
        for _ in range(count):           # skip the records by their length fields
            need(buf, offset, 4, "scan_result record")
            (length,) = struct.unpack_from("<I", buf, offset)
            if length < 16:
                raise ProtocolError(f"scan_result: record length {length}")
            offset += length
        if offset > len(buf):
            raise ProtocolError("scan_result: records run past the end")
        out.append((db_id, count, start))
    return came_from, out


@dataclass(slots=True)
class SweepKeys(WireType):
    """PYCTDB_SWEEP_KEYS: u32 db_id, u32 lmaster (the sweeping node), then four u32 lists, each
    u32 count + pnns: the current vnnmap, the lost nodes, and u32 nmaps followed by nmaps maps
    (each its own count + pnns): the maps of the epochs the sweep covers."""

    db_id: int
    lmaster: int
    current_map: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    maps: list[list[int]] = field(default_factory=list)

    def pack(self) -> bytes:
        out = [pack_or_raise(_U32x2, "sweep_keys", self.db_id, self.lmaster)]
        for pnns in (self.current_map, self.lost):
            out.append(struct.pack(f"<I{len(pnns)}I", len(pnns), *pnns))
        out.append(struct.pack("<I", len(self.maps)))
        out += [struct.pack(f"<I{len(m)}I", len(m), *m) for m in self.maps]
        return b"".join(out)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[SweepKeys, int]:
        need(buf, offset, 8, "sweep_keys")
        db_id, lmaster = _U32x2.unpack_from(buf, offset)
        offset += 8
        lists = []
        for what in ("map", "lost", "nmaps"):
            need(buf, offset, 4, f"sweep_keys {what}")
            (count,) = struct.unpack_from("<I", buf, offset)
            if count > MAX_ITEMS:
                raise ProtocolError(f"sweep_keys: {count} items in {what}")
            if what == "nmaps":
                offset += 4
                maps = []
                for _ in range(count):
                    need(buf, offset, 4, "sweep_keys epoch map")
                    (n,) = struct.unpack_from("<I", buf, offset)
                    if n > MAX_ITEMS:
                        raise ProtocolError(f"sweep_keys: a map of {n} slots")
                    m, offset = _u32_list(buf, offset + 4, n, "sweep_keys epoch map")
                    maps.append(m)
                lists.append(maps)
            else:
                items, offset = _u32_list(buf, offset + 4, count, f"sweep_keys {what}")
                lists.append(items)
        return cls(db_id, lmaster, lists[0], lists[1], lists[2]), offset
