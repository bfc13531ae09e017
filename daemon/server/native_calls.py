"""smbd's calls in the native node plane, from the loop's side (docs/native-hot-path.md, step 3;
on with the clients in the plane and the grants, unless PYCTDBD_NATIVE_CALLS=0).

While the loop sleeps, with the state it published for the run it just finished (the
lmaster's grant's rules, server/native_grants.py), the plane's thread takes a client's REQ_CALL
for a key no state of the core names: it answers it from the record held here, or sends the
REQ_CALL on to the believed dmaster and, when the REPLY_DMASTER comes back before the loop
wakes, lands the record and answers the client itself (``client_call_record`` and
``land_record`` in node_plane.c, held to ``MigrationCore``'s decisions by
tests/unit/test_native_calls.py). Everything it did goes into a log, which this module takes
at every wake, before any callback, and leaves in the core and the shells exactly what the
Python path leaves:

* a call answered here: the client-call statistics, the shell's counters, the vacuum's queue;
* a call sent on: the same, and — unless it landed in the same sleep — the core's flight for it
  (reqid, generation, the client waiting), so from then on the loop carries it like its own;
* a landing: the landing statistics and the migration count, the pin the core sets
  (``local_grace``: one client waited, no peer asked, or the thread would have left it), the
  peer's traffic for failure detection;
* a store that failed after another one was made: a forced recovery, as the shell forces one.

The reqids of the thread's calls continue the core's (published before each sleep).
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.db.flights import Flight, Waiter
from ..log import log
from ..native.node_plane import (
    CALL_ANSWERED_HERE, CALL_FLIGHT, CALL_LANDED, CALL_SCHEDULED, CALL_STORE_FAILED, STORE_SCHEDULE,
    CallEntry,
)
from ..net.local import LocalServer
from ..net.plane_links import PlaneLinks
from ..net.transport import NodeTransport
from ..protocol.constants import Operation
from ..protocol.types import LtdbHeader
from .record_calls import RecordCalls

#: In the daemon's environment: "0" leaves smbd's calls to the loop. Otherwise the plane's thread
#: takes them when the clients are in the plane and it answers the lmaster's grant.
ENV = "PYCTDBD_NATIVE_CALLS"


def wanted(env) -> bool:
    return env.get(ENV, "1") != "0"

_REQ_CALL = int(Operation.REQ_CALL)
_REQ_CONTROL = int(Operation.REQ_CONTROL)
_REPLY_CALL = int(Operation.REPLY_CALL)
_REPLY_DMASTER = int(Operation.REPLY_DMASTER)


class NativeCalls:
    def __init__(self, links: PlaneLinks, local: LocalServer, transport: NodeTransport,
                 calls: RecordCalls, note_traffic: Callable[[int, float], None]) -> None:
        self.links = links
        self.local = local
        self.transport = transport
        self.calls = calls
        self.core = calls.core
        self.note_traffic = note_traffic

    def start(self) -> None:
        self.links.plane.enable_calls()

    def publish(self) -> None:
        """With the grants' state, before the loop sleeps."""
        self.links.plane.publish_calls(self.core.flights.next_reqid)

    def stop(self) -> None:
        """No more calls in the plane (after a failure here): a state it never sees again."""
        self.links.plane.publish_calls(0)
        self.links.plane.disable_calls()

    def take(self) -> None:
        """The thread's calls since the loop last woke, into the core and the shells."""
        entries = self.links.plane.calls()
        self.core.flights.next_reqid = self.links.plane.next_reqid
        if not entries:
            return
        landed = {e.reqid for e in entries if e.kind == CALL_LANDED}
        now = self.calls.clock()
        for entry in entries:
            if entry.kind == CALL_ANSWERED_HERE:
                self._answered(entry)
            elif entry.kind == CALL_FLIGHT:
                self._flight(entry, adopt=entry.reqid not in landed)
            elif entry.kind == CALL_LANDED:
                self._landed(entry, now)
            elif entry.kind == CALL_SCHEDULED:
                self._scheduled(entry)
            elif entry.kind == CALL_STORE_FAILED:
                self._stores(entry)
                self.calls.force_recovery(f"a store of a record of db 0x{entry.db_id:08x} failed in "
                                          "the native node plane")
            else:
                log.error("native calls: unknown log entry kind %d", entry.kind)

    # -- each kind of entry --------------------------------------------------------------------
    def _answered(self, e: CallEntry) -> None:
        stats = self.core.stats
        stats.client_req_call += 1
        stats.total_calls += 1
        stats.call_latency.add(0.0)          # as the loop: answered within the event
        self.calls.counters.immediate += 1
        self._stores(e)
        self._client_traffic(e, received=True, sent=True)

    def _flight(self, e: CallEntry, adopt: bool) -> None:
        stats, counters = self.core.stats, self.calls.counters
        client = self.links.protocol_of(e.conn)
        stats.client_req_call += 1
        stats.total_calls += 1
        counters.immediate += 1
        counters.packets_sent += 1
        self.transport.count_native(e.peer, sent_op=_REQ_CALL)
        self._client_traffic(e, received=True, sent=False)
        if client is not None or not adopt:
            stats.pending_calls += 1          # (a client gone: its call waits for nobody)
        if not adopt:
            return
        call = Waiter(client, e.client_reqid, e.callid, e.flags, e.calldata, e.at)
        primary = call if client is not None else None      # as after ClientGone
        self.core.flights.add(Flight(e.db_id, e.key, e.reqid, e.generation, e.at, call, primary))
        if client is not None:
            self.calls.callers[(client, e.client_reqid)] = e.client_src

    def _landed(self, e: CallEntry, now: float) -> None:
        core = self.core
        stats = core.stats
        stats.node_reply_dmaster += 1
        stats.migrations_in += 1
        db_stats = core.db_stats.get(e.db_id)
        if db_stats is not None:
            db_stats.count_migration(e.key, e.at)
        stats.pending_calls -= 1
        stats.call_latency.add(max(0.0, e.at - e.started))
        self.calls.counters.immediate += 1
        self._stores(e)
        until = e.at + core.settings.local_grace
        if until > now:
            core.pins.pin(e.db_id, e.key, until)
        self.transport.count_native(e.peer, received_op=_REPLY_DMASTER)
        self.note_traffic(e.peer, now)
        self._client_traffic(e, received=False, sent=True)

    def _scheduled(self, e: CallEntry) -> None:
        """smbd's SCHEDULE_FOR_DELETION, as controls/vacuum.py takes it (no reply: NOREPLY)."""
        if self.calls.on_schedule is not None:
            self.calls.on_schedule(e.db_id, e.key, LtdbHeader(*e.stores[0][1]))
        self.local.count_native(self.links.protocol_of(e.conn), received_op=_REQ_CONTROL)

    def _stores(self, e: CallEntry) -> None:
        calls = self.calls
        for effect, header in e.stores:
            calls.counters.stores += 1
            if effect == STORE_SCHEDULE:
                calls.schedule_deletion(e.db_id, e.key, LtdbHeader(*header))
            else:
                calls.unschedule_deletion(e.db_id, e.key)

    def _client_traffic(self, e: CallEntry, received: bool, sent: bool) -> None:
        client = self.links.protocol_of(e.conn)
        self.local.count_native(client, received_op=_REQ_CALL if received else None,
                                sent_op=_REPLY_CALL if sent and not e.reply_lost else None)

    def summary(self) -> str:
        counts = self.links.plane.call_counters()
        return ("Native calls: {answered} answered, {sent} sent on, {landed} landed; {left} left to "
                "the loop".format(**counts))
