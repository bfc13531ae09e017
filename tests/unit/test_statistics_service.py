"""The statistics service (server/statistics.py) and its controls (controls/statistics.py):
counters harvested from the sources the daemon hands in, STATISTICS_RESET, the history ring,
per-database figures with hot keys, the envelope rule for extremes, and the whole path from the
service through the control handlers to Debian's stock `ctdb` tool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import time

import pytest

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.controls import DOMAINS
from ctdblab.daemon.controls import statistics as controls
from ctdblab.daemon.core.db.callstats import CallStatistics, DbCallStatistics
from ctdblab.daemon.net.local import LocalServer
from ctdblab.daemon.net.transport import NodeTransport
from ctdblab.daemon.protocol import (
    Control, DbFlag, DbId, DbMap, Operation, ReplyControl, ReqControl, ReqKeepalive, ReqMessage,
    Timeval, encode_packet, spec_for,
)
from ctdblab.daemon.protocol.statistics import (
    MAX_STAT_HISTORY, CtdbStatistics, DbStatistics, HotKey, Latency, StatisticsList,
)
from ctdblab.daemon.server import statistics as service_module
from ctdblab.daemon.server.dispatch import Request
from ctdblab.daemon.server.statistics import Reading, Statistics, bucket_top, window_delta
from ctdblab.daemon.store.locks import LockStats
from aio_helpers import until
from test_protocol_real_cli import CTDB, FakeCtdbd

DB = 0x7A19D84D
OTHER_DB = 0x7132C184


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sources:
    """What a daemon hands the service: the migration core's figures, each database's lock
    figures, the transport's and the local socket's frames by operation, and the gauges."""

    def __init__(self) -> None:
        self.calls = CallStatistics()
        self.db_calls: dict[int, DbCallStatistics] = {DB: DbCallStatistics()}
        self.locks: dict[int, LockStats] = {DB: LockStats(), OTHER_DB: LockStats()}
        self.node_sent: dict[int, int] = {}
        self.node_received: dict[int, int] = {}
        self.client_sent: dict[int, int] = {}
        self.client_received: dict[int, int] = {}
        self.clients = 0
        self.recovering = False
        self.clock = Clock()
        self.tunables = Tunables()

    def service(self, **overrides) -> Statistics:
        args = dict(clock=self.clock, call_stats=lambda: self.calls, lock_stats=lambda: self.locks,
                    db_call_stats=self.db_calls.get,
                    node_traffic=lambda: (self.node_sent, self.node_received),
                    client_traffic=lambda: (self.client_sent, self.client_received),
                    num_clients=lambda: self.clients, recovering=lambda: self.recovering,
                    memory_used=lambda: 123456)
        args.update(overrides)
        return Statistics(self.tunables, **args)

    def client_call(self, seconds: float, hops: int, key: bytes = b"k", db_id: int = DB) -> None:
        """What the migration core counts for one client call served after `hops` hops."""
        self.calls.client_req_call += 1
        self.calls.total_calls += 1
        self.calls.call_latency.add(seconds)
        self.calls.count_hops(hops)
        self.db_calls[db_id].count_hops(hops)
        self.db_calls[db_id].note_hot_key(key, hops)    # a hot-key count, as the core reports

    def lock(self, seconds: float, db_id: int = DB, ok: bool = True) -> None:
        self.locks[db_id].record(seconds, ok)

    def node_frame(self, op: int, sent: bool = False) -> None:
        table = self.node_sent if sent else self.node_received
        table[op] = table.get(op, 0) + 1

    def client_frame(self, op: int, sent: bool = False) -> None:
        table = self.client_sent if sent else self.client_received
        table[op] = table.get(op, 0) + 1


@pytest.fixture
def src() -> Sources:
    return Sources()


# -- STATISTICS ----------------------------------------------------------------------------------
def test_a_service_without_sources_answers_zeros_and_its_times():
    clock = Clock(1000.25)
    stats = Statistics(Tunables(), clock=clock, memory_used=lambda: 0)
    clock.now = 1010.5
    s = stats.statistics()
    assert s.statistics_start_time == Timeval(1000, 250000)
    assert s.statistics_current_time == Timeval(1010, 500000)
    assert s.pack()[:440] == bytes(440)          # every counter and latency is zero


def test_counters_come_from_every_source(src):
    stats = src.service()
    for seconds, hops in ((0.002, 0), (0.004, 2), (0.003, 5), (0.001, 17)):
        src.client_call(seconds, hops)
    src.calls.node_req_call, src.calls.node_reply_call, src.calls.node_reply_error = 7, 6, 1
    src.calls.node_req_dmaster, src.calls.node_reply_dmaster, src.calls.pending_calls = 3, 2, 4
    src.lock(0.0005)
    src.lock(0.05, OTHER_DB)
    src.lock(2.5, ok=False)
    src.locks[OTHER_DB].num_current, src.locks[DB].num_pending = 1, 2
    for op in (Operation.REQ_CONTROL, Operation.REQ_CONTROL, Operation.REPLY_CONTROL,
               Operation.REQ_MESSAGE, Operation.REQ_KEEPALIVE, Operation.REQ_TUNNEL, Operation.REQ_CALL):
        src.node_frame(op)
    for op in (Operation.REQ_KEEPALIVE, Operation.REQ_KEEPALIVE, Operation.REQ_CONTROL):
        src.node_frame(op, sent=True)
    for op in (Operation.REQ_CONTROL, Operation.REQ_MESSAGE, Operation.REQ_CALL, Operation.REQ_TUNNEL):
        src.client_frame(op)
    src.client_frame(Operation.REPLY_CONTROL, sent=True)
    src.clients, src.recovering = 3, True

    s = stats.statistics()
    assert (s.num_clients, s.frozen, s.recovering, s.memory_used) == (3, 0, 1, 123456)
    assert (s.node.req_call, s.node.reply_call, s.node.req_dmaster, s.node.reply_dmaster,
            s.node.reply_error) == (7, 6, 3, 2, 1)
    assert (s.node.req_message, s.node.req_control, s.node.reply_control, s.node.req_tunnel) == (1, 2, 1, 1)
    assert (s.node_packets_recv, s.node_packets_sent) == (7, 3)
    assert (s.keepalive_packets_recv, s.keepalive_packets_sent) == (1, 2)
    assert (s.client_packets_recv, s.client_packets_sent) == (4, 1)
    assert (s.client.req_call, s.client.req_message, s.client.req_control, s.client.req_tunnel) == (4, 1, 1, 1)
    assert (s.total_calls, s.pending_calls, s.max_hop_count) == (4, 4, 17)
    assert s.hop_count_bucket[:6] == [1, 0, 1, 1, 0, 1]       # 0 | 2 | 5 | 17
    assert s.call_latency == Latency(4, 0.001, 0.004, pytest.approx(0.010))
    assert (s.locks.num_calls, s.locks.num_failed, s.locks.num_current, s.locks.num_pending) == (3, 1, 1, 2)
    assert s.locks.buckets == [1, 0, 1] + [0] * 13      # <1 ms, <100 ms; the failure is not bucketed
    assert s.locks.latency == Latency(2, 0.0005, 0.05, pytest.approx(0.0505))
    assert CtdbStatistics.unpack(s.pack()) == s


def test_events_the_daemon_reports(src, caplog):
    stats = src.service()
    stats.count_recovery()
    stats.count_recovery()
    stats.count_timeout("control")
    stats.count_timeout("traverse")
    with pytest.raises(ValueError):
        stats.count_timeout("lunch")
    stats.reclock_latency(0.002)
    stats.reclock_latency(0.004)
    with caplog.at_level(logging.ERROR, logger="ctdblab"):
        stats.recd_reclock_latency(1.5)              # above RecLockLatencyMs (1000)
    assert "High RECLOCK latency 1.500000s for operation recd reclock" in caplog.text
    s = stats.statistics()
    assert s.num_recoveries == 2
    assert (s.timeouts.call, s.timeouts.control, s.timeouts.traverse) == (0, 1, 1)
    assert s.reclock_ctdbd == Latency(2, 0.002, 0.004, pytest.approx(0.006))
    assert s.reclock_recd == Latency(1, 1.5, 1.5, 1.5)


def test_reset_starts_every_counter_again(src):
    stats = src.service()
    src.client_call(0.010, 9)
    src.node_frame(Operation.REQ_CONTROL)
    src.lock(0.2)
    stats.count_recovery()
    src.clock.now += 50
    stats.reset()
    reset_at = src.clock.now
    s = stats.statistics()
    assert s.statistics_start_time == Timeval.from_seconds(reset_at)
    assert (s.total_calls, s.node.req_control, s.locks.num_calls, s.num_recoveries, s.max_hop_count) == (0,) * 5
    assert s.call_latency == Latency() and s.hop_count_bucket == [0] * 16
    src.client_call(0.020, 1)
    src.node_frame(Operation.REQ_CONTROL)
    s = stats.statistics()
    assert (s.total_calls, s.node.req_control, s.hop_count_bucket[1]) == (1, 1, 1)
    assert s.call_latency == Latency(1, 0.010, 0.020, pytest.approx(0.020))


def test_extremes_after_a_reset_enclose_the_truth_and_are_exact_on_a_new_record(src):
    stats = src.service()
    src.client_call(0.500, 40)          # all-time extremes before the reset
    src.client_call(0.001, 1)
    stats.reset()
    src.client_call(0.003, 5)
    src.client_call(0.004, 6)
    s = stats.statistics()
    # Truth: min 0.003, max 0.004, max hops 6.
    assert s.call_latency.num == 2 and s.call_latency.total == pytest.approx(0.007)
    assert s.call_latency.min <= 0.003 and s.call_latency.max >= 0.004
    assert s.call_latency.max <= s.call_latency.total      # no more than the window's total
    assert 6 <= s.max_hop_count <= 7             # bucket 3 (4..7), below the all-time 40
    src.client_call(0.900, 50)                   # new all-time records: exact
    s = stats.statistics()
    assert (s.call_latency.max, s.max_hop_count) == (0.900, 50)


@pytest.mark.parametrize("hops,expected", [(0, 0), (3, 3), (4, 7), (16, 31), (63, 63)])
def test_window_max_hop_count_from_buckets(hops, expected):
    calls = CallStatistics()
    calls.count_hops(100)
    before = service_module.call_reading(calls)
    calls.count_hops(hops)
    delta = window_delta(before, service_module.call_reading(calls))
    assert delta.maxima["max_hop_count"] == expected
    assert [bucket_top(b) for b in range(4)] == [0, 1, 3, 7]


def test_a_replaced_or_vanished_source_never_counts_backwards(src):
    stats = src.service()
    src.client_call(0.001, 1)
    src.lock(0.001, OTHER_DB)
    assert stats.statistics().total_calls == 1
    src.calls = CallStatistics()                 # the core was recreated
    src.client_call(0.001, 1)
    del src.locks[OTHER_DB]                      # the database was detached
    s = stats.statistics()
    assert (s.total_calls, s.locks.num_calls) == (2, 1)
    reading = Reading(counters={"total_calls": 5})
    assert service_module.went_back(reading, Reading(counters={"total_calls": 4}))


# -- GET_STAT_HISTORY ----------------------------------------------------------------------------
def test_history_slots_hold_what_happened_in_them_newest_first(src):
    stats = src.service()
    start = src.clock.now
    assert stats.history() == [CtdbStatistics()] * MAX_STAT_HISTORY
    for calls in (1, 2, 3):
        for _ in range(calls):
            src.client_call(0.001 * calls, calls)
        src.clock.now += 1
        stats.snapshot()
    history = stats.history()
    assert len(history) == MAX_STAT_HISTORY and history[3:] == [CtdbStatistics()] * 97
    assert [h.total_calls for h in history[:3]] == [3, 2, 1]
    assert [h.max_hop_count for h in history[:3]] == [3, 2, 1]
    assert [h.statistics_start_time.sec for h in history[:3]] == [start + 2, start + 1, start]
    assert [h.statistics_current_time.sec for h in history[:3]] == [start + 3, start + 2, start + 1]
    # Slot 3's samples were all 0.003: max is exact (a new all-time max), min encloses (the
    # all-time min: the cumulative figures cannot tell more).
    assert history[0].call_latency == Latency(3, 0.001, 0.003, pytest.approx(0.009))
    assert history[2].call_latency == Latency(1, 0.001, 0.001, 0.001)      # the first slot: exact
    assert history[0].num_clients == src.clients
    # A reset leaves the current slot alone (as ctdbd); the totals still count everything.
    src.client_call(0.001, 1)
    stats.reset()
    src.client_call(0.001, 1)
    assert stats.snapshot().total_calls == 2
    assert stats.statistics().total_calls == 1


def test_the_ring_keeps_the_last_hundred_slots(src):
    stats = src.service()
    for i in range(MAX_STAT_HISTORY + 5):
        src.clock.now += 1
        stats.count_timeout("call")
        stats.snapshot()
    history = stats.history()
    assert len(history) == MAX_STAT_HISTORY
    assert history[-1].statistics_start_time.sec == int(src.clock.now) - MAX_STAT_HISTORY
    assert all(h.timeouts.call == 1 for h in history)


def test_run_closes_a_slot_every_interval_and_survives_a_failing_source(src, monkeypatch):
    monkeypatch.setattr(service_module, "MIN_HISTORY_INTERVAL", 0.01)
    src.tunables.set("StatHistoryInterval", 0)
    fail = {"on": True}

    def calls():
        if fail["on"]:
            fail["on"] = False
            raise RuntimeError("source broke")
        return src.calls

    stats = src.service(call_stats=calls)

    async def main():
        task = asyncio.create_task(stats.run())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    filled = [h for h in stats.history() if h.statistics_start_time.sec]
    assert len(filled) >= 3


# -- GET_DB_STATISTICS ---------------------------------------------------------------------------
def test_db_statistics(src):
    stats = src.service()
    assert stats.db_statistics(0xDEAD) is None
    src.client_call(0.001, 3, key=b"a")
    src.client_call(0.001, 20, key=b"b")
    src.lock(0.003)
    src.lock(0.5, OTHER_DB)
    src.locks[DB].num_current = 1
    db = stats.db_statistics(DB)
    assert db.hop_count_bucket[:6] == [0, 0, 1, 0, 0, 1]       # 3 -> bucket 2, 20 -> bucket 5
    assert db.hot_keys == [HotKey(3, b"a"), HotKey(20, b"b")]     # smallest first, as ctdbd
    assert (db.locks.num_calls, db.locks.num_current, db.locks.buckets[1]) == (1, 1, 1)
    assert db.locks.latency == Latency(1, 0.003, 0.003, 0.003)
    other = stats.db_statistics(OTHER_DB)        # lock figures only: no migration core entry
    assert other.locks.num_calls == 1 and other.hot_keys == [] and other.hop_count_bucket == [0] * 16
    assert DbStatistics.unpack(db.pack()) == db


def test_db_statistics_after_a_reset(src):
    stats = src.service()
    src.client_call(0.001, 3, key=b"a")
    src.client_call(0.001, 20, key=b"b")
    src.lock(0.003)
    stats.reset()
    db = stats.db_statistics(DB)
    assert db.hot_keys == [] and db.hop_count_bucket == [0] * 16 and db.locks.num_calls == 0
    src.client_call(0.001, 9, key=b"a")          # a rose past its old count: back in the table
    src.client_call(0.001, 2, key=b"c")          # a new key
    src.client_call(0.001, 5, key=b"b")          # below its old 20: not known to be hot since
    src.lock(0.02)
    db = stats.db_statistics(DB)
    assert db.hot_keys == [HotKey(2, b"c"), HotKey(9, b"a")]
    assert db.hop_count_bucket[:5] == [0, 0, 1, 1, 1]          # 2, 5 and 9 hops
    assert db.locks.num_calls == 1 and db.locks.latency.num == 1


# -- the controls --------------------------------------------------------------------------------
class Ctx:
    def __init__(self, statistics: Statistics) -> None:
        self.statistics = statistics


def request(opcode: int, data: bytes = b"") -> Request:
    return Request(opcode, 0, 0, 0, data, src=0)


def test_control_handlers(src):
    stats = src.service()
    ctx = Ctx(stats)
    src.client_call(0.001, 1)
    res = controls.statistics(ctx, request(Control.STATISTICS))
    assert res.status == 0 and len(res.data) == 488
    assert CtdbStatistics.unpack(res.data).total_calls == 1
    assert controls.statistics_reset(ctx, request(Control.STATISTICS_RESET)).status == 0
    assert stats.statistics().total_calls == 0
    stats.snapshot()
    res = controls.get_stat_history(ctx, request(Control.GET_STAT_HISTORY))
    assert res.status == 0 and len(res.data) == 8 + MAX_STAT_HISTORY * 488
    assert StatisticsList.unpack(res.data).stats[0].total_calls == 1
    res = controls.get_db_statistics(ctx, request(Control.GET_DB_STATISTICS, struct.pack("<I", DB)))
    assert res.status == 0 and DbStatistics.unpack(res.data).hot_keys == []      # reset
    res = controls.get_db_statistics(ctx, request(Control.GET_DB_STATISTICS, struct.pack("<I", 0xDEAD)))
    assert (res.status, res.errmsg) == (-1, "Unknown db_id 0x0000dead in get_db_statistics")
    res = controls.recd_reclock_latency(ctx, request(Control.RECD_RECLOCK_LATENCY, struct.pack("<d", 0.25)))
    assert res.status == 0 and stats.statistics().reclock_recd == Latency(1, 0.25, 0.25, 0.25)
    assert set(controls.HANDLERS) == {Control.STATISTICS, Control.STATISTICS_RESET,
                                      Control.GET_STAT_HISTORY, Control.GET_DB_STATISTICS,
                                      Control.RECD_RECLOCK_LATENCY}


def test_the_statistics_domain_clashes_with_no_other_domain():
    others = [d for d in DOMAINS if d is not controls]
    taken = {opcode for d in others for opcode in d.HANDLERS}
    assert taken & set(controls.HANDLERS) == set()


@pytest.mark.skipif(not os.path.exists(CTDB), reason=f"{CTDB} (Debian package ctdb) is not installed")
def test_the_stock_tool_prints_what_the_service_counted(src):
    """Service -> control handler -> bytes -> Debian's ctdb: the figures arrive unchanged."""
    stats = src.service()
    ctx = Ctx(stats)
    for seconds, hops in ((0.002, 1), (0.004, 4)):
        src.client_call(seconds, hops, key=b"hot")
    src.node_frame(Operation.REQ_CONTROL)
    src.lock(0.03)
    stats.snapshot()

    def via(handler):
        """The fake answers with our handler's result (re-decoded if the control's reply spec
        is typed, since the fake encodes the value itself)."""
        def answer(body):
            res = handler(ctx, Request(body.opcode, body.flags, body.srvid, body.client_id, body.data, 0))
            codec = spec_for(body.opcode).reply
            return res.status, res.data if codec.name == "raw" else codec.unpack(res.data)
        return answer

    server = FakeCtdbd(0, {
        Control.STATISTICS: via(controls.statistics),
        Control.GET_STAT_HISTORY: via(controls.get_stat_history),
        Control.GET_DB_STATISTICS: via(controls.get_db_statistics),
        Control.GET_DBMAP: lambda b: (0, DbMap([DbId(DB, DbFlag(0))])),
        Control.GET_DBNAME: lambda b: (0, "locking.tdb"),
    })
    try:
        out = server.run("-X", "statistics").stdout.splitlines()
        row = dict(zip(out[0].split("|"), out[1].split("|")))
        assert (row["total_calls"], row["max_hop_count"], row["node.req_control"]) == ("2", "4", "1")
        assert (row["locks.num_calls"], row["num_call_latency"], row["max_call_latency"]) == ("1", "2", "0.004000")
        assert row["memory_used"] == "123456"
        out = server.run("-X", "stats").stdout.splitlines()
        assert len(out) == 2 and dict(zip(out[0].split("|"), out[1].split("|")))["total_calls"] == "2"
        out = server.run("dbstatistics", "locking.tdb").stdout
        assert " hop_count_buckets: 0 1 0 1" + " 0" * 12 + "\n" in out       # 1 and 4 hops
        assert "     Count:4 Key:686f74\n" in out and out.count("Count:") == 10
    finally:
        server.close()


