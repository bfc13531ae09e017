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
import select
import socket
import struct
import time

import pytest

from ctdblab.daemon.core.db.ltdbrules import AUTOMATIC, MIGRATED_WITH_DATA, lmaster_of
from ctdblab.daemon.core.db.migration import (
    DbAttached, LocalCall, MigrationCore, MigrationSettings, PeerPacket, ReplyToClient, SendPacket,
)
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.native.node_plane import (
    CALL_ANSWERED, CALL_ANSWERED_HERE, CALL_FLIGHT, CALL_LANDED, CALL_LEFT, CALL_SCHEDULED, CALL_SENT,
    CALLS_WAITING, CLIENT, FRAME, RECEIVE, SEND, STORE_SCHEDULE, STORE_UNSCHEDULE, NodePlane, call_decide,
    tdb_functions,
)
from ctdblab.daemon.protocol.constants import CallFunc, Control, ControlFlag
from ctdblab.daemon.protocol.packets import ReplyCall, ReplyDmaster, ReqCall, ReqControl, decode_packet, encode_packet
from ctdblab.daemon.protocol.types import KeyData, LtdbHeader, VnnMap
from ctdblab.daemon.store import DbDirs, DbKind, Store, db_id, libtdb
from test_native_grants import _offsets, carry_out      # the core's actions on a file; frames in a stream

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


# -- the plane's thread: calls taken while the loop sleeps -----------------------------------------

PEER = 1                            # the lmaster of the rig's remote keys, and its connections


class Rig:
    """A plane with one client (smbd), one peer (node 1: its inbound and our outbound
    connection), grants and calls on, and a published state the test controls."""

    def __init__(self, tmp_path, lib) -> None:
        base = tmp_path / "rig"
        for sub in ("v", "p", "s"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), PNN, hash_size=101)
        self.db = self.store.attach(NAME, DbKind.VOLATILE)
        self.plane = NodePlane(1 << 20, lib=lib)
        self.plane.enable_grants(FNS, 65536)
        self.plane.enable_calls()
        ours, self.smbd = socket.socketpair()
        self.client = self.plane.add(ours, CLIENT)
        ours, self.peer_in = socket.socketpair()
        self.recv_conn = self.plane.add(ours, RECEIVE)
        ours, self.peer_out = socket.socketpair()
        self.send_conn = self.plane.add(ours, SEND)
        self.busy: list[tuple[int, bytes]] = []
        self.next_reqid = 7

    def publish(self) -> None:
        head = struct.pack("<7I", 1, PNN, GEN, len(LMASTERS), 1, 2, len(self.busy))
        blob = (head + struct.pack(f"<{len(LMASTERS)}I", *LMASTERS)
                + struct.pack("<IIQ", DB, 0, self.db.tdb.context)
                + struct.pack("<iiI", self.recv_conn, PEER, 1) + struct.pack("<iiI", self.send_conn, PEER, 2)
                + b"".join(struct.pack("<II", d, len(k)) + k for d, k in self.busy))
        self.plane.publish(blob)
        self.plane.publish_calls(self.next_reqid)

    def sleep(self) -> None:
        self.publish()
        self.plane.rest_release()

    def wake(self) -> int:
        return self.plane.rest_take()

    def read(self, sock: socket.socket, n: int = 1, timeout: float = 5.0) -> list:
        """n whole packets from `sock` (or what came before the timeout; a loop event ends it)."""
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(list(_offsets(got))) >= n and sum(_lengths(got)) == len(got):
                break
            ready, _, _ = select.select([sock], [], [], 0.05)
            if ready:
                got += sock.recv(1 << 16)
        return [decode_packet(got[pos:pos + struct.unpack_from("<I", got, pos)[0]]) for pos in _offsets(got)]

    def events(self, n: int = 1, timeout: float = 5.0) -> list:
        got: list = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            select.select([self.plane.wake_fd], [], [], 0.05)
            got += self.plane.events()
        return got

    def close(self) -> None:
        self.plane.destroy()
        for s in (self.smbd, self.peer_in, self.peer_out):
            s.close()
        self.store.close()


def _lengths(stream: bytes):
    return [struct.unpack_from("<I", stream, pos)[0] for pos in _offsets(stream)]


@pytest.fixture
def rig(tmp_path, lib):
    r = Rig(tmp_path, lib)
    yield r
    r.close()


def remote_key(seed: int) -> bytes:
    rng = random.Random(seed)
    while True:
        key = rng.randbytes(16)
        if lmaster_of(key, LMASTERS) == PEER:
            return key


def smbd_call(key: bytes, reqid: int, callid: int = CallFunc.NULL_FUNC) -> bytes:
    return encode_packet(ReqCall(1, DB, callid, 0, key), destnode=0xFFFFFFFF, srcnode=SMBD_SRCNODE,
                         reqid=reqid, pad=False)


