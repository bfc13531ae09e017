"""The lmaster's grant in the native node plane, from the loop's side (docs/native-hot-path.md,
step 2; on unless PYCTDBD_NATIVE_GRANTS=0).

The plane's thread answers a peer's REQ_CALL for a record this node is lmaster and dmaster of,
or that nobody holds, with the REPLY_DMASTER itself, deciding as ``core/db/migration.py`` does
(``daemon/native/node_plane.c``; ``tests/unit/test_native_grants.py`` holds the two to the same
result). It does so only while the loop sleeps, and only with what the loop published for the
run it just finished. This module is that loop side:

* **before every sleep** (once peers have asked this node as their lmaster; before that only
  when the vnnmap changed, and the loop keeps the rest: the thread cannot grant) it publishes
  what a grant must respect: this node's pnn, the
  generation, the lmasters; whether the node may grant at all (a vnnmap, not banned, not in
  recovery); the databases open to grants (attached, volatile, healthy, no unsettled keys after
  a membership change, no lock of this daemon held on them — a freeze's, a contended chain's,
  a forked child's turn) with their TDB contexts; which plane connection is which peer's; and
  every key the core or its shell has state for (calls under way, pins, events queued behind a
  chain lock or waiting for a requeue, keys being settled);
* **at every wake**, before any callback runs, it takes what the thread granted and leaves
  in the core and the shell exactly what the Python path leaves: statistics, the hand-off log,
  the vacuum's queue, the transport's packet counts, the peer's traffic for failure detection.

Both run inside the selector's wait (net/plane_links.py `RestSelector`): they never raise; a
failure is logged once and leaves the thread with a stale state, on which it grants nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ..core.db.migration import granted_natively
from ..log import log
from ..native.node_plane import CALLS_WAITING, GRANTED, GRANTS_WAITING, REPLY_LOST, SCHEDULED, tdb_functions
from ..net.plane_links import PlaneLinks
from ..net.transport import NodeTransport
from ..protocol.constants import Operation
from ..protocol.types import LtdbHeader
from ..store import Database, DbKind, libtdb
from .record_calls import RecordCalls

_HEAD = struct.Struct("<7I")
_DB = struct.Struct("<IIQ")
_LINK = struct.Struct("<iiI")
_BUSY = struct.Struct("<II")
_REQ_CALL = int(Operation.REQ_CALL)
_REPLY_DMASTER = int(Operation.REPLY_DMASTER)
#: More keys with state than this (a node with thousands of calls under way) and the node grants
#: nothing until they are fewer (np_grant_publish refuses more than 1 << 20).
MAX_BUSY_KEYS = 100_000
#: An lmaster whose thread granted or asked within this many seconds publishes before every
#: sleep; after that it keeps its rest until the thread asks (that packet goes to the loop).
HOT_WINDOW = 1.0


class NativeGrants:
    def __init__(self, links: PlaneLinks, transport: NodeTransport, calls: RecordCalls,
                 database: Callable[[int], Database | None],
                 note_traffic: Callable[[int, float], None]) -> None:
        self.links = links
        self.transport = transport
        self.calls = calls
        self.core = calls.core
        self.database = database
        self.note_traffic = note_traffic
        self.wanted = False             # peers have asked this node as lmaster: publish always
        self._published_map: object = None
        self._last_blob: bytes | None = None
        self._failed: set[str] = set()
        self._last_grant = float("-inf")    # when the loop last took grants or was asked
        #: smbd's calls in the plane too (server/native_calls.py), published and taken here
        self.native_calls = None

    def start(self) -> bool:
        """Turn the plane's grants on; False if this loop cannot have them (logged)."""
        functions = tdb_functions(libtdb.lib, libtdb.log_function_address())
        ok = self.links.enable_grants(functions, self.calls.max_key_size, self.before_sleep,
                                      self.after_wake)
        if not ok:
            log.warning("The native grant needs asyncio's selector event loop: not enabled")
        return ok

    # -- around the loop's sleep ------------------------------------------------------------------
    def before_sleep(self) -> bool:
        """Publish for the thread; True: let it grant while the loop sleeps. Until peers ask
        this node as their lmaster (the thread notes it) only a new vnnmap is published, and the
        loop keeps its rest. After that, the state is published — and the rest handed over —
        only while there is demand: the thread granted, or left a packet it could have granted
        to the loop and asked for a fresh state, within the last HOT_WINDOW seconds. An idle
        lmaster then sleeps as any node does."""
        try:
            if not self.wanted:
                if self.core.vnnmap is not self._published_map:
                    self._publish()
                self.wanted = self.links.plane.grants_wanted
                if not self.wanted:
                    return False
            now = self.calls.clock()
            if self.links.plane.take_fresh_state_request():
                self._last_grant = now          # demand: publish for a while, as after a grant
            if now - self._last_grant >= HOT_WINDOW:
                return False
            self._publish()
            return True
        except Exception as exc:
            self._complain("publish", exc)
            return False

    def _publish(self) -> None:
        blob = self.state()
        self.links.plane.publish(None if blob == self._last_blob else blob)
        self._last_blob = blob
        if self.native_calls is not None:
            self.native_calls.publish()
        self._published_map = self.core.vnnmap

    def after_wake(self, flags: int) -> None:
        if not flags & (GRANTS_WAITING | CALLS_WAITING):
            return
        self._last_grant = self.calls.clock()
        try:
            if flags & GRANTS_WAITING:
                self.take()
        except Exception as exc:
            self._complain("take", exc)
        if flags & CALLS_WAITING and self.native_calls is not None:
            try:
                self.native_calls.take()
            except Exception as exc:        # no more calls in the plane: the loop takes them all
                self.native_calls, calls = None, self.native_calls
                calls.stop()
                self._complain("taking smbd's calls", exc)

    # -- what the thread must respect ---------------------------------------------------------------
    def state(self) -> bytes:
        """np_grant_publish's blob for the loop's state now."""
        core = self.core
        open_ = core.vnnmap is not None and not core.banned and not core.gate.recovering
        lmasters = core.lmasters
        dbs = []
        for db_id, attached in core.databases.items():
            if attached.persistent or core.settling.unsettled.any(db_id):
                continue
            db = self.database(db_id)
            if (db is None or db.kind is not DbKind.VOLATILE or db.tdb.closed or db.locker.busy
                    or db.corruption is not None):
                continue
            dbs.append(_DB.pack(db_id, 0, db.tdb.context))
        links = [_LINK.pack(*link) for link in self.transport.plane_links()]
        busy = self.busy_keys()
        if len(busy) > MAX_BUSY_KEYS:            # the thread's table stays small: no grants now
            open_, busy = False, set()
        return b"".join([
            _HEAD.pack(int(open_), core.pnn, core.generation, len(lmasters), len(dbs), len(links),
                       len(busy)),
            struct.pack(f"<{len(lmasters)}I", *lmasters), *dbs, *links,
            *[_BUSY.pack(db_id, len(key)) + key for db_id, key in busy]])

    def busy_keys(self) -> set[tuple[int, bytes]]:
        """Every (db_id, key) the core or the shell has state for: a call under way, a pin not
        yet over, events queued behind a chain lock or waiting for a requeue, a key being
        settled. A peer's REQ_CALL for one of them goes to the loop."""
        core, calls = self.core, self.calls
        core.pins.expire(calls.clock())          # what Tick does; left() ignores expired pins
        busy = set(core.flights.by_key)
        busy.update(core.pins.until)
        busy.update(calls.waiting)
        busy.update(calls.current)
        busy.update(core.settling.waiting)
        for _due, _seq, event in calls.timers:
            target = core.lock_target(event)
            if target is not None:
                busy.add(target)
        return busy

    # -- what the thread leaves behind ----------------------------------------------------------
    def take(self) -> None:
        """The thread's grants since the last wake, into the core's statistics and hand-off log,
        the shell's counters, the vacuum's queue and the transport's counts."""
        grants = self.links.plane.grants()
        if not grants:
            return
        core, calls = self.core, self.calls
        now = calls.clock()
        by_peer: dict[int, int] = {}
        for grant in grants:
            calls.counters.stores += grant.stores
            if grant.what & GRANTED:
                granted_natively(core, grant.db_id, grant.key, grant.hopcount, now)
                calls.counters.immediate += 1
                calls.counters.packets_sent += 1
                by_peer[grant.srcnode] = by_peer.get(grant.srcnode, 0) + 1
            if grant.what & SCHEDULED:
                rsn, dmaster, flags = grant.scheduled
                calls.schedule_deletion(grant.db_id, grant.key, LtdbHeader(rsn, dmaster, 0, flags))
            if grant.what & GRANTED:
                # the grant's store kept the record for its new dmaster and did not schedule it
                calls.unschedule_deletion(grant.db_id, grant.key)
            if grant.what & REPLY_LOST:
                calls.force_recovery(f"the native grant of a record of db 0x{grant.db_id:08x} to node "
                                     f"{grant.srcnode} could not queue its REPLY_DMASTER")
        for pnn, count in by_peer.items():
            self.transport.count_answered(pnn, _REQ_CALL, _REPLY_DMASTER, count)
            self.note_traffic(pnn, now)

    def summary(self) -> str:
        """One line for the log: the thread's grants and why it left packets to the loop."""
        counts = self.links.plane.grant_counters()
        return ("Native grants: {granted} granted; left to the loop: {stale} on a stale state, "
                "{busy} for busy keys, {order} behind frames for the loop, {other} for other "
                "reasons".format(**counts))

    def _complain(self, what: str, exc: Exception) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.error("native grants: %s failed (%s); the plane grants nothing until it works",
                      what, exc, exc_info=exc)
