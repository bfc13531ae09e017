"""The lmaster's grant in the native node plane (daemon/native/node_plane.c) decides as the
migration core does (core/db/migration.py), and the plane grants only when it may.

* Differential: random records (missing, short, empty, with data; every dmaster; every record
  flag) and random peers' REQ_CALLs go through the C grant on one TDB file and through
  ``MigrationCore.step`` (its actions carried out) on an identical one. Where C grants, the
  files, the REPLY_DMASTER's bytes, the vacuum entry and the statistics are the same; where C
  hands the packet to the loop it wrote nothing but what the core also writes first (the initial
  store); and C grants every case the core answers with a plain grant, but the two it leaves to
  the loop on purpose (a short record, which the loop reports; a record whose given-away copy
  goes on the vacuum's queue).
* The plane: a granted REQ_CALL is answered on the peer's send connection without an event for
  the loop; anything it must not grant — a key the loop has state for, a stale or unpublished
  state, a loop that is awake, another peer's connection, another generation, a database not
  published — reaches the loop as the frame it was.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import threading
import time

import pytest

from ctdblab.daemon.core.db.ltdbrules import (
    AUTOMATIC, MIGRATED_WITH_DATA, VACUUM_MIGRATED, lmaster_of,
)
from ctdblab.daemon.core.db.migration import (
    DbAttached, DeleteRecord, MigrationCore, MigrationSettings, PeerPacket, ScheduleForDeletion,
    SendPacket, StoreRecord, UnscheduleDeletion, granted_natively,
)
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.native.node_plane import (
    FRAME, GRANTED, GRANTS_WAITING, RECEIVE, SCHEDULED, SEND, NodePlane,
    grant_record, tdb_functions,
)
from ctdblab.daemon.protocol.packets import ReplyDmaster, ReqCall, decode_packet, encode_packet
from ctdblab.daemon.protocol.types import LtdbHeader, VnnMap
from ctdblab.daemon.store import DbDirs, DbKind, Store, db_id, libtdb

NAME = "locking.tdb"
DB = db_id(NAME)
PNN = 1
LMASTERS = (0, 1, 2)
GEN = 11
FNS = tdb_functions(libtdb.lib, libtdb.log_function_address())


@pytest.fixture(scope="module")
def lib():
    return node_plane.library(build_if_missing=True)


def open_db(base):
    for sub in ("v", "p", "s"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), PNN, hash_size=101)
    return store, store.attach(NAME, DbKind.VOLATILE)


def own_keys(rng: random.Random, n: int) -> list[bytes]:
    """Keys whose lmaster is PNN."""
    out = []
    while len(out) < n:
        key = rng.randbytes(rng.choice([1, 4, 16, 24, 40]))
        if lmaster_of(key, LMASTERS) == PNN and key not in out:
            out.append(key)
    return out


def random_value(rng: random.Random) -> bytes | None:
    """What the file holds for a key: None (missing), a short record, or header + data."""
    kind = rng.random()
    if kind < 0.25:
        return None
    if kind < 0.3:
        return rng.randbytes(rng.randrange(1, 24))
    flags = 0
    for bit in (MIGRATED_WITH_DATA, VACUUM_MIGRATED, AUTOMATIC, 0x01000000, 0x02000000, 0x1):
        if rng.random() < 0.2:
            flags |= bit
    header = LtdbHeader(rng.choice([0, 1, 7, 2**40]), rng.choice([PNN, PNN, PNN, 0, 2]),
                        rng.choice([0, 0, 5]), flags)
    data = b"" if rng.random() < 0.4 else rng.randbytes(rng.choice([1, 8, 300, 700, 5000]))
    return header.pack() + data


def req_call(rng: random.Random, key: bytes) -> bytes:
    src = rng.choice([0, 2])
    body = ReqCall(rng.choice([0, 1, 4]), DB, rng.choice([0, 1, 2, 7]), rng.choice([0, 1, 3, 97]),
                   key, rng.randbytes(rng.choice([0, 3])))
    return encode_packet(body, destnode=PNN, srcnode=src, reqid=rng.randrange(1, 2**32),
                         generation=GEN)


def plain_grant(actions) -> SendPacket | None:
    """The core's SendPacket if `actions` are a grant and nothing else (stores, one vacuum
    entry, one REPLY_DMASTER), else None."""
    sends = [a for a in actions if isinstance(a, SendPacket)]
    rest = [a for a in actions if not isinstance(a, (SendPacket, StoreRecord, DeleteRecord,
                                                     ScheduleForDeletion, UnscheduleDeletion))]
    if rest or len(sends) != 1 or not isinstance(sends[0].body, ReplyDmaster):
        return None
    return sends[0]


def carry_out(db, actions) -> dict[bytes, LtdbHeader]:
    """Write the core's stores; what its actions leave on an empty vacuum queue."""
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


