"""server/persistent_commits.py and controls/persistent.py: TRANS3_COMMIT, UPDATE_RECORD and
GET_DB_SEQNUM on three in-process nodes, each with a real Store (TDB files in a tmp dir, the
update applied in a forked child) and its own PersistentCommitService behind the real control
dispatcher; a fake messenger carries UPDATE_RECORD between them and can hold a node's controls
(a slow node) or cut it off (a dead one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.controls import persistent as persistent_controls
from ctdblab.daemon.core.db.registry import DbInfo
from ctdblab.daemon.net.rpc import ControlError
from ctdblab.daemon.protocol import Control, ReplyControl, pack_request, unpack_reply
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum
from ctdblab.daemon.protocol.types import LtdbHeader, RecBuffer, RecData
from ctdblab.daemon.server.dispatch import ControlDispatcher, Request, Result
from ctdblab.daemon.server.persistent_commits import PersistentCommitService
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.store import DbDirs, DbKind, Store, TdbFile

from aio_helpers import until

NAME = "secrets.tdb"
CLIENT = SimpleNamespace(client_id=7, pid=4242)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMessenger:
    """Controls between the in-process nodes; `hold` keeps a node's controls waiting until it
    is released or killed."""

    def __init__(self, cluster: Cluster, pnn: int) -> None:
        self.cluster = cluster
        self.pnn = pnn

    async def control(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0,
                      timeout: float = 10.0, generation: int = 0) -> ReplyControl:
        cluster = self.cluster
        cluster.controls.append((self.pnn, pnn, opcode))
        if pnn in cluster.dead:
            raise ControlError("ctdb_control to disconnected node")
        gate = cluster.gates.get(pnn)
        if gate is not None:
            try:
                await asyncio.wait_for(asyncio.shield(gate), timeout)
            except asyncio.TimeoutError:
                raise ControlError(f"control {opcode} to node {pnn} timed out") from None
        res = await cluster.nodes[pnn].call(Request(opcode, 0, 0, 0, data, self.pnn,
                                                    generation=generation))
        if res.status != 0:
            raise ControlError(f"control {opcode} to node {pnn} failed with status {res.status}: "
                               f"{res.errmsg}", res.status)
        return ReplyControl(res.status, res.data, res.errmsg)


class Node:
    def __init__(self, cluster: Cluster, pnn: int, root) -> None:
        for sub in ("v", "p", "s"):
            (root / sub).mkdir(parents=True)
        self.pnn = pnn
        self.store = Store(DbDirs(str(root / "v"), str(root / "p"), str(root / "s")), pnn, hash_size=1001)
        self.db = self.store.attach(NAME, DbKind.PERSISTENT)
        self.tasks = Tasks()
        self.recoveries: list[str] = []
        self.frozen = (False, False)
        self.generation = 5
        tunables = Tunables()
        self.service = PersistentCommitService(
            pnn, FakeMessenger(cluster, pnn), lookup=self.store.by_id, registry_info=self.info,
            vnnmap=lambda: (0, 1, 2), active_nodes=lambda: [p for p in range(3) if p not in cluster.dead],
            tunables=tunables, force_recovery=self.recoveries.append, spawn=self.tasks.spawn,
            clock=cluster.clock, freeze_state=lambda db_id: self.frozen,
            generation=lambda: self.generation)
        self.dispatcher = ControlDispatcher(dict(persistent_controls.HANDLERS), self.tasks.spawn)
        self.dispatcher.context = SimpleNamespace(persistent=self.service, pnn=pnn)
        self.service.set_recovery_mode(False)

    def info(self, db_id: int) -> DbInfo | None:
        db = self.store.by_id(db_id)
        return None if db is None else DbInfo(db.name, db.db_id, db.db_flags)

    async def call(self, req: Request) -> Result:
        future = asyncio.get_running_loop().create_future()
        self.dispatcher.dispatch(req, lambda res: future.done() or future.set_result(res))
        return await future

    def read(self, key: bytes) -> tuple[LtdbHeader, bytes] | None:
        return self.db.tdb.fetch_ltdb(key)

    def seqnum(self) -> int:
        record = self.read(DB_SEQNUM_TDB_KEY)
        return 0 if record is None else int.from_bytes(record[1], "little")


class Cluster:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.dead: set[int] = set()
        self.gates: dict[int, asyncio.Future] = {}
        self.controls: list[tuple[int, int, int]] = []
        self.nodes = [Node(self, pnn, tmp_path / f"n{pnn}") for pnn in range(3)]

    def hold(self, pnn: int) -> None:
        self.gates[pnn] = asyncio.get_running_loop().create_future()

    def kill(self, pnn: int) -> None:
        """Node `pnn` dies: its held controls fail, the others hear it is gone."""
        self.dead.add(pnn)
        gate = self.gates.pop(pnn, None)
        if gate is not None and not gate.done():
            gate.set_exception(ControlError("node is disconnected"))
        for node in self.nodes:
            if node.pnn != pnn:
                node.service.node_gone(pnn)

    def recover(self) -> None:
        """What the leader's recovery does to these services (the copies are already equal
        in these tests where it matters): recovery mode ACTIVE, then NORMAL, then END_RECOVERY."""
        live = [n for n in self.nodes if n.pnn not in self.dead]
        for node in live:
            node.service.set_recovery_mode(True)
        for node in live:
            node.service.set_recovery_mode(False)
            node.service.recovery_ended()

    def close(self) -> None:
        for node in self.nodes:
            node.service.close()
            node.tasks.cancel_all()
            node.store.close()


def smbd_commit(node: Node, writes: dict[bytes, bytes]) -> tuple[bytes, int]:
    """dbwrap_ctdb's commit on `node`: each write with the local rsn + 1 and dmaster = this node,
    ``__db_sequence_number__`` + 1 last. Returns (payload, old seqnum)."""
    old = node.seqnum()
    records = []
    for key, value in list(writes.items()) + [(DB_SEQNUM_TDB_KEY, pack_seqnum(old + 1))]:
        current = node.read(key)
        rsn = current[0].rsn if current else 0
        records.append(RecData.with_header(0, key, LtdbHeader(rsn + 1, node.pnn), value))
    return RecBuffer(node.db.db_id, records).pack(), old


def trans3_commit(node: Node, payload: bytes, client=CLIENT) -> asyncio.Task:
    req = Request(Control.TRANS3_COMMIT, 0, node.db.db_id, client.client_id, payload, node.pnn, client)
    return asyncio.get_running_loop().create_task(node.call(req))


async def get_db_seqnum(node: Node, db_id: int) -> Result:
    return await node.call(Request(Control.GET_DB_SEQNUM, 0, 0, 0,
                                   pack_request(Control.GET_DB_SEQNUM, db_id), node.pnn))


def run(tmp_path, scenario):
    async def main():
        cluster = Cluster(tmp_path)
        try:
            await scenario(cluster)
        finally:
            cluster.close()
    asyncio.run(main())


# -- commits ---------------------------------------------------------------------------------
def test_commit_of_several_records_lands_on_every_node(tmp_path):
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        payload, old = smbd_commit(n0, {b"SECRETS/MACHINE_PASSWORD/X": b"pw\0", b"b": b"2", b"c": b"3"})
        res = await trans3_commit(n0, payload)
        assert (res.status, res.errmsg) == (0, None)
        assert sorted(p for src, p, op in cluster.controls if op == Control.UPDATE_RECORD) == [1, 2]
        for node in cluster.nodes:
            assert node.read(b"SECRETS/MACHINE_PASSWORD/X") == (LtdbHeader(1, 0), b"pw\0")
            assert node.read(b"b") == (LtdbHeader(1, 0), b"2")
            assert node.read(b"c") == (LtdbHeader(1, 0), b"3")
            assert node.seqnum() == old + 1 == 1
            answer = await get_db_seqnum(node, node.db.db_id)
            assert answer.status == 0 and unpack_reply(Control.GET_DB_SEQNUM, answer.data) == 1
        # a second commit (a rewrite and a delete) bumps rsn and seqnum again everywhere
        payload, _ = smbd_commit(n0, {b"b": b"22", b"c": b""})
        assert (await trans3_commit(n0, payload)).status == 0
        for node in cluster.nodes:
            assert node.read(b"b") == (LtdbHeader(2, 0), b"22")
            assert node.read(b"c") == (LtdbHeader(2, 0), b"")
            assert node.seqnum() == 2
        assert n0.service.in_flight() == [] and not any(n.recoveries for n in cluster.nodes)
        # ctdbd's childwrite statistics: every node wrote each commit once, in a child.
        for node in cluster.nodes:
            writes = node.service.childwrites
            assert (writes.calls, writes.pending, writes.latency.num) == (2, 0, 2)
    run(tmp_path, scenario)
    # The files on disk, opened afresh after the daemon let go of them.
    for pnn in range(3):
        with TdbFile(str(tmp_path / f"n{pnn}" / "p" / f"{NAME}.{pnn}"), 0, 0x400) as tdb:
            assert tdb.fetch_ltdb(b"b") == (LtdbHeader(2, 0), b"22")
            assert tdb.fetch_ltdb(DB_SEQNUM_TDB_KEY)[1] == pack_seqnum(2)


def test_node_dying_mid_commit_forces_recovery_and_end_recovery_answers_2(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, n2 = cluster.nodes
        cluster.hold(2)                                   # node 2 never gets to apply it
        payload, old = smbd_commit(n0, {b"machine": b"pw"})
        answer = trans3_commit(n0, payload)
        await until(lambda: n1.seqnum() == 1 and n0.seqnum() == 1)
        assert not answer.done() and n0.service.in_flight() == [1]
        cluster.kill(2)
        await until(lambda: bool(n0.recoveries))
        assert "failed on a node" in n0.recoveries[0]
        assert n0.service.recovery_active and not answer.done()       # no answer yet
        cluster.recover()
        res = await answer
        assert (res.status, res.errmsg) == (2, "trans3 commit ended by recovery")
        # smbd re-reads its seqnum: old + 1, so the commit is done
        assert n0.seqnum() == old + 1 and n1.read(b"machine") == (LtdbHeader(1, 0), b"pw")
        assert n2.read(b"machine") is None and n2.seqnum() == 0
    run(tmp_path, scenario)


def test_rsn_regression_is_refused_and_nothing_of_that_commit_is_written_there(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, n2 = cluster.nodes
        await n2.db.store_ltdb(b"k", LtdbHeader(9, 2), b"newer")
        payload, _ = smbd_commit(n0, {b"other": b"x", b"k": b"v"})
        answer = trans3_commit(n0, payload)
        # node 2's refusal can reach node 0 before node 1's commit (in its own child) is done
        await until(lambda: bool(n0.recoveries) and n1.seqnum() == 1)
        # node 2 cancelled its whole transaction; nodes 0 and 1 applied it
        assert n2.read(b"k") == (LtdbHeader(9, 2), b"newer")
        assert n2.read(b"other") is None and n2.seqnum() == 0
        assert n1.read(b"k") == (LtdbHeader(1, 0), b"v") and n1.seqnum() == 1
        assert not answer.done()
        cluster.recover()
        assert (await answer).status == 2
        # the same update sent to node 2 directly: status 1, with ctdbd's reason
        res = await n2.call(Request(Control.UPDATE_RECORD, 0, 0, 0, payload, 0))
        assert res.status == 1 and "larger RSN 9 than new RSN 1" in res.errmsg
    run(tmp_path, scenario)


def test_refused_during_recovery_and_update_record_refused_too(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, _ = cluster.nodes
        n0.service.set_recovery_mode(True)
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        res = await trans3_commit(n0, payload)
        assert res.status == -1 and "recovery active" in res.errmsg
        assert cluster.controls == []                       # nothing was sent
        n1.service.set_recovery_mode(True)
        res = await n1.call(Request(Control.UPDATE_RECORD, 0, 0, 0, payload, 0))
        assert res.status == -1 and "recovery active" in res.errmsg
        assert n1.read(b"k") is None
    run(tmp_path, scenario)


def test_unknown_database_bad_payload_and_a_node_not_a_client(tmp_path):
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        other = RecBuffer(0x12345678, [RecData.with_header(0, b"k", LtdbHeader(1, 0), b"v")]).pack()
        res = await trans3_commit(n0, other)
        assert res.status == -1 and "Unknown database" in res.errmsg
        res = await trans3_commit(n0, b"\x01\x02")
        assert res.status == -1 and "bad payload" in res.errmsg
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        res = await n0.call(Request(Control.TRANS3_COMMIT, 0, 0, 0, payload, 1))      # from a node
        assert res.status == -1
        res = await cluster.nodes[1].call(Request(Control.UPDATE_RECORD, 0, 0, 0, other, 0))
        assert res.status == -1 and "Unknown database 0x12345678" in res.errmsg
        assert cluster.controls == []
    run(tmp_path, scenario)


def test_timeout_answers_1(tmp_path):
    async def scenario(cluster: Cluster):
        n0, n1, _ = cluster.nodes
        cluster.hold(2)
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        answer = trans3_commit(n0, payload)
        await until(lambda: n1.seqnum() == 1 and n0.seqnum() == 1)
        assert n0.service.next_deadline() == cluster.clock.now + 60       # ControlTimeout
        n0.service.tick(cluster.clock.now + 59)
        assert not answer.done()
        n0.service.tick(cluster.clock.now + 60)
        res = await answer
        assert (res.status, res.errmsg) == (1, "timeout in ctdb_persistent_state")
        assert n0.recoveries == [] and n0.service.in_flight() == []
    run(tmp_path, scenario)


def test_client_leaving_mid_commit_forces_recovery(tmp_path):
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        cluster.hold(2)
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        answer = trans3_commit(n0, payload)
        await until(lambda: n0.seqnum() == 1)
        n0.service.client_gone(CLIENT.client_id)
        assert n0.recoveries == [f"client {CLIENT.client_id} left during a trans3 commit"]
        assert (await answer).status == -1 and n0.service.in_flight() == []
        # a second commit from another client is now refused: recovery is active
        other = SimpleNamespace(client_id=8, pid=4343)
        assert (await trans3_commit(n0, payload, other)).status == -1
    run(tmp_path, scenario)


def test_get_db_seqnum_refusals_and_a_frozen_database(tmp_path):
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        res = await get_db_seqnum(n0, 0x12345678)
        assert res.status == -1 and res.errmsg == "Unknown db 0x12345678"
        await n0.db.store_ltdb(DB_SEQNUM_TDB_KEY, LtdbHeader(3, 0), pack_seqnum(41))
        n0.frozen = (True, False)
        res = await get_db_seqnum(n0, n0.db.db_id)
        assert res.status == -1 and res.errmsg == f"db {NAME} is frozen"
        n0.frozen = (True, True)           # frozen for a recovery transaction: read it
        lock = await n0.db.lock_all()      # as the freeze holds it
        try:
            res = await get_db_seqnum(n0, n0.db.db_id)
        finally:
            lock.release()
        assert res.status == 0 and unpack_reply(Control.GET_DB_SEQNUM, res.data) == 41
    run(tmp_path, scenario)


def test_commit_timer_runs_on_its_own(tmp_path):
    """The service keeps its deadlines itself: with ControlTimeout 1 s the commit is answered
    1 about a second later with nobody calling tick()."""
    async def scenario(cluster: Cluster):
        n0 = cluster.nodes[0]
        n0.service.clock = asyncio.get_running_loop().time
        n0.service.tunables.set("ControlTimeout", 1)
        cluster.hold(2)
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        loop = asyncio.get_running_loop()
        started = loop.time()
        res = await asyncio.wait_for(trans3_commit(n0, payload), 5)
        elapsed = loop.time() - started
        assert res.status == 1 and 0.9 < elapsed < 3
    run(tmp_path, scenario)


def test_handlers_cover_the_opcodes():
    assert set(persistent_controls.HANDLERS) == {Control.TRANS3_COMMIT, Control.UPDATE_RECORD,
                                                 Control.GET_DB_SEQNUM}


def test_an_update_record_sent_before_a_recovery_is_refused_after_it(tmp_path):
    """A commit a recovery overtook: its UPDATE_RECORD reaches a node already in the next
    generation. Applied there, that copy would differ from the others the recovery made equal;
    refused, the commit fails and forces a recovery (the client then asks the sequence number)."""
    async def scenario(cluster: Cluster):
        n0, n1, n2 = cluster.nodes
        n1.generation = 6                                   # recovered into 6; n0 still sends in 5
        payload, _ = smbd_commit(n0, {b"k": b"v"})
        res = await n1.call(Request(Control.UPDATE_RECORD, 0, 0, 0, payload, 0, generation=5))
        assert res.status == -1 and "generation 5 refused in generation 6" in res.errmsg
        assert n1.read(b"k") is None
        commit = asyncio.ensure_future(trans3_commit(n0, payload))
        for _ in range(50):
            await asyncio.sleep(0)
        assert n0.recoveries and n1.read(b"k") is None      # the commit failed: recovery forced
        n0.service.set_recovery_mode(False)
        n0.service.recovery_ended()
        assert (await commit).status != 0
        # no generation claimed (an older sender): applied as before
        res = await n1.call(Request(Control.UPDATE_RECORD, 0, 0, 0, payload, 0))
        assert res.status == 0 and n1.read(b"k")[1] == b"v"
    run(tmp_path, scenario)
