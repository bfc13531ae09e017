"""smbd's calls in the native node plane (daemon/native/node_plane.c, step 3 of
docs/native-hot-path.md) decide as the migration core does (core/db/migration.py).

Differential, on two identical TDB files: random records (missing, short, empty, with data; every
dmaster; record flags) and random client REQ_CALLs (every built-in call function, an unknown one,
the call flags smbd sends) go through the C decision on one file and ``MigrationCore.step`` (its
actions carried out) on the other; then random REPLY_DMASTERs land for a call under way the
same two ways. Where C acts, the files, the frame it sends (the REPLY_CALL to smbd, or the
REQ_CALL to the believed dmaster) and the vacuum's queue are the same as the core's; where it
leaves the event to the loop it wrote nothing; and it leaves only the cases it must (a short
record; an unknown call id on a record held here, which the loop fails and logs — one held
elsewhere is sent on, as the core sends it).
"""

from __future__ import annotations

import random

import pytest

from ctdblab.daemon.core.db.ltdbrules import AUTOMATIC, MIGRATED_WITH_DATA, lmaster_of
from ctdblab.daemon.core.db.migration import (
    DbAttached, DeleteRecord, LocalCall, MigrationCore, MigrationSettings, PeerPacket, ReplyToClient,
    ScheduleForDeletion, SendPacket, StoreRecord, UnscheduleDeletion,
)
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.native.node_plane import (
    CALL_ANSWERED, CALL_LEFT, CALL_SENT, STORE_SCHEDULE, STORE_UNSCHEDULE, call_decide, tdb_functions,
)
from ctdblab.daemon.protocol.constants import CallFunc
from ctdblab.daemon.protocol.packets import ReplyCall, ReplyDmaster, ReqCall, encode_packet
from ctdblab.daemon.protocol.types import LtdbHeader, VnnMap
from ctdblab.daemon.store import DbDirs, DbKind, Store, db_id, libtdb

NAME = "smbXsrv_open_global.tdb"
DB = db_id(NAME)
PNN = 0
LMASTERS = (0, 1, 2)
GEN = 21
SMBD_SRCNODE = 0xFFFFFFFF           # what smbd puts in srcnode (CTDB_CURRENT_NODE)
FNS = tdb_functions(libtdb.lib, libtdb.log_function_address())
CALLIDS = (CallFunc.NULL_FUNC, CallFunc.FETCH_FUNC, CallFunc.FETCH_WITH_HEADER_FUNC)


@pytest.fixture(scope="module")
def lib():
    return node_plane.library(build_if_missing=True)


@pytest.fixture
def files(tmp_path):
    opened = []
    for name in ("c", "py"):
        base = tmp_path / name
        for sub in ("v", "p", "s"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), PNN, hash_size=101)
        opened.append((store, store.attach(NAME, DbKind.VOLATILE)))
    yield opened[0][1], opened[1][1]
    for store, _ in opened:
        store.close()


def new_core() -> MigrationCore:
    core = MigrationCore(MigrationSettings(pnn=PNN), VnnMap(GEN, list(LMASTERS)))
    core.step(DbAttached(DB, NAME, False))
    return core


def random_value(rng: random.Random, dmasters=(PNN, PNN, 1, 2)) -> bytes | None:
    kind = rng.random()
    if kind < 0.3:
        return None
    if kind < 0.34:
        return rng.randbytes(rng.randrange(1, 24))
    flags = 0
    for bit in (MIGRATED_WITH_DATA, AUTOMATIC, 0x1):
        if rng.random() < 0.2:
            flags |= bit
    header = LtdbHeader(rng.choice([0, 1, 9, 2**40]), rng.choice(dmasters), rng.choice([0, 0, 3]), flags)
    data = b"" if rng.random() < 0.4 else rng.randbytes(rng.choice([1, 16, 700]))
    return header.pack() + data


def put(dbs, key: bytes, value: bytes | None) -> None:
    for db in dbs:
        db.tdb.delete(key)
        if value is not None:
            db.tdb.store(key, value)


def carry_out(db, actions) -> dict[bytes, LtdbHeader]:
    queue: dict[bytes, LtdbHeader] = {}
    for action in actions:
        if isinstance(action, StoreRecord):
            db.tdb.store_ltdb(action.key, action.header, action.data)
        elif isinstance(action, DeleteRecord):
            db.tdb.delete(action.key)
        elif isinstance(action, ScheduleForDeletion):
            queue[action.key] = action.header
        elif isinstance(action, UnscheduleDeletion):
            queue.pop(action.key, None)
    return queue


def queue_of(key: bytes, stores) -> dict[bytes, LtdbHeader]:
    """The vacuum's queue after C's store effects, as the loop applies them."""
    queue: dict[bytes, LtdbHeader] = {}
    for effect, header in stores:
        if effect == STORE_SCHEDULE:
            queue[key] = LtdbHeader(*header)
        else:
            assert effect == STORE_UNSCHEDULE
            queue.pop(key, None)
    return queue


def client_call(rng: random.Random, key: bytes) -> tuple[bytes, LocalCall]:
    callid = rng.choice(CALLIDS + (CallFunc.NULL_FUNC, 7))
    flags = rng.choice([0, 1, 1, 4, 5])
    calldata = rng.randbytes(rng.choice([0, 0, 5]))
    reqid = rng.randrange(1, 2**32)
    frame = encode_packet(ReqCall(flags, DB, callid, 0, key, calldata), destnode=0xFFFFFFFF,
                          srcnode=SMBD_SRCNODE, reqid=reqid, pad=rng.random() < 0.5)
    return frame, LocalCall("smbd", reqid, DB, key, callid, flags, calldata)


