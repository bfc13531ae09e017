"""The node's side of the recovery after a membership change (server/partial_recovery.py) on
real TDB files: the hand-off report, the deferral that records the change and moves each
database to the recovery's generation, and the gather that sends this node's copies to a key's
lmaster (under the chain lock, waited for outside the loop when smbd holds it)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ctdblab.daemon.core.db.ltdbrules import lmaster_of
from ctdblab.daemon.protocol import (
    INVALID_GENERATION, STALE_GENERATION,
    Control, LtdbHeader, RecBuffer, RecBufferList, RecData, RecoveryDefer, RecoveryScan,
    unpack_reply,
)
from ctdblab.daemon.log import log as daemon_log
from ctdblab.daemon.server.dispatch import Result
from ctdblab.daemon.server.partial_recovery import PartialRecoveryNode, RecoveryView
from ctdblab.daemon.store import DbDirs, DbKind, Store

OLD_MAP = (0, 1, 2)
NEW_MAP = (0, 1, 0)                 # node 2 lost


def H(rsn, dmaster):
    return LtdbHeader(rsn=rsn, dmaster=dmaster, reserved1=0, flags=0)


def key_with(lmaster: int, prefix: str) -> bytes:
    for i in range(10_000):
        key = f"{prefix}{i}".encode()
        if lmaster_of(key, OLD_MAP) == lmaster:
            return key
    raise AssertionError


@pytest.fixture
def node(tmp_path):
    for sub in ("v", "p", "s"):
        (tmp_path / sub).mkdir()
    store = Store(DbDirs(str(tmp_path / "v"), str(tmp_path / "p"), str(tmp_path / "s")), 0,
                  hash_size=101)
    db = store.attach("locking.tdb", DbKind.VOLATILE)
    generations = {}

    def set_generation(db_id, generation):
        generations[db_id] = generation
        return Result(0)

    handed_off = {db.db_id: {b"given"}}
    unsettled = []
    recovery = PartialRecoveryNode(store.by_id, lambda: RecoveryView(True, 41, OLD_MAP, NEW_MAP),
                                   set_generation,
                                   lambda db_id: (handed_off.get(db_id, set()), False),
                                   lambda *epoch: unsettled.append(epoch))
    recovery.epochs = unsettled
    yield recovery, db, generations
    store.close()


def _fill(db):
    keys = {"mine": key_with(1, "mine"), "lost": key_with(1, "lost")}
    records = {keys["mine"]: H(3, 0), keys["lost"]: H(5, 2)}

    async def write():
        for key, header in records.items():
            await db.store_ltdb(key, header, b"value-" + key)
    asyncio.run(write())
    return keys


def test_the_report_lists_the_cut_off_hand_offs_and_where_the_node_came_from(node):
    recovery, db, _ = node
    _fill(db)
    result = recovery.handoffs(RecoveryScan([0, 1], [db.db_id]))
    assert result.status == 0, result.errmsg
    report = unpack_reply(Control.PYCTDB_RECOVERY_HANDOFFS, result.data)
    assert report.came_from == 41
    assert [(r.key, r.data) for r in report.buffers[0].records] == [(b"given", b"")]


def test_the_deferral_records_the_change_and_moves_the_generation_without_touching_records(node):
    recovery, db, generations = node
    keys = _fill(db)
    before = dict(db.tdb.items())
    defer = RecoveryDefer(77, list(OLD_MAP), [RecBuffer(db.db_id, [RecData(0, b"given", b"")])])
    assert recovery.defer(defer).status == 0
    assert recovery.epochs == [(db.db_id, OLD_MAP, frozenset({b"given"}))]
    assert generations == {db.db_id: 77}
    assert dict(db.tdb.items()) == before and keys


def test_the_gather_sends_this_nodes_copies_and_waits_for_a_busy_chain_lock(node):
    recovery, db, _ = node
    keys = _fill(db)
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)       # serving again
    request = RecBufferList([RecBuffer(db.db_id, [RecData(0, keys["lost"], b""),
                                                  RecData(0, b"absent", b"")])])

    async def main():
        held = db.try_lock(keys["lost"])                 # someone (smbd) holds the record
        task = asyncio.ensure_future(recovery.gather(request))
        await asyncio.sleep(0.05)
        assert not task.done()
        held.release()
        return await asyncio.wait_for(task, 10)
    result = asyncio.run(main())
    (buffer,) = unpack_reply(Control.PYCTDB_GATHER_COPIES, result.data).buffers
    assert [(r.key, r.split_header()[0].dmaster, r.split_header()[1]) for r in buffer.records] == [
        (keys["lost"], 2, b"value-" + keys["lost"])]


def test_outside_recovery_mode_and_for_unknown_databases_it_refuses(node):
    recovery, db, _ = node
    assert recovery.handoffs(RecoveryScan([0, 1], [0x1234])).status == -1
    assert recovery.defer(RecoveryDefer(1, list(OLD_MAP), [RecBuffer(0x1234, [])])).status == -1
    in_recovery = RecBufferList([RecBuffer(db.db_id, [RecData(0, b"k", b"")])])
    assert "recovery" in asyncio.run(recovery.gather(in_recovery)).errmsg     # copies are moving
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)
    assert recovery.handoffs(RecoveryScan([0, 1], [db.db_id])).status == -1
    assert recovery.defer(RecoveryDefer(1, list(OLD_MAP), [RecBuffer(db.db_id, [])])).status == -1
    assert asyncio.run(recovery.gather(RecBufferList([RecBuffer(0x1234, [])]))).status == -1
    # in recovery mode, but its own last recovery never finished: not a fresh node, and it says
    # so (the leader decides whether its records are wiped or merged in full)
    recovery.view = lambda: RecoveryView(True, INVALID_GENERATION, OLD_MAP, NEW_MAP)
    stale = recovery.handoffs(RecoveryScan([0, 1], [db.db_id]))
    assert stale.status == 0
    report = unpack_reply(Control.PYCTDB_RECOVERY_HANDOFFS, stale.data)
    assert report.came_from == STALE_GENERATION and report.buffers == []


def test_an_overflowed_hand_off_log_refuses_so_the_full_recovery_runs(node):
    recovery, db, _ = node
    recovery.handed_off = lambda db_id: (set(), True)
    assert "too many records" in recovery.handoffs(RecoveryScan([0, 1], [db.db_id])).errmsg


# -- the sweep (server/sweeper.py, core/db/sweep.py) ------------------------------------------

def test_the_sweep_key_list_holds_this_nodes_copies_the_lmaster_must_settle(node):
    from ctdblab.daemon.protocol import SweepKeys
    recovery, db, _ = node
    keys = _fill(db)                                  # both keys have lmaster 1 (slot kept)
    recovery.view = lambda: RecoveryView(False, 41, OLD_MAP, NEW_MAP)
    moved = key_with(2, "moved")                       # node 2's slot, node 0's now
    asyncio.run(db.store_ltdb(moved, H(4, 1), b"v"))
    request = SweepKeys(db.db_id, 1, list(NEW_MAP), [2], [list(OLD_MAP), list(NEW_MAP)])
    result = asyncio.run(recovery.sweep_keys(request))
    (buffer,) = unpack_reply(Control.PYCTDB_SWEEP_KEYS, result.data).buffers
    # for lmaster 1: only the copy naming the lost node, without its data
    assert [(r.key, r.split_header()[0].dmaster, r.split_header()[1]) for r in buffer.records] == [
        (keys["lost"], 2, b"")]
    request = SweepKeys(db.db_id, 0, list(NEW_MAP), [2], [list(OLD_MAP), list(NEW_MAP)])
    (buffer,) = unpack_reply(Control.PYCTDB_SWEEP_KEYS,
                             asyncio.run(recovery.sweep_keys(request)).data).buffers
    assert [r.key for r in buffer.records] == [moved]            # for lmaster 0: the moved slot
    recovery.view = lambda: RecoveryView(True, 41, OLD_MAP, NEW_MAP)
    assert asyncio.run(recovery.sweep_keys(request)).status == -1      # not in recovery mode


class _Messenger:
    def __init__(self, peers, reply):
        self.peers, self.reply = peers, reply

    def active_peers(self):
        return list(self.peers)

    async def controls(self, pnns, opcode, data=b"", *, flags=0, timeout):
        return {p: self.reply(p, opcode, data) for p in pnns}


def _sweeping_node(db, messenger, spawned):
    from ctdblab.daemon.core.db.migration import (
        DbAttached, MigrationCore, MigrationSettings, VnnMapChanged,
    )
    from ctdblab.daemon.protocol.types import VnnMap
    from ctdblab.daemon.server.record_calls import RecordCalls
    from ctdblab.daemon.server.sweeper import Sweeper
    from ctdblab.daemon.server.tasks import Tasks
    core = MigrationCore(MigrationSettings(pnn=0), VnnMap(5, list(OLD_MAP)))
    core.step(DbAttached(db.db_id, "locking.tdb"))
    core.step(VnnMapChanged(VnnMap(6, list(NEW_MAP))), None, 0.0)
    loop_time = lambda: asyncio.get_running_loop().time()           # noqa: E731
    calls = RecordCalls(core, lambda d: db if d == db.db_id else None, lambda pnn, frame: False,
                        Tasks(), loop_time, lambda reason: None)
    lookup = lambda d: db if d == db.db_id else None                # noqa: E731
    return core, Sweeper(calls, lookup, messenger, lambda coro, name=None: spawned.append(coro),
                         loop_time, delay=lambda: 0.0)


class _Lines(logging.Handler):
    """What the daemon's logger says, whatever another test did to logging's configuration."""

    def __init__(self, level):
        super().__init__(level)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self):
        self.saved = daemon_log.level
        daemon_log.addHandler(self)
        daemon_log.setLevel(min(self.level, daemon_log.getEffectiveLevel()))
        return self

    def __exit__(self, *exc):
        daemon_log.removeHandler(self)
        daemon_log.setLevel(self.saved)

    @property
    def text(self):
        return "\n".join(self.lines)


def test_a_sweep_makes_a_lost_dmasters_record_the_lmasters_and_closes_the_epochs(node):
    _, db, _ = node
    orphan = key_with(2, "orphan")                      # moved to node 0; its dmaster was node 2
    asyncio.run(db.store_ltdb(orphan, H(6, 2), b"newest"))
    core, sweeper = _sweeping_node(db, _Messenger([], None), [])

    async def main():
        return await sweeper.sweep(db.db_id)
    with _Lines(logging.INFO) as caplog:
        assert asyncio.run(main())
    header, value = db.tdb.fetch_ltdb(orphan)
    assert (header.dmaster, header.rsn, value) == (0, 7, b"newest")
    assert not core.settling.unsettled.any(db.db_id)
    assert "swept db locking.tdb: 1 keys, 1 settled" in caplog.text


def test_a_node_that_does_not_answer_abandons_the_sweep_and_it_is_tried_again_later(node):
    from ctdblab.daemon.net.rpc import ControlError
    _, db, _ = node
    spawned = []
    core, sweeper = _sweeping_node(db, _Messenger([1], lambda p, op, d: ControlError("timed out")),
                                   spawned)

    async def main():
        await sweeper._run(0.0)
    with _Lines(logging.WARNING) as caplog:
        asyncio.run(main())
    assert "abandoned" in caplog.text and "node 1 did not list its keys" in caplog.text
    assert core.settling.sweeps.running == {} and core.settling.sweeps.abandoned == 1
    assert core.settling.unsettled.any(db.db_id)          # nothing closed
    assert len(spawned) == 1 and sweeper.backoff == 2.0   # the retry, with a backoff
    spawned[0].close()


def test_a_database_whose_sweep_fails_does_not_stop_the_sweep_of_the_others(node):
    from ctdblab.daemon.server.sweeper import SweepFailed
    _, db, _ = node
    spawned, swept = [], []
    core, sweeper = _sweeping_node(db, _Messenger([], None), spawned)
    core.settling.sweepable = lambda: [7, db.db_id, 9]

    async def sweep(db_id):
        swept.append(db_id)
        if db_id == 7:
            raise SweepFailed("node 1 sent a malformed key list")
        return True
    sweeper.sweep = sweep
    with _Lines(logging.WARNING) as caplog:
        asyncio.run(sweeper._run(0.0))
    assert swept == [7, db.db_id, 9]                     # went on after the first failed
    assert "sweep of db 0x00000007 abandoned: node 1 sent a malformed key list" in caplog.text
    assert "sweep abandoned for 0x00000007; next try in 1 s" in caplog.text
    assert len(spawned) == 1 and sweeper.backoff == 2.0   # one retry for what failed
    spawned[0].close()


def test_leaving_recovery_mode_starts_a_sweep_after_the_delay_and_a_zero_delay_means_none(node):
    _, db, _ = node
    spawned = []
    _, sweeper = _sweeping_node(db, _Messenger([], None), spawned)
    delay = [0.0]
    sweeper.delay = lambda: delay[0]
    sweeper.recovery_mode(False)
    assert spawned == []
    delay[0] = 1.0
    sweeper.recovery_mode(True)
    assert spawned == []
    sweeper.recovery_mode(False)
    assert len(spawned) == 1
    spawned[0].close()


def test_recovery_mode_cancels_a_sweep_under_way_and_the_core_forgets_it(node):
    _, db, _ = node

    class Silent(_Messenger):
        async def controls(self, pnns, opcode, data=b"", *, flags=0, timeout):
            await asyncio.Event().wait()            # a peer still traversing

    core, sweeper = _sweeping_node(db, Silent([1], None), [])

    async def main():
        sweeper.spawn = lambda coro, name=None: asyncio.ensure_future(coro)
        sweeper.delay = lambda: 0.01
        sweeper.recovery_mode(False)
        await asyncio.sleep(0.1)
        assert core.settling.sweeps.running            # waiting for node 1's key list
        task = sweeper.task
        sweeper.recovery_mode(True)
        with pytest.raises(asyncio.CancelledError):
            await task
    with _Lines(logging.WARNING) as lines:
        asyncio.run(main())
    assert core.settling.sweeps.running == {}
    assert "abandoned: recovery mode or shutdown" in lines.text
