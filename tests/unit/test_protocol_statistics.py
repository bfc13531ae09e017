"""The statistics codecs (protocol/statistics.py): sizes and offsets against Samba 4.17's layout,
an independent check through ctypes (the C compiler's own padding, which ctdbd memcpy's), round
trips, hostile input, and Debian's stock `ctdb` tool reading what we encode (`ctdb statistics`,
`ctdb -X statistics`, `ctdb stats`, `ctdb -X stats`, `ctdb dbstatistics`, `statisticsreset`).
"""

from __future__ import annotations

import ctypes
import os
import random
import struct

import pytest

from ctdblab.daemon.protocol import Control, DbFlag, DbId, DbMap, ProtocolError, Timeval, spec_for
from ctdblab.daemon.protocol.statistics import (
    DB_STATISTICS_FIXED_SIZE, MAX_COUNT_BUCKETS, MAX_HOT_KEYS, MAX_STAT_HISTORY, STATISTICS_SIZE,
    ClientOps, CtdbStatistics, DbStatistics, HotKey, Latency, LockCounters, NodeOps, StatisticsList,
    Timeouts,
)
from test_protocol_real_cli import CTDB, FakeCtdbd

U32 = ctypes.c_uint32


# -- an independent model of the C structs: ctypes lays them out with the platform's C rules ------
class CLatency(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("min", ctypes.c_double), ("max", ctypes.c_double),
                ("total", ctypes.c_double)]


class CTimeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class CLocks(ctypes.Structure):
    _fields_ = [("num_calls", U32), ("num_current", U32), ("num_pending", U32), ("num_failed", U32),
                ("latency", CLatency), ("buckets", U32 * 16)]


class CNode(ctypes.Structure):
    _fields_ = [(n, U32) for n in NodeOps.__match_args__]


class CClient(ctypes.Structure):
    _fields_ = [(n, U32) for n in ClientOps.__match_args__]


class CTimeouts(ctypes.Structure):
    _fields_ = [(n, U32) for n in Timeouts.__match_args__]


class CReclock(ctypes.Structure):
    _fields_ = [("ctdbd", CLatency), ("recd", CLatency)]


class CStatistics(ctypes.Structure):
    """struct ctdb_statistics, ctdb/protocol/protocol.h (Samba 4.17)."""

    _fields_ = [(n, U32) for n in CtdbStatistics._HEAD_FIELDS] + [
        ("node", CNode), ("client", CClient), ("timeouts", CTimeouts), ("reclock", CReclock),
        ("locks", CLocks)] + [(n, U32) for n in (
            "total_calls", "pending_calls", "childwrite_calls", "pending_childwrite_calls",
            "memory_used", "last_counter", "max_hop_count")] + [
        ("hop_count_bucket", U32 * 16), ("call_latency", CLatency), ("childwrite_latency", CLatency),
        ("num_recoveries", U32), ("statistics_start_time", CTimeval),
        ("statistics_current_time", CTimeval), ("total_ro_delegations", U32),
        ("total_ro_revokes", U32)]


class CTdbData(ctypes.Structure):
    _fields_ = [("dptr", ctypes.c_void_p), ("dsize", ctypes.c_size_t)]


class CHotKey(ctypes.Structure):
    _fields_ = [("count", U32), ("key", CTdbData)]


class CDbStatistics(ctypes.Structure):
    """struct ctdb_db_statistics_old up to hot_keys_wire (ctdb/include/ctdb_protocol.h)."""

    _fields_ = [("locks", CLocks), ("vacuum", CLatency), ("db_ro_delegations", U32),
                ("db_ro_revokes", U32), ("hop_count_bucket", U32 * 16), ("num_hot_keys", U32),
                ("hot_keys", CHotKey * 10)]


def latency(rng: random.Random) -> Latency:
    return Latency(rng.randrange(0, 2**31), rng.random(), rng.random() * 10, rng.random() * 1000)


