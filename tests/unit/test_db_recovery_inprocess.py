"""Database recovery on in-process nodes with real TDB files (tests/unit/recovery_mesh.py): the
node side driven through its controls, and pyctdbd's own leader-side driver merging three nodes'
databases by CTDB's rules."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.protocol import (
    Control, ControlFlag, DbFlag, LtdbHeader, PullDbExt, RecBuffer, RecData, TransDb, pack_reply,
    pack_request, unpack_reply,
)
from ctdblab.daemon.protocol.constants import RecordFlag
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum
from ctdblab.daemon.server.dispatch import Result
from ctdblab.daemon.store import libtdb

from recovery_mesh import Mesh

MWD = int(RecordFlag.MIGRATED_WITH_DATA)
LIBDIR = os.path.dirname(libtdb.__file__)

# Opens PATH with FLAGS as smbd does and takes the chain lock of "k1" (blocking), then prints
# how long that took.
SMBD_LOCK = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1]); import libtdb
ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR, 0o600, None, None)
print("open", flush=True)
t = time.monotonic(); assert libtdb.lib.tdb_chainlock(ctx, libtdb.key_data(b"k1")) == 0
print(round(time.monotonic() - t, 3), flush=True)
"""


def on_mesh(tmp_path, body, *args, tunables=None, n=3):
    """Run `await body(mesh, *args)` on a fresh `n`-node mesh in tmp_path."""
    async def main():
        mesh = Mesh(tmp_path, n, tunables=tunables)
        try:
            await body(mesh, *args)
        finally:
            mesh.close()
    asyncio.run(main())


async def control(mesh, pnn, opcode, value=None, *, flags=0):
    data = b"" if value is None else pack_request(opcode, value)
    return await mesh.nodes[0].messenger.control(pnn, opcode, data, flags=flags)


def header(rsn, dmaster, flags=0):
    return LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags)


def test_a_frozen_database_keeps_smbd_out_until_thawed(tmp_path):
    on_mesh(tmp_path, _a_frozen_database_keeps_smbd_out_until_thawed)