def new_core() -> MigrationCore:
    core = MigrationCore(MigrationSettings(pnn=PNN), VnnMap(GEN, list(LMASTERS)))
    core.step(DbAttached(DB, NAME, False))
    return core


def test_the_c_grant_decides_as_the_core(tmp_path, lib):
    rng = random.Random(8)
    store_c, db_c = open_db(tmp_path / "c")
    store_py, db_py = open_db(tmp_path / "py")
    granted = declined = 0
    try:
        for round_ in range(1500):
            key = own_keys(rng, 1)[0]
            value = random_value(rng)
            for db in (db_c, db_py):
                db.tdb.delete(key)
                if value is not None:
                    db.tdb.store(key, value)
            frame = req_call(rng, key)
            packet = decode_packet(frame)

            core = new_core()
            actions = core.step(PeerPacket(packet.header.srcnode, packet.header.reqid, GEN, packet.body),
                                db_py.tdb.fetch_ltdb(key), 0.0)
            scheduled_py = carry_out(db_py, actions)
            send = plain_grant(actions)

            reply, info = grant_record(FNS, db_c.tdb.context, PNN, frame, lib=lib)
            stores, scheduled, rsn, dmaster, reserved1, flags = info
            what = f"round {round_}: value {value!r:.80}, frame {frame.hex()}"
            if reply is not None:
                granted += 1
                assert send is not None, what
                assert reply == encode_packet(send.body, destnode=send.dest, srcnode=send.srcnode,
                                              reqid=send.reqid, generation=send.generation), what
                assert db_c.tdb.fetch(key) == db_py.tdb.fetch(key), what
                assert stores == sum(isinstance(a, (StoreRecord, DeleteRecord)) for a in actions), what
                # the loop takes a grant as: the initial store's entry (if any), then taken off
                # by the grant's store (NativeGrants.take): nothing is left, as on the core's path
                assert scheduled_py == {}, what
                bookkept = new_core()
                granted_natively(bookkept, DB, key, packet.body.hopcount, 0.0)
                assert bookkept.stats == core.stats, what
                assert bookkept.db_stats == core.db_stats, what
                assert bookkept.handoffs.given.keys() == core.handoffs.given.keys(), what
                continue
            declined += 1
            if stores:            # the initial store of a missing record, then handed over
                assert value is None, what
                assert db_c.tdb.fetch(key) == LtdbHeader(1, PNN, 0, 0).pack(), what
                assert scheduled and (rsn, dmaster, flags) == (1, PNN, 0), what
                if send is None:  # the core stopped there too: the same entry is queued
                    assert scheduled_py == {key: LtdbHeader(rsn, dmaster, reserved1, flags)}, what
            else:
                assert db_c.tdb.fetch(key) == value, what
            short = value is not None and len(value) < 24
            vacuum_entry = (value is not None and not short and len(value) == 24
                            and LtdbHeader.unpack_from(value, 0)[0].flags & AUTOMATIC)
            assert send is None or short or vacuum_entry, f"C declined a plain grant: {what}"
    finally:
        store_c.close()
        store_py.close()
    assert granted > 300 and declined > 300, (granted, declined)