# -- the net layer's frame counts (traffic()) -----------------------------------------------------
def test_transport_counts_frames_by_operation_heartbeats_as_keepalives():
    async def main():
        a_, b_ = random.randint(100, 250), random.randint(1, 250)
        addrs = [f"127.{a_}.{b_}.1", f"127.{a_}.{b_}.2"]
        port = random.randint(20000, 60000)
        ups: list[int] = []
        got: list[bytes] = []
        a = NodeTransport(0, addrs, port, lambda p, f: None, ups.append, lambda p, r: None, lambda m: None)
        b = NodeTransport(1, addrs, port, lambda p, f: got.append(f), ups.append, lambda p, r: None,
                          lambda m: None)
        await a.start()
        await b.start()
        try:
            await until(lambda: sorted(ups) == [0, 1])
            assert a.send(1, encode_packet(ReqMessage(0x1234, b"x"), destnode=1, srcnode=0, reqid=1))
            assert a.send(1, encode_packet(ReqControl(Control.GET_PNN), destnode=1, srcnode=0, reqid=2))
            assert a.send_fast(1, encode_packet(ReqKeepalive(1, 0), destnode=1, srcnode=0, reqid=0))
            await until(lambda: len(got) == 2)
            await asyncio.sleep(0.05)
            assert len(b.drain_fast(asyncio.get_running_loop().time() - time.time())) == 1
            m, c, k = Operation.REQ_MESSAGE, Operation.REQ_CONTROL, Operation.REQ_KEEPALIVE
            assert a.traffic() == ({m: 1, c: 1, k: 1}, {})
            assert b.traffic() == ({}, {m: 1, c: 1, k: 1})
        finally:
            await a.close()
            await b.close()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_local_server_counts_frames_by_operation(tmp_path):
    async def main():
        path = str(tmp_path / "s.sock")
        server = LocalServer(path, lambda c, f: c.send(encode_packet(
            ReplyControl(0), destnode=0, srcnode=0, reqid=1)), lambda c: None, lambda m: None)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(encode_packet(ReqControl(Control.GET_PNN), destnode=0, srcnode=0, reqid=1, pad=False))
        writer.write(encode_packet(ReqMessage(5, b"abc"), destnode=0, srcnode=0, reqid=2))
        await until(lambda: server.traffic()[0].get(Operation.REPLY_CONTROL) == 2)
        assert server.traffic() == ({Operation.REPLY_CONTROL: 2},
                                    {Operation.REQ_CONTROL: 1, Operation.REQ_MESSAGE: 1})
        writer.close()
        await server.close()
    asyncio.run(asyncio.wait_for(main(), 20))