async def _a_frozen_database_keeps_smbd_out_until_thawed(mesh):
    node = mesh.nodes[1]
    db = node.databases.attach("locking.tdb")
    await control(mesh, 1, Control.DB_FREEZE, db.db_id)
    assert node.service.freeze_state(db.db_id) == (True, False)
    smbd = subprocess.Popen([sys.executable, "-c", SMBD_LOCK, LIBDIR, db.path, hex(db.open_flags)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert smbd.stdout.readline().strip() == "open"
        await asyncio.sleep(0.3)
        assert smbd.poll() is None, "smbd got the chain lock of a frozen database"
        await control(mesh, 1, Control.DB_THAW, db.db_id)
        waited = float(await asyncio.to_thread(smbd.stdout.readline))
        assert waited >= 0.25          # it waited for the thaw
    finally:
        smbd.kill()
        smbd.wait()
    assert node.service.freeze_state(db.db_id) == (False, False)


def test_a_recovery_transaction_through_the_controls(tmp_path):
    on_mesh(tmp_path, _a_recovery_transaction_through_the_controls, tmp_path)


async def _a_recovery_transaction_through_the_controls(mesh, tmp_path):
    """What `ctdb restoredb` / the helper do on one node: freeze, transaction, pull, wipe,
    push, confirm, commit, thaw — persistent, so the commit is on disk at once."""
    node = mesh.nodes[2]
    db = node.databases.attach("secrets.tdb", int(DbFlag.PERSISTENT))
    for i in range(50):
        node.store_record("secrets.tdb", b"old%d" % i, i, 2, b"o")
    db_id, tid = db.db_id, 4242
    got = []
    mesh.nodes[0].messenger.add_handler(0xF001000000000777, lambda s, i, d: got.append(RecBuffer.unpack(d)))
    with pytest.raises(Exception):      # not frozen
        await control(mesh, 2, Control.DB_PULL, PullDbExt(db_id, 0, 0xF001000000000777))
    await control(mesh, 2, Control.DB_FREEZE, db_id)
    await control(mesh, 2, Control.DB_TRANSACTION_START, TransDb(db_id, tid))
    reply = await control(mesh, 2, Control.DB_PULL, PullDbExt(db_id, 0, 0xF001000000000777))
    assert unpack_reply(Control.DB_PULL, reply.data) == 50 == sum(len(b.records) for b in got)
    assert {r.key for b in got for r in b.records} == {b"old%d" % i for i in range(50)}
    await control(mesh, 2, Control.WIPE_DATABASE, TransDb(db_id, tid))
    await control(mesh, 2, Control.DB_PUSH_START, PullDbExt(db_id, 0, 0xF00100000000AAAA))
    new = RecBuffer(db_id, [RecData(0, b"new%d" % i, header(7, 0).pack() + b"n") for i in range(30)])
    mesh.nodes[0].messenger.send_message(2, 0xF00100000000AAAA, new.pack())
    reply = await control(mesh, 2, Control.DB_PUSH_CONFIRM, db_id)
    assert unpack_reply(Control.DB_PUSH_CONFIRM, reply.data) == 30
    assert len(node.records("secrets.tdb")) == 50           # nothing written before the commit
    with pytest.raises(Exception):                          # another transaction id
        await control(mesh, 2, Control.DB_TRANSACTION_COMMIT, TransDb(db_id, tid + 1))
    await control(mesh, 2, Control.DB_TRANSACTION_COMMIT, TransDb(db_id, tid))
    assert node.service.core.state(db_id).generation == tid
    await control(mesh, 2, Control.DB_THAW, db_id)
    # on disk: a fresh process reads the committed file
    out = subprocess.run([sys.executable, "-c", (
        "import os,sys; sys.path.insert(0, sys.argv[1]); import libtdb, ctypes\n"
        "ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, 0x400, os.O_RDONLY, 0, None, None)\n"
        "n = [0]\n"
        "cb = libtdb.TRAVERSER(lambda t, k, d, p: n.__setitem__(0, n[0] + 1) or 0)\n"
        "libtdb.lib.tdb_traverse_read(ctx, cb, None); print(n[0])"), LIBDIR, db.path],
        capture_output=True, text=True, check=True).stdout
    assert int(out) == 30
    assert set(node.records("secrets.tdb")) == {b"new%d" % i for i in range(30)}


def test_pulls_stream_in_buffers_of_rec_buffer_size_limit(tmp_path):
    tunables = Tunables()
    tunables.set("RecBufferSizeLimit", 2000)
    asyncio.run(pull_in_buffers(tmp_path, tunables))


async def pull_in_buffers(tmp_path, tunables):
    mesh = Mesh(tmp_path, tunables=tunables)
    try:
        node = mesh.nodes[1]
        db = node.databases.attach("big.tdb")
        for i in range(500):
            node.store_record("big.tdb", b"key%04d" % i, 1, 1, b"x" * 40)
        got = []
        mesh.nodes[0].messenger.add_handler(0xF0010000000000BB, lambda s, i, d: got.append(RecBuffer.unpack(d)))
        await control(mesh, 1, Control.DB_FREEZE, db.db_id)
        reply = await control(mesh, 1, Control.DB_PULL, PullDbExt(db.db_id, 0, 0xF0010000000000BB))
        assert unpack_reply(Control.DB_PULL, reply.data) == 500
        sizes = [len(b.pack()) for b in got]
        assert len(got) > 10 and all(s >= 2000 for s in sizes[:-1]) and max(sizes) < 2000 + 100
        assert sum(len(b.records) for b in got) == 500
        await control(mesh, 1, Control.DB_THAW, db.db_id)
    finally:
        mesh.close()


def seed_cluster(mesh):
    """Three nodes with diverging copies: a volatile database everywhere, a persistent one on
    nodes 0 and 2 with different seqnums, a volatile one only on node 1."""
    n0, n1, n2 = (mesh.nodes[p] for p in range(3))
    for node in (n0, n1, n2):
        node.databases.attach("locking.tdb")
    n0.databases.attach("secrets.tdb", int(DbFlag.PERSISTENT))
    n2.databases.attach("secrets.tdb", int(DbFlag.PERSISTENT))
    n1.databases.attach("only1.tdb")
    # volatile: "a" highest rsn on node 2; "b" tie between nodes 1 and 2 (node 1 pulled first
    # keeps it); "c" tie where the leader's copy is held first (node 2's replaces it);
    # "empty" has no value anywhere; "ro" carries read-only flags
    n0.store_record("locking.tdb", b"a", 3, 0, b"a@0")
    n1.store_record("locking.tdb", b"a", 5, 1, b"a@1")
    n2.store_record("locking.tdb", b"a", 9, 2, b"a@2")
    n1.store_record("locking.tdb", b"b", 4, 1, b"b@1")
    n2.store_record("locking.tdb", b"b", 4, 2, b"b@2")
    n0.store_record("locking.tdb", b"c", 6, 0, b"c@0")
    n2.store_record("locking.tdb", b"c", 6, 2, b"c@2")
    n1.store_record("locking.tdb", b"empty", 8, 1, b"")
    n2.store_record("locking.tdb", b"ro", 2, 2, b"ro@2", int(RecordFlag.RO_HAVE_DELEGATIONS))
    # persistent: node 2 has the higher seqnum; node 0 has a key node 2 does not
    n0.set_seqnum("secrets.tdb", 4)
    n0.store_record("secrets.tdb", b"s", 4, 0, b"s@0")
    n0.store_record("secrets.tdb", b"stale", 2, 0, b"stale@0")
    n2.set_seqnum("secrets.tdb", 6)
    n2.store_record("secrets.tdb", b"s", 6, 2, b"s@2")
    n1.store_record("only1.tdb", b"x", 1, 1, b"x@1")


def test_the_driver_merges_three_nodes_by_ctdbs_rules(tmp_path):
    on_mesh(tmp_path, _the_driver_merges_three_nodes_by_ctdbs_rules)


async def _the_driver_merges_three_nodes_by_ctdbs_rules(mesh):
    seed_cluster(mesh)
    generation = 0x5EED
    mesh.vnnmap = type(mesh.vnnmap)(generation, [0, 1, 2])
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], generation)
    assert outcome.ok and (outcome.recovered, outcome.total) == (3, 3), outcome
    assert outcome.records_pushed == 4 + 2 + 1         # locking a b c ro, secrets seqnum s, only1 x
    # missing databases were created with the recovery flag
    assert mesh.nodes[1].attaches == [("secrets.tdb", int(ControlFlag.ATTACH_RECOVERY))]
    assert sorted(mesh.nodes[0].attaches) == [("only1.tdb", int(ControlFlag.ATTACH_RECOVERY))]
    for pnn, node in mesh.nodes.items():
        assert {i.name for i in node.databases.databases()} == {"locking.tdb", "secrets.tdb", "only1.tdb"}
        bump = 1 if pnn == 0 else 0       # the leader is the dmaster: its store bumps the rsn
        vol = node.records("locking.tdb")
        assert vol == {
            b"a": (header(9 + bump, 0, MWD), b"a@2"),
            b"b": (header(4 + bump, 0, MWD), b"b@1"),
            b"c": (header(6 + bump, 0, MWD), b"c@2"),
            b"ro": (header(2 + bump, 0, MWD), b"ro@2"),          # read-only flags stripped
        }, pnn
        pers = node.records("secrets.tdb")
        assert pers == {DB_SEQNUM_TDB_KEY: (header(6, 2), pack_seqnum(6)),
                        b"s": (header(6, 2), b"s@2")}, pnn
        assert node.records("only1.tdb") == {b"x": (header(1 + bump, 0, MWD), b"x@1")}
        # every database thawed, on the new generation: SET_RECMODE NORMAL passes
        assert node.service.frozen_databases() == []
        assert node.service.set_recmode_normal(generation) is None
        assert "Inconsistent DB generation" in node.service.set_recmode_normal(generation + 1)


