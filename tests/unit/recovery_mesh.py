"""In-process nodes for database-recovery tests: each node has a real `Store` in its own
directory, the real `DatabaseRecoveryService` and the real recovery control handlers, dispatched by
the real `ControlDispatcher`; a fake mesh carries messages and control replies between them in
order (one FIFO: the loop's call_soon), as one TCP connection per peer does.

Each node also runs the real `PartialRecoveryNode` (pyctdbd's recovery after a membership change:
the mesh's `previous_map` and each node's `came_from` are what it served with). Besides the
recovery controls each node answers GET_DBMAP, GET_DBNAME, DB_ATTACH* (ATTACH_RECOVERY),
GET_DB_SEQNUM and GET_PNN from its store — the rest of what a recovery needs of a node.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable
from pathlib import Path

from ctdblab.daemon.config import Tunables
from ctdblab.daemon.controls import recovery as recovery_controls
from ctdblab.daemon.controls.registry import Handlers, reply_with, value_of
from ctdblab.daemon.core.db.registry import DbInfo
from ctdblab.daemon.net.rpc import ControlError
from ctdblab.daemon.protocol import (
    Control, DbFlag, DbId, DbMap, LtdbHeader, ReplyControl, VnnMap,
)
from ctdblab.daemon.protocol.ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum, unpack_seqnum
from ctdblab.daemon.server.db_recovery import DatabaseRecoveryService
from ctdblab.daemon.server.db_recovery_driver import DatabaseRecoveryDriver
from ctdblab.daemon.server.dispatch import ControlDispatcher, Request, Result
from ctdblab.daemon.server.partial_recovery import PartialRecoveryNode, RecoveryView
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.store import DbDirs, DbKind, Store

KINDS = {0: DbKind.VOLATILE, int(DbFlag.PERSISTENT): DbKind.PERSISTENT,
         int(DbFlag.REPLICATED): DbKind.REPLICATED}


class FakeDatabases:
    """The database service's face for the recovery service, over a real Store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: list[Callable[[DbInfo, bool], None]] = []
        self.infos: dict[int, DbInfo] = {}

    def attach(self, name: str, flags: int = 0):
        db = self.store.attach(name, KINDS[flags])
        if db.db_id not in self.infos:
            info = DbInfo(name, db.db_id, DbFlag(flags))
            self.infos[db.db_id] = info
            for listener in self.listeners:
                listener(info, True)
        return db

    def detach(self, db_id: int) -> None:
        info = self.infos.pop(db_id)
        for listener in self.listeners:
            listener(info, False)
        self.store.detach(info.name)

    def database(self, db_id: int):
        return self.store.by_id(db_id) if db_id in self.infos else None

    def databases(self) -> list[DbInfo]:
        return list(self.infos.values())


class MeshMessenger:
    """What the service and the driver use of `Messenger`, on the fake mesh."""

    def __init__(self, mesh: Mesh, pnn: int) -> None:
        self.mesh = mesh
        self.my_pnn = pnn
        self.handlers: dict[int, Callable[[int, int, bytes], None]] = {}
        self.sent: list[tuple[int, int, int]] = []           # (dest, srvid, bytes)

    def add_handler(self, srvid, handler) -> None:
        assert srvid not in self.handlers
        self.handlers[srvid] = handler

    def remove_handler(self, srvid) -> None:
        self.handlers.pop(srvid, None)

    def is_connected(self, pnn: int) -> bool:
        return self.mesh.connected(self.my_pnn, pnn)

    def send_message(self, dest: int, srvid: int, data: bytes) -> None:
        self.sent.append((dest, srvid, len(data)))
        if self.mesh.connected(self.my_pnn, dest) or dest == self.my_pnn:
            self.mesh.loop.call_soon(self.mesh.deliver, self.my_pnn, dest, srvid, data)

    async def control(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0,
                      timeout: float = 10.0) -> ReplyControl:
        if pnn != self.my_pnn and not self.mesh.connected(self.my_pnn, pnn):
            raise ControlError("ctdb_control to disconnected node")
        future = self.mesh.loop.create_future()
        req = Request(opcode, flags, 0, 0, data, self.my_pnn)

        def reply(res: Result) -> None:        # the reply travels behind earlier messages
            self.mesh.loop.call_soon(lambda: future.done() or future.set_result(res))

        # the request travels behind the messages sent before it, as on one connection
        self.mesh.loop.call_soon(self.mesh.nodes[pnn].dispatcher.dispatch, req, reply)
        res = await asyncio.wait_for(future, timeout)
        if res.status != 0:
            raise ControlError(f"control {opcode} on node {pnn} failed with status {res.status}"
                               + (f": {res.errmsg}" if res.errmsg else ""), res.status)
        return ReplyControl(res.status, res.data, res.errmsg)

    async def controls(self, pnns, opcode, data=b"", *, flags=0, timeout):
        pnns = list(pnns)

        async def one(pnn):
            try:
                return await self.control(pnn, opcode, data, flags=flags, timeout=timeout)
            except ControlError as exc:
                return exc

        return dict(zip(pnns, await asyncio.gather(*(one(p) for p in pnns))))