def test_the_c_grant_leaves_a_locked_chain_alone(tmp_path, lib):
    """A chain another process holds (smbd) is not touched: the loop waits for it."""
    from chain_holder import chain_held_elsewhere
    store, db = open_db(tmp_path / "n")
    try:
        key = own_keys(random.Random(3), 1)[0]
        db.tdb.store(key, LtdbHeader(5, PNN, 0, 0).pack() + b"data")
        with chain_held_elsewhere(db, key):
            reply, info = grant_record(FNS, db.tdb.context, PNN, req_call(random.Random(1), key), lib=lib)
            assert reply is None and info[0] == 0
        assert db.tdb.fetch(key) == LtdbHeader(5, PNN, 0, 0).pack() + b"data"   # (fetch blocks on a held chain)
        reply, _ = grant_record(FNS, db.tdb.context, PNN, req_call(random.Random(1), key), lib=lib)
        assert reply is not None
    finally:
        store.close()


def test_the_c_grant_leaves_a_corrupt_chain_to_the_loop(tmp_path, lib):
    """A corrupt chain is never taken for a missing record (re-created empty, its value lost):
    the grant leaves it to the loop, and the file's own log function is back afterwards, so
    the loop's read reports the corruption."""
    store, db = open_db(tmp_path / "n")
    try:
        key = own_keys(random.Random(12), 1)[0]
        db.tdb.store(key, LtdbHeader(5, PNN, 0, 0).pack() + b"precious value")
        with open(db.path, "r+b") as f:
            raw = f.read()
            at = raw.find(key + LtdbHeader(5, PNN, 0, 0).pack())
            assert at > 24
            f.seek(at - 24)                 # the TDB record header before the key: bad magic
            f.write(b"\xaa" * 24)
        before = db.tdb.complaints
        reply, info = grant_record(FNS, db.tdb.context, PNN, req_call(random.Random(2), key), lib=lib)
        assert reply is None and info[0] == 0
        assert db.tdb.complaints == before          # ours were counted by the grant, not the file's
        with pytest.raises(Exception, match="(?i)corrupt|magic"):
            db.tdb.fetch(key)                        # the file's log function is back
        assert db.tdb.complaints > before
    finally:
        store.close()


# -- the plane ---------------------------------------------------------------------------------

class Rig:
    """A plane with grants on, one peer (node 0) connected both ways by socket pairs, and the
    test thread playing the loop: it holds the rest except inside `asleep()`."""

    def __init__(self, tmp_path, lib) -> None:
        self.store, self.db = open_db(tmp_path / "rig")
        self.plane = NodePlane(1 << 20, lib=lib)
        self.plane.enable_grants(FNS, 65536)
        ours, self.peer_in = socket.socketpair()        # the peer writes to us here
        self.recv_conn = self.plane.add(ours, RECEIVE)
        ours, self.peer_out = socket.socketpair()       # we write to the peer here
        self.send_conn = self.plane.add(ours, SEND)
        self.busy: list[tuple[int, bytes]] = []
        self.open = True
        self.generation = GEN
        self.dbs = [(DB, self.db.tdb.context)]

    def blob(self) -> bytes:
        head = struct.pack("<7I", int(self.open), PNN, self.generation, len(LMASTERS), len(self.dbs),
                           2, len(self.busy))
        lm = struct.pack(f"<{len(LMASTERS)}I", *LMASTERS)
        dbs = b"".join(struct.pack("<IIQ", d, 0, ctx) for d, ctx in self.dbs)
        links = struct.pack("<iiI", self.recv_conn, 0, 1) + struct.pack("<iiI", self.send_conn, 0, 2)
        busy = b"".join(struct.pack("<II", d, len(k)) + k for d, k in self.busy)
        return head + lm + dbs + links + busy

    def publish(self) -> None:
        self.plane.publish(self.blob())

    def asleep(self, frames: list[bytes], replies: int, timeout: float = 5.0):
        """Send `frames` from the peer while the loop sleeps; wait for `replies` frames at the
        peer or a loop event. Returns (the peer's replies, the loop's events, rest_take flags)."""
        self.plane.rest_release()
        try:
            self.peer_in.sendall(b"".join(frames))
            got = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                need = sum(struct.unpack_from("<I", got, pos)[0] for pos in _offsets(got))
                if replies and len(got) >= need and len(list(_offsets(got))) >= replies:
                    break
                ready, _, _ = select.select([self.peer_out, self.plane.wake_fd], [], [], 0.05)
                if self.plane.wake_fd in ready:
                    break
                if self.peer_out in ready:
                    got += self.peer_out.recv(1 << 16)
        finally:
            flags = self.plane.rest_take()
        return got, self.plane.events(), flags

    def close(self) -> None:
        self.plane.destroy()
        self.peer_in.close()
        self.peer_out.close()
        self.store.close()