def test_a_failing_node_fails_the_database_and_earns_ban_credits(tmp_path, monkeypatch):
    on_mesh(tmp_path, _a_failing_node_fails_the_database_and_earns_ban_credits, monkeypatch)


async def _a_failing_node_fails_the_database_and_earns_ban_credits(mesh, monkeypatch):
    seed_cluster(mesh)
    bad = mesh.nodes[2]
    # node 2 answers DB_PULL of the persistent database with a count its buffers do not make
    real = bad.service.pull
    secrets = bad.store.get("secrets.tdb").db_id

    async def lying_pull(pulldb, src):
        result = await real(pulldb, src)
        if pulldb.db_id != secrets:
            return result
        return Result(0, pack_reply(Control.DB_PULL, unpack_reply(Control.DB_PULL, result.data) + 1))

    monkeypatch.setattr(bad.service, "pull", lying_pull)
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 77)
    assert not outcome.ok
    assert outcome.ban_credits == {2: 3}             # pulled from node 2 (highest seqnum), 3 tries
    assert outcome.banning_culprit() == 2
    assert (outcome.recovered, outcome.total) == (2, 3)
    for node in mesh.nodes.values():
        # the failed database stays frozen, with no transaction left open; the others thawed
        assert node.service.frozen_databases() == [secrets]
        assert node.service.freeze_state(secrets) == (True, False)
        assert "Inconsistent DB generation" in node.service.set_recmode_normal(77)
    # node 2 mends: the next recovery thaws everything
    monkeypatch.setattr(bad.service, "pull", real)
    mesh.vnnmap = type(mesh.vnnmap)(78, [0, 1, 2])
    assert (await mesh.nodes[0].driver.recover([0, 1, 2], 78)).ok
    assert all(node.service.frozen_databases() == [] for node in mesh.nodes.values())
    assert all(node.service.set_recmode_normal(78) is None for node in mesh.nodes.values())


