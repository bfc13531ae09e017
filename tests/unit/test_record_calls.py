"""server/record_calls.py: the migration core's shell, on a 3-node in-process cluster.

Each node is a real ``RecordCalls`` around a real ``MigrationCore`` with its own real ``Store``
(TDB files through the system libtdb, in a tmp dir). The mesh is a fake ``send_frame`` that
decodes each frame and hands it to the peer's ``node_packet`` on the next loop turn (per-link
order kept; a link can hold its frames). Clients are either in-process fakes that speak the
wire format through ``client_call``, or — the faithful smbd — separate processes that open the
node's TDB file with the flags the daemon reports and run smbd's fetch_locked loop on it (chain
lock, read the header, use the record if dmaster == this node, else unlock, ask for a migration
and wait for the reply). A separate process is needed because libtdb lets two chain-lock calls of
one process on one chain both succeed. A libtdb call that blocked the loop by mistake would hang
in C, so these tests use pytest-timeout's thread method.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import statistics
import struct
import subprocess
import sys
import time

import pytest

from ctdblab.daemon.core.db.migration import (
    LocalCall, MigrationCore, MigrationSettings, PeerPacket, Requeue,
)
from ctdblab.daemon.protocol import CURRENT_NODE, Operation
from ctdblab.daemon.protocol.constants import CallFlag, CallFunc
from ctdblab.daemon.protocol.ltdb import jenkins_hash
from ctdblab.daemon.protocol.packets import ReqCall, decode_packet, encode_packet
from ctdblab.daemon.protocol.types import VnnMap
from ctdblab.daemon.server.record_calls import RecordCalls
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.store import DbDirs, DbKind, Store, TdbErr, TdbError, db_id, libtdb

pytestmark = pytest.mark.timeout(60, method="thread")

LIBDIR = os.path.dirname(libtdb.__file__)
NAME = "locking.tdb"
DB = db_id(NAME)
N = 3
GEN = 7
HASH_SIZE = 1001
MIGRATE = int(CallFlag.IMMEDIATE_MIGRATION)
NULL, FETCH = int(CallFunc.NULL_FUNC), int(CallFunc.FETCH_FUNC)
COUNTER = struct.Struct("<Q")

# smbd's fetch_locked loop in its own process: PATH opened with FLAGS, KEY (hex) used OPS times,
# each use holding the chain lock for WORK seconds, THINK seconds between uses. A use adds 1 to a
# u64 counter after the 24-byte header, which is stored unchanged. Prints "ready" and starts on a
# line on stdin; prints "migrate" and waits for "ok" on stdin when the record is not here;
# "done <uses> <migrations>" at the end.
SMBD = r"""
import ctypes, os, struct, sys, time
sys.path.insert(0, sys.argv[1])
import libtdb
path, flags, key = sys.argv[2], int(sys.argv[3], 0), bytes.fromhex(sys.argv[4])
pnn, ops, work, think = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
lib = libtdb.lib
ctx = lib.tdb_open_ex(path.encode(), 0, flags, os.O_RDWR, 0o600, None, None)
assert ctx, "open failed"
k = libtdb.key_data(key)
done = migrations = 0
print("ready", flush=True)
sys.stdin.readline()
while done < ops:
    assert lib.tdb_chainlock(ctx, k) == 0
    data = lib.tdb_fetch(ctx, k)
    value = ctypes.string_at(data.dptr, data.dsize) if data.dptr else b""
    if data.dptr:
        libtdb.libc.free(ctypes.cast(data.dptr, ctypes.c_void_p))
    if len(value) >= 24 and struct.unpack_from("<I", value, 8)[0] == pnn:
        count = struct.unpack_from("<Q", value, 24)[0] if len(value) >= 32 else 0
        new = value[:24] + struct.pack("<Q", count + 1)
        assert lib.tdb_store(ctx, k, libtdb.key_data(new), 1) == 0
        time.sleep(work)
        lib.tdb_chainunlock(ctx, k)
        done += 1
        time.sleep(think)
        continue
    lib.tdb_chainunlock(ctx, k)
    migrations += 1
    print("migrate", flush=True)
    if sys.stdin.readline().strip() != "ok":
        print("error", flush=True)
        sys.exit(1)