def random_statistics(rng: random.Random) -> CtdbStatistics:
    u = lambda: rng.randrange(0, 2**32)  # noqa: E731
    return CtdbStatistics(
        *[u() for _ in CtdbStatistics._HEAD_FIELDS],
        node=NodeOps(*[u() for _ in NodeOps.__match_args__]),
        client=ClientOps(*[u() for _ in ClientOps.__match_args__]),
        timeouts=Timeouts(u(), u(), u()), reclock_ctdbd=latency(rng), reclock_recd=latency(rng),
        locks=LockCounters(u(), u(), u(), u(), latency(rng), [u() for _ in range(16)]),
        total_calls=u(), pending_calls=u(), childwrite_calls=u(), pending_childwrite_calls=u(),
        memory_used=u(), last_counter=u(), max_hop_count=u(),
        hop_count_bucket=[u() for _ in range(16)], call_latency=latency(rng),
        childwrite_latency=latency(rng), num_recoveries=u(),
        statistics_start_time=Timeval(rng.randrange(0, 2**40), rng.randrange(0, 10**6)),
        statistics_current_time=Timeval(rng.randrange(0, 2**40), rng.randrange(0, 10**6)),
        total_ro_delegations=u(), total_ro_revokes=u())


def c_latency(c: CLatency) -> Latency:
    return Latency(c.num, c.min, c.max, c.total)


def from_c(c: CStatistics) -> CtdbStatistics:
    """Our dataclass from the ctypes view of the bytes: every field read at the C compiler's offset."""
    return CtdbStatistics(
        *[getattr(c, n) for n in CtdbStatistics._HEAD_FIELDS],
        node=NodeOps(*[getattr(c.node, n) for n in NodeOps.__match_args__]),
        client=ClientOps(*[getattr(c.client, n) for n in ClientOps.__match_args__]),
        timeouts=Timeouts(c.timeouts.call, c.timeouts.control, c.timeouts.traverse),
        reclock_ctdbd=c_latency(c.reclock.ctdbd), reclock_recd=c_latency(c.reclock.recd),
        locks=LockCounters(c.locks.num_calls, c.locks.num_current, c.locks.num_pending,
                           c.locks.num_failed, c_latency(c.locks.latency), list(c.locks.buckets)),
        total_calls=c.total_calls, pending_calls=c.pending_calls, childwrite_calls=c.childwrite_calls,
        pending_childwrite_calls=c.pending_childwrite_calls, memory_used=c.memory_used,
        last_counter=c.last_counter, max_hop_count=c.max_hop_count,
        hop_count_bucket=list(c.hop_count_bucket), call_latency=c_latency(c.call_latency),
        childwrite_latency=c_latency(c.childwrite_latency), num_recoveries=c.num_recoveries,
        statistics_start_time=Timeval(c.statistics_start_time.tv_sec, c.statistics_start_time.tv_usec),
        statistics_current_time=Timeval(c.statistics_current_time.tv_sec,
                                        c.statistics_current_time.tv_usec),
        total_ro_delegations=c.total_ro_delegations, total_ro_revokes=c.total_ro_revokes)


# -- layout ----------------------------------------------------------------------------------------
def test_sizes_match_the_c_structs():
    assert STATISTICS_SIZE == ctypes.sizeof(CStatistics) == 488
    assert DB_STATISTICS_FIXED_SIZE == ctypes.sizeof(CDbStatistics) == 464
    assert len(CtdbStatistics().pack()) == 488
    assert len(StatisticsList([]).pack()) == 8
    assert len(DbStatistics().pack()) == 464                      # ten empty slots, no key bytes
    assert (MAX_COUNT_BUCKETS, MAX_HOT_KEYS, MAX_STAT_HISTORY) == (16, 10, 100)


def test_every_statistics_field_sits_where_the_c_compiler_puts_it():
    rng = random.Random(1)
    for _ in range(50):
        stats = random_statistics(rng)
        raw = stats.pack()
        assert from_c(CStatistics.from_buffer_copy(raw)) == stats
        # The padding ctdb_statistics_push writes is zero.
        assert raw[100:104] == raw[372:376] == raw[444:448] == bytes(4)


