"""Migrations this node has under way ("flights"): one per record at most, found by
(db_id, key) and by the reqid of the REQ_CALL that fetches it.

A flight holds the call that was sent (ctdbd's ``ctdb_call_state``), the local client waiting for
it, the local calls that collapsed into it (ctdbd's deferred-fetch queue, FetchCollapse) and the
peers' calls this node holds until the record lands (see :mod:`.migration`). Pure data.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from .migration_events import PeerPacket


@dataclass
class Waiter:
    """A local call waiting for a record: who gets the reply, and what to run on the record."""

    client: Hashable
    reqid: int
    callid: int
    flags: int
    calldata: bytes
    started: float


@dataclass
class Flight:
    db_id: int
    key: bytes
    reqid: int              # of the REQ_CALL on the wire (this node's own reqid space)
    generation: int         # the REQ_CALL's generation; a REPLY_CALL of another one is dropped
    sent_at: float
    call: Waiter            # the call that was sent (the first local request)
    primary: Waiter | None  # its client, still waiting (None once it went away)
    waiters: list[Waiter] = field(default_factory=list)         # collapsed local calls
    deferred: list[PeerPacket] = field(default_factory=list)    # peers' calls held here
    peer_asked: bool = False  # a peer asked for the record while this migration was under way

    @property
    def contended(self) -> bool:
        """Several local calls wait for the record, or a peer asked for it on its way."""
        return self.peer_asked or bool(self.waiters)


@dataclass(frozen=True)
class FlightView:
    """What a caller outside the core may see of a flight."""

    reqid: int
    generation: int
    waiting_clients: int
    deferred_calls: int


class FlightTable:
    def __init__(self) -> None:
        self.by_key: dict[tuple[int, bytes], Flight] = {}
        self.by_reqid: dict[int, Flight] = {}
        self.next_reqid = 1

    def new_reqid(self) -> int:
        """A reqid for a new REQ_CALL: the next one (wrapping, never 0) no flight is using."""
        reqid = self.next_reqid
        self.next_reqid = (self.next_reqid % 0xFFFFFFFF) + 1
        while self.with_reqid(self.next_reqid) is not None:
            self.next_reqid = (self.next_reqid % 0xFFFFFFFF) + 1
        return reqid

    def drop_client(self, client: Hashable) -> int:
        """A local client went away: it gets no replies. Returns how many calls it had waiting."""
        dropped = 0
        for flight in self:
            if flight.primary is not None and flight.primary.client == client:
                flight.primary = None
                dropped += 1
            kept = [w for w in flight.waiters if w.client != client]
            dropped += len(flight.waiters) - len(kept)
            flight.waiters = kept
        return dropped

    def get(self, db_id: int, key: bytes) -> Flight | None:
        return self.by_key.get((db_id, key))

    def with_reqid(self, reqid: int) -> Flight | None:
        return self.by_reqid.get(reqid)

    def add(self, flight: Flight) -> None:
        self.by_key[(flight.db_id, flight.key)] = flight
        self.by_reqid[flight.reqid] = flight

    def remove(self, flight: Flight) -> None:
        if self.by_key.get((flight.db_id, flight.key)) is flight:
            del self.by_key[(flight.db_id, flight.key)]
        if self.by_reqid.get(flight.reqid) is flight:
            del self.by_reqid[flight.reqid]

    def set_reqid(self, flight: Flight, reqid: int) -> None:
        """A new reqid for a re-sent call (a late reply to the old one is then not found)."""
        if self.by_reqid.get(flight.reqid) is flight:
            del self.by_reqid[flight.reqid]
        flight.reqid = reqid
        self.by_reqid[reqid] = flight

    def __iter__(self) -> Iterator[Flight]:
        return iter(list(self.by_key.values()))

    def __len__(self) -> int:
        return len(self.by_key)

    def view(self, db_id: int, key: bytes) -> FlightView | None:
        flight = self.get(db_id, key)
        if flight is None:
            return None
        clients = len(flight.waiters) + (flight.primary is not None)
        return FlightView(flight.reqid, flight.generation, clients, len(flight.deferred))
