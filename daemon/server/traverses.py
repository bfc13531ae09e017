"""The shell of `core.db.traverse.Traverses`: cluster-wide traverses (`ctdb catdb`, smbstatus,
`net serverid wipedbs`), both the node whose client asked and every node that walks its copy.

* **TRAVERSE_START / TRAVERSE_START_EXT** from a local client: `start` steps the core and returns
  the control's answer at once; everything else the start decided (TRAVERSE_ALL to the nodes,
  this node's own walk, an immediate end) runs in the answer's `Result.after`, i.e. once the
  reply is on the client's socket — smbd reads the reply first and then only messages, so no
  record may overtake it (the core's contract).
* **TRAVERSE_ALL(_EXT)** from a peer: `traverse_all`; the core's `RunLocalTraverse` walks the
  local file in a forked child (`store.Database.traverse`), filters with the action's `wants`
  and sends each record, then the end marker (also after a failed walk), as TRAVERSE_DATA
  NOREPLY to the originator — or, when the originator is this node, straight back into the
  core. `StopLocalTraverse` cancels the walk (the child is killed; no end marker).
* **TRAVERSE_DATA**: `data`; the core's `MessageClient` becomes a REQ_MESSAGE to the local
  clients registered for the srvid (`Messenger.deliver_local`), data a `ctdb_rec_data` with the
  client's reqid; the end is the same with empty key and data.
* **TRAVERSE_KILL**: `kill`; `BroadcastTraverseKill` goes NOREPLY to every connected peer.
* Inputs the daemon feeds: `node_gone` (a peer disconnected or stopped being active),
  `client_gone`, `database_gone` (detached). TraverseTimeout is kept by this service's own loop
  timer; `tick(now)` runs it by hand.

**pyctdbd:** a TRAVERSE_ALL that cannot be sent (the node is not connected) counts as that node
gone at once, so the client is not kept waiting for the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from ..config import Tunables
from ..core.db.registry import ClientGone, DbInfo, Tick
from ..core.db.traverse import (
    BroadcastTraverseKill, DatabaseGone, Event, LocalTraverseDone, MessageClient, NodeGone, Reply,
    RunLocalTraverse, SendTraverseAll, SendTraverseData, StartTraverse, StopLocalTraverse,
    TraverseAllReceived, TraverseData, TraverseKill, Traverses, TraverseSettings,
)
from ..core.node import Log
from ..log import log
from ..protocol import (
    Control, RecData, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt, pack_request,
)
from ..store import Database
from .dispatch import Result
from .messenger import Messenger

Lookup = Callable[[int], Database | None]
RegistryInfo = Callable[[int], DbInfo | None]
Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task | None"]


class TraverseService:
    """`lookup(db_id)`: the store's open database; `registry_info(db_id)`: the registry's entry;
    `active_nodes()`: nodes that are not INACTIVE (this one included if it is); `vnnmap()`: the
    current vnnmap; `spawn(coro, name)`: the daemon's `Tasks.spawn`."""

    def __init__(self, my_pnn: int, messenger: Messenger, *, lookup: Lookup,
                 registry_info: RegistryInfo, active_nodes: Callable[[], Iterable[int]],
                 vnnmap: Callable[[], Sequence[int]], tunables: Tunables, spawn: Spawn,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.my_pnn = my_pnn
        self.messenger = messenger
        self.lookup = lookup
        self.registry_info = registry_info
        self.active_nodes = active_nodes
        self.vnnmap = vnnmap
        self.tunables = tunables
        self.spawn = spawn
        self.clock = clock
        self.core = Traverses(my_pnn, TraverseSettings.from_tunables(tunables))
        self._walks: dict[int, asyncio.Task] = {}
        self._next_ticket = 1
        self._queue: deque[tuple[Event | list, float | None]] = deque()
        self._stepping = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._closed = False

    # -- queries ---------------------------------------------------------------------------------
    def active(self) -> list[int]:
        """The reqids of the traverses this node's clients wait for."""
        return self.core.active()

    def walks(self) -> list[int]:
        """The walks of the local copy under way."""
        return self.core.walks()

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    # -- controls --------------------------------------------------------------------------------
    def start(self, client_id: int, request: TraverseStart | TraverseStartExt) -> Result:
        """TRAVERSE_START(_EXT) from local client `client_id`. The answer's `after` starts the
        traverse: run it once the reply has been sent."""
        ticket = self._next_ticket
        self._next_ticket += 1
        self.core.settings = TraverseSettings.from_tunables(self.tunables)
        db = self.registry_info(request.db_id)
        actions = self.core.step(StartTraverse(ticket, client_id, request, db,
                                               tuple(self.active_nodes()), tuple(self.vnnmap())),
                                 self.clock())
        reply = next(a for a in actions if isinstance(a, Reply))
        rest = [a for a in actions if a is not reply]
        self._arm()
        if reply.status != 0:
            self._run(rest)
            return Result(reply.status, errmsg=reply.error)
        return Result(0, after=lambda: self._run(rest))

    def traverse_all(self, request: TraverseAll | TraverseAllExt) -> None:
        """TRAVERSE_ALL(_EXT) from the originator (NOREPLY)."""
        self._feed(TraverseAllReceived(request, self.registry_info(request.db_id)))

    def data(self, src: int, record: RecData) -> None:
        """TRAVERSE_DATA from node `src`."""
        self._feed(TraverseData(src, record))

    def kill(self, request: TraverseStart) -> None:
        """TRAVERSE_KILL: stop the walks for (db_id, client reqid, srvid)."""
        self._feed(TraverseKill(request))

    # -- inputs ----------------------------------------------------------------------------------
    def node_gone(self, pnn: int) -> None:
        self._feed(NodeGone(pnn))

    def client_gone(self, client_id: int) -> None:
        self._feed(ClientGone(client_id))

    def database_gone(self, db_id: int) -> None:
        self._feed(DatabaseGone(db_id))

    def tick(self, now: float | None = None) -> None:
        self._feed(Tick(), now)

    def close(self) -> None:
        """Stop the timer and every walk (shutdown)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._walks.values()):
            task.cancel()
        self._walks.clear()

    # -- the core --------------------------------------------------------------------------------
    def _run(self, actions: list) -> None:
        """Actions already decided, in turn with events (and then whatever they feed back)."""
        self._queue.append((actions, None))
        if not self._stepping:
            self._drain()

    def _feed(self, event: Event, now: float | None = None) -> None:
        self._queue.append((event, now))
        if not self._stepping:
            self._drain()

    def _drain(self) -> None:
        self._stepping = True
        try:
            while self._queue:
                item, at = self._queue.popleft()
                if isinstance(item, list):
                    self._execute(item)
                else:
                    self._execute(self.core.step(item, self.clock() if at is None else at))
        finally:
            self._stepping = False
        self._arm()

    def _execute(self, actions: Iterable) -> None:
        for action in actions:
            if isinstance(action, MessageClient):
                self.messenger.deliver_local(action.srvid, action.record.pack())
            elif isinstance(action, SendTraverseData):
                self._send_data(action.dest, action.record)
            elif isinstance(action, RunLocalTraverse):
                self._start_walk(action)
            elif isinstance(action, StopLocalTraverse):
                task = self._walks.pop(action.handle, None)
                if task is not None:
                    task.cancel()
            elif isinstance(action, SendTraverseAll):
                self._send_traverse_all(action)
            elif isinstance(action, BroadcastTraverseKill):
                data = pack_request(Control.TRAVERSE_KILL, action.request)
                for pnn in self.messenger.connected_peers():
                    self.messenger.send_noreply(pnn, Control.TRAVERSE_KILL, data)
            elif isinstance(action, Log):
                log.log(action.level, "%s", action.text)

    def _send_traverse_all(self, action: SendTraverseAll) -> None:
        ext = isinstance(action.request, TraverseAllExt)
        opcode = Control.TRAVERSE_ALL_EXT if ext else Control.TRAVERSE_ALL
        if not self.messenger.send_noreply(action.pnn, opcode, pack_request(opcode, action.request)):
            log.warning("Traverse: node %u is not connected; not waiting for it", action.pnn)
            self._queue.append((NodeGone(action.pnn), None))

    def _send_data(self, dest: int, record: RecData) -> None:
        self.messenger.send_noreply(dest, Control.TRAVERSE_DATA, pack_request(Control.TRAVERSE_DATA, record))

    # -- walks of the local copy -----------------------------------------------------------------
    def _start_walk(self, action: RunLocalTraverse) -> None:
        if self._closed or action.handle not in self.core.walks():
            return                          # stopped before it started (the client left)
        task = self.spawn(self._walk(action), f"traverse-walk-{action.handle}")
        if task is not None:
            self._walks[action.handle] = task

    async def _walk(self, action: RunLocalTraverse) -> None:
        db = self.lookup(action.db_id)
        name = db.name if db is not None else f"0x{action.db_id:08x}"
        sent = 0
        try:
            if db is None:
                raise LookupError("the database is not attached")
            async with contextlib.aclosing(db.traverse(read_only=True)) as records:
                async for key, value in records:
                    if action.wants(value):
                        self._emit(action, action.record(key, value))
                        sent += 1
        except asyncio.CancelledError:
            raise                                 # stopped: no end marker
        except Exception as exc:
            log.error("Local traverse failed db:%s reqid:%u records:%u (%s)", name, action.reqid, sent, exc)
        else:
            log.info("Local traverse end db:%s reqid:%u records:%u", name, action.reqid, sent)
        self._emit(action, action.end())
        self._walks.pop(action.handle, None)
        self._feed(LocalTraverseDone(action.handle))

    def _emit(self, action: RunLocalTraverse, record: RecData) -> None:
        if action.dest == self.my_pnn:
            self._feed(TraverseData(self.my_pnn, record))
        else:
            self._send_data(action.dest, record)

    # -- the timer -------------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = None if self._closed else self.core.next_deadline()
        if deadline == self._timer_when:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = None
        if deadline is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)
        self._timer_when = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        self.tick()