def reply_frame(actions, srcnode: int = SMBD_SRCNODE) -> bytes:
    (reply,) = [a for a in actions if isinstance(a, ReplyToClient)]
    assert isinstance(reply.body, ReplyCall)
    return encode_packet(reply.body, destnode=srcnode, srcnode=PNN, reqid=reply.reqid)


def test_a_client_call_decides_as_the_core(files, lib):
    db_c, db_py = files
    rng = random.Random(31)
    seen = {CALL_ANSWERED: 0, CALL_SENT: 0, CALL_LEFT: 0}
    for round_ in range(1500):
        key = rng.randbytes(rng.choice([4, 16, 40]))
        value = random_value(rng)
        put(files, key, value)
        frame, event = client_call(rng, key)
        core = new_core()
        actions = core.step(event, db_py.tdb.fetch_ltdb(key) if value is None or len(value) >= 24 else None, 0.0)
        decision = call_decide(FNS, db_c.tdb.context, PNN, LMASTERS, frame, reqid=1, generation=GEN, lib=lib)
        what = f"round {round_}: value {value!r:.80}, frame {frame.hex()}"
        seen[decision.result] += 1
        short = value is not None and len(value) < 24
        if decision.result == CALL_LEFT:
            assert db_c.tdb.fetch(key) == value, what
            assert short or event.callid not in CALLIDS, f"C left a call it must take: {what}"
            continue
        assert not short, what
        queue = carry_out(db_py, actions)
        assert db_c.tdb.fetch(key) == db_py.tdb.fetch(key), what
        assert queue_of(key, decision.stores) == queue, what
        if decision.result == CALL_ANSWERED:
            assert event.callid in CALLIDS, what        # an unknown one fails here: the loop's
            assert decision.frame == reply_frame(actions), what
            assert not any(isinstance(a, SendPacket) for a in actions), what
        else:
            (send,) = [a for a in actions if isinstance(a, SendPacket)]
            assert decision.frame == encode_packet(send.body, destnode=send.dest, srcnode=send.srcnode,
                                                   reqid=send.reqid, generation=send.generation), what
            assert decision.dest == send.dest and decision.stores == (), what
            assert core.in_flight(DB, key).reqid == 1, what
    assert min(seen.values()) > 100, seen


def test_a_landing_decides_as_the_core(files, lib):
    """A call of this node under way (the core's flight, reqid 1); the record lands with a
    REPLY_DMASTER: C stores it, runs the call on it, stores again and answers the client as
    ``_land`` and ``_complete_here`` do."""
    db_c, db_py = files
    rng = random.Random(32)
    landed = left = 0
    for round_ in range(1500):
        key = rng.randbytes(rng.choice([4, 16, 40]))
        lmaster = lmaster_of(key, LMASTERS)
        # the record is elsewhere: missing (and another node its lmaster) or naming another dmaster
        value = random_value(rng, dmasters=(1, 2)) if lmaster == PNN or rng.random() < 0.5 else None
        if value is not None and len(value) < 24 and rng.random() < 0.8:
            value = None
        put(files, key, value)
        frame, event = client_call(rng, key)
        core = new_core()
        first = core.step(event, db_py.tdb.fetch_ltdb(key) if value is None or len(value) >= 24 else None, 0.0)
        if core.in_flight(DB, key) is None:
            continue                     # an unknown call id on a short record: the loop's anyway
        flags = 0
        for bit in (MIGRATED_WITH_DATA, 0x1, 0x01000000):
            if rng.random() < 0.2:
                flags |= bit
        data = b"" if rng.random() < 0.4 else rng.randbytes(rng.choice([1, 30, 900]))
        body = ReplyDmaster(DB, rng.choice([1, 5, 2**33]), key, data, flags if rng.random() < 0.9 else None)
        src = rng.choice([1, 2])
        dmaster_frame = encode_packet(body, destnode=PNN, srcnode=src, reqid=1, generation=GEN)
        actions = core.step(PeerPacket(src, 1, GEN, body), None, 0.5)
        decision = call_decide(FNS, db_c.tdb.context, PNN, LMASTERS, dmaster_frame,
                               landing_for=(event.callid, event.reqid, SMBD_SRCNODE), lib=lib)
        what = f"round {round_}: value {value!r:.80}, frame {dmaster_frame.hex()}"
        carry_out(db_py, first)          # nothing: the call went out
        if decision.result == 0:
            left += 1
            assert db_c.tdb.fetch(key) == value, what
            assert event.callid not in CALLIDS or (value is not None and len(value) < 24), what
            continue
        assert decision.result == 1, what
        landed += 1
        queue = carry_out(db_py, actions)
        assert db_c.tdb.fetch(key) == db_py.tdb.fetch(key), what
        assert queue_of(key, decision.stores) == queue, what
        assert decision.frame == reply_frame(actions), what
        assert core.in_flight(DB, key) is None, what
    assert landed > 500 and left > 50, (landed, left)


def test_the_c_call_leaves_a_locked_chain_alone(files, lib):
    """A chain smbd holds is not waited for: the call goes to the loop, which has the lock
    helper; nothing is written."""
    from chain_holder import chain_held_elsewhere
    db_c, _ = files
    key = next(k for k in (bytes([i]) * 8 for i in range(256)) if lmaster_of(k, LMASTERS) == PNN)
    db_c.tdb.store(key, LtdbHeader(5, PNN, 0, 0).pack() + b"data")
    frame, _ = client_call(random.Random(1), key)
    with chain_held_elsewhere(db_c, key):
        decision = call_decide(FNS, db_c.tdb.context, PNN, LMASTERS, frame, reqid=1, generation=GEN, lib=lib)
        assert decision.result == CALL_LEFT and decision.stores == ()
    assert db_c.tdb.fetch(key) == LtdbHeader(5, PNN, 0, 0).pack() + b"data"
