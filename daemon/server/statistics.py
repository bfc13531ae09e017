"""The daemon's statistics: what STATISTICS, STATISTICS_RESET, GET_STAT_HISTORY and
GET_DB_STATISTICS answer (`ctdb statistics`, `statisticsreset`, `stats`, `dbstatistics`).

ctdbd (``ctdb/server/ctdb_statistics.c``, ``ctdb_control.c``) keeps two copies of
``struct ctdb_statistics``: one since start or the last STATISTICS_RESET, and one for the
current history slot, which every StatHistoryInterval seconds is pushed to the front of a ring
of MAX_STAT_HISTORY (100) and zeroed. Each database keeps its own ``ctdb_db_statistics``, zeroed
(hot keys too) by STATISTICS_RESET.

In pyctdbd the counters live where the work is done, as cumulative figures that nobody resets:
the migration core's ``CallStatistics`` / ``DbCallStatistics`` (calls, dmaster packets, hop
counts, call latency, hot keys), each database's ``LockStats`` (the store's lock helpers), the
node transport's and the local socket's frame counts by operation (``traffic()``). This service
reads them (*harvests*) at every history tick and whenever asked, and adds what moved since the
previous harvest to two windows of its own: since the reset, and since the last tick. Only what
pyctdbd has no other owner for is counted here (recoveries, timeouts, cluster-lock latencies).

Where the counters come from (ctdbd's counting point in brackets):

- ``node.req_call`` .. ``node.reply_error``, ``client.req_call``, ``total_calls``,
  ``pending_calls``, ``max_hop_count``, ``hop_count_bucket``, ``call_latency``, the read-only
  delegation totals: ``CallStatistics`` (``ctdb_input_pkt``, ``daemon_request_call_from_client``);
- ``node_packets_*``, ``keepalive_packets_*``, ``node.req_message``, ``node.req_control``,
  ``node.reply_control``, ``node.req_tunnel``: the transport's frames by operation (the fast
  channel's heartbeats are REQ_KEEPALIVE packets: they count as keepalives and node packets);
- ``client_packets_*``, ``client.req_message`` / ``req_control`` / ``req_tunnel``: the local
  socket's frames by operation;
- ``locks.*``: the sum over every open database's ``LockStats`` (helper locks, as ctdbd's:
  an uncontended trylock is not a lock "call");
- ``num_clients``, ``frozen``, ``recovering``, ``memory_used`` (resident memory; ctdbd reports
  talloc's total), ``pending_calls``, ``locks.num_current`` / ``num_pending``: read when asked;
- ``num_recoveries``, ``timeouts.*``, ``reclock.ctdbd``, ``reclock.recd``: the daemon reports them
  here (``count_recovery``, ``count_timeout``, ``reclock_latency``, ``recd_reclock_latency``);
- ``childwrite_calls``, ``pending_childwrite_calls``, ``childwrite_latency``: the UPDATE_RECORDs
  this node applied in a child (``ctdb_update_record.c`` ``ctdb_childwrite``: every node of a
  persistent commit counts one), from the persistent-commit service's ``ChildWrites``.

Deviations, all deliberate:

- Counters are exact in every window. Extremes are not always recoverable from cumulative
  figures: a window's ``max_hop_count`` and latency min/max are exact when the window set a new
  all-time extreme (or had nothing before it); otherwise they are the tightest *enclosing*
  values the figures allow (min: the all-time min; max: the all-time max, no more than the
  window's total latency, for hop counts no more than the top of the highest bucket that moved),
  so the reported range always contains the true one.
- A history slot's gauges (clients, frozen, recovering, memory, pending calls and locks) are
  their values when the slot closed; ctdbd leaves them 0 or as in-slot differences.
- After STATISTICS_RESET a database's hot keys are those whose count rose since the reset
  (ctdbd forgets them all and starts again; a key seen before the reset with a higher count
  reappears once its count passes it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..config import Tunables
from ..core.db.callstats import CallStatistics, ChildWrites, DbCallStatistics
from ..log import log
from ..protocol import Operation, Timeval
from ..protocol.statistics import (
    MAX_COUNT_BUCKETS, MAX_HOT_KEYS, MAX_STAT_HISTORY, CtdbStatistics, DbStatistics, HotKey,
    Latency,
)
from ..store.locks import LockStats

#: A net-layer ``traffic()``: frames (sent, received) by operation, cumulative.
Traffic = Callable[[], tuple[Mapping[int, int], Mapping[int, int]]]
LatencyTuple = tuple[int, float, float, float]          # num, min, max, total

#: The history slot of StatHistoryInterval never ticks faster than this (s).
MIN_HISTORY_INTERVAL = 1.0
TIMEOUT_KINDS = ("call", "control", "traverse")
_NODE_OPS = {Operation.REQ_MESSAGE: "node.req_message", Operation.REQ_CONTROL: "node.req_control",
             Operation.REPLY_CONTROL: "node.reply_control", Operation.REQ_TUNNEL: "node.req_tunnel"}
_CLIENT_OPS = {Operation.REQ_MESSAGE: "client.req_message", Operation.REQ_CONTROL: "client.req_control",
               Operation.REQ_TUNNEL: "client.req_tunnel"}
#: ``struct ctdb_statistics`` member -> ``CallStatistics`` attribute, for the call counters.
_CALL_COUNTERS = {name: name.replace(".", "_") for name in (
    "node.req_call", "node.reply_call", "node.req_dmaster", "node.reply_dmaster", "node.reply_error",
    "client.req_call", "total_calls", "total_ro_delegations", "total_ro_revokes")}
#: A maximum and the bucket array that bounds it when the maximum itself did not move.
_BOUNDED_BY = {"max_hop_count": "hop_count_bucket"}
_ATTRIBUTE = {"reclock.ctdbd": "reclock_ctdbd", "reclock.recd": "reclock_recd"}


@dataclass
class Reading:
    """Figures under ``struct ctdb_statistics`` member names: one source's cumulative values,
    or (as a delta) what moved in a window. A latency's min/max mean nothing when num is 0."""

    counters: dict[str, int] = field(default_factory=dict)
    buckets: dict[str, list[int]] = field(default_factory=dict)
    latencies: dict[str, LatencyTuple] = field(default_factory=dict)
    maxima: dict[str, int] = field(default_factory=dict)