def _offsets(stream: bytes):
    pos = 0
    while len(stream) - pos >= 4:
        yield pos
        pos += struct.unpack_from("<I", stream, pos)[0]


@pytest.fixture
def rig(tmp_path, lib):
    r = Rig(tmp_path, lib)
    yield r
    r.close()


def call_from_peer(key: bytes, reqid: int = 5, generation: int = GEN, src: int = 0) -> bytes:
    return encode_packet(ReqCall(0, DB, 0, 2, key), destnode=PNN, srcnode=src, reqid=reqid,
                         generation=generation)


def test_a_grant_is_answered_without_the_loop(rig):
    keys = own_keys(random.Random(4), 3)
    rig.db.tdb.store(keys[1], LtdbHeader(9, PNN, 0, 0).pack() + b"payload")
    rig.publish()
    got, events, flags = rig.asleep([call_from_peer(k, reqid=i + 1) for i, k in enumerate(keys)], 3)
    assert events == []
    assert flags & GRANTS_WAITING and rig.plane.grants_wanted
    replies = [decode_packet(got[pos:pos + struct.unpack_from("<I", got, pos)[0]]) for pos in _offsets(got)]
    assert [p.header.reqid for p in replies] == [1, 2, 3]
    assert all(isinstance(p.body, ReplyDmaster) and p.header.destnode == 0 for p in replies)
    assert replies[1].body.data == b"payload" and replies[1].body.rsn == 9
    assert replies[1].body.record_flags == MIGRATED_WITH_DATA
    for key in keys:            # every copy here now names node 0
        assert rig.db.tdb.fetch_ltdb(key)[0].dmaster == 0
    grants = rig.plane.grants()
    assert [(g.key, g.what, g.srcnode, g.hopcount) for g in grants] == [
        (keys[0], GRANTED | SCHEDULED, 0, 2), (keys[1], GRANTED, 0, 2), (keys[2], GRANTED | SCHEDULED, 0, 2)]
    assert grants[0].scheduled == (1, PNN, 0)
    assert rig.plane.grant_counters()["granted"] == 3


@pytest.mark.parametrize("change", ["busy", "unpublished_run", "other_generation", "closed",
                                    "db_unpublished", "other_sender", "not_lmaster", "loop_awake"])
def test_what_the_plane_must_not_grant_reaches_the_loop_unchanged(rig, change):
    rng = random.Random(6)
    key = own_keys(rng, 1)[0]
    frame = call_from_peer(key)
    if change == "busy":
        rig.busy = [(DB, b"other"), (DB, key)]
    elif change == "other_generation":
        frame = call_from_peer(key, generation=GEN + 1)
    elif change == "closed":
        rig.open = False
    elif change == "db_unpublished":
        rig.dbs = []
    elif change == "other_sender":
        frame = call_from_peer(key, src=2)
    elif change == "not_lmaster":
        while True:
            key = rng.randbytes(8)
            if lmaster_of(key, LMASTERS) != PNN:
                break
        frame = call_from_peer(key)
    rig.publish()
    if change == "unpublished_run":
        rig.plane.rest_release()
        rig.plane.rest_take()           # a loop run after the publish: stale
    if change == "loop_awake":
        rig.peer_in.sendall(frame)      # the rest stays with the loop
        deadline = time.monotonic() + 5
        events = []
        while not events and time.monotonic() < deadline:
            select.select([rig.plane.wake_fd], [], [], 0.05)
            events = rig.plane.events()
        got = b""
    else:
        got, events, _ = rig.asleep([frame], 0)
        deadline = time.monotonic() + 5
        while not events and time.monotonic() < deadline:
            select.select([rig.plane.wake_fd], [], [], 0.05)
            events += rig.plane.events()
    assert got == b""
    assert events == [(FRAME, rig.recv_conn, frame)]
    assert rig.db.tdb.fetch(key) is None
    assert rig.plane.grants() == []