print(f"done {done} {migrations}", flush=True)
"""

# Holds the chain lock of KEY (hex) in PATH (blocking), prints "held", releases on a line on
# stdin.
HOLDER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import libtdb
ctx = libtdb.lib.tdb_open_ex(sys.argv[2].encode(), 0, int(sys.argv[3], 0), os.O_RDWR, 0o600, None, None)
assert ctx, "open failed"
k = libtdb.key_data(bytes.fromhex(sys.argv[4]))
assert libtdb.lib.tdb_chainlock(ctx, k) == 0
print("held", flush=True)
sys.stdin.readline()
libtdb.lib.tdb_chainunlock(ctx, k)
"""


def key_with_lmaster(lmaster: int, prefix: bytes = b"key", avoid_chain: bytes | None = None) -> bytes:
    for i in itertools.count():
        key = prefix + str(i).encode()
        h = jenkins_hash(key)
        if h % N != lmaster:
            continue
        if avoid_chain is None or h % HASH_SIZE != jenkins_hash(avoid_chain) % HASH_SIZE:
            return key


class CountingTasks(Tasks):
    def __init__(self) -> None:
        super().__init__()
        self.spawned = 0

    def spawn(self, coro, name=None):
        self.spawned += 1
        return super().spawn(coro, name)


class RecordingCore(MigrationCore):
    """Notes every record event it steps (what, from whom, which key) in order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, int, bytes]] = []

    def step(self, event, record=None, now=0.0):
        if isinstance(event, LocalCall):
            self.seen.append(("local", event.reqid, bytes(event.key)))
        elif isinstance(event, PeerPacket) and hasattr(event.body, "key"):
            self.seen.append((type(event.body).__name__, event.srcnode, bytes(event.body.key)))
        return super().step(event, record, now)


class Net:
    """The mesh: frames decoded and delivered on the next loop turn, in order per link. A held
    link keeps its frames until released (a slow or broken connection)."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.held: dict[tuple[int, int], list] = {}
        self.sent: list[tuple[int, int, object]] = []

    def sender(self, src: int):
        def send_frame(dest: int, frame: bytes) -> bool:
            assert dest != src, "a node sent a packet to itself"
            packet = decode_packet(frame)
            self.sent.append((src, dest, packet))
            if (src, dest) in self.held:
                self.held[(src, dest)].append(packet)
            else:
                self.deliver(src, dest, packet)
            return True
        return send_frame

    def deliver(self, src: int, dest: int, packet) -> None:
        asyncio.get_running_loop().call_soon(self.nodes[dest].calls.node_packet, src, packet.header,
                                             packet.body)

    def hold(self, src: int, dest: int) -> None:
        self.held[(src, dest)] = []

    def release(self, src: int, dest: int) -> None:
        for packet in self.held.pop((src, dest)):
            self.deliver(src, dest, packet)


class Node:
    def __init__(self, pnn: int, tmp_path, net: Net, core_cls=MigrationCore, helper_argv=None) -> None:
        base = tmp_path / f"node{pnn}"
        for sub in ("v", "p", "s"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.pnn = pnn
        self.store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), pnn,
                           hash_size=HASH_SIZE, helper_argv=helper_argv)
        self.db = self.store.attach(NAME, DbKind.VOLATILE)
        self.core = core_cls(MigrationSettings(pnn=pnn))
        self.tasks = CountingTasks()
        self.recoveries: list[str] = []
        self.calls = RecordCalls(self.core, self.store.by_id, net.sender(pnn), self.tasks,
                                 time.monotonic, self.recoveries.append)
        self.calls.db_attached(DB, NAME, False)
        net.nodes[pnn] = self

    def record(self, key: bytes):
        return self.db.tdb.fetch_ltdb(key)

    def close(self) -> None:
        self.calls.close()
        self.tasks.cancel_all()
        self.store.close()