def _padded(values: list[int]) -> list[int]:
    return list(values[:MAX_COUNT_BUCKETS]) + [0] * (MAX_COUNT_BUCKETS - len(values))


def call_reading(stats: CallStatistics) -> Reading:
    return Reading(counters={name: getattr(stats, attr) for name, attr in _CALL_COUNTERS.items()},
                   buckets={"hop_count_bucket": _padded(stats.hop_count_bucket)},
                   latencies={"call_latency": (stats.call_latency.num, stats.call_latency.min,
                                               stats.call_latency.max, stats.call_latency.total)},
                   maxima={"max_hop_count": stats.max_hop_count})


def lock_reading(stats: LockStats) -> Reading:
    granted = stats.num_calls - stats.num_failed
    return Reading(counters={"locks.num_calls": stats.num_calls, "locks.num_failed": stats.num_failed},
                   buckets={"locks.buckets": _padded(stats.buckets)},
                   latencies={"locks.latency": (granted, stats.latency_min or 0.0, stats.latency_max,
                                                stats.latency_total)})


def db_call_reading(stats: DbCallStatistics) -> Reading:
    return Reading(counters={"db_ro_delegations": stats.db_ro_delegations,
                             "db_ro_revokes": stats.db_ro_revokes},
                   buckets={"hop_count_bucket": _padded(stats.hop_count_bucket)})