def test_statistics_offsets_spot_checks():
    stats = CtdbStatistics(num_clients=1, keepalive_packets_recv=2, node=NodeOps(req_call=3, req_tunnel=4),
                           client=ClientOps(req_call=5, req_tunnel=6), timeouts=Timeouts(traverse=7),
                           reclock_ctdbd=Latency(8, 0.5, 1.5, 2.5), locks=LockCounters(num_calls=9),
                           total_calls=10, max_hop_count=11, hop_count_bucket=[0] * 15 + [12],
                           num_recoveries=13, statistics_start_time=Timeval(14, 15),
                           statistics_current_time=Timeval(16, 17), total_ro_revokes=18)
    raw = stats.pack()
    u32 = lambda off: struct.unpack_from("<I", raw, off)[0]  # noqa: E731
    assert [u32(o) for o in (0, 32, 36, 68, 72, 84, 96, 104, 168, 280, 304, 368, 440, 484)] == \
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 18]
    assert struct.unpack_from("<ddd", raw, 112) == (0.5, 1.5, 2.5)
    assert struct.unpack_from("<qqqq", raw, 448) == (14, 15, 16, 17)


def test_db_statistics_layout_and_the_key_tail():
    stats = DbStatistics(locks=LockCounters(1, 2, 3, 4, Latency(5, 0.25, 0.75, 1.0), [6] + [0] * 15),
                         vacuum_latency=Latency(7, 1.0, 2.0, 3.0), db_ro_delegations=8, db_ro_revokes=9,
                         hop_count_bucket=[10] + [0] * 14 + [11],
                         hot_keys=[HotKey(12, b"key-a"), HotKey(3, b""), HotKey(2, b"kb")])
    raw = stats.pack()
    assert len(raw) == 464 + 5 + 2
    c = CDbStatistics.from_buffer_copy(raw[:464])
    assert (c.locks.num_calls, c.locks.num_failed, c.locks.latency.num, c.locks.buckets[0]) == (1, 4, 5, 6)
    assert (c.vacuum.num, c.vacuum.total, c.db_ro_delegations, c.db_ro_revokes) == (7, 3.0, 8, 9)
    assert (c.hop_count_bucket[0], c.hop_count_bucket[15]) == (10, 11)
    assert c.num_hot_keys == MAX_HOT_KEYS                        # always ten, as ctdbd sends
    assert [(k.count, k.key.dsize) for k in c.hot_keys] == [(12, 5), (3, 0), (2, 2)] + [(0, 0)] * 7
    assert all(k.key.dptr is None for k in c.hot_keys)          # the pointer field is 0
    assert raw[464:] == b"key-akb"
    assert DbStatistics.unpack(raw) == stats


# -- round trips and hostile input ---------------------------------------------------------------
def test_round_trips():
    rng = random.Random(2)
    for _ in range(50):
        stats = random_statistics(rng)
        assert CtdbStatistics.unpack(stats.pack() + b"trailing") == stats
    entries = [random_statistics(rng) for _ in range(3)]
    raw = StatisticsList(entries).pack()
    assert len(raw) == 8 + 3 * 488 and struct.unpack_from("<i", raw)[0] == 3
    assert StatisticsList.unpack(raw) == StatisticsList(entries)
    assert StatisticsList.unpack(StatisticsList([]).pack()) == StatisticsList([])
    for n in range(MAX_HOT_KEYS + 1):
        db = DbStatistics(hop_count_bucket=[rng.randrange(2**32) for _ in range(16)],
                          hot_keys=[HotKey(rng.randrange(1, 99), os.urandom(rng.randrange(0, 40)))
                                    for _ in range(n)])
        assert DbStatistics.unpack(db.pack()) == db


