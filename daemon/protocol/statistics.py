"""The statistics payloads: STATISTICS (1), GET_STAT_HISTORY (127) and GET_DB_STATISTICS (132).

Layouts as Samba 4.17 marshals them (``ctdb/protocol/protocol.h`` for the structs,
``ctdb/protocol/protocol_types.c`` ``ctdb_statistics_push`` / ``ctdb_db_statistics_push`` for the
wire, ``protocol_basic.c`` for timeval and padding), which is what the stock ``ctdb`` tool parses
and what ctdbd copies out of memory on x86-64:

``struct ctdb_latency_counter`` (32 B): i32 num, 4 pad, f64 min, f64 max, f64 total.

``struct ctdb_statistics`` (488 B)::

      0  u32 num_clients, frozen, recovering, client_packets_sent, client_packets_recv,
         node_packets_sent, node_packets_recv, keepalive_packets_sent, keepalive_packets_recv
     36  u32 node.{req_call, reply_call, req_dmaster, reply_dmaster, reply_error, req_message,
                   req_control, reply_control, req_tunnel}
     72  u32 client.{req_call, req_message, req_control, req_tunnel}
     88  u32 timeouts.{call, control, traverse}, 4 pad
    104  latency reclock.ctdbd, latency reclock.recd
    168  u32 locks.{num_calls, num_current, num_pending, num_failed}, latency locks.latency,
         u32 locks.buckets[16]
    280  u32 total_calls, pending_calls, childwrite_calls, pending_childwrite_calls, memory_used,
         __last_counter, max_hop_count
    308  u32 hop_count_bucket[16], 4 pad
    376  latency call_latency, latency childwrite_latency
    440  u32 num_recoveries, 4 pad
    448  timeval statistics_start_time, timeval statistics_current_time (i64 sec, i64 usec each)
    480  u32 total_ro_delegations, total_ro_revokes

``struct ctdb_statistics_list``: i32 num, 4 pad, then ``num`` statistics. ctdbd always answers
GET_STAT_HISTORY with MAX_STAT_HISTORY (100, ``ctdb/include/ctdb_private.h``) entries, newest
first, the unused ones zero; ``ctdb stats`` skips entries whose start time is 0.

``struct ctdb_db_statistics`` (464 B, then the keys)::

      0  u32 locks.{num_calls, num_current, num_pending, num_failed}, latency locks.latency,
         u32 locks.buckets[16]
    112  latency vacuum.latency
    144  u32 db_ro_delegations, db_ro_revokes
    152  u32 hop_count_bucket[16]
    216  u32 num_hot_keys, 4 pad
    224  10 x { u32 count, 4 pad, u64 key.dptr (ignored), u64 key.dsize }
    464  the ten keys' bytes, back to back (key i is key.dsize bytes long)

The library (and ctdbd) always write num_hot_keys = MAX_HOT_KEYS and all ten slots, the unused
ones empty, so ``ctdb dbstatistics`` prints ten "Count:" lines; the pointer field carries
whatever ctdbd's pointer was (we send 0).

Counters are C ``uint32_t``: packing wraps them modulo 2**32 as ctdbd's own counters wrap, so a
long-running daemon never fails a STATISTICS reply; a latency's ``num`` is a C ``int`` and wraps
into the i32 range. Decoding ignores trailing bytes (as Samba's library does) and raises
ProtocolError for short or inconsistent input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from ._wire import Buffer, as_bytes, need, pack_or_raise
from .errors import ProtocolError
from .types import Timeval, WireType

#: ``MAX_COUNT_BUCKETS`` and ``MAX_HOT_KEYS`` of protocol.h; ``MAX_STAT_HISTORY`` of ctdb_private.h.
MAX_COUNT_BUCKETS = 16
MAX_HOT_KEYS = 10
MAX_STAT_HISTORY = 100

_LAT = "i4xddd"
_STATISTICS = struct.Struct(
    "<" + "9I" + "9I" + "4I" + "3I4x" + _LAT * 2 + "4I" + _LAT + "16I" + "7I" + "16I4x"
    + _LAT * 2 + "I4x" + "qq" * 2 + "II")
_LIST_HEAD = struct.Struct("<i4x")
_DB_HEAD = struct.Struct("<4I" + _LAT + "16I" + _LAT + "II" + "16I" + "I4x")
_HOT_KEY_SLOT = struct.Struct("<I4xQQ")

#: Wire sizes: ``struct ctdb_statistics`` and the fixed part of ``struct ctdb_db_statistics``.
STATISTICS_SIZE = _STATISTICS.size
DB_STATISTICS_FIXED_SIZE = _DB_HEAD.size + MAX_HOT_KEYS * _HOT_KEY_SLOT.size
assert STATISTICS_SIZE == 488 and DB_STATISTICS_FIXED_SIZE == 464

_U32 = 0xFFFFFFFF


def _u32(value: int, what: str) -> int:
    if not isinstance(value, int):
        raise ProtocolError(f"{what}: expected an int, got {type(value).__name__}")
    return value & _U32


def _i32(value: int, what: str) -> int:
    return ((_u32(value, what) + 0x80000000) & _U32) - 0x80000000


def _buckets(values: list[int], what: str) -> list[int]:
    """A bucket array as 16 u32s: shorter lists (pyctdbd's lock buckets are 11) are padded."""
    if len(values) > MAX_COUNT_BUCKETS:
        raise ProtocolError(f"{what}: {len(values)} buckets, at most {MAX_COUNT_BUCKETS}")
    return [_u32(v, what) for v in values] + [0] * (MAX_COUNT_BUCKETS - len(values))


def zero_buckets() -> list[int]:
    return [0] * MAX_COUNT_BUCKETS


@dataclass(slots=True)
class Latency:
    """``struct ctdb_latency_counter``: samples, and their min, max and total in seconds."""

    num: int = 0
    min: float = 0.0
    max: float = 0.0
    total: float = 0.0

    @property
    def avg(self) -> float:
        return self.total / self.num if self.num else 0.0

    def values(self, what: str) -> tuple[int, float, float, float]:
        return (_i32(self.num, what), self.min, self.max, self.total)


@dataclass(slots=True)
class LockCounters:
    """The ``locks`` member of both statistics structs."""

    num_calls: int = 0
    num_current: int = 0
    num_pending: int = 0
    num_failed: int = 0
    latency: Latency = field(default_factory=Latency)
    buckets: list[int] = field(default_factory=zero_buckets)

    def values(self) -> list[object]:
        what = "locks"
        return [_u32(self.num_calls, what), _u32(self.num_current, what),
                _u32(self.num_pending, what), _u32(self.num_failed, what),
                *self.latency.values("locks.latency"), *_buckets(self.buckets, "locks.buckets")]

    @classmethod
    def from_values(cls, v: tuple) -> LockCounters:
        return cls(v[0], v[1], v[2], v[3], Latency(*v[4:8]), list(v[8:8 + MAX_COUNT_BUCKETS]))


@dataclass(slots=True)
class NodeOps:
    """``node``: packets from other nodes by operation."""

    req_call: int = 0
    reply_call: int = 0
    req_dmaster: int = 0
    reply_dmaster: int = 0
    reply_error: int = 0
    req_message: int = 0
    req_control: int = 0
    reply_control: int = 0
    req_tunnel: int = 0


@dataclass(slots=True)
class ClientOps:
    """``client``: packets from local clients by operation."""

    req_call: int = 0
    req_message: int = 0
    req_control: int = 0
    req_tunnel: int = 0


@dataclass(slots=True)
class Timeouts:
    call: int = 0
    control: int = 0
    traverse: int = 0


def _ops_values(ops: NodeOps | ClientOps | Timeouts, what: str) -> list[int]:
    return [_u32(getattr(ops, name), f"{what}.{name}") for name in ops.__match_args__]


@dataclass(slots=True)
class CtdbStatistics(WireType):
    """``struct ctdb_statistics`` (488 B), members in C order."""

    num_clients: int = 0
    frozen: int = 0
    recovering: int = 0
    client_packets_sent: int = 0
    client_packets_recv: int = 0
    node_packets_sent: int = 0
    node_packets_recv: int = 0
    keepalive_packets_sent: int = 0
    keepalive_packets_recv: int = 0
    node: NodeOps = field(default_factory=NodeOps)
    client: ClientOps = field(default_factory=ClientOps)
    timeouts: Timeouts = field(default_factory=Timeouts)
    reclock_ctdbd: Latency = field(default_factory=Latency)
    reclock_recd: Latency = field(default_factory=Latency)
    locks: LockCounters = field(default_factory=LockCounters)
    total_calls: int = 0
    pending_calls: int = 0
    childwrite_calls: int = 0
    pending_childwrite_calls: int = 0
    memory_used: int = 0
    last_counter: int = 0          # C's "__last_counter" (a hack; always 0 in ctdbd)
    max_hop_count: int = 0
    hop_count_bucket: list[int] = field(default_factory=zero_buckets)
    call_latency: Latency = field(default_factory=Latency)
    childwrite_latency: Latency = field(default_factory=Latency)
    num_recoveries: int = 0
    statistics_start_time: Timeval = field(default_factory=Timeval)
    statistics_current_time: Timeval = field(default_factory=Timeval)
    total_ro_delegations: int = 0
    total_ro_revokes: int = 0
    SIZE: ClassVar[int] = STATISTICS_SIZE

    _HEAD_FIELDS: ClassVar[tuple[str, ...]] = (
        "num_clients", "frozen", "recovering", "client_packets_sent", "client_packets_recv",
        "node_packets_sent", "node_packets_recv", "keepalive_packets_sent", "keepalive_packets_recv")
    _CALL_FIELDS: ClassVar[tuple[str, ...]] = (
        "total_calls", "pending_calls", "childwrite_calls", "pending_childwrite_calls",
        "memory_used", "last_counter", "max_hop_count")

    def pack(self) -> bytes:
        u = _u32
        values: list[object] = [u(getattr(self, name), name) for name in self._HEAD_FIELDS]
        values += _ops_values(self.node, "node") + _ops_values(self.client, "client")
        values += _ops_values(self.timeouts, "timeouts")
        values += [*self.reclock_ctdbd.values("reclock.ctdbd"), *self.reclock_recd.values("reclock.recd")]
        values += self.locks.values()
        values += [u(getattr(self, name), name) for name in self._CALL_FIELDS]
        values += _buckets(self.hop_count_bucket, "hop_count_bucket")
        values += [*self.call_latency.values("call_latency"),
                   *self.childwrite_latency.values("childwrite_latency")]
        values += [u(self.num_recoveries, "num_recoveries"),
                   self.statistics_start_time.sec, self.statistics_start_time.usec,
                   self.statistics_current_time.sec, self.statistics_current_time.usec,
                   u(self.total_ro_delegations, "total_ro_delegations"),
                   u(self.total_ro_revokes, "total_ro_revokes")]
        return pack_or_raise(_STATISTICS, "ctdb_statistics", *values)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[CtdbStatistics, int]:
        need(buf, offset, STATISTICS_SIZE, "ctdb_statistics")
        v = _STATISTICS.unpack_from(buf, offset)
        head = dict(zip(cls._HEAD_FIELDS, v[0:9]))
        calls = dict(zip(cls._CALL_FIELDS, v[57:64]))
        stats = cls(
            **head,
            node=NodeOps(*v[9:18]), client=ClientOps(*v[18:22]), timeouts=Timeouts(*v[22:25]),
            reclock_ctdbd=Latency(*v[25:29]), reclock_recd=Latency(*v[29:33]),
            locks=LockCounters.from_values(v[33:57]),
            **calls,
            hop_count_bucket=list(v[64:80]),
            call_latency=Latency(*v[80:84]), childwrite_latency=Latency(*v[84:88]),
            num_recoveries=v[88],
            statistics_start_time=Timeval(v[89], v[90]),
            statistics_current_time=Timeval(v[91], v[92]),
            total_ro_delegations=v[93], total_ro_revokes=v[94])
        return stats, offset + STATISTICS_SIZE


@dataclass(slots=True)
class StatisticsList(WireType):
    """``struct ctdb_statistics_list`` (GET_STAT_HISTORY's reply)."""

    stats: list[CtdbStatistics] = field(default_factory=list)

    def pack(self) -> bytes:
        return _LIST_HEAD.pack(len(self.stats)) + b"".join(s.pack() for s in self.stats)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[StatisticsList, int]:
        need(buf, offset, _LIST_HEAD.size, "ctdb_statistics_list")
        (num,) = _LIST_HEAD.unpack_from(buf, offset)
        if num < 0:
            raise ProtocolError(f"ctdb_statistics_list: negative count {num}")
        offset += _LIST_HEAD.size
        need(buf, offset, num * STATISTICS_SIZE, f"ctdb_statistics_list ({num} entries)")
        stats = []
        for _ in range(num):
            entry, offset = CtdbStatistics.unpack_from(buf, offset)
            stats.append(entry)
        return cls(stats), offset


@dataclass(slots=True)
class HotKey:
    """One of a database's hot keys: the highest hop count it was seen with, and the key."""

    count: int
    key: bytes


@dataclass(slots=True)
class DbStatistics(WireType):
    """``struct ctdb_db_statistics`` (GET_DB_STATISTICS's reply): 464 bytes, then the keys.

    ``hot_keys`` holds at most MAX_HOT_KEYS entries; packing fills the other slots with empty
    ones and writes num_hot_keys = MAX_HOT_KEYS, as ctdbd does; unpacking drops trailing empty
    slots (count 0, no key), so a packed list comes back as it was."""

    locks: LockCounters = field(default_factory=LockCounters)
    vacuum_latency: Latency = field(default_factory=Latency)
    db_ro_delegations: int = 0
    db_ro_revokes: int = 0
    hop_count_bucket: list[int] = field(default_factory=zero_buckets)
    hot_keys: list[HotKey] = field(default_factory=list)
    SIZE: ClassVar[int | None] = None

    def pack(self) -> bytes:
        if len(self.hot_keys) > MAX_HOT_KEYS:
            raise ProtocolError(f"ctdb_db_statistics: {len(self.hot_keys)} hot keys, at most {MAX_HOT_KEYS}")
        slots = list(self.hot_keys) + [HotKey(0, b"")] * (MAX_HOT_KEYS - len(self.hot_keys))
        keys = [as_bytes(slot.key, "hot key") for slot in slots]
        head = pack_or_raise(
            _DB_HEAD, "ctdb_db_statistics", *self.locks.values(),
            *self.vacuum_latency.values("vacuum.latency"),
            _u32(self.db_ro_delegations, "db_ro_delegations"), _u32(self.db_ro_revokes, "db_ro_revokes"),
            *_buckets(self.hop_count_bucket, "hop_count_bucket"), MAX_HOT_KEYS)
        table = b"".join(_HOT_KEY_SLOT.pack(_u32(slot.count, "hot key count"), 0, len(key))
                         for slot, key in zip(slots, keys))
        return head + table + b"".join(keys)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[DbStatistics, int]:
        need(buf, offset, DB_STATISTICS_FIXED_SIZE, "ctdb_db_statistics")
        v = _DB_HEAD.unpack_from(buf, offset)
        num_hot_keys = v[46]
        if num_hot_keys > MAX_HOT_KEYS:
            raise ProtocolError(f"ctdb_db_statistics: num_hot_keys {num_hot_keys} > {MAX_HOT_KEYS}")
        pos = offset + _DB_HEAD.size
        table = []
        for _ in range(MAX_HOT_KEYS):
            count, _pointer, dsize = _HOT_KEY_SLOT.unpack_from(buf, pos)
            table.append((count, dsize))
            pos += _HOT_KEY_SLOT.size
        need(buf, pos, sum(dsize for _, dsize in table), "ctdb_db_statistics hot keys")
        hot_keys = []
        for count, dsize in table:
            hot_keys.append(HotKey(count, bytes(buf[pos:pos + dsize])))
            pos += dsize
        while hot_keys and hot_keys[-1].count == 0 and not hot_keys[-1].key:
            hot_keys.pop()
        stats = cls(locks=LockCounters.from_values(v[0:24]), vacuum_latency=Latency(*v[24:28]),
                    db_ro_delegations=v[28], db_ro_revokes=v[29],
                    hop_count_bucket=list(v[30:46]), hot_keys=hot_keys)
        return stats, pos