class Cluster:
    def __init__(self, tmp_path, core_cls=MigrationCore, helper_argv=None) -> None:
        self.net = Net()
        self.nodes = [Node(p, tmp_path, self.net, core_cls, helper_argv) for p in range(N)]
        self.vnnmap(GEN)

    def vnnmap(self, generation: int) -> None:
        for node in self.nodes:
            node.calls.vnnmap_changed(VnnMap(generation, list(range(N))))

    def dmasters(self, key: bytes) -> list[int]:
        out = []
        for node in self.nodes:
            record = node.record(key)
            if record is not None and record[0].dmaster == node.pnn:
                out.append(node.pnn)
        return out

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class FakeClient:
    """A local client speaking the wire format: REQ_CALL in through client_call, the reply
    caught by send() and matched by reqid."""

    def __init__(self, srcnode: int | None = None) -> None:
        self.srcnode = srcnode
        self.reqids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.replies: list = []
        self.gone = False
        self.last_reqid = 0

    def send(self, frame: bytes) -> bool:
        if self.gone:
            return False
        packet = decode_packet(frame)
        self.replies.append(packet)
        fut = self.pending.pop(packet.header.reqid, None)
        if fut is not None and not fut.done():
            fut.set_result(packet)
        return True

    def start(self, node: Node, key: bytes, callid: int = NULL, flags: int = MIGRATE,
              db: int = DB) -> asyncio.Future:
        reqid = self.last_reqid = next(self.reqids)
        srcnode = node.pnn if self.srcnode is None else self.srcnode
        frame = encode_packet(ReqCall(flags, db, callid, 0, key), destnode=CURRENT_NODE,
                              srcnode=srcnode, reqid=reqid, pad=False)          # as smbd sends it
        packet = decode_packet(frame)
        fut = asyncio.get_running_loop().create_future()
        self.pending[reqid] = fut
        node.calls.client_call(self, packet.header, packet.body)
        return fut

    async def call(self, node: Node, key: bytes, callid: int = NULL, flags: int = MIGRATE,
                   db: int = DB, timeout: float = 5.0):
        return await asyncio.wait_for(self.start(node, key, callid, flags, db), timeout)


class Ticker:
    """A 10 ms periodic task: proves the loop keeps running."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.ticks = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            self.ticks += 1

    def stop(self) -> None:
        self.task.cancel()


async def idle(cluster: Cluster, timeout: float = 5.0) -> None:
    """Until no node has a queued event, a pending requeue or a call under way."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while any(n.calls.waiting or n.calls.timers or len(n.core.flights) for n in cluster.nodes):
        assert loop.time() < end, "cluster did not go idle"
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)


def run(tmp_path, body, **cluster_kwargs):
    async def main():
        cluster = Cluster(tmp_path, **cluster_kwargs)
        try:
            await body(cluster)
        finally:
            cluster.close()
    asyncio.run(main())


