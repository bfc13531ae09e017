"""Vacuuming: the decisions (core/db/vacuum.py) and the service's runs over real TDB files on
three in-process nodes (server/vacuum.py), TRY_DELETE_RECORDS and VACUUM_FETCH between them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ctdblab.daemon.core.db.ltdbrules import MIGRATED_WITH_DATA, lmaster_of
from ctdblab.daemon.core.db.ltdbrules import store as ltdb_store
from ctdblab.daemon.core.db.migration import (
    DbAttached, MigrationCore, MigrationSettings, PeerPacket, ScheduleForDeletion, SendPacket,
    UnscheduleDeletion,
)
from ctdblab.daemon.core.db.vacuum import (
    DeleteQueue, Triage, may_delete_copy, may_delete_here, triage,
)
from ctdblab.daemon.net.rpc import ControlError
from ctdblab.daemon.protocol import Control, LtdbHeader, RecBuffer, ReplyControl
from ctdblab.daemon.protocol.constants import CallFlag, CallFunc, RecordFlag
from ctdblab.daemon.protocol.packets import ReplyDmaster, ReqCall
from ctdblab.daemon.protocol.types import VnnMap
from ctdblab.daemon.server.vacuum import VacuumService
from ctdblab.daemon.store import DbDirs, DbKind, Store

ME, OTHER = 0, 1


def h(rsn: int, dmaster: int, flags: int = 0) -> LtdbHeader:
    return LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags)


# -- decisions ---------------------------------------------------------------------------------
def test_triage_of_queued_records():
    queued = h(5, ME)
    assert triage(queued, (h(5, ME), b""), ME, lmaster=ME) is Triage.DELETE_NOW
    assert triage(h(5, ME, MIGRATED_WITH_DATA), (h(5, ME, MIGRATED_WITH_DATA), b""), ME, ME) is Triage.DELETE_LIST
    assert triage(queued, (h(5, ME), b""), ME, lmaster=OTHER) is Triage.TO_LMASTER
    # revived with data, migrated away, migrated and back (rsn moved), gone, read-only, no vnnmap
    assert triage(queued, (h(5, ME), b"data"), ME, ME) is Triage.SKIP
    assert triage(queued, (h(5, OTHER), b""), ME, ME) is Triage.SKIP
    assert triage(queued, (h(7, ME), b""), ME, ME) is Triage.SKIP
    assert triage(queued, None, ME, ME) is Triage.SKIP
    assert triage(queued, (h(5, ME, int(RecordFlag.RO_HAVE_DELEGATIONS)), b""), ME, ME) is Triage.SKIP
    assert triage(queued, (h(5, ME), b""), ME, None) is Triage.SKIP


def test_a_copy_elsewhere_may_go_unless_it_is_newer_the_dmaster_or_the_lmaster():
    sent = h(5, OTHER)
    assert may_delete_copy(sent, (h(3, OTHER), b"stale data"), ME, lmaster=OTHER)
    assert may_delete_copy(sent, None, ME, lmaster=OTHER)
    assert not may_delete_copy(sent, (h(6, OTHER), b""), ME, lmaster=OTHER)       # newer here
    assert not may_delete_copy(sent, (h(3, ME), b""), ME, lmaster=OTHER)          # we are dmaster
    assert not may_delete_copy(sent, (h(3, OTHER), b""), ME, lmaster=ME)          # we are lmaster
    assert not may_delete_copy(h(5, OTHER, int(RecordFlag.RO_HAVE_READONLY)), None, ME, OTHER)
    assert may_delete_here(h(5, ME), (h(5, ME), b""), ME, ME)
    assert not may_delete_here(h(5, ME), (h(5, ME), b""), ME, OTHER)


def test_the_delete_queue_is_bounded_and_keeps_the_latest_schedule():
    q = DeleteQueue(limit=3)
    for i in range(5):
        q.add(b"k%d" % i, h(i, ME))
    assert len(q) == 3 and q.dropped == 2 and b"k0" not in q
    q.add(b"k2", h(9, ME))
    assert [(k, hd.rsn) for k, hd in q.take(10)] == [(b"k3", 3), (b"k4", 4), (b"k2", 9)]
    assert len(q) == 0


@pytest.mark.parametrize("case, header, data, pnn, lmaster, expected", [
    # (keep, schedule, unschedule), as ctdb_ltdb_store_server decides keep / schedule_for_deletion
    # / remove_from_delete_queue
    ("lmaster gives an empty record away", h(3, 1), b"", 0, 0, (True, False, True)),
    ("dmaster stores data", h(3, 0), b"x", 0, 1, (True, False, True)),
    ("dmaster stores it empty", h(3, 0), b"", 0, 1, (True, True, False)),
    ("initial store at the lmaster", h(0, 0, RecordFlag.AUTOMATIC), b"", 0, 0, (True, True, False)),
    ("an empty copy leaves a node that is not its lmaster", h(3, 2), b"", 0, 1, (False, False, False)),
    ("no vnnmap: stored as is", h(3, 2), b"", 0, None, (True, False, False)),
])
def test_a_kept_store_that_is_not_scheduled_leaves_the_queue(case, header, data, pnn, lmaster, expected):
    stored = ltdb_store(header, data, pnn=pnn, lmaster=lmaster, persistent=False)
    assert (stored.keep, stored.schedule_for_deletion, stored.unschedule) == expected, case


def test_the_core_grant_leaves_nothing_for_the_lmasters_vacuum():
    """The lmaster's grant of a missing record: its initial store goes on the queue and the
    store that gives the record away takes it off (ctdbd's remove_from_delete_queue), so no run
    looks at a record whose dmaster is elsewhere by then."""
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(7, [0, 1, 2]))
    core.step(DbAttached(0x1234, "locking.tdb", False))
    key = keys_with_lmaster(0, 1)[0]
    call = ReqCall(flags=CallFlag.IMMEDIATE_MIGRATION, db_id=0x1234, callid=CallFunc.NULL_FUNC,
                   hopcount=0, key=key)
    actions = core.step(PeerPacket(1, 5, 7, call), None, 0.0)
    queue = DeleteQueue()
    for action in actions:
        if isinstance(action, ScheduleForDeletion):
            queue.add(action.key, action.header)
        elif isinstance(action, UnscheduleDeletion):
            queue.discard(action.key)
    assert any(isinstance(a, ScheduleForDeletion) for a in actions)      # the initial store
    assert any(isinstance(a, SendPacket) and isinstance(a.body, ReplyDmaster) for a in actions)
    assert len(queue) == 0


# -- the service on three nodes ------------------------------------------------------------------
class Net:
    """Controls between the nodes' vacuum services; VACUUM_FETCH sends are recorded."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.fetches: list[tuple[int, int, RecBuffer]] = []     # (from, to, records)
        self.down: set[int] = set()


class Messenger:
    def __init__(self, net: Net, pnn: int) -> None:
        self.net = net
        self.pnn = pnn

    def active_peers(self) -> list[int]:
        return [p for p in self.net.nodes if p != self.pnn and p not in self.net.down]

    async def control(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0,
                      timeout: float = 10.0) -> ReplyControl:
        if pnn in self.net.down:
            raise ControlError(f"node {pnn} is not connected")
        assert opcode == Control.TRY_DELETE_RECORDS
        kept = await self.net.nodes[pnn].vacuum.try_delete_records(RecBuffer.unpack(data))
        return ReplyControl(0, kept.pack(), "")

    def send_noreply(self, pnn: int, opcode: int, data: bytes = b"", *, srvid: int = 0, flags: int = 0) -> bool:
        assert opcode == Control.VACUUM_FETCH
        self.net.fetches.append((self.pnn, pnn, RecBuffer.unpack(data)))
        return True


class Calls:
    """Stands in for record_calls: the daemon's own migration calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes, int, int]] = []
        self.forgotten: list[bytes] = []
        self.clock = time.monotonic

    def daemon_call(self, caller, db_id: int, key: bytes, callid: int, flags: int) -> None:
        self.calls.append((db_id, key, callid, flags))

    def forget_settled(self, db_id: int, key: bytes) -> None:
        self.forgotten.append(key)


class Node:
    def __init__(self, net: Net, pnn: int, root: Path) -> None:
        for sub in ("v", "p", "s"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.pnn = pnn
        self.store = Store(DbDirs(str(root / "v"), str(root / "p"), str(root / "s")), pnn)
        self.db = self.store.attach("locking.tdb", DbKind.VOLATILE)
        self.calls = Calls()
        self.vacuum = VacuumService(
            pnn, lambda db_id: self.db if db_id == self.db.db_id else None, lambda db_id: True,
            Messenger(net, pnn), self.calls, lmasters=lambda: (0, 1, 2),
            active_peers=Messenger(net, pnn).active_peers, interval=lambda: 10.0,
            buffer_limit=lambda: 1_000_000, spawn=lambda coro, name: asyncio.ensure_future(coro))

    def put(self, key: bytes, header: LtdbHeader, data: bytes = b"") -> None:
        self.db.tdb.store_ltdb(key, header, data)

    def has(self, key: bytes) -> bool:
        return self.db.tdb.fetch_ltdb(key) is not None


@pytest.fixture
def net(tmp_path):
    net = Net()
    for p in range(3):
        net.nodes[p] = Node(net, p, tmp_path / f"n{p}")
    yield net
    for node in net.nodes.values():
        node.store.close()


def keys_with_lmaster(lmaster: int, count: int) -> list[bytes]:
    found = []
    i = 0
    while len(found) < count:
        key = b"key-%d" % i
        if lmaster_of(key, (0, 1, 2)) == lmaster:
            found.append(key)
        i += 1
    return found


def test_a_run_deletes_what_may_go_and_keeps_what_must_stay(net):
    async def main():
        n0, n1, n2 = net.nodes[0], net.nodes[1], net.nodes[2]
        plain, migrated, newer_elsewhere, revived = keys_with_lmaster(0, 4)
        remote = keys_with_lmaster(1, 1)[0]
        mwd = int(RecordFlag.MIGRATED_WITH_DATA)
        # Node 0 is lmaster and dmaster of all four, each deleted by smbd (empty, queued).
        for key in (plain, migrated, newer_elsewhere, revived):
            flags = 0 if key == plain else mwd
            n0.put(key, h(5, 0, flags))
            n0.vacuum.schedule(n0.db.db_id, key, h(5, 0, flags))
        # Stale copies elsewhere; one node holds a newer copy of `newer_elsewhere`.
        n1.put(migrated, h(3, 0, mwd), b"old value")
        n2.put(migrated, h(4, 0, mwd), b"")
        n1.put(newer_elsewhere, h(9, 1, mwd), b"")
        n0.put(revived, h(5, 0, mwd), b"written again")          # smbd wrote it again
        # Node 0 is dmaster, node 1 lmaster: goes to node 1 by VACUUM_FETCH.
        n0.put(remote, h(2, 0))
        n0.vacuum.schedule(n0.db.db_id, remote, h(2, 0))

        await n0.vacuum.run_now(n0.db.db_id)

        assert not n0.has(plain)                                       # never left: deleted at once
        assert not any(n.has(migrated) for n in (n0, n1, n2))          # every copy gone, lmaster's last
        assert n0.has(newer_elsewhere) and n1.has(newer_elsewhere)     # node 1 refused: kept everywhere
        assert n0.db.tdb.fetch_ltdb(revived)[1] == b"written again"    # revived: untouched
        assert n0.has(remote)                                          # the lmaster's job now
        assert [(src, dst, [bytes(r.key) for r in rb.records]) for src, dst, rb in net.fetches] == \
            [(0, 1, [remote])]
        c = n0.vacuum.counters
        assert (c.deleted, c.kept_remotely, c.sent_to_lmaster) == (2, 1, 1)
        assert len(n0.vacuum.queues[n0.db.db_id]) == 0

        # The lmaster migrates what it was sent to itself with VACUUM_MIGRATION.
        n1.vacuum.vacuum_fetch(net.fetches[0][2])
        (db_id, key, callid, flags), = n1.calls.calls
        assert key == remote and flags & CallFlag.VACUUM_MIGRATION and flags & CallFlag.IMMEDIATE_MIGRATION
    asyncio.run(main())


def test_a_busy_record_stays_queued_and_an_unreachable_node_deletes_nothing(net):
    async def main():
        n0, n1 = net.nodes[0], net.nodes[1]
        busy, shared = keys_with_lmaster(0, 2)
        mwd = int(RecordFlag.MIGRATED_WITH_DATA)
        n0.put(busy, h(5, 0))
        n0.vacuum.schedule(n0.db.db_id, busy, h(5, 0))
        n0.put(shared, h(5, 0, mwd))
        n1.put(shared, h(3, 0, mwd), b"old")
        n0.vacuum.schedule(n0.db.db_id, shared, h(5, 0, mwd))
        # Another holder of the database's locks (in one process they share one turn, see
        # store/locks.py): the run waits for nothing and queues both again.
        lock = n0.db.try_lock(busy)
        net.down.add(2)                      # not active: not asked
        try:
            await n0.vacuum.run_now(n0.db.db_id)
        finally:
            lock.release()
        assert n0.has(busy) and n0.has(shared) and n1.has(shared)
        assert busy in n0.vacuum.queues[n0.db.db_id] and n0.vacuum.counters.busy == 2
        await n0.vacuum.run_now(n0.db.db_id)
        assert not n0.has(busy) and not n0.has(shared) and not n1.has(shared)

        # A peer that fails TRY_DELETE_RECORDS: nothing is deleted here.
        other = keys_with_lmaster(0, 3)[2]
        n0.put(other, h(5, 0, mwd))
        n0.vacuum.schedule(n0.db.db_id, other, h(5, 0, mwd))
        net.down.discard(2)

        async def failing(*args, **kwargs):
            raise ControlError("timed out")
        n0.vacuum.messenger.control = failing
        await n0.vacuum.run_now(n0.db.db_id)
        assert n0.has(other)
    asyncio.run(main())


def test_a_full_run_finds_the_tombstones_nobody_scheduled(net):
    async def main():
        n0 = net.nodes[0]
        mine = keys_with_lmaster(0, 3)
        n0.put(mine[0], h(4, 0))                       # a tombstone left from before a restart
        n0.put(mine[1], h(4, 0), b"alive")             # a live record: stays
        n0.put(mine[2], h(4, 1))                       # empty, but node 1 is its dmaster: not ours
        n0.vacuum.watch(n0.db.db_id)
        await n0.vacuum.run_now(n0.db.db_id)           # a fast run knows nothing to do
        assert n0.has(mine[0])
        await n0.vacuum.run_now(n0.db.db_id, full=True)
        assert not n0.has(mine[0]) and n0.has(mine[1]) and n0.has(mine[2])
        c = n0.vacuum.counters
        assert (c.full_runs, c.found_by_full_runs, c.deleted) == (1, 1, 1)
    asyncio.run(main())


def test_an_idle_database_gets_its_full_run_every_fast_path_count_intervals(net):
    async def main():
        n0 = net.nodes[0]
        n0.vacuum.fast_path_count = lambda: 3
        n0.vacuum.watch(n0.db.db_id)
        key = keys_with_lmaster(0, 1)[0]
        n0.put(key, h(4, 0))                           # not scheduled
        for t in (0.0, 10.0, 20.0):                    # first due at 10 s; the third interval is full
            n0.vacuum.tick(t)
            await asyncio.sleep(0.05)
        assert n0.has(key) and n0.vacuum.counters.full_runs == 0
        n0.vacuum.tick(30.0)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not n0.has(key):
                break
        assert not n0.has(key) and n0.vacuum.counters.full_runs == 1
    asyncio.run(main())


def test_a_long_run_gives_the_loop_back_and_stops_for_a_recovery(net):
    async def main():
        n0 = net.nodes[0]
        keys = keys_with_lmaster(0, 1000)
        for key in keys:
            n0.put(key, h(4, 0))
            n0.vacuum.schedule(n0.db.db_id, key, h(4, 0))
        turns = 0

        async def other_work():
            nonlocal turns
            while True:
                turns += 1
                if turns == 3:
                    n0.vacuum.recovery_mode(True)       # a recovery begins mid-run
                await asyncio.sleep(0)
        ticker = asyncio.ensure_future(other_work())
        await n0.vacuum.run_now(n0.db.db_id)
        ticker.cancel()
        deleted = n0.vacuum.counters.deleted
        assert 0 < deleted < 1000                        # stopped part-way, at a slice boundary
        assert deleted % 200 == 0
        assert len(n0.vacuum.queues[n0.db.db_id]) == 1000 - deleted    # the rest waits
        n0.vacuum.recovery_mode(False)
        await n0.vacuum.run_now(n0.db.db_id)
        assert n0.vacuum.counters.deleted == 1000 and not any(n0.has(k) for k in keys)
    asyncio.run(main())


def test_a_record_taken_off_the_queue_is_not_looked_at(net):
    n0 = net.nodes[0]
    given, deleted = keys_with_lmaster(0, 2)
    for key in (given, deleted):
        n0.put(key, h(1, ME))
        n0.vacuum.schedule(n0.db.db_id, key, h(1, ME))
    n0.vacuum.unschedule(n0.db.db_id, given)
    n0.vacuum.unschedule(0xDEAD, given)             # a database without a queue: nothing to do
    assert given not in n0.vacuum.queues[n0.db.db_id] and deleted in n0.vacuum.queues[n0.db.db_id]
    asyncio.run(n0.vacuum.run_now(n0.db.db_id))
    assert n0.has(given) and not n0.has(deleted)