def test_the_order_rule_a_frame_waiting_for_the_loop_stops_grants(rig):
    """Behind a frame the loop has not taken, nothing is granted, whatever its key."""
    keys = own_keys(random.Random(9), 2)
    other = encode_packet(ReqCall(0, DB, 0, 0, b"x"), destnode=PNN, srcnode=0, reqid=1,
                          generation=GEN + 5)                   # not grantable: for the loop
    rig.publish()
    got, events, _ = rig.asleep([other, call_from_peer(keys[0], reqid=2)], 0)
    deadline = time.monotonic() + 5
    while len(events) < 2 and time.monotonic() < deadline:
        select.select([rig.plane.wake_fd], [], [], 0.05)
        events += rig.plane.events()
    assert [e[2] for e in events] == [other, call_from_peer(keys[0], reqid=2)]
    assert got == b""
    assert rig.plane.grant_counters()["order"] == 1


def test_publish_refuses_a_malformed_state(rig):
    with pytest.raises(ValueError):
        rig.plane.publish(rig.blob()[:-3] if rig.busy else rig.blob() + b"\x01")
    with pytest.raises(ValueError):
        rig.plane.publish(b"\x00" * 5)


# -- the loop's side (server/native_grants.py) on a running asyncio loop ---------------------------

class _PeerProtocol:
    """What NodeTransport's inbound protocol does with frames the plane hands to the loop."""

    def __init__(self, calls) -> None:
        self.calls = calls

    def connection_made(self, transport) -> None:
        pass

    def frames_received(self, frames) -> None:
        for frame in frames:
            packet = decode_packet(frame)
            self.calls.node_packet(0, packet.header, packet.body)

    def connection_lost(self, exc) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.links: list[tuple[int, int, int]] = []
        self.answered: list[tuple[int, int, int, int]] = []

    def plane_links(self):
        return self.links

    def count_answered(self, pnn, received_op, sent_op, count) -> None:
        self.answered.append((pnn, received_op, sent_op, count))