def _node_handlers() -> Handlers:
    table = Handlers()
    table.update(recovery_controls.HANDLERS)

    @table.handles(Control.GET_DBMAP)
    def get_dbmap(ctx, req):
        return reply_with(req, DbMap([DbId(i.db_id, int(i.flags)) for i in ctx.databases.databases()]))

    @table.handles(Control.GET_DBNAME)
    def get_dbname(ctx, req):
        info = ctx.databases.infos.get(value_of(req))
        return Result(-1) if info is None else reply_with(req, info.name)

    @table.handles(Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED)
    def attach(ctx, req):
        flags = {Control.DB_ATTACH: 0, Control.DB_ATTACH_PERSISTENT: int(DbFlag.PERSISTENT),
                 Control.DB_ATTACH_REPLICATED: int(DbFlag.REPLICATED)}[req.opcode]
        ctx.attaches.append((value_of(req), req.flags))
        return reply_with(req, ctx.databases.attach(value_of(req), flags).db_id)

    @table.handles(Control.GET_DB_SEQNUM)
    def get_db_seqnum(ctx, req):
        db_id = value_of(req)
        frozen, started = ctx.db_recovery.freeze_state(db_id)
        db = ctx.databases.database(db_id)
        if db is None or (frozen and not started):
            return Result(-1)
        record = db.tdb.fetch_ltdb(DB_SEQNUM_TDB_KEY)          # frozen: the lock is marked
        return reply_with(req, 0 if record is None else unpack_seqnum(record[1]))

    @table.handles(Control.GET_PNN)
    def get_pnn(ctx, req):
        return Result(ctx.pnn)

    return table


class MeshNode:
    def __init__(self, mesh: Mesh, pnn: int, root: Path, tunables: Tunables) -> None:
        self.pnn = pnn
        for sub in ("v", "p", "s"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.store = Store(DbDirs(str(root / "v"), str(root / "p"), str(root / "s")), pnn)
        self.databases = FakeDatabases(self.store)
        self.messenger = MeshMessenger(mesh, pnn)
        self.tasks = Tasks()
        self.service = DatabaseRecoveryService(pnn, self.databases, self.messenger, tunables,
                                               self.tasks, vnnmap=lambda: mesh.vnnmap)
        self.driver = DatabaseRecoveryDriver(pnn, self.messenger, tunables)  # type: ignore[arg-type]
        self.dispatcher = ControlDispatcher(_node_handlers(), self.tasks.spawn)
        self.attaches: list[tuple[str, int]] = []
        self.came_from = 7                   # the generation it served in
        self.handed_off: dict[int, set[bytes]] = {}      # db_id -> keys to report
        self.unsettled: list[tuple[int, tuple[int, ...], frozenset[bytes]]] = []   # epochs received
        self.partial = PartialRecoveryNode(
            self.databases.database,
            lambda: RecoveryView(True, self.came_from, tuple(mesh.previous_map), tuple(mesh.vnnmap.map)),
            self.service.set_generation, lambda db_id: (self.handed_off.get(db_id, set()), False),
            lambda db_id, old_map, keys: self.unsettled.append((db_id, old_map, keys)))
        self.dispatcher.context = types.SimpleNamespace(
            db_recovery=self.service, databases=self.databases, pnn=pnn, attaches=self.attaches,
            partial_recovery=self.partial)

    def store_record(self, name: str, key: bytes, rsn: int, dmaster: int, data: bytes,
                     flags: int = 0) -> None:
        db = self.store.get(name)
        db.tdb.store_ltdb(key, LtdbHeader(rsn=rsn, dmaster=dmaster, flags=flags), data)

    def set_seqnum(self, name: str, seqnum: int) -> None:
        db = self.store.get(name)
        db.tdb.store_ltdb(DB_SEQNUM_TDB_KEY, LtdbHeader(rsn=seqnum, dmaster=self.pnn),
                          pack_seqnum(seqnum))

    def records(self, name: str) -> dict[bytes, tuple[LtdbHeader, bytes]]:
        db = self.store.get(name)
        return {k: LtdbHeader.split(v) for k, v in db.tdb.items()}

    def close(self) -> None:
        self.service.close()
        self.tasks.cancel_all()
        self.store.close()


class Mesh:
    def __init__(self, root: Path, n: int = 3, tunables: Tunables | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.tunables = tunables or Tunables()
        self.vnnmap = VnnMap(1, list(range(n)))
        self.previous_map: list[int] = list(range(n))
        self.down: set[int] = set()
        self.nodes = {p: MeshNode(self, p, root / f"node{p}", self.tunables) for p in range(n)}

    def connected(self, a: int, b: int) -> bool:
        return a not in self.down and b not in self.down

    def deliver(self, src: int, dest: int, srvid: int, data: bytes) -> None:
        if not self.connected(src, dest) and src != dest:
            return
        handler = self.nodes[dest].messenger.handlers.get(srvid)
        if handler is not None:
            handler(src, srvid, data)

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()