def test_ten_thousand_records_on_three_nodes_without_stalling_the_loop(tmp_path):
    on_mesh(tmp_path, _ten_thousand_records_on_three_nodes_without_stalling_the_loop)


async def _ten_thousand_records_on_three_nodes_without_stalling_the_loop(mesh):
    per_node = 10_000
    for node in mesh.nodes.values():
        db = node.databases.attach("big.tdb")
        for i in range(per_node):          # half the keys shared, half node-private
            key = b"shared%05d" % i if i % 2 else b"n%d-%05d" % (node.pnn, i)
            db.tdb.store_ltdb(key, header(node.pnn + 1, node.pnn), b"v" * 64)
    lags = []

    async def ticker():
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            lags.append(time.monotonic() - t - 0.005)

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 99)
    took = time.monotonic() - started
    tick.cancel()
    assert outcome.ok
    expected = per_node // 2 + 3 * (per_node // 2)
    assert outcome.records_pushed == expected
    for node in mesh.nodes.values():
        records = node.records("big.tdb")
        assert len(records) == expected
        assert records[b"shared00001"][0].dmaster == 0          # node 2's rsn 3 copy won
        assert records[b"shared00001"][0].rsn == 3 + (1 if node.pnn == 0 else 0)
    print(f"\n10^4 records x 3 nodes (in process): {took:.2f} s, max loop lag "
          f"{max(lags) * 1000:.0f} ms over {len(lags)} ticks")
    # The loop kept turning through the recovery: the ticker ran all along (a recovery that
    # never yielded would leave it one or two ticks). No tight time bound here: on a loaded
    # machine the scheduler, not the code, decides single lags (benchmarks measure those).
    assert len(lags) >= max(5, took / 0.05)
    assert max(lags) < 2.0