def test_the_loop_publishes_before_it_sleeps_and_takes_the_grants_when_it_wakes(tmp_path, lib):
    import asyncio

    from ctdblab.daemon.net.plane_links import PlaneLinks, RestSelector
    from ctdblab.daemon.server.native_grants import NativeGrants
    from ctdblab.daemon.server.record_calls import RecordCalls
    from ctdblab.daemon.server.tasks import Tasks

    async def main() -> None:
        store, db = open_db(tmp_path / "loop")
        core = MigrationCore(MigrationSettings(pnn=PNN))
        sent: list = []
        calls = RecordCalls(core, store.by_id, lambda pnn, frame: sent.append((pnn, frame)) or True,
                            Tasks(), time.monotonic, lambda reason: None)
        calls.db_attached(DB, NAME, False)
        calls.vnnmap_changed(VnnMap(GEN, list(LMASTERS)))
        scheduled: list = []
        calls.on_schedule = lambda db_id, key, header: scheduled.append((db_id, key, header))
        unscheduled: list = []
        calls.on_unschedule = lambda db_id, key: unscheduled.append((db_id, key))
        links = PlaneLinks(1 << 20)
        loop = asyncio.get_running_loop()
        peer_in, ours_in = socket.socketpair()
        peer_out, ours_out = socket.socketpair()
        transport = _Transport()
        recv = links.adopt(ours_in, RECEIVE, _PeerProtocol(calls))
        send = links.adopt(ours_out, SEND, _PeerProtocol(calls))
        transport.links = [(recv.conn, 0, 1), (send.conn, 0, 2)]
        traffic: list[int] = []
        grants = NativeGrants(links, transport, calls, store.by_id, lambda pnn, now: traffic.append(pnn))
        try:
            assert grants.start()
            assert isinstance(loop._selector, RestSelector)
            peer_out.setblocking(False)
            keys = own_keys(random.Random(21), 4)

            async def ask(key: bytes, reqid: int, wait: float = 2.0) -> bytes:
                # sent from another thread once the loop sleeps (sent while it runs, the frame
                # would find the published state stale and go to the loop)
                threading.Timer(0.02, peer_in.sendall, [call_from_peer(key, reqid=reqid)]).start()
                try:
                    return await asyncio.wait_for(loop.sock_recv(peer_out, 1 << 16), wait)
                except asyncio.TimeoutError:
                    return b""

            # Until a peer asks this node as its lmaster the loop keeps its rest: the first such
            # call is the loop's, and from then on the thread grants.
            assert not links.plane.grants_wanted
            assert await ask(keys[3], 9, wait=0.2) == b""
            for _ in range(200):                         # the loop's turn may come late under load
                if sent:
                    break
                await asyncio.sleep(0.01)
            assert [decode_packet(f).header.reqid for _, f in sent] == [9]
            assert links.plane.grants_wanted
            sent.clear()
            scheduled.clear()
            unscheduled.clear()
            base = (core.stats.node_req_call, core.stats.migrations_out, calls.counters.immediate,
                    calls.counters.packets_sent, calls.counters.stores)

            reply = decode_packet(await ask(keys[0], 1))
            assert isinstance(reply.body, ReplyDmaster) and reply.header.reqid == 1
            await asyncio.sleep(0.01)                    # a wake after the grant: taken
            assert links.plane.grant_counters()["granted"] == 1
            assert (core.stats.node_req_call, core.stats.migrations_out, calls.counters.immediate,
                    calls.counters.packets_sent) == (base[0] + 1, base[1] + 1, base[2] + 1, base[3] + 1)
            assert calls.counters.stores == base[4] + 2  # the initial store and the grant's
            assert [(d, k) for d, k, _ in scheduled] == [(DB, keys[0])]
            assert unscheduled == [(DB, keys[0])]        # ... and off again: it was given away
            assert transport.answered == [(0, 0, 3, 1)] and traffic == [0]
            assert keys[0] in core.handoffs.take(DB, time.monotonic())
            assert sent == []                            # the loop sent nothing itself

            # a pinned key is the loop's: it holds the call until the pin ends, then grants it
            core.pins.pin(DB, keys[1], time.monotonic() + 0.2)
            assert await ask(keys[1], 2, wait=0.1) == b""
            assert links.plane.grant_counters()["busy"] == 1
            await asyncio.sleep(0.3)
            assert [decode_packet(f).header.reqid for _, f in sent] == [2]     # from the loop

            reply = decode_packet(await ask(keys[2], 3))       # and the thread grants again
            assert reply.header.reqid == 3
            await asyncio.sleep(0.01)
            assert links.plane.grant_counters()["granted"] == 2 and core.stats.migrations_out == base[1] + 3
        finally:
            links.close()
            assert not isinstance(loop._selector, RestSelector)
            for s in (peer_in, peer_out):
                s.close()
            calls.close()
            store.close()

    asyncio.run(main())