async def start_process(script: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", script, LIBDIR, *args,
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def smbd(node: Node, key: bytes, ops: int, start: asyncio.Barrier,
               work: float = 0.0003, think: float = 0.0005) -> tuple[int, int, list]:
    """One smbd process on `node` doing `ops` uses of `key`, starting when every process of
    `start` is ready; its migrations go through client_call. Returns (uses, migrations, client
    replies)."""
    proc = await start_process(SMBD, node.db.path, hex(node.db.open_flags), key.hex(),
                               str(node.pnn), str(ops), str(work), str(think))
    client = FakeClient()
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
            if line == "ready":
                await start.wait()
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
                continue
            if line == "migrate":
                reply = await client.call(node, key)
                ok = reply.header.operation == Operation.REPLY_CALL and reply.body.status == 0
                proc.stdin.write(b"ok\n" if ok else b"error\n")
                await proc.stdin.drain()
                continue
            assert line.startswith("done"), f"smbd on node {node.pnn} said {line!r}"
            _, uses, migrations = line.split()
            assert await proc.wait() == 0
            return int(uses), int(migrations), client.replies
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# =============================================================================================
# (1) smbd fetch-lock loops on one key, one process per node
# =============================================================================================

def test_fetch_lock_loops_of_separate_smbd_processes_converge(tmp_path):
    key = b"share-mode:file-id-1"
    ops = 25

    async def body(cluster: Cluster):
        start = asyncio.Barrier(N)
        results = await asyncio.wait_for(
            asyncio.gather(*(smbd(node, key, ops, start) for node in cluster.nodes)), 20)
        await idle(cluster)
        assert [uses for uses, _, _ in results] == [ops] * N
        for _, migrations, replies in results:
            assert len(replies) == migrations
            assert all(r.header.operation == Operation.REPLY_CALL for r in replies)
        (holder,) = cluster.dmasters(key)                 # exactly one dmaster
        header, data = cluster.nodes[holder].record(key)
        assert COUNTER.unpack(data)[0] == N * ops           # every increment is there
        lmaster = jenkins_hash(key) % N
        assert cluster.nodes[lmaster].record(key)[0].dmaster == holder
        for node in cluster.nodes:
            record = node.record(key)
            assert record is None or record[0].rsn <= header.rsn
            assert not node.recoveries
        assert sum(n.calls.counters.immediate for n in cluster.nodes) > 0
        print(f"\n[record_calls] 3 smbd processes x {ops} uses: "
              f"{sum(m for _, m, _ in results)} migrations asked, "
              f"{sum(n.calls.counters.contended for n in cluster.nodes)} events waited for smbd's lock")

    run(tmp_path, body)


def test_in_process_clients_contending_through_the_daemons_own_locker(tmp_path):
    # Many fetch-lock loops per node, taking the chain lock through the daemon's ChainLocker (the
    # database's turn excludes the shell meanwhile, so the shell's try_lock fails and its events
    # queue behind the client).
    key = b"brlock:hot"
    ops, per_node = 15, 3

    async def loop_client(node: Node, cid: int) -> int:
        client = FakeClient()
        done = 0
        while done < ops:
            lock = await node.db.lock(key)
            record = node.db.tdb.fetch_ltdb(key)
            if record is not None and record[0].dmaster == node.pnn:
                header, data = record
                count = COUNTER.unpack(data)[0] if data else 0
                node.db.tdb.store_ltdb(key, header, COUNTER.pack(count + 1))
                await asyncio.sleep(0.0002 * (cid + 1))      # work while holding the lock
                lock.release()
                done += 1
                await asyncio.sleep(0)
                continue
            lock.release()
            reply = await client.call(node, key)
            assert reply.header.operation == Operation.REPLY_CALL
        return done

    async def body(cluster: Cluster):
        done = await asyncio.wait_for(asyncio.gather(
            *(loop_client(node, c) for node in cluster.nodes for c in range(per_node))), 20)
        await idle(cluster)
        assert done == [ops] * (N * per_node)
        (holder,) = cluster.dmasters(key)
        assert COUNTER.unpack(cluster.nodes[holder].record(key)[1])[0] == N * per_node * ops
        assert sum(n.calls.counters.contended for n in cluster.nodes) > 0
        assert sum(n.calls.counters.queued for n in cluster.nodes) > 0

    run(tmp_path, body)


# =============================================================================================
# the hot path, and the time of one round
# =============================================================================================

def test_uncontended_migration_is_synchronous_and_measured(tmp_path):
    key = key_with_lmaster(0)

    async def body(cluster: Cluster):
        client = FakeClient()
        assert (await client.call(cluster.nodes[0], key)).body.status == 0   # lmaster: local
        times = []
        grace = cluster.nodes[0].core.settings.local_grace
        for i in range(120):
            node = cluster.nodes[1 + i % 2]                   # the record moves every round
            await asyncio.sleep(grace * 1.5)                  # after the landing's pin (core policy)
            start = time.perf_counter()
            reply = await client.call(node, key)
            times.append(time.perf_counter() - start)
            assert reply.header.operation == Operation.REPLY_CALL and reply.body.status == 0
            assert cluster.dmasters(key) == [node.pnn]
        await idle(cluster)
        assert all(n.tasks.spawned == 0 for n in cluster.nodes)       # no task on the hot path
        assert all(n.calls.counters.contended == 0 for n in cluster.nodes)
        assert sum(n.calls.counters.immediate for n in cluster.nodes) > 3 * 120
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"\n[record_calls] uncontended migration round (client call -> record landed, "
              f"in-process mesh, 2-3 packets): median {median * 1e6:.0f} us, p90 {p90 * 1e6:.0f} us")
        assert median < 0.01

    run(tmp_path, body)


# =============================================================================================
# (2) FETCH of a missing record
# =============================================================================================