def test_a_record_shorter_than_its_header_is_dropped_not_fatal(tmp_path):
    on_mesh(tmp_path, _a_record_shorter_than_its_header_is_dropped_not_fatal)


async def _a_record_shorter_than_its_header_is_dropped_not_fatal(mesh):
    for node in mesh.nodes.values():
        node.databases.attach("g.tdb")
    mesh.nodes[1].store.get("g.tdb").tdb.store(b"garbage", b"xyz")        # no ltdb header
    mesh.nodes[2].store_record("g.tdb", b"ok", 1, 2, b"fine")
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 5)
    assert outcome.ok and outcome.records_pushed == 1
    for node in mesh.nodes.values():
        assert set(node.records("g.tdb")) == {b"ok"}


# Overwrites the 24 bytes before KEY in PATH with 0xaa (a record header), from another process:
# opening and closing the file in the daemon's process would drop its fcntl locks.
CORRUPT_BEFORE = r"""
import sys
path, key = sys.argv[1], sys.argv[2].encode()
data = open(path, "rb").read()
at = data.find(key)
assert at > 24
with open(path, "r+b") as f:
    f.seek(at - 24)
    f.write(b"\xaa" * 24)
"""


def test_a_corrupt_volatile_file_sends_what_it_can_and_is_rewritten(tmp_path):
    on_mesh(tmp_path, _a_corrupt_volatile_file_sends_what_it_can_and_is_rewritten)


async def _a_corrupt_volatile_file_sends_what_it_can_and_is_rewritten(mesh):
    for node in mesh.nodes.values():
        node.databases.attach("cv.tdb")
        node.databases.attach("cp.tdb", int(DbFlag.PERSISTENT))
    for i in range(1, 6):
        mesh.nodes[1].store_record("cv.tdb", b"rkey%d" % i, 1, 1, b"value%d" % i)
    mesh.nodes[2].store_record("cv.tdb", b"rkey3", 1, 2, b"from-2")
    path = mesh.nodes[1].store.get("cv.tdb").path
    subprocess.run([sys.executable, "-c", CORRUPT_BEFORE, path, "rkey3"], check=True)
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 5)
    assert outcome.ok, outcome
    for node in mesh.nodes.values():                  # node 1's file is whole again
        assert {k: v for k, (h, v) in node.records("cv.tdb").items()} == {
            b"rkey1": b"value1", b"rkey2": b"value2", b"rkey3": b"from-2", b"rkey4": b"value4",
            b"rkey5": b"value5"}
    # a persistent file that is corrupt fails its pull, as in ctdbd
    mesh.nodes[1].set_seqnum("cp.tdb", 9)
    mesh.nodes[1].store_record("cp.tdb", b"pkey", 9, 1, b"precious")
    subprocess.run([sys.executable, "-c", CORRUPT_BEFORE, mesh.nodes[1].store.get("cp.tdb").path,
                    "pkey"], check=True)
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 6)
    assert not outcome.ok and outcome.ban_credits == {1: 3}


# -- pyctdbd's partial recovery through the real driver and node services -----------------------

def test_a_node_loss_is_settled_without_a_freeze_and_a_lagging_persistent_db_copied(tmp_path):
    on_mesh(tmp_path, _a_node_loss_is_settled_without_a_freeze)


