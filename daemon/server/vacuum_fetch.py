"""The records other nodes' vacuum runs sent here with VACUUM_FETCH, migrated to this node (their
lmaster) a few at a time with VACUUM_MIGRATION calls.

A node's vacuum run sends all its tombstones of one lmaster in one VACUUM_FETCH: thousands of
records after ten seconds of smbd opening and closing files (every open creates a record whose
lmaster is another node, every close deletes it). Started all at once, those calls held this
node's loop for ~0.3 s (one synchronous pass over the list), and their REQ_CALLs queued the
dmaster's loop behind them for longer: smbd's own migrations waited up to 0.5 s in the one-node
contended-opens benchmark ("Event loop stalled" in both logs). Here at most ``in_flight`` calls
are under way; each answer starts the next one. ctdbd does not start them at once either: it
queues the keys and its vacuum child sends the calls at the lmaster's next run.

The calls are the daemon's own (``RecordCalls.daemon_call``); what they do is unchanged: each
record lands here with VACUUM_MIGRATION and the migration core queues it for deletion. A key
sent again while it waits is queued once. Nothing is started in recovery mode, and what waits is
dropped when recovery mode starts (the sender's full vacuum runs find such tombstones again), as
are the keys of a database that is detached. A call never answered (it cannot be: every call
ends with REPLY_CALL or REPLY_ERROR) frees its slot after ``stuck_after`` seconds anyway.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import CallFlag, CallFunc

#: VACUUM_MIGRATION calls under way at once (all databases).
IN_FLIGHT = 16
#: Seconds after which a call still unanswered no longer holds a slot.
STUCK_AFTER = 60.0

_FLAGS = CallFlag.IMMEDIATE_MIGRATION | CallFlag.VACUUM_MIGRATION


@dataclass
class FetchCounters:
    queued: int = 0         # keys taken from VACUUM_FETCH (a key already waiting not counted)
    started: int = 0        # VACUUM_MIGRATION calls made
    answered: int = 0
    dropped: int = 0        # waiting keys dropped (recovery, database gone)
    stuck: int = 0          # slots freed without an answer


class _Answer:
    """The 'client' of one VACUUM_MIGRATION call: its reply frees the call's slot."""

    __slots__ = ("fetches",)

    def __init__(self, fetches: VacuumFetches) -> None:
        self.fetches = fetches

    def send(self, frame: bytes) -> bool:
        self.fetches._answered(self)
        return True


class VacuumFetches:
    """``add(db_id, keys)`` queues; calls go out through ``call(caller, db_id, key, callid,
    flags)`` while fewer than ``in_flight`` are under way."""

    def __init__(self, call: Callable[[object, int, bytes, int, int], None],
                 clock: Callable[[], float], *, in_flight: int = IN_FLIGHT,
                 stuck_after: float = STUCK_AFTER) -> None:
        self.call = call
        self.clock = clock
        self.in_flight = in_flight
        self.stuck_after = stuck_after
        self.counters = FetchCounters()
        self.waiting: OrderedDict[tuple[int, bytes], None] = OrderedDict()
        self.running: dict[_Answer, float] = {}       # call -> when it started
        self.recovering = False
        self._pumping = False
        self._soon: asyncio.Handle | None = None

    def add(self, db_id: int, keys: list[bytes]) -> None:
        if self.recovering:
            return
        for key in keys:
            item = (db_id, bytes(key))
            if item not in self.waiting:
                self.waiting[item] = None
                self.counters.queued += 1
        self._pump()

    def recovery_mode(self, active: bool) -> None:
        self.recovering = active
        if active:
            self.counters.dropped += len(self.waiting)
            self.waiting.clear()

    def database_gone(self, db_id: int) -> None:
        for item in [i for i in self.waiting if i[0] == db_id]:
            del self.waiting[item]
            self.counters.dropped += 1

    def tick(self, now: float) -> None:
        stuck = [a for a, started in self.running.items() if now - started >= self.stuck_after]
        for answer in stuck:
            del self.running[answer]
            self.counters.stuck += 1
        if stuck:
            self._pump()

    def close(self) -> None:
        self.waiting.clear()
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _answered(self, answer: _Answer) -> None:
        if self.running.pop(answer, None) is None:
            return                          # freed as stuck already
        self.counters.answered += 1
        if not self._pumping:
            self._pump()

    def _pump(self) -> None:
        """Start calls while there are free slots: at most ``in_flight`` per pass (a call answered
        at once, e.g. a record already here, frees its slot during the pass); more on the next
        loop turn, so a long list never holds the loop."""
        if self._pumping or self.recovering:
            return
        self._pumping = True
        try:
            for _ in range(self.in_flight):
                if not self.waiting or len(self.running) >= self.in_flight:
                    break
                (db_id, key), _ = self.waiting.popitem(last=False)
                answer = _Answer(self)
                self.running[answer] = self.clock()
                self.counters.started += 1
                try:
                    self.call(answer, db_id, key, CallFunc.NULL_FUNC, _FLAGS)
                except Exception:
                    self.running.pop(answer, None)
                    raise
        finally:
            self._pumping = False
        if self.waiting and len(self.running) < self.in_flight and self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._again)

    def _again(self) -> None:
        self._soon = None
        self._pump()