def test_fetch_of_a_missing_record_returns_empty(tmp_path):
    async def body(cluster: Cluster):
        client = FakeClient()
        for lmaster in range(N):
            key = key_with_lmaster(lmaster, b"missing")
            reply = await client.call(cluster.nodes[1], key, callid=FETCH, flags=0)
            assert reply.header.operation == Operation.REPLY_CALL
            assert (reply.body.status, reply.body.data) == (0, b"")
            assert reply.header.destnode == 1 and reply.header.srcnode == 1
        await idle(cluster)
        # ...and a FETCH of a stored value returns it without the header
        key = key_with_lmaster(2, b"present")
        node = cluster.nodes[2]
        await client.call(node, key)
        node.db.tdb.store_ltdb(key, node.record(key)[0], b"value")
        reply = await client.call(cluster.nodes[0], key, callid=FETCH, flags=0)
        assert (reply.body.status, reply.body.data) == (0, b"value")

    run(tmp_path, body)


# =============================================================================================
# (3) errors: unknown database, vanished database, lock failures, libtdb errors
# =============================================================================================

def test_unknown_db_id_gets_reply_error(tmp_path):
    async def body(cluster: Cluster):
        client = FakeClient(srcnode=0x12)
        reply = await client.call(cluster.nodes[1], b"k", db=0xDEADBEEF)
        assert reply.header.operation == Operation.REPLY_ERROR
        assert reply.header.reqid == 1 and reply.header.destnode == 0x12
        assert reply.body.status == -1
        assert b"Unknown database in request. db_id==0xdeadbeef" in reply.body.msg
        # a peer's REQ_CALL for an unknown database: REPLY_ERROR to its origin
        node = cluster.nodes[2]
        node.calls.db_detached(DB)
        key = key_with_lmaster(2)
        reply = await client.call(cluster.nodes[0], key)
        assert reply.header.operation == Operation.REPLY_ERROR
        assert b"Unknown database" in reply.body.msg
        await idle(cluster)

    run(tmp_path, body)


def test_vanished_database_is_answered_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ctdblab.daemon")

    async def body(cluster: Cluster):
        node = cluster.nodes[1]
        client = FakeClient()
        # a call under way when the store loses the database
        cluster.net.hold(1, 0)
        waiting = client.start(node, key_with_lmaster(0))
        await asyncio.sleep(0.01)
        node.store.detach(NAME)                        # the core was not told
        replies = [await client.call(node, key_with_lmaster(1, b"x")) for _ in range(3)]
        assert all(r.header.operation == Operation.REPLY_ERROR for r in replies)
        late = await asyncio.wait_for(waiting, 2)
        assert late.header.operation == Operation.REPLY_ERROR     # its waiting call failed too
        vanished = [r for r in caplog.records if "not open in the store" in r.getMessage()]
        assert len(vanished) == 1
        assert node.calls.counters.errors == {"vanished": 1}
        cluster.net.release(1, 0)
        await idle(cluster)

    run(tmp_path, body)