async def _a_node_loss_is_settled_without_a_freeze(mesh):
    from ctdblab.daemon.core.db.ltdbrules import lmaster_of
    from ctdblab.daemon.protocol import db_id_of
    old_map, live = [0, 1, 2], [0, 1]
    for node in mesh.nodes.values():
        node.databases.attach("locking.tdb")
        node.databases.attach("secrets.tdb", int(DbFlag.PERSISTENT))
    lost_lm = next(k for k in (b"k%d" % i for i in range(99)) if lmaster_of(k, old_map) == 2)
    live_lm = next(k for k in (b"k%d" % i for i in range(99)) if lmaster_of(k, old_map) == 1)
    mesh.nodes[0].store_record("locking.tdb", lost_lm, 5, 0, b"mine@0")
    mesh.nodes[1].store_record("locking.tdb", live_lm, 6, 2, b"lm@1")
    mesh.nodes[0].store_record("locking.tdb", live_lm, 7, 2, b"newest@0")
    before = {p: mesh.nodes[p].records("locking.tdb") for p in live}
    mesh.nodes[1].handed_off[db_id_of("locking.tdb")] = {b"given-by-1"}
    mesh.nodes[0].set_seqnum("secrets.tdb", 4)
    mesh.nodes[1].set_seqnum("secrets.tdb", 3)             # a commit reached node 0 only
    mesh.down = {2}
    generation = 0x10AD
    mesh.previous_map = old_map
    mesh.vnnmap = type(mesh.vnnmap)(generation, [0, 1, 0])
    outcome = await mesh.nodes[0].driver.recover(live, generation, old_map=old_map,
                                                 new_map=[0, 1, 0])
    assert outcome.ok and outcome.settled == 1 and outcome.recovered == 2, outcome
    for p in live:
        node = mesh.nodes[p]
        # nothing copied or rewritten: each key's lmaster settles it when a call needs it
        assert node.records("locking.tdb") == before[p]
        assert node.unsettled == [(db_id_of("locking.tdb"), tuple(old_map), frozenset({b"given-by-1"}))]
        assert node.records("secrets.tdb")[DB_SEQNUM_TDB_KEY][1] == pack_seqnum(4)
        assert node.service.frozen_databases() == []
        assert node.service.set_recmode_normal(generation) is None


def test_nodes_that_did_not_serve_together_get_the_full_recovery(tmp_path):
    on_mesh(tmp_path, _nodes_that_did_not_serve_together)


async def _nodes_that_did_not_serve_together(mesh):
    for node in mesh.nodes.values():
        node.databases.attach("locking.tdb")
    mesh.nodes[1].came_from = 8                                 # it was recovered elsewhere
    mesh.down = {2}
    mesh.vnnmap = type(mesh.vnnmap)(0x10AE, [0, 1, 0])
    outcome = await mesh.nodes[0].driver.recover([0, 1], 0x10AE, old_map=[0, 1, 2], new_map=[0, 1, 0])
    assert outcome.ok and outcome.settled == 0 and outcome.recovered == 1


def test_a_node_lost_in_the_middle_of_a_partial_recovery_fails_it_and_the_next_one_is_right(tmp_path):
    on_mesh(tmp_path, _a_node_lost_mid_recovery, n=4)


async def _a_node_lost_mid_recovery(mesh):
    """Node 3 is lost; while the survivors recover, node 1 goes too, just as the recovery tells
    the nodes to settle their keys. That recovery fails (the leader retries with the new
    membership); the next one, among nodes 0 and 2, gives both nodes the change from the map the
    failed one installed (the settling itself is the migration core's: test_db_partial_recovery)."""
    from ctdblab.daemon.protocol import Control, db_id_of
    old_map = [0, 1, 2, 3]
    for node in mesh.nodes.values():
        node.databases.attach("locking.tdb")
    mesh.down = {3}
    mesh.previous_map = old_map
    first_map = [0, 1, 2, 0]
    mesh.vnnmap = type(mesh.vnnmap)(0x20, first_map)

    leader = mesh.nodes[0].messenger
    plain_control = leader.control

    async def control(pnn, opcode, data=b"", **kw):
        if pnn == 1 and opcode == Control.PYCTDB_RECOVERY_DEFER:
            mesh.down = {1, 3}                           # node 1 dies as the recovery ends
        return await plain_control(pnn, opcode, data, **kw)
    leader.control = control
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], 0x20, old_map=old_map, new_map=first_map)
    assert not outcome.ok, outcome
    leader.control = plain_control

    second_map = [0, 2]
    mesh.previous_map = first_map
    mesh.vnnmap = type(mesh.vnnmap)(0x21, second_map)
    outcome = await mesh.nodes[0].driver.recover([0, 2], 0x21, old_map=first_map, new_map=second_map)
    assert outcome.ok, outcome
    for p in (0, 2):
        assert mesh.nodes[p].unsettled[-1] == (db_id_of("locking.tdb"), tuple(first_map), frozenset())
        assert mesh.nodes[p].service.frozen_databases() == []