def test_a_call_goes_out_lands_and_is_answered_while_the_loop_sleeps(rig):
    key = remote_key(1)
    rig.sleep()
    rig.smbd.sendall(smbd_call(key, reqid=40))
    (sent,) = rig.read(rig.peer_out)
    assert isinstance(sent.body, ReqCall) and sent.body.key == key and sent.body.hopcount == 0
    assert (sent.header.destnode, sent.header.srcnode, sent.header.reqid, sent.header.generation) == (
        PEER, PNN, rig.next_reqid, GEN)
    rig.peer_in.sendall(encode_packet(ReplyDmaster(DB, 3, key, b"value", 0), destnode=PNN, srcnode=PEER,
                                      reqid=sent.header.reqid, generation=GEN))
    (reply,) = rig.read(rig.smbd)
    assert isinstance(reply.body, ReplyCall) and reply.header.reqid == 40 and reply.body.status == 0
    assert rig.wake() & CALLS_WAITING
    assert rig.plane.events() == []                      # the loop never saw either packet
    header, data = rig.db.tdb.fetch_ltdb(key)
    assert header.dmaster == PNN and header.rsn == 5 and data == b"value"   # landed (+1), the call (+1)
    log = rig.plane.calls()
    assert [e.kind for e in log] == [CALL_FLIGHT, CALL_LANDED]
    assert log[0].reqid == log[1].reqid == rig.next_reqid and log[0].peer == PEER and log[1].peer == PEER
    assert log[0].client_reqid == 40 and log[0].conn == rig.client and log[0].flags == 1
    assert [effect for effect, _ in log[1].stores] == [STORE_UNSCHEDULE, STORE_UNSCHEDULE]
    assert rig.plane.next_reqid == rig.next_reqid + 1
    assert rig.plane.call_counters() == {"answered": 0, "sent": 1, "landed": 1, "left": 0}


def test_a_call_the_loop_woke_for_leaves_its_landing_to_the_loop(rig):
    """The loop woke between the REQ_CALL and the REPLY_DMASTER: it takes the call from the log
    (as a flight of its own), and the landing reaches it as a frame."""
    key = remote_key(2)
    rig.sleep()
    rig.smbd.sendall(smbd_call(key, reqid=41))
    (sent,) = rig.read(rig.peer_out)
    assert rig.wake() & CALLS_WAITING
    (flight,) = rig.plane.calls()
    assert flight.kind == CALL_FLIGHT and flight.key == key
    landing = encode_packet(ReplyDmaster(DB, 3, key, b"", 0), destnode=PNN, srcnode=PEER,
                            reqid=sent.header.reqid, generation=GEN)
    rig.sleep()
    rig.peer_in.sendall(landing)
    assert rig.events() == [(FRAME, rig.recv_conn, landing)]
    rig.wake()
    assert rig.db.tdb.fetch(key) is None and rig.plane.calls() == []


def test_a_record_held_here_is_answered_at_once(rig):
    key = remote_key(3)
    rig.db.tdb.store_ltdb(key, LtdbHeader(8, PNN, 0, 0), b"abc")
    rig.sleep()
    rig.smbd.sendall(smbd_call(key, reqid=42, callid=CallFunc.FETCH_FUNC))
    (reply,) = rig.read(rig.smbd)
    assert reply.body.data == b"abc" and reply.header.reqid == 42
    rig.wake()
    (entry,) = rig.plane.calls()
    assert entry.kind == CALL_ANSWERED_HERE and entry.stores[0][1][0] == 9


def test_smbds_schedule_for_deletion_is_queued_while_the_loop_sleeps(rig):
    key = remote_key(4)
    header = LtdbHeader(12, PNN, 0, 0)
    frame = encode_packet(ReqControl(Control.SCHEDULE_FOR_DELETION, flags=ControlFlag.NOREPLY,
                                     data=KeyData(DB, header, key).pack()),
                          destnode=0xF0000001, srcnode=SMBD_SRCNODE, reqid=9, pad=False)
    rig.sleep()
    rig.smbd.sendall(frame)
    assert rig.events(timeout=0.5) == []        # no reply (NOREPLY), nothing for the loop
    assert rig.wake() & CALLS_WAITING
    (entry,) = rig.plane.calls()
    assert entry.kind == CALL_SCHEDULED and entry.key == key and entry.db_id == DB
    assert entry.stores == ((STORE_SCHEDULE, (12, PNN, 0, 0)),)
    # awake, or asking for a reply: the loop's
    rig.smbd.sendall(frame)
    assert rig.events() == [(FRAME, rig.client, frame)]
    with_reply = encode_packet(ReqControl(Control.SCHEDULE_FOR_DELETION, data=KeyData(DB, header, key).pack()),
                               destnode=0xF0000001, srcnode=SMBD_SRCNODE, reqid=10, pad=False)
    rig.sleep()
    rig.smbd.sendall(with_reply)
    assert rig.events() == [(FRAME, rig.client, with_reply)]
    rig.wake()


@pytest.mark.parametrize("change", ["busy", "stale", "awake", "in_flight"])
def test_what_the_thread_must_not_take_reaches_the_loop_unchanged(rig, change):
    key = remote_key(5)
    frame = smbd_call(key, reqid=43)
    if change == "busy":
        rig.busy = [(DB, key)]
    if change == "in_flight":                   # a second call for a key the thread sent on
        rig.sleep()
        rig.smbd.sendall(smbd_call(key, reqid=44))
        rig.read(rig.peer_out)
        rig.smbd.sendall(frame)
        assert rig.events() == [(FRAME, rig.client, frame)]
        rig.wake()
        assert [e.kind for e in rig.plane.calls()] == [CALL_FLIGHT]
        return
    if change == "awake":
        rig.publish()                           # published, but the loop keeps its rest
    else:
        rig.sleep()
        if change == "stale":
            rig.wake()
            rig.plane.rest_release()            # a run went by without a publish
    rig.smbd.sendall(frame)
    assert rig.events() == [(FRAME, rig.client, frame)]
    if change != "awake":
        rig.wake()
    assert rig.plane.calls() == [] and rig.db.tdb.fetch(key) is None