def node_traffic_reading(sent: Mapping[int, int], received: Mapping[int, int]) -> Reading:
    counters = {"node_packets_sent": sum(sent.values()), "node_packets_recv": sum(received.values()),
                "keepalive_packets_sent": sent.get(Operation.REQ_KEEPALIVE, 0),
                "keepalive_packets_recv": received.get(Operation.REQ_KEEPALIVE, 0)}
    counters.update({name: received.get(op, 0) for op, name in _NODE_OPS.items()})
    return Reading(counters=counters)


def client_traffic_reading(sent: Mapping[int, int], received: Mapping[int, int]) -> Reading:
    counters = {"client_packets_sent": sum(sent.values()), "client_packets_recv": sum(received.values())}
    counters.update({name: received.get(op, 0) for op, name in _CLIENT_OPS.items()})
    return Reading(counters=counters)


def went_back(prev: Reading, cur: Reading) -> bool:
    """A cumulative source that shrank was replaced or restarted: count it afresh."""
    return (any(cur.counters.get(k, 0) < v for k, v in prev.counters.items())
            or any(cur.latencies.get(k, (0,))[0] < v[0] for k, v in prev.latencies.items()))


def bucket_top(bucket: int) -> int:
    """The highest hop count ctdbd counts in `bucket` (0; 1; 2..3; 4..7; ...)."""
    return 0 if bucket == 0 else 2 ** bucket - 1


def window_delta(prev: Reading | None, cur: Reading) -> Reading:
    """What moved between two readings of one source (`prev` None: everything in `cur`)."""
    if prev is None:
        return Reading(dict(cur.counters), {k: list(v) for k, v in cur.buckets.items()},
                       {k: v for k, v in cur.latencies.items() if v[0] > 0}, dict(cur.maxima))
    out = Reading()
    # Only what moved: an idle source's delta is empty, and adding it to a window costs nothing.
    out.counters = {k: moved for k, v in cur.counters.items() if (moved := v - prev.counters.get(k, 0))}
    for name, values in cur.buckets.items():
        before = prev.buckets.get(name, [])
        if values != before:
            out.buckets[name] = [v - (before[i] if i < len(before) else 0) for i, v in enumerate(values)]
    for name, (num, low, high, total) in cur.latencies.items():
        p_num, p_low, p_high, p_total = prev.latencies.get(name, (0, 0.0, 0.0, 0.0))
        if num <= p_num:
            continue
        if p_num and high <= p_high:
            high = min(high, total - p_total)       # enclosing: no sample exceeds the window's sum
        out.latencies[name] = (num - p_num, low, high, total - p_total)
    for name, value in cur.maxima.items():
        if value > prev.maxima.get(name, 0):
            out.maxima[name] = value
            continue
        moved = [i for i, n in enumerate(out.buckets.get(_BOUNDED_BY.get(name, ""), [])) if n > 0]
        out.maxima[name] = min(value, bucket_top(moved[-1])) if moved else 0
    return out


class Window:
    """Figures accumulated over one window (since the reset, or since the last history tick)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.counters: dict[str, int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.latencies: dict[str, LatencyTuple] = {}
        self.maxima: dict[str, int] = {}

    def add(self, delta: Reading) -> None:
        for name, value in delta.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        for name, values in delta.buckets.items():
            mine = self.buckets.setdefault(name, [0] * MAX_COUNT_BUCKETS)
            for i, value in enumerate(values[:MAX_COUNT_BUCKETS]):
                mine[i] += value
        for name, (num, low, high, total) in delta.latencies.items():
            if num <= 0:
                continue
            old = self.latencies.get(name)
            if old is None:
                self.latencies[name] = (num, low, high, total)
            else:
                self.latencies[name] = (old[0] + num, min(old[1], low), max(old[2], high), old[3] + total)
        for name, value in delta.maxima.items():
            self.maxima[name] = max(self.maxima.get(name, 0), value)

    def latency(self, name: str) -> Latency:
        num, low, high, total = self.latencies.get(name, (0, 0.0, 0.0, 0.0))
        return Latency(num, low, high, total) if num else Latency()


def _set(stats: object, name: str, value: object) -> None:
    """Set a ``struct ctdb_statistics`` member by its C name (``node.req_call``, ``locks.num_calls``)."""
    *path, last = _ATTRIBUTE.get(name, name).split(".")
    for part in path:
        stats = getattr(stats, part)
    setattr(stats, last, value)


_statm_fd: int | None = None


def resident_memory() -> int:
    """This process's resident memory in bytes (0 if unknown). The file stays open: the history
    reads it every second, and one pread is a third of the system calls of an open-read-close."""
    global _statm_fd
    try:
        if _statm_fd is None:
            _statm_fd = os.open(f"/proc/{os.getpid()}/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(_statm_fd, 128, 0).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _DbBaseline:
    """A database's figures at the last STATISTICS_RESET (and the objects they were read from)."""

    call_source: DbCallStatistics | None
    call: Reading | None
    hot_keys: dict[bytes, int]
    lock_source: LockStats | None
    lock: Reading | None