def test_counters_wrap_as_c_uint32_and_short_bucket_arrays_are_padded():
    stats = CtdbStatistics(num_clients=2**32 + 5, call_latency=Latency(2**31, 0, 0, 0),
                           locks=LockCounters(buckets=[1] * 11), hop_count_bucket=[2, 3])
    back = CtdbStatistics.unpack(stats.pack())
    assert back.num_clients == 5
    assert back.call_latency.num == -2**31          # a C int
    assert back.locks.buckets == [1] * 11 + [0] * 5
    assert back.hop_count_bucket == [2, 3] + [0] * 14


@pytest.mark.parametrize("bad", [
    lambda: CtdbStatistics(num_clients="3").pack(),
    lambda: CtdbStatistics(hop_count_bucket=[0] * 17).pack(),
    lambda: CtdbStatistics(statistics_start_time=Timeval(2**63, 0)).pack(),
    lambda: DbStatistics(hot_keys=[HotKey(1, b"k")] * 11).pack(),
    lambda: DbStatistics(hot_keys=[HotKey(1, "text")]).pack(),
    lambda: CtdbStatistics.unpack(bytes(487)),
    lambda: StatisticsList.unpack(struct.pack("<i4x", 2) + bytes(488)),
    lambda: StatisticsList.unpack(struct.pack("<i4x", -1)),
    lambda: StatisticsList.unpack(bytes(7)),
    lambda: DbStatistics.unpack(bytes(463)),
])
def test_bad_values_and_short_input_raise_protocol_error(bad):
    with pytest.raises(ProtocolError):
        bad()


def test_db_statistics_decoder_refuses_inconsistent_key_tails():
    raw = bytearray(DbStatistics(hot_keys=[HotKey(4, b"abcd")]).pack())
    with pytest.raises(ProtocolError):
        DbStatistics.unpack(raw[:-1])                             # key cut short
    raw[216:220] = struct.pack("<I", 11)                          # num_hot_keys beyond the array
    with pytest.raises(ProtocolError):
        DbStatistics.unpack(raw)


def test_fuzzed_input_never_raises_anything_but_protocol_error():
    rng = random.Random(3)
    base = [CtdbStatistics().pack(), StatisticsList([CtdbStatistics()]).pack(),
            DbStatistics(hot_keys=[HotKey(1, b"x")]).pack()]
    for _ in range(3000):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[:rng.randrange(len(data) + 1)]
        for cls in (CtdbStatistics, StatisticsList, DbStatistics):
            try:
                cls.unpack(bytes(data))
            except ProtocolError:
                pass


# -- the stock tool reads what we encode ---------------------------------------------------------
needs_ctdb = pytest.mark.skipif(not os.path.exists(CTDB), reason=f"{CTDB} (Debian package ctdb) is not installed")


def wire(opcode: int, value):
    """The reply value for the fake's pack_reply: our bytes while protocol/controls.py passes
    these replies through raw, the object once it carries the typed codec."""
    return value.pack() if spec_for(opcode).reply.name == "raw" else value


