"""Steps 1-3 of a fast vacuum run for one slice of queued records (core/db/vacuum.py `triage`):
each record read under its chain lock, tried and never waited for; what may go is deleted here,
sent to its lmaster or put on the delete list.

Two ways to do it, one result: in Python, a ctypes round per libtdb call (lock, fetch, delete,
unlock) and the rules in Python; or natively, the whole slice in one call of the node plane's
library (``np_vacuum_triage`` in native/node_plane.c), the rules in C: 1.1 against 14.5 µs per
record, a run over 20,000 records 22 against 290 ms of the loop's CPU (benchmarks.vacuum_triage).
In the one-node contended-opens benchmark it measured no gain: the lmasters' queues there stay
short since their grants stopped queueing the initial store. The native one is used where the
library is built, unless the daemon's environment says ``PYCTDBD_NATIVE_VACUUM=0`` (or
``PYCTDBD_NATIVE=0``). It runs on the loop's thread, which holds the node plane's rest while
awake, so no grant of the plane's thread uses the file meanwhile; it takes the database's turn as a task's chain lock would. A record the native code
cannot judge (libtdb complained, a short record, a failed delete) is done again in Python,
which reports it. tests/unit/test_vacuum_triage.py runs both over the same random records.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..core.db.ltdbrules import lmaster_of
from ..core.db.vacuum import DeleteQueue, Triage, triage
from ..log import log, notice
from ..native import NATIVE_ENV, NativeBuildError
from ..native import node_plane
from ..protocol import LtdbHeader
from ..store import Database, TdbError, libtdb

#: In the daemon's environment: "0" keeps the vacuum's triage in Python.
ENV = "PYCTDBD_NATIVE_VACUUM"

_NATIVE_VERDICTS = {node_plane.VT_SKIP: Triage.SKIP, node_plane.VT_DELETE_LIST: Triage.DELETE_LIST,
                    node_plane.VT_TO_LMASTER: Triage.TO_LMASTER}


@dataclass
class Counts:
    """What a slice did, for the service's counters."""

    deleted: int = 0
    skipped: int = 0
    busy: int = 0


class SliceTriage:
    """Triage of slices of one node's queued records. `forget_settled(db_id, key)` is told of
    every record deleted (RecordCalls keeps settled keys)."""

    def __init__(self, pnn: int, forget_settled: Callable[[int, bytes], None],
                 native: tuple[ctypes.CDLL, node_plane.TdbFunctions] | None) -> None:
        self.pnn = pnn
        self.forget_settled = forget_settled
        self.native = native

    @classmethod
    def for_daemon(cls, pnn: int, forget_settled: Callable[[int, bytes], None],
                   env: Mapping[str, str]) -> SliceTriage:
        native = None
        off = next((name for name in (NATIVE_ENV, ENV) if env.get(name, "1") == "0"), None)
        if off is not None:
            notice("The vacuum's triage runs in Python (%s=0 in the environment)", off)
        else:
            try:
                native = (node_plane.library(), node_plane.tdb_functions(libtdb.lib,
                                                                         libtdb.log_function_address()))
                notice("The vacuum's triage runs natively (node plane library)")
            except (OSError, AttributeError, NativeBuildError) as exc:
                notice("The vacuum's triage runs in Python: %s", exc)
        return cls(pnn, forget_settled, native)

    def run(self, db: Database, queue: DeleteQueue, chunk: list[tuple[bytes, LtdbHeader]],
            lmasters: tuple[int, ...], counts: Counts) -> list[Triage]:
        """One verdict per record of `chunk` (SKIP also for a busy one, which is queued again);
        DELETE_NOW records are deleted by the time this returns."""
        if self.native is not None:
            verdicts = self._native(db, queue, chunk, lmasters, counts)
            if verdicts is not None:
                return verdicts
        return [self.one(db, queue, key, queued, lmasters, counts) for key, queued in chunk]

    def one(self, db: Database, queue: DeleteQueue, key: bytes, queued: LtdbHeader,
            lmasters: tuple[int, ...], counts: Counts) -> Triage:
        """One record in Python."""
        lock = db.try_lock(key)
        if lock is None:
            queue.add(key, queued)
            counts.busy += 1
            return Triage.SKIP
        try:
            verdict = triage(queued, db.tdb.fetch_ltdb(key), self.pnn, lmaster_of(key, lmasters))
            if verdict is Triage.DELETE_NOW:
                db.tdb.delete(key)
                counts.deleted += 1
                self.forget_settled(db.db_id, key)
            elif verdict is Triage.SKIP:
                counts.skipped += 1
            return verdict
        except TdbError as exc:
            log.warning("vacuum: cannot read or delete a record of %s: %s", db.name, exc)
            return Triage.SKIP
        finally:
            lock.release()

    def _native(self, db: Database, queue: DeleteQueue, chunk: list[tuple[bytes, LtdbHeader]],
                lmasters: tuple[int, ...], counts: Counts) -> list[Triage] | None:
        lib, functions = self.native
        with db.locker.turn_now() as ours:
            if not ours:                    # a task of the daemon holds a lock of the file
                return None
            try:
                raw, locked = node_plane.vacuum_triage(
                    lib, functions, db.tdb.context, self.pnn, lmasters,
                    [(key, queued.rsn, queued.flags) for key, queued in chunk])
            except (TdbError, ValueError) as exc:
                log.warning("vacuum: the native triage of %s failed (%s): done in Python", db.name, exc)
                return None
        db.locker.stats.num_immediate += locked
        verdicts = []
        for (key, queued), code in zip(chunk, raw):
            if code == node_plane.VT_DELETED:
                counts.deleted += 1
                self.forget_settled(db.db_id, key)
                verdicts.append(Triage.DELETE_NOW)
            elif code == node_plane.VT_BUSY:
                queue.add(key, queued)
                counts.busy += 1
                verdicts.append(Triage.SKIP)
            elif code == node_plane.VT_LOOP:
                verdicts.append(self.one(db, queue, key, queued, lmasters, counts))
            else:
                verdict = _NATIVE_VERDICTS[code]
                if verdict is Triage.SKIP:
                    counts.skipped += 1
                verdicts.append(verdict)
        return verdicts