class Statistics:
    """The daemon's statistics service. Sources are callables, read on demand; all optional."""

    def __init__(self, tunables: Tunables, *, clock: Callable[[], float] = time.time,
                 call_stats: Callable[[], CallStatistics | None] = lambda: None,
                 lock_stats: Callable[[], Mapping[int, LockStats]] = dict,
                 db_call_stats: Callable[[int], DbCallStatistics | None] = lambda db_id: None,
                 db_lock_stats: Callable[[int], LockStats | None] | None = None,
                 db_ids: Callable[[], Iterable[int]] | None = None,
                 node_traffic: Traffic | None = None, client_traffic: Traffic | None = None,
                 num_clients: Callable[[], int] = lambda: 0,
                 frozen: Callable[[], bool] = lambda: False,
                 recovering: Callable[[], bool] = lambda: False,
                 memory_used: Callable[[], int] = resident_memory,
                 childwrites: Callable[[], ChildWrites | None] = lambda: None,
                 align: Callable[[float], float] = lambda when: when) -> None:
        self.tunables = tunables
        self.clock = clock
        self.call_stats = call_stats
        self.lock_stats = lock_stats
        self.db_call_stats = db_call_stats
        self.db_lock_stats = db_lock_stats or (lambda db_id: self.lock_stats().get(db_id))
        self.db_ids = db_ids or (lambda: self.lock_stats().keys())
        self.node_traffic = node_traffic
        self.client_traffic = client_traffic
        self.num_clients = num_clients
        self.frozen = frozen
        self.recovering = recovering
        self.memory_used = memory_used
        self.childwrites = childwrites
        self.align = align           # history slots close on the daemon's heartbeat ticks
        now = clock()
        self._total = Window(now)                    # since start or STATISTICS_RESET
        self._current = Window(now)                  # since the last history tick
        self._history: deque[CtdbStatistics] = deque(maxlen=MAX_STAT_HISTORY)
        self._seen: dict[tuple, tuple[object, Reading]] = {}
        self._db_base: dict[int, _DbBaseline] = {}
        self._slot_failing = False                   # log a failing history slot once, not every second

    # -- what the daemon reports -----------------------------------------------------------------
    def count_recovery(self) -> None:
        """A recovery finished on this node (ctdbd counts it after the "recovered" event)."""
        self._own(Reading(counters={"num_recoveries": 1}))

    def count_timeout(self, kind: str) -> None:
        """A call, control or traverse timed out."""
        if kind not in TIMEOUT_KINDS:
            raise ValueError(f"unknown timeout kind {kind!r}")
        self._own(Reading(counters={f"timeouts.{kind}": 1}))

    def reclock_latency(self, seconds: float) -> None:
        """How long this daemon took to check or take the cluster lock (reclock.ctdbd)."""
        self._reclock("reclock.ctdbd", "ctdbd reclock", seconds)

    def recd_reclock_latency(self, seconds: float) -> None:
        """RECD_RECLOCK_LATENCY: the recovery daemon's cluster-lock latency (reclock.recd)."""
        self._reclock("reclock.recd", "recd reclock", seconds)

    def _reclock(self, name: str, operation: str, seconds: float) -> None:
        seconds = float(seconds)
        self._own(Reading(latencies={name: (1, seconds, seconds, seconds)}))
        limit = self.tunables.get("RecLockLatencyMs")
        if limit and seconds * 1000 > limit:
            log.error("High RECLOCK latency %fs for operation %s", seconds, operation)

    def _own(self, delta: Reading) -> None:
        self._total.add(delta)
        self._current.add(delta)

    # -- STATISTICS, STATISTICS_RESET, GET_STAT_HISTORY ------------------------------------------
    def statistics(self) -> CtdbStatistics:
        """Everything since the daemon started or the last reset."""
        self.harvest()
        return self._build(self._total, self.clock())

    def reset(self) -> None:
        """STATISTICS_RESET: the daemon's and every database's figures start again from zero
        (the current history slot goes on, as in ctdbd)."""
        self.harvest()
        now = self.clock()
        self._total = Window(now)
        self._db_base = {db_id: self._db_baseline(db_id) for db_id in list(self.db_ids())}

    def snapshot(self) -> CtdbStatistics:
        """Close the current history slot: it goes to the front of the history."""
        self.harvest()
        now = self.clock()
        entry = self._build(self._current, now)
        self._history.appendleft(entry)
        self._current = Window(now)
        return entry

    def history(self) -> list[CtdbStatistics]:
        """GET_STAT_HISTORY: MAX_STAT_HISTORY slots, newest first, the unused ones zero (ctdbd's
        answer; `ctdb stats` skips slots whose start time is 0)."""
        return list(self._history) + [CtdbStatistics() for _ in range(MAX_STAT_HISTORY - len(self._history))]

    async def run(self) -> None:
        """Close a history slot every StatHistoryInterval seconds, for the daemon's life."""
        loop = asyncio.get_running_loop()
        while True:
            interval = max(MIN_HISTORY_INTERVAL, float(self.tunables.get("StatHistoryInterval")))
            due = loop.create_future()
            timer = loop.call_at(self.align(loop.time() + interval), due.set_result, None)
            try:
                await due
            finally:
                timer.cancel()
            try:
                self.snapshot()
            except Exception:           # a failing source must not end the history
                if not self._slot_failing:
                    log.exception("statistics history slot failed (logged once until it works again)")
                self._slot_failing = True
            else:
                if self._slot_failing:
                    log.warning("statistics history slots work again")
                self._slot_failing = False

    def harvest(self) -> None:
        """Read every source and add what moved since the last harvest to both windows."""
        readings = self._read_sources()
        for key, (source, cur) in readings.items():
            seen = self._seen.get(key)
            if seen is not None and seen[1] is cur:
                continue                        # an unchanged source (see _read_sources)
            prev = None
            if seen is not None and seen[0] is source and not went_back(seen[1], cur):
                prev = seen[1]
            self._own(window_delta(prev, cur))
        self._seen = readings

    def _read_sources(self) -> dict[tuple, tuple[object, Reading]]:
        out: dict[tuple, tuple[object, Reading]] = {}
        calls = self.call_stats()
        if calls is not None:
            out[("call",)] = (calls, call_reading(calls))
        for db_id, locks in self.lock_stats().items():
            key = ("lock", db_id)
            seen = self._seen.get(key)
            # Every change to a LockStats counts a call: same object, same count, same figures.
            if (seen is not None and seen[0] is locks
                    and seen[1].counters["locks.num_calls"] == locks.num_calls):
                out[key] = seen
            else:
                out[key] = (locks, lock_reading(locks))
        if self.node_traffic is not None:
            out[("node",)] = (None, node_traffic_reading(*self.node_traffic()))
        if self.client_traffic is not None:
            out[("client",)] = (None, client_traffic_reading(*self.client_traffic()))
        writes = self.childwrites()
        if writes is not None:
            lat = writes.latency
            out[("childwrite",)] = (writes, Reading(counters={"childwrite_calls": writes.calls},
                                                   latencies={"childwrite_latency": (lat.num, lat.min, lat.max, lat.total)}))
        return out

    def _build(self, window: Window, now: float) -> CtdbStatistics:
        stats = CtdbStatistics()
        for name, value in window.counters.items():
            _set(stats, name, value)
        for name in window.latencies:
            _set(stats, name, window.latency(name))
        for name, value in window.maxima.items():
            _set(stats, name, value)
        stats.hop_count_bucket = list(window.buckets.get("hop_count_bucket", stats.hop_count_bucket))
        stats.locks.buckets = list(window.buckets.get("locks.buckets", stats.locks.buckets))
        self._gauges(stats)
        stats.statistics_start_time = Timeval.from_seconds(window.start)
        stats.statistics_current_time = Timeval.from_seconds(now)
        return stats

    def _gauges(self, stats: CtdbStatistics) -> None:
        stats.num_clients = self.num_clients()
        stats.frozen = int(bool(self.frozen()))
        stats.recovering = int(bool(self.recovering()))
        stats.memory_used = self.memory_used()
        calls = self.call_stats()
        stats.pending_calls = calls.pending_calls if calls is not None else 0
        writes = self.childwrites()
        stats.pending_childwrite_calls = writes.pending if writes is not None else 0
        for locks in self.lock_stats().values():
            stats.locks.num_current += locks.num_current
            stats.locks.num_pending += locks.num_pending

    # -- GET_DB_STATISTICS -----------------------------------------------------------------------
    def db_statistics(self, db_id: int) -> DbStatistics | None:
        """A database's figures since it was attached or the last reset; None: no such database."""
        calls = self.db_call_stats(db_id)
        locks = self.db_lock_stats(db_id)
        if calls is None and locks is None:
            return None
        base = self._db_base.get(db_id)
        out = DbStatistics()
        if locks is not None:
            prev = base.lock if base is not None and base.lock_source is locks else None
            cur = lock_reading(locks)
            delta = window_delta(None if prev is None or went_back(prev, cur) else prev, cur)
            out.locks.num_calls = delta.counters.get("locks.num_calls", 0)
            out.locks.num_failed = delta.counters.get("locks.num_failed", 0)
            out.locks.num_current = locks.num_current
            out.locks.num_pending = locks.num_pending
            num, low, high, total = delta.latencies.get("locks.latency", (0, 0.0, 0.0, 0.0))
            out.locks.latency = Latency(num, low, high, total) if num else Latency()
            out.locks.buckets = delta.buckets.get("locks.buckets", [0] * MAX_COUNT_BUCKETS)
        if calls is not None:
            same = base is not None and base.call_source is calls
            prev = base.call if same and base is not None else None
            cur = db_call_reading(calls)
            delta = window_delta(None if prev is None or went_back(prev, cur) else prev, cur)
            out.db_ro_delegations = delta.counters.get("db_ro_delegations", 0)
            out.db_ro_revokes = delta.counters.get("db_ro_revokes", 0)
            out.hop_count_bucket = delta.buckets.get("hop_count_bucket", [0] * MAX_COUNT_BUCKETS)
            before = base.hot_keys if same and base is not None else {}
            out.hot_keys = [HotKey(count, bytes(key)) for count, key in calls.hot_keys
                            if count > before.get(bytes(key), 0)][:MAX_HOT_KEYS]
        return out

    def _db_baseline(self, db_id: int) -> _DbBaseline:
        calls = self.db_call_stats(db_id)
        locks = self.db_lock_stats(db_id)
        return _DbBaseline(calls, None if calls is None else db_call_reading(calls),
                           {} if calls is None else {bytes(k): c for c, k in calls.hot_keys},
                           locks, None if locks is None else lock_reading(locks))
