"""server/traverses.py and controls/traverse.py: cluster-wide traverses on three in-process
nodes, each with a real Store (TDB files in a tmp dir, walked in a forked child) and its own
TraverseService behind the real control dispatcher. A fake messenger carries the NOREPLY
controls between the nodes (one loop turn later, like a network), can make a node silent (takes
packets, never answers) or dead (not connected), and records what reached the client: the
control's reply and every REQ_MESSAGE, in order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.controls import traverse as traverse_controls
from ctdblab.daemon.core.db.registry import DbInfo
from ctdblab.daemon.protocol import (
    Control, ControlFlag, RecData, TraverseAll, TraverseStart, TraverseStartExt, pack_request,
    unpack_request,
)
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum
from ctdblab.daemon.protocol.types import LtdbHeader
from ctdblab.daemon.server.dispatch import ControlDispatcher, Request, Result
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.server.traverses import TraverseService
from ctdblab.daemon.store import DbDirs, DbKind, Store

from aio_helpers import until

VOLATILE = "locking.tdb"
PERSISTENT = "secrets.tdb"
CLIENT = SimpleNamespace(client_id=7, pid=4242)
SRVID = 0xF100000000000007
CLIENT_REQID = 77


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMessenger:
    def __init__(self, cluster: Cluster, pnn: int) -> None:
        self.cluster = cluster
        self.pnn = pnn

    def send_noreply(self, pnn: int, opcode: int, data: bytes = b"", *, srvid: int = 0,
                     flags: int = 0) -> bool:
        cluster = self.cluster
        if pnn in cluster.dead:
            return False
        cluster.sent.append((self.pnn, pnn, opcode, unpack_request(opcode, data)))
        if pnn not in cluster.silent:
            req = Request(opcode, flags | ControlFlag.NOREPLY, srvid, 0, data, self.pnn)
            asyncio.get_running_loop().call_soon(
                cluster.nodes[pnn].dispatcher.dispatch, req, lambda res: None)
        return True

    def deliver_local(self, srvid: int, data: bytes, src: int | None = None) -> int:
        self.cluster.client.append(("message", self.pnn, srvid, RecData.unpack(data)))
        return 1

    def connected_peers(self) -> list[int]:
        return [p for p in range(3) if p != self.pnn and p not in self.cluster.dead]


class Node:
    def __init__(self, cluster: Cluster, pnn: int, root) -> None:
        for sub in ("v", "p", "s"):
            (root / sub).mkdir(parents=True)
        self.pnn = pnn
        self.store = Store(DbDirs(str(root / "v"), str(root / "p"), str(root / "s")), pnn, hash_size=1001)
        self.volatile = self.store.attach(VOLATILE, DbKind.VOLATILE)
        self.persistent = self.store.attach(PERSISTENT, DbKind.PERSISTENT)
        self.tasks = Tasks()
        self.service = TraverseService(
            pnn, FakeMessenger(cluster, pnn), lookup=self.store.by_id, registry_info=self.info,
            active_nodes=lambda: [p for p in range(3) if p not in cluster.dead],
            vnnmap=lambda: (0, 1, 2), tunables=cluster.tunables, spawn=self.tasks.spawn,
            clock=cluster.clock)
        self.dispatcher = ControlDispatcher(dict(traverse_controls.HANDLERS), self.tasks.spawn)
        self.dispatcher.context = SimpleNamespace(traverses=self.service, pnn=pnn)

    def info(self, db_id: int) -> DbInfo | None:
        db = self.store.by_id(db_id)
        return None if db is None else DbInfo(db.name, db.db_id, db.db_flags)

    async def put(self, db, key: bytes, dmaster: int, value: bytes, rsn: int = 1) -> None:
        await db.store_ltdb(key, LtdbHeader(rsn, dmaster), value)


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.tunables = Tunables()
        self.dead: set[int] = set()
        self.silent: set[int] = set()
        self.sent: list[tuple[int, int, int, object]] = []
        self.client: list[tuple] = []             # what node 0's client saw, in order
        self.nodes = [Node(self, pnn, tmp_path / f"n{pnn}") for pnn in range(3)]

    def start(self, request, pnn: int = 0, client=CLIENT) -> None:
        """The client's TRAVERSE_START(_EXT): the reply is recorded, then its `after` runs,
        as the daemon does once the reply is on the socket."""
        ext = isinstance(request, TraverseStartExt)
        opcode = Control.TRAVERSE_START_EXT if ext else Control.TRAVERSE_START

        def reply(res: Result) -> None:
            self.client.append(("reply", res.status, res.errmsg))
            if res.after is not None:
                res.after()

        self.nodes[pnn].dispatcher.dispatch(
            Request(opcode, 0, 0, client.client_id, pack_request(opcode, request), pnn, client), reply)

    def messages(self) -> list[tuple[bytes, bytes]]:
        return [(m[3].key, m[3].data) for m in self.client if m[0] == "message"]

    def ended(self) -> bool:
        return any(m[0] == "message" and not m[3].key and not m[3].data for m in self.client)

    def sent_ops(self, opcode: int) -> list[tuple[int, int]]:
        return [(src, dst) for src, dst, op, _ in self.sent if op == opcode]

    def close(self) -> None:
        for node in self.nodes:
            node.service.close()
            node.tasks.cancel_all()
            node.store.close()


def run(tmp_path, scenario):
    async def main():
        cluster = Cluster(tmp_path)
        try:
            await scenario(cluster)
            await asyncio.sleep(0.05)          # let stray walks finish before the stores close
        finally:
            cluster.close()
    asyncio.run(main())


def record(rsn: int, dmaster: int, value: bytes) -> bytes:
    return LtdbHeader(rsn, dmaster).pack() + value


async def fill_volatile(cluster: Cluster) -> None:
    """Each key's dmaster holds the live copy; other nodes hold stale copies that name
    another dmaster; `empty` is a deleted record (header only) on its dmaster."""
    n0, n1, n2 = cluster.nodes
    await n0.put(n0.volatile, b"a", 0, b"A")
    await n1.put(n1.volatile, b"a", 0, b"A-stale")
    await n0.put(n0.volatile, b"b", 1, b"B-stale")
    await n1.put(n1.volatile, b"b", 1, b"B", rsn=5)
    await n2.put(n2.volatile, b"c", 2, b"C")
    await n0.put(n0.volatile, b"d", 2, b"D-stale")
    await n2.put(n2.volatile, b"d", 2, b"D", rsn=3)
    await n2.put(n2.volatile, b"empty", 2, b"")


def start_of(cluster: Cluster) -> tuple:
    return cluster.client[0]


# -- a volatile database over three nodes ----------------------------------------------------
def test_each_live_record_once_then_the_end_marker_and_the_reply_first(tmp_path):
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        db_id = cluster.nodes[0].volatile.db_id
        cluster.start(TraverseStart(db_id, CLIENT_REQID, SRVID))
        await until(cluster.ended)
        assert start_of(cluster) == ("reply", 0, None)                  # before any record
        assert sorted(cluster.messages()[:-1]) == [
            (b"a", record(1, 0, b"A")), (b"b", record(5, 1, b"B")), (b"c", record(1, 2, b"C")),
            (b"d", record(3, 2, b"D"))]
        assert cluster.messages()[-1] == (b"", b"")                     # the end, once, last
        assert all(m[2] == SRVID and m[3].reqid == CLIENT_REQID for m in cluster.client[1:])
        # TRAVERSE_ALL to the two peers, TRAVERSE_DATA back to node 0 (records + end markers)
        assert sorted(cluster.sent_ops(Control.TRAVERSE_ALL)) == [(0, 1), (0, 2)]
        assert sorted(set(cluster.sent_ops(Control.TRAVERSE_DATA))) == [(1, 0), (2, 0)]
        await until(lambda: all(not n.service.walks() for n in cluster.nodes))
        assert cluster.nodes[0].service.active() == []
    run(tmp_path, scenario)


def test_ext_with_empty_records(tmp_path):
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        cluster.start(TraverseStartExt(cluster.nodes[0].volatile.db_id, CLIENT_REQID, SRVID, True))
        await until(cluster.ended)
        assert start_of(cluster) == ("reply", 0, None)
        keys = sorted(key for key, _ in cluster.messages()[:-1])
        assert keys == [b"a", b"b", b"c", b"d", b"empty"]
        assert sorted(cluster.sent_ops(Control.TRAVERSE_ALL_EXT)) == [(0, 1), (0, 2)]
    run(tmp_path, scenario)


def test_persistent_database_is_read_on_this_node_only(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, _ = cluster.nodes
        await n0.put(n0.persistent, b"k", 0, b"v", rsn=2)
        await n0.put(n0.persistent, DB_SEQNUM_TDB_KEY, 0, pack_seqnum(4), rsn=4)
        await n1.put(n1.persistent, b"other", 1, b"x")
        cluster.start(TraverseStart(n0.persistent.db_id, CLIENT_REQID, SRVID))
        await until(cluster.ended)
        assert start_of(cluster) == ("reply", 0, None)
        assert sorted(cluster.messages()[:-1]) == [
            (DB_SEQNUM_TDB_KEY, record(4, 0, pack_seqnum(4))), (b"k", record(2, 0, b"v"))]
        assert cluster.sent == []                                    # nobody else was asked
    run(tmp_path, scenario)


def test_unknown_database_is_refused_and_nothing_follows(tmp_path):
    async def scenario(cluster: Cluster):
        cluster.start(TraverseStart(0x12345678, CLIENT_REQID, SRVID))
        await asyncio.sleep(0.05)
        assert cluster.client == [("reply", -1, "Unknown db 0x12345678 in traverse start")]
        assert cluster.sent == []
        # and from a node rather than a client
        results = []
        cluster.nodes[0].dispatcher.dispatch(
            Request(Control.TRAVERSE_START, 0, 0, 0,
                    pack_request(Control.TRAVERSE_START, TraverseStart(1, 1, 1)), 1), results.append)
        assert results[0].status == -1
    run(tmp_path, scenario)


def test_nobody_to_ask_ends_at_once_but_only_after_the_reply(tmp_path):
    """No active node (this one inactive too): the core ends the traverse in the same step that
    answers it; the end marker still reaches the client after the reply."""
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        n0.service.active_nodes = lambda: ()
        cluster.start(TraverseStart(n0.volatile.db_id, CLIENT_REQID, SRVID))
        assert cluster.client[0] == ("reply", 0, None)
        assert cluster.messages() == [(b"", b"")] and cluster.sent == []
        assert n0.service.active() == [] and n0.service.walks() == []
    run(tmp_path, scenario)


# -- nodes that do not answer ----------------------------------------------------------------
def test_silent_node_hits_the_timeout_and_the_client_still_gets_the_end_marker(tmp_path):
    """TraverseTimeout 1 s, kept by the service's own timer: records of nodes 0 and 1, then the
    end marker after about a second, and TRAVERSE_KILL to the connected peers."""
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        loop = asyncio.get_running_loop()
        cluster.tunables.set("TraverseTimeout", 1)
        cluster.nodes[0].service.clock = loop.time
        cluster.silent.add(2)
        started = loop.time()
        cluster.start(TraverseStart(cluster.nodes[0].volatile.db_id, CLIENT_REQID, SRVID))
        await until(lambda: len(cluster.messages()) == 2)
        assert not cluster.ended()
        await until(cluster.ended, timeout=3)
        assert 0.9 < loop.time() - started < 2.5
        assert start_of(cluster) == ("reply", 0, None)
        assert sorted(cluster.messages()[:-1]) == [(b"a", record(1, 0, b"A")), (b"b", record(5, 1, b"B"))]
        kills = [(src, dst, req) for src, dst, op, req in cluster.sent if op == Control.TRAVERSE_KILL]
        assert sorted(dst for _, dst, _ in kills) == [1, 2]
        assert all(req == TraverseStart(cluster.nodes[0].volatile.db_id, CLIENT_REQID, SRVID)
                   for _, _, req in kills)
        assert cluster.nodes[0].service.active() == []
    run(tmp_path, scenario)


def test_timeout_by_tick_and_node_gone_ends_without_waiting(tmp_path):
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        n0 = cluster.nodes[0]
        cluster.silent.add(2)
        cluster.start(TraverseStart(n0.volatile.db_id, CLIENT_REQID, SRVID))
        await until(lambda: len(cluster.messages()) == 2)
        assert n0.service.next_deadline() == cluster.clock.now + 20          # TraverseTimeout
        n0.service.tick(cluster.clock.now + 19.9)
        assert not cluster.ended()
        n0.service.node_gone(2)                                              # it died
        # Ends as soon as node 1's end marker is in (it may still be on its way): no timeout.
        await until(cluster.ended, timeout=1)
        assert len(cluster.messages()) == 3
        assert cluster.sent_ops(Control.TRAVERSE_KILL) == []                 # ended normally
        # a second traverse, now timing out by tick()
        cluster.client.clear()
        cluster.start(TraverseStart(n0.volatile.db_id, CLIENT_REQID + 1, SRVID))
        await until(lambda: len(cluster.messages()) == 2)
        n0.service.tick(cluster.clock.now + 20)
        assert cluster.ended() and cluster.messages()[-1] == (b"", b"")
        assert sorted(dst for _, dst in cluster.sent_ops(Control.TRAVERSE_KILL)) == [1, 2]
    run(tmp_path, scenario)


def test_dead_node_is_not_waited_for(tmp_path):
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        cluster.dead.add(2)                          # not connected, yet still thought active
        n0 = cluster.nodes[0]
        db_id = n0.volatile.db_id
        n0.service.active_nodes = lambda: (0, 1, 2)
        cluster.start(TraverseStart(db_id, CLIENT_REQID, SRVID))
        await until(cluster.ended, timeout=2)
        assert sorted(key for key, _ in cluster.messages()[:-1]) == [b"a", b"b"]
    run(tmp_path, scenario)


# -- kills -----------------------------------------------------------------------------------
def test_traverse_kill_stops_a_walk_before_and_during_its_records(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, _ = cluster.nodes
        db_id = n1.volatile.db_id
        all_req = Request(Control.TRAVERSE_ALL, ControlFlag.NOREPLY, 0, 0, pack_request(
            Control.TRAVERSE_ALL, traverse_all(db_id)), 0)
        kill_req = Request(Control.TRAVERSE_KILL, ControlFlag.NOREPLY, 0, 0, pack_request(
            Control.TRAVERSE_KILL, TraverseStart(db_id, CLIENT_REQID, SRVID)), 0)
        # killed before the walk ran: nothing is sent, not even an end marker
        n1.dispatcher.dispatch(all_req, lambda res: None)
        assert len(n1.service.walks()) == 1
        n1.dispatcher.dispatch(kill_req, lambda res: None)
        assert n1.service.walks() == []
        await asyncio.sleep(0.05)
        assert cluster.sent_ops(Control.TRAVERSE_DATA) == []
        # killed mid-walk: a big copy (more than a pipe's worth) and the kill after the first record
        value = b"x" * 200
        await n1.volatile.run_in_child(lambda tdb: [tdb.store_ltdb(b"k%05d" % i, LtdbHeader(1, 1), value)
                                                    for i in range(3000)] and None)
        cluster.silent.add(0)                        # node 0 gets no data; we count what is sent
        first = asyncio.get_running_loop().create_future()
        messenger = n1.service.messenger
        plain = messenger.send_noreply

        def counting(pnn, opcode, data=b"", **kw):
            if opcode == Control.TRAVERSE_DATA and not first.done():
                first.set_result(None)
                asyncio.get_running_loop().call_soon(n1.dispatcher.dispatch, kill_req, lambda res: None)
            return plain(pnn, opcode, data, **kw)

        messenger.send_noreply = counting
        n1.dispatcher.dispatch(all_req, lambda res: None)
        await first
        await until(lambda: n1.service.walks() == [])
        await asyncio.sleep(0.05)
        data = [req for src, dst, op, req in cluster.sent if op == Control.TRAVERSE_DATA]
        assert 0 < len(data) < 3000
        assert all(rec.key for rec in data)          # no end marker after a kill
    run(tmp_path, scenario)


def traverse_all(db_id: int) -> TraverseAll:
    """Node 0's TRAVERSE_ALL for the client's traverse."""
    return TraverseAll(db_id, 5, 0, CLIENT_REQID, SRVID)


def test_client_gone_mid_traverse_kills_the_walks_everywhere(tmp_path):
    async def scenario(cluster: Cluster):
        await fill_volatile(cluster)
        n0 = cluster.nodes[0]
        db_id = n0.volatile.db_id
        cluster.silent.add(2)
        cluster.start(TraverseStart(db_id, CLIENT_REQID, SRVID))
        await until(lambda: len(cluster.messages()) == 2)
        n0.service.client_gone(CLIENT.client_id)
        assert not cluster.ended()                                       # nobody to tell
        assert n0.service.active() == []
        kills = [(dst, req) for src, dst, op, req in cluster.sent if op == Control.TRAVERSE_KILL]
        assert sorted(dst for dst, _ in kills) == [1, 2]
        assert all(req == TraverseStart(db_id, CLIENT_REQID, SRVID) for _, req in kills)
        n0.service.client_gone(CLIENT.client_id)                         # twice: nothing more
        assert len(cluster.sent_ops(Control.TRAVERSE_KILL)) == 2
        # late data for the finished traverse is dropped
        n0.service.data(2, RecData(1, b"late", record(1, 2, b"L")))
        assert len(cluster.messages()) == 2
    run(tmp_path, scenario)


def test_database_gone_ends_its_traverse(tmp_path):
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        cluster.silent.update({1, 2})
        cluster.start(TraverseStart(n0.volatile.db_id, CLIENT_REQID, SRVID))
        await until(lambda: n0.service.walks() == [])              # its own walk is done
        assert not cluster.ended()
        n0.service.database_gone(n0.volatile.db_id)
        assert cluster.ended() and n0.service.active() == []
    run(tmp_path, scenario)


def test_handlers_cover_the_opcodes():
    assert set(traverse_controls.HANDLERS) == {
        Control.TRAVERSE_START, Control.TRAVERSE_START_EXT, Control.TRAVERSE_ALL,
        Control.TRAVERSE_ALL_EXT, Control.TRAVERSE_DATA, Control.TRAVERSE_KILL}