def test_the_published_state_names_every_key_the_loop_has_state_for(tmp_path, lib):
    """NativeGrants.state(): each kind of state the core and its shell keep for a key makes the
    key busy; a database with a lock of this daemon held, a persistent one, or one with unsettled
    keys is not published; banned or in recovery, the node grants nothing."""
    from collections import deque

    from ctdblab.daemon.core.db.flights import Flight, Waiter
    from ctdblab.daemon.net.plane_links import PlaneLinks
    from ctdblab.daemon.server.native_grants import NativeGrants
    from ctdblab.daemon.server.record_calls import RecordCalls
    from ctdblab.daemon.server.tasks import Tasks
    import asyncio

    async def main() -> None:
        store, db = open_db(tmp_path / "state")
        core = MigrationCore(MigrationSettings(pnn=PNN))
        calls = RecordCalls(core, store.by_id, lambda pnn, frame: True, Tasks(), time.monotonic,
                            lambda reason: None)
        calls.db_attached(DB, NAME, False)
        calls.db_attached(0x1234, "secrets.tdb", True)
        calls.vnnmap_changed(VnnMap(GEN, list(LMASTERS)))
        links = PlaneLinks(1 << 20)
        grants = NativeGrants(links, _Transport(), calls, store.by_id, lambda pnn, now: None)
        keys = own_keys(random.Random(30), 6)
        try:
            def published():
                blob = grants.state()
                open_, pnn, gen, nlm, ndbs, nlinks, nbusy = struct.unpack_from("<7I", blob)
                pos = 28 + 4 * nlm
                dbs = [struct.unpack_from("<IIQ", blob, pos + 16 * i)[0] for i in range(ndbs)]
                pos += 16 * ndbs + 12 * nlinks
                busy = set()
                for _ in range(nbusy):
                    d, n = struct.unpack_from("<II", blob, pos)
                    busy.add((d, blob[pos + 8:pos + 8 + n]))
                    pos += 8 + n
                assert pos == len(blob)
                return bool(open_), (pnn, gen), dbs, busy

            assert published() == (True, (PNN, GEN), [DB], set())
            waiter = Waiter("client", 1, 0, 0, b"", 0.0)
            core.flights.add(Flight(DB, keys[0], 77, GEN, 0.0, waiter, waiter))
            core.pins.pin(DB, keys[1], time.monotonic() + 60)
            core.pins.pin(DB, keys[5], time.monotonic() - 1)          # over: not busy
            calls.waiting[(DB, keys[2])] = deque()
            calls.current[(DB, keys[3])] = None
            packet = decode_packet(call_from_peer(keys[4]))
            calls.timers.append((time.monotonic() + 1, 0, PeerPacket(0, 5, GEN, packet.body)))
            core.settling.waiting[(DB, b"settling")] = []
            assert published()[3] == {(DB, k) for k in keys[:5]} | {(DB, b"settling")}

            lock = db.try_lock(b"held by the daemon")
            assert published()[2] == []
            lock.release()
            assert published()[2] == [DB]
            core.settling.unsettled.add_epoch(DB, (0, 1), (0, 1, 2), frozenset({b"k"}))
            assert published()[2] == []
            core.settling.unsettled.clear(DB)

            core.gate.recovering = True
            assert published()[0] is False
            core.gate.recovering = False
            core.banned = True
            assert published()[0] is False
        finally:
            links.close()
            calls.close()
            store.close()

    asyncio.run(main())


# -- the daemon, end to end -----------------------------------------------------------------------

@pytest.mark.parametrize("clients_in_plane, calls_in_plane", [(False, False), (True, False), (True, True)],
                         ids=["clients-asyncio", "clients-plane", "calls-plane"])