@pytest.fixture
def fake():
    servers: list[FakeCtdbd] = []

    def make(handlers) -> FakeCtdbd:
        server = FakeCtdbd(0, handlers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def sample_statistics(seed: int = 0) -> CtdbStatistics:
    """Distinct, readable values in every field `ctdb statistics` prints."""
    b = seed * 1000
    return CtdbStatistics(
        num_clients=b + 1, frozen=0, recovering=1, client_packets_sent=b + 4, client_packets_recv=b + 5,
        node_packets_sent=b + 6, node_packets_recv=b + 7, keepalive_packets_sent=b + 8,
        keepalive_packets_recv=b + 9, node=NodeOps(*range(b + 10, b + 19)),
        client=ClientOps(*range(b + 20, b + 24)), timeouts=Timeouts(b + 25, b + 26, b + 27),
        reclock_ctdbd=Latency(2, 0.001, 0.003, 0.004), reclock_recd=Latency(1, 0.5, 0.5, 0.5),
        locks=LockCounters(b + 30, b + 31, b + 32, b + 33, Latency(4, 0.0001, 0.02, 0.04),
                           list(range(1, 12))),
        total_calls=b + 40, pending_calls=b + 41, childwrite_calls=0, pending_childwrite_calls=0,
        memory_used=b + 44, max_hop_count=b + 46, hop_count_bucket=list(range(100, 116)),
        call_latency=Latency(3, 0.001, 0.003, 0.006), num_recoveries=b + 50,
        statistics_start_time=Timeval(1_700_000_000 + seed, 0),
        statistics_current_time=Timeval(1_700_000_000 + seed + 93784, 250_000),
        total_ro_delegations=b + 51, total_ro_revokes=b + 52)


STATS_FIELDS = ["num_clients", "frozen", "recovering", "num_recoveries", "client_packets_sent",
                "client_packets_recv", "node_packets_sent", "node_packets_recv",
                "keepalive_packets_sent", "keepalive_packets_recv", "node.req_call", "node.reply_call",
                "node.req_dmaster", "node.reply_dmaster", "node.reply_error", "node.req_message",
                "node.req_control", "node.reply_control", "node.req_tunnel", "client.req_call",
                "client.req_message", "client.req_control", "client.req_tunnel", "timeouts.call",
                "timeouts.control", "timeouts.traverse", "locks.num_calls", "locks.num_current",
                "locks.num_pending", "locks.num_failed", "total_calls", "pending_calls",
                "childwrite_calls", "pending_childwrite_calls", "memory_used", "max_hop_count",
                "total_ro_delegations", "total_ro_revokes"]


def field_value(stats: CtdbStatistics, name: str) -> int:
    value: object = stats
    for part in name.split("."):
        value = getattr(value, part)
    return value  # type: ignore[return-value]


def c_line(name: str, value: int, nested: bool = False) -> str:
    """One counter line as the tool prints it: printf(" %*s%-22s%*s%10u\\n", ...)."""
    return f" {'    ' if nested else ''}{name:<22}{'' if nested else '    '}{value:>10}\n"


def machine_rows(out: str) -> list[dict[str, str]]:
    lines = out.splitlines()
    header = lines[0].split("|")[:-1]
    return [dict(zip(header, line.split("|")[:-1])) for line in lines[1:]]


def expected_machine_row(s: CtdbStatistics) -> dict[str, str]:
    row = {"CTDB version": "1", "Current time of statistics": str(s.statistics_current_time.sec),
           "Statistics collected since": str(s.statistics_start_time.sec)}
    row.update({name: str(field_value(s, name)) for name in STATS_FIELDS})
    for label, lat in (("reclock_ctdbd", s.reclock_ctdbd), ("reclock_recd", s.reclock_recd),
                       ("call", s.call_latency), ("lockwait", s.locks.latency),
                       ("childwrite", s.childwrite_latency)):
        row.update({f"num_{label}_latency": str(lat.num), f"min_{label}_latency": f"{lat.min:.6f}",
                    f"avg_{label}_latency": f"{lat.avg:.6f}", f"max_{label}_latency": f"{lat.max:.6f}"})
    return row


@needs_ctdb
def test_ctdb_statistics_prints_our_figures(fake):
    stats = sample_statistics()
    server = fake({Control.STATISTICS: lambda b: (0, wire(Control.STATISTICS, stats)),
                   Control.STATISTICS_RESET: lambda b: (0, None)})
    result = server.run("-X", "statistics")
    assert result.returncode == 0, result.stderr
    assert machine_rows(result.stdout) == [expected_machine_row(stats)]

    out = server.run("statistics").stdout
    assert out.startswith("CTDB version 1\n")
    assert "Statistics collected since  : (001 02:03:04)" in out      # 93784 s
    assert c_line("num_clients", 1) + c_line("frozen", 0) + c_line("recovering", 1) in out
    assert " node\n" + c_line("req_call", 10, True) + c_line("reply_call", 11, True) in out
    assert " client\n" + c_line("req_call", 20, True) in out
    assert " timeouts\n" + "".join(c_line(n, v, True) for n, v in
                                    (("call", 25), ("control", 26), ("traverse", 27))) in out
    assert c_line("memory_used", 44) + c_line("max_hop_count", 46) in out
    assert " hop_count_buckets: " + " ".join(str(n) for n in range(100, 116)) + "\n" in out
    assert " lock_buckets: " + " ".join(str(n) for n in range(1, 12)) + " 0 0 0 0 0\n" in out
    assert "locks_latency      MIN/AVG/MAX     0.000100/0.010000/0.020000 sec out of 4" in out
    assert "reclock_ctdbd      MIN/AVG/MAX     0.001000/0.002000/0.003000 sec out of 2" in out
    assert "reclock_recd       MIN/AVG/MAX     0.500000/0.500000/0.500000 sec out of 1" in out
    assert "call_latency       MIN/AVG/MAX     0.001000/0.002000/0.003000 sec out of 3" in out

    assert server.run("statisticsreset").returncode == 0
    assert len(server.controls(Control.STATISTICS_RESET)) == 1


@needs_ctdb
def test_ctdb_stats_prints_the_history_newest_first_and_skips_empty_slots(fake):
    slots = [sample_statistics(seed) for seed in (3, 2, 1)]
    history = StatisticsList(slots + [CtdbStatistics()] * (MAX_STAT_HISTORY - 3))
    server = fake({Control.GET_STAT_HISTORY: lambda b: (0, wire(Control.GET_STAT_HISTORY, history))})
    result = server.run("-X", "stats")
    assert result.returncode == 0, result.stderr
    assert machine_rows(result.stdout) == [expected_machine_row(s) for s in slots]
    out = server.run("stats").stdout
    assert out.count("CTDB version 1\n") == 3
    assert out.index(c_line("num_clients", 3001)) < out.index(c_line("num_clients", 1001))


@needs_ctdb
def test_ctdb_dbstatistics_prints_our_figures_and_hot_keys(fake):
    db_id = 0x7A19D84D
    stats = DbStatistics(
        locks=LockCounters(5, 1, 2, 3, Latency(2, 0.001, 0.003, 0.004), [1, 1] + [0] * 14),
        vacuum_latency=Latency(1, 0.25, 0.25, 0.25), db_ro_delegations=6, db_ro_revokes=7,
        hop_count_bucket=[9, 8, 7] + [0] * 13,
        hot_keys=[HotKey(21, b"\x01\x02key"), HotKey(5, b"k2")])
    server = fake({
        Control.GET_DBMAP: lambda b: (0, DbMap([DbId(db_id, DbFlag(0))])),
        Control.GET_DBNAME: lambda b: (0, "locking.tdb"),
        Control.GET_DB_STATISTICS: lambda b: (0, wire(Control.GET_DB_STATISTICS, stats)),
    })
    for arg in ("locking.tdb", "0x7a19d84d"):
        result = server.run("dbstatistics", arg)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert out.startswith("DB Statistics locking.tdb\n")
        assert c_line("db_ro_delegations", 6) + c_line("db_ro_revokes", 7) + " locks\n" + "".join(
            c_line(n, v, True) for n, v in (("num_calls", 5), ("num_current", 1), ("num_pending", 2),
                                            ("num_failed", 3))) in out
        assert " hop_count_buckets: 9 8 7" + " 0" * 13 + "\n" in out
        assert " lock_buckets: 1 1" + " 0" * 14 + "\n" in out
        assert "locks_latency      MIN/AVG/MAX     0.001000/0.002000/0.003000 sec out of 2" in out
        assert "vacuum_latency     MIN/AVG/MAX     0.250000/0.250000/0.250000 sec out of 1" in out
        assert " Num Hot Keys:     10\n     Count:21 Key:01026b6579\n     Count:5 Key:6b32\n" in out
        assert out.count("     Count:0 Key:\n") == 8
    requested = [struct.unpack("<I", c.data[:4])[0] for c in server.controls(Control.GET_DB_STATISTICS)]
    assert requested == [db_id, db_id]