def test_a_rejoining_node_cut_off_earlier_is_wiped_alone_and_nobody_else_freezes(tmp_path):
    on_mesh(tmp_path, _a_stale_rejoiner_is_wiped_alone)


async def _a_stale_rejoiner_is_wiped_alone(mesh):
    """Node 2 was cut off from the majority (recovery mode on its own, records kept) while nodes
    0 and 1 recovered without it; it joins again. Its stale records (one claiming dmaster, for a
    key the survivors settled since) must not survive, and the survivors must not freeze."""
    from ctdblab.daemon.protocol import INVALID_GENERATION, db_id_of
    for node in mesh.nodes.values():
        node.databases.attach("locking.tdb")
        node.databases.attach("secrets.tdb", int(DbFlag.PERSISTENT))
    mesh.nodes[2].store_record("locking.tdb", b"k-stale", 9, 2, b"stale claim of node 2")
    mesh.nodes[0].store_record("locking.tdb", b"k-stale", 4, 0, b"settled at node 0")
    before = {p: mesh.nodes[p].records("locking.tdb") for p in (0, 1)}
    mesh.nodes[2].came_from = INVALID_GENERATION        # its last recovery never finished
    mesh.previous_map = [0, 1]
    generation = 0x30
    mesh.vnnmap = type(mesh.vnnmap)(generation, [0, 1, 2])
    frozen_on_survivors = []
    leader = mesh.nodes[0].messenger
    plain_control = leader.control

    async def control(pnn, opcode, data=b"", **kw):
        if opcode == Control.DB_FREEZE and pnn != 2:
            frozen_on_survivors.append(pnn)
        return await plain_control(pnn, opcode, data, **kw)
    leader.control = control
    outcome = await mesh.nodes[0].driver.recover([0, 1, 2], generation, old_map=[0, 1],
                                                 new_map=[0, 1, 2])
    assert outcome.ok and outcome.settled == 2, outcome
    assert frozen_on_survivors == []
    assert mesh.nodes[2].records("locking.tdb") == {}
    for p in (0, 1):
        assert mesh.nodes[p].records("locking.tdb") == before[p]
    for p in (0, 1, 2):
        node = mesh.nodes[p]
        assert node.unsettled == [(db_id_of("locking.tdb"), (0, 1), frozenset())]
        assert node.service.frozen_databases() == []
        assert node.service.set_recmode_normal(generation) is None


def test_a_node_of_the_old_map_whose_last_recovery_did_not_finish_gets_the_full_recovery(tmp_path):
    on_mesh(tmp_path, _a_stale_node_of_the_old_map)


async def _a_stale_node_of_the_old_map(mesh):
    """Node 2 is lost; node 1, in the old map, says its last recovery did not finish: the
    survivors counted on its records, so they are merged CTDB's way, not wiped."""
    from ctdblab.daemon.protocol import INVALID_GENERATION
    for node in mesh.nodes.values():
        node.databases.attach("locking.tdb")
    mesh.nodes[1].store_record("locking.tdb", b"k", 9, 1, b"only copy, on node 1")
    mesh.nodes[1].came_from = INVALID_GENERATION
    mesh.previous_map = [0, 1, 2]
    mesh.vnnmap = type(mesh.vnnmap)(0x31, [0, 1, 0])
    mesh.down = {2}
    outcome = await mesh.nodes[0].driver.recover([0, 1], 0x31, old_map=[0, 1, 2], new_map=[0, 1, 0])
    assert outcome.ok and outcome.settled == 0 and outcome.recovered == 1, outcome
    for p in (0, 1):
        assert mesh.nodes[p].records("locking.tdb")[b"k"][1] == b"only copy, on node 1"