def test_lock_helper_failure_and_closed_file_answer_the_client(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ctdblab.daemon")

    async def body(cluster: Cluster):
        node = cluster.nodes[0]
        key = key_with_lmaster(0)
        holder = await start_process(HOLDER, node.db.path, hex(node.db.open_flags), key.hex())
        try:
            assert (await proc_line(holder)) == "held"
            client = FakeClient()
            replies = [await client.call(node, key) for _ in range(3)]
            assert all(r.header.operation == Operation.REPLY_ERROR for r in replies)
            assert b"cannot lock the record" in replies[0].body.msg
            assert len([r for r in caplog.records if "cannot lock a record" in r.getMessage()]) == 1
            assert node.calls.counters.errors == {"lock": 3}
            # a peer's call meeting the broken lock gets REPLY_ERROR back at its origin
            reply = await FakeClient().call(cluster.nodes[1], key)
            assert reply.header.operation == Operation.REPLY_ERROR
        finally:
            holder.stdin.write(b"\n")
            await holder.wait()
        # libtdb failing (here: the file closed under the daemon)
        other = cluster.nodes[2]
        other.db.tdb.close()
        reply = await FakeClient().call(other, key_with_lmaster(2))
        assert reply.header.operation == Operation.REPLY_ERROR
        assert other.calls.counters.errors == {"lock": 1}
        await idle(cluster)

    run(tmp_path, body, helper_argv=["/nonexistent/ctdb_lock_helper"])


async def proc_line(proc) -> str:
    return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()


def test_detach_while_calls_wait_for_a_held_lock_answers_them(tmp_path):
    async def body(cluster: Cluster):
        node = cluster.nodes[0]
        key = key_with_lmaster(0)
        holder = await start_process(HOLDER, node.db.path, hex(node.db.open_flags), key.hex())
        try:
            assert (await proc_line(holder)) == "held"
            client = FakeClient()
            waiting = [client.start(node, key) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert not any(f.done() for f in waiting) and node.calls.waiting
            node.calls.db_detached(DB)                    # DB_DETACH while smbd holds the lock
            replies = await asyncio.wait_for(asyncio.gather(*waiting), 2)
            assert all(r.header.operation == Operation.REPLY_ERROR for r in replies)
            assert all(b"Unknown database" in r.body.msg for r in replies)
            assert [r.header.reqid for r in client.replies] == [1, 2, 3]    # each answered once
            await asyncio.sleep(0.02)
            assert not node.calls.waiting and not node.calls.drains
        finally:
            holder.stdin.write(b"\n")
            await holder.wait()

    run(tmp_path, body)


class FailingStores:
    """A Database whose record writes fail (a full or broken disk); locks and reads work."""

    def __init__(self, db) -> None:
        self.db = db
        self.db_id, self.name = db.db_id, db.name
        self.tdb = self

    def try_lock(self, key):
        return self.db.try_lock(key)

    async def lock(self, key):
        return await self.db.lock(key)

    def fetch_ltdb(self, key):
        return self.db.tdb.fetch_ltdb(key)

    def store_ltdb(self, key, header, data):
        raise TdbError("tdb_storev", TdbErr.IO, errno.ENOSPC, self.db.path)

    delete = store_ltdb


def test_a_failing_store_answers_reply_error_and_forces_a_recovery(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="ctdblab.daemon")

    async def body(cluster: Cluster):
        key = key_with_lmaster(0)
        await FakeClient().call(cluster.nodes[0], key)        # node 0 holds it
        node = cluster.nodes[1]
        broken = FailingStores(node.db)
        node.calls.lookup = lambda ident: broken if ident == DB else None
        client = FakeClient()
        reply = await client.call(node, key)                  # the record lands, the store fails
        assert reply.header.operation == Operation.REPLY_ERROR
        assert b"store failed" in reply.body.msg
        assert len(node.recoveries) == 1 and "cannot store a record" in node.recoveries[0]
        reply = await client.call(node, key_with_lmaster(1, b"local"))   # a local initial store
        assert reply.header.operation == Operation.REPLY_ERROR
        assert len([r for r in caplog.records if "cannot store a record" in r.getMessage()]) == 1
        assert node.calls.counters.errors == {"tdb": 2}
        # the dmaster cannot write its copy as given away: the record is not handed on (two
        # dmasters otherwise), a recovery is forced, and the call goes through after it
        giver = cluster.nodes[0]
        key2 = key_with_lmaster(0, b"given")
        await FakeClient().call(giver, key2)
        broken = FailingStores(giver.db)
        giver.calls.lookup = lambda ident: broken if ident == DB else None
        mark = len(cluster.net.sent)
        waiting = client.start(cluster.nodes[2], key2)
        await asyncio.sleep(0.05)
        assert not waiting.done() and len(giver.recoveries) == 1
        assert [p.header.operation for src, _, p in cluster.net.sent[mark:] if src == 0] == []
        assert cluster.dmasters(key2) == [0]
        giver.calls.lookup = giver.store.by_id
        cluster.vnnmap(GEN + 1)                               # the recovery re-sends the call
        reply = await asyncio.wait_for(waiting, 2)
        assert reply.header.operation == Operation.REPLY_CALL
        assert cluster.dmasters(key2) == [2]

    run(tmp_path, body)


# =============================================================================================
# (4) a vnnmap change re-sends the calls under way
# =============================================================================================

def test_vnnmap_change_resends_calls_in_flight(tmp_path):
    async def body(cluster: Cluster):
        key = key_with_lmaster(0)
        client = FakeClient()
        await client.call(cluster.nodes[0], key)             # node 0 holds it
        cluster.net.hold(1, 0)                                # node 1's call gets stuck
        waiting = client.start(cluster.nodes[1], key)
        await asyncio.sleep(0.02)
        assert not waiting.done()
        (stuck,) = [p for s, d, p in cluster.net.sent if (s, d) == (1, 0)]
        cluster.vnnmap(GEN + 1)                               # a recovery
        cluster.net.release(1, 0)                             # the old packet arrives late
        reply = await asyncio.wait_for(waiting, 2)
        assert reply.header.operation == Operation.REPLY_CALL and reply.body.status == 0
        calls = [p for s, d, p in cluster.net.sent if (s, d) == (1, 0)
                 and p.header.operation == Operation.REQ_CALL]
        assert len(calls) == 2
        assert calls[0].header.generation == GEN and calls[1].header.generation == GEN + 1
        assert calls[0].header.reqid != calls[1].header.reqid
        assert cluster.nodes[1].core.stats.reissued_calls == 1
        await idle(cluster)
        assert cluster.dmasters(key) == [1]
        assert [r.header.reqid for r in client.replies] == [1, 2]     # one reply per call
        assert stuck.header.reqid == calls[0].header.reqid

    run(tmp_path, body)


# =============================================================================================
# (5) a contended chain lock: the loop runs, other keys go on, one key's events keep their order
# =============================================================================================

def test_contended_lock_keeps_per_key_order_and_never_blocks_the_loop(tmp_path):
    async def body(cluster: Cluster):
        node0 = cluster.nodes[0]
        key = key_with_lmaster(0)
        other = key_with_lmaster(0, b"other", avoid_chain=key)
        local = FakeClient()
        await local.call(node0, key)                          # node 0: lmaster and dmaster
        holder = await start_process(HOLDER, node0.db.path, hex(node0.db.open_flags), key.hex())
        try:
            assert (await proc_line(holder)) == "held"       # smbd holds the chain lock
            ticker = Ticker()
            node0.core.seen.clear()
            c1, c2 = FakeClient(), FakeClient()
            f1 = c1.start(cluster.nodes[1], key)
            await asyncio.sleep(0.01)
            f2 = c2.start(cluster.nodes[2], key)
            await asyncio.sleep(0.01)
            f0 = local.start(node0, key, callid=FETCH, flags=0)
            f0_reqid = local.last_reqid
            # another key of the same database is served at once meanwhile
            reply = await local.call(node0, other)
            assert reply.header.operation == Operation.REPLY_CALL
            await asyncio.sleep(0.2)
            assert not (f0.done() or f1.done() or f2.done())
            assert ticker.ticks >= 15                         # the loop ran the whole time
            assert node0.calls.counters.queued >= 2
            assert [s for s in node0.core.seen if s[2] == key] == []
            holder.stdin.write(b"\n")
            await holder.stdin.drain()
            replies = await asyncio.wait_for(asyncio.gather(f1, f2, f0), 5)
            ticker.stop()
        finally:
            if holder.returncode is None:
                holder.kill()
            await holder.wait()
        assert all(r.header.operation == Operation.REPLY_CALL for r in replies)
        order = [s[:2] for s in node0.core.seen if s[2] == key][:3]
        assert order == [("ReqCall", 1), ("ReqCall", 2), ("local", f0_reqid)]
        assert node0.calls.counters.contended >= 1 and node0.tasks.spawned >= 1
        await idle(cluster)
        assert len(cluster.dmasters(key)) == 1

    run(tmp_path, body, core_cls=RecordingCore)


def test_requeues_with_equal_delays_keep_their_order(tmp_path):
    class DelayingCore(MigrationCore):
        """Sends every first-time local call back with the same delay."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.order: list[int] = []

        def step(self, event, record=None, now=0.0):
            if isinstance(event, LocalCall) and not event.requeued:
                return [Requeue(LocalCall(event.client, event.reqid, event.db_id, event.key,
                                          event.callid, event.flags, requeued=True,
                                          started=now), 0.003)]
            if isinstance(event, LocalCall):
                self.order.append(event.reqid)
            return super().step(event, record, now)

    async def body(cluster: Cluster):
        node = cluster.nodes[0]
        client = FakeClient()
        keys = [key_with_lmaster(0, b"k%d-" % i) for i in range(12)]
        futures = [client.start(node, k) for k in keys]
        replies = await asyncio.wait_for(asyncio.gather(*futures), 2)
        assert all(r.header.operation == Operation.REPLY_CALL for r in replies)
        assert node.core.order == list(range(1, 13))

    run(tmp_path, body, core_cls=DelayingCore)