def test_the_daemons_grant_natively_and_count_it(tmp_path, lib, monkeypatch, clients_in_plane,
                                                  calls_in_plane):
    """Three pyctdbd daemons as they start by default (grants on): calls from node 0's client for
    keys other nodes are lmaster of are answered, the lmasters' threads granted them, and
    `ctdb statistics` there counts them as the Python path does. The same with the local
    clients (the test's and the ctdb tool's) in the plane (PYCTDBD_CLIENT_PLANE=1), and with
    node 0's thread taking the client's calls too (PYCTDBD_NATIVE_CALLS=1): then its statistics
    count them as the loop would have."""
    for name in ("PYCTDBD_NATIVE_GRANTS", "PYCTDBD_NODE_PLANE", "PYCTDBD_NATIVE", "PYCTDBD_CLIENT_PLANE",
                 "PYCTDBD_NATIVE_CALLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYCTDBD_CLIENT_PLANE", "1" if clients_in_plane else "0")
    if not calls_in_plane:
        monkeypatch.setenv("PYCTDBD_NATIVE_CALLS", "0")     # (both on by default)
    import re
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from pyctdbd_cluster import LocalCluster, have_ctdb_cli
    from test_db_bad_input import Client
    from ctdblab.daemon.protocol import Operation

    if not have_ctdb_cli():
        pytest.skip("Debian's ctdb tool is not installed")
    cluster = LocalCluster(tmp_path / "cluster", 3)
    cluster.start()
    try:
        cluster.wait_for("a settled cluster", cluster.settled, timeout=40)
        client = Client(cluster.socket(0))
        ident = client.attach("native_grants.tdb")
        for pnn in (1, 2):
            Client(cluster.socket(pnn)).attach("native_grants.tdb")
        rng = random.Random(40)
        keys = [rng.randbytes(16) for _ in range(300)]
        for key in keys:
            reply = client.call(ident, key)
            assert reply.header.operation == Operation.REPLY_CALL and reply.body.status == 0
        node0 = cluster.ok(0, "statistics")
        req_calls = 0
        for pnn in (1, 2):
            text = cluster.ok(pnn, "statistics")
            node_part = text.split("\n node\n", 1)[1].split("\n client\n", 1)[0]
            req_calls += int(re.search(r"^\s+req_call\s+(\d+)", node_part, re.M).group(1))
        client.close()
    finally:
        cluster.stop()
    logs = [cluster.log(pnn).read_text() for pnn in range(3)]
    assert all("Node connections go through the native node plane" in t for t in logs)
    assert all("The native node plane answers the lmaster's grant" in t for t in logs)
    assert all(("Local clients go through the native node plane" in t) == clients_in_plane for t in logs)
    client_part = node0.split("\n client\n", 1)[1]
    assert int(re.search(r"^\s+req_call\s+(\d+)", client_part, re.M).group(1)) >= len(keys)
    assert int(re.search(r"^\s+total_calls\s+(\d+)", node0, re.M).group(1)) >= len(keys)
    assert int(re.search(r"^\s+pending_calls\s+(\d+)", node0, re.M).group(1)) == 0
    answered = [tuple(map(int, m)) for m in re.findall(
        r"Native calls: (\d+) answered, (\d+) sent on, (\d+) landed", logs[0])]
    if calls_in_plane:
        (here, sent, landed), = answered
        assert sent >= 100 and landed >= 100 and here >= 30, answered    # ~2/3 of keys elsewhere
    else:
        assert answered == []
    granted = [int(m) for t in logs[1:] for m in re.findall(r"Native grants: (\d+) granted", t)]
    assert sum(granted) >= 150, granted          # ~2/3 of the keys have their lmaster there
    assert req_calls >= sum(granted)             # the lmasters' statistics count the grants


@pytest.mark.parametrize("env, wanted", [
    ({}, (True, True)),
    ({"PYCTDBD_NATIVE_GRANTS": "1"}, (True, True)),
    ({"PYCTDBD_NATIVE_GRANTS": "0"}, (False, False)),
    ({"PYCTDBD_NATIVE_GRANTS": "0", "PYCTDBD_NODE_PLANE": "1"}, (True, False)),
    ({"PYCTDBD_NODE_PLANE": "0"}, (False, False)),
    ({"PYCTDBD_NATIVE": "0"}, (False, False)),
    ({"PYCTDBD_NATIVE": "0", "PYCTDBD_NATIVE_GRANTS": "1"}, (False, False)),
])
def test_the_environment_turns_the_native_path_off(env, wanted):
    from ctdblab.daemon.net.plane_links import native_path_wanted
    assert native_path_wanted(env) == wanted


@pytest.mark.parametrize("env, wanted", [
    ({}, True),
    ({"PYCTDBD_CLIENT_PLANE": "0"}, False),
    ({"PYCTDBD_CLIENT_PLANE": "1"}, True),
    ({"PYCTDBD_CLIENT_PLANE": "1", "PYCTDBD_NATIVE_GRANTS": "0"}, False),   # no plane at all
    ({"PYCTDBD_CLIENT_PLANE": "1", "PYCTDBD_NODE_PLANE": "0"}, False),
    ({"PYCTDBD_CLIENT_PLANE": "1", "PYCTDBD_NATIVE": "0"}, False),
])
def test_the_environment_keeps_the_local_clients_out_of_the_plane(env, wanted):
    from ctdblab.daemon.net.plane_links import clients_in_plane_wanted
    assert clients_in_plane_wanted(env) is wanted


@pytest.mark.parametrize("env, wanted", [({}, True), ({"PYCTDBD_NATIVE_CALLS": "1"}, True),
                                         ({"PYCTDBD_NATIVE_CALLS": "0"}, False)])
def test_the_environment_leaves_smbds_calls_to_the_loop(env, wanted):
    from ctdblab.daemon.server import native_calls
    assert native_calls.wanted(env) is wanted
