"""Counters of record calls and migrations, shaped like CTDB's statistics so that a later
STATISTICS (1) / GET_DB_STATISTICS (132) control can fill the wire structs from them.

Field names follow ``struct ctdb_statistics`` and ``struct ctdb_db_statistics`` of Samba 4.17
(``ctdb/protocol/protocol.h``); only the members that record calls and migrations touch are here
(``node.*`` for the five call/dmaster operations, ``client.req_call``, ``total_calls``,
``pending_calls``, ``max_hop_count``, ``hop_count_bucket[16]``, ``call_latency``, the read-only
delegation totals, which stay 0 because pyctdbd hands out no delegations). How ctdbd counts them
(``ctdb/server/ctdb_server.c`` ``ctdb_input_pkt``, ``ctdb_call.c`` ``ctdb_request_call``,
``ctdb_daemon.c`` ``daemon_request_call_from_client``):

- ``node.<op>`` counts a node packet of that operation that passed the ban and generation checks
  (REPLY_ERROR is counted without them); a requeued packet is counted again, as in ctdbd;
- ``hop_count_bucket[b]`` and ``max_hop_count`` are counted by the dmaster that serves a REQ_CALL
  (not by the nodes that redirect it); ``b`` is the number of binary digits of the hop count,
  capped at 15 (:func:`hop_bucket`; base 2 since Samba 4.10); the database keeps its own buckets;
- a volatile database's ten "hot keys" are the keys migrated *into* this node most often: each
  landing for this node's own call counts the key in a one-second window (``hash_count`` with a
  1 s interval: within the window the count grows, after it the key starts again at 1), and the
  count updates the list, kept smallest first (``ctdb_become_dmaster``,
  ``ctdb_migration_count_handler``, ``ctdb_update_db_stat_hot_keys``; checked at
  samba-4.17.12);
- ``total_calls`` and ``client.req_call`` count client REQ_CALLs, ``pending_calls`` those still
  waiting for their reply; ``call_latency`` is the time from a client's request to its reply.

The extra counters below the CTDB ones (redirects, migrations, collapsed and deferred calls,
reissues) are pyctdbd's own; no wire struct carries them.

Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: ``MAX_COUNT_BUCKETS`` and ``MAX_HOT_KEYS`` of protocol.h.
MAX_COUNT_BUCKETS = 16
MAX_HOT_KEYS = 10
#: s: ctdbd counts a key's migrations within this window (ctdb_migration_init's hash_count).
MIGRATION_WINDOW = 1.0


def hop_bucket(hopcount: int) -> int:
    """The bucket ctdbd counts a hop count in: shift right by 1 until zero, counting the shifts
    (0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ...), at most ``MAX_COUNT_BUCKETS - 1``."""
    bucket = 0
    while hopcount:
        hopcount >>= 1
        bucket += 1
    return min(bucket, MAX_COUNT_BUCKETS - 1)


@dataclass
class LatencyCounter:
    """``struct ctdb_latency_counter``: num, min, max, total (seconds)."""

    num: int = 0
    min: float = 0.0
    max: float = 0.0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        # CTDB_UPDATE_LATENCY: min 0.0 means "no sample yet".
        if seconds > self.max:
            self.max = seconds
        if self.num == 0 or seconds < self.min:
            self.min = seconds
        self.total += seconds
        self.num += 1


@dataclass
class ChildWrites:
    """UPDATE_RECORDs applied in a child process (``childwrite_calls`` and its latency, and the
    ones still being written, ``pending_childwrite_calls``)."""

    calls: int = 0
    pending: int = 0
    latency: LatencyCounter = field(default_factory=LatencyCounter)


@dataclass
class CallStatistics:
    """The call/migration part of ``struct ctdb_statistics`` plus pyctdbd's own counters."""

    node_req_call: int = 0
    node_reply_call: int = 0
    node_req_dmaster: int = 0
    node_reply_dmaster: int = 0
    node_reply_error: int = 0
    client_req_call: int = 0
    total_calls: int = 0
    pending_calls: int = 0
    max_hop_count: int = 0
    hop_count_bucket: list[int] = field(default_factory=lambda: [0] * MAX_COUNT_BUCKETS)
    call_latency: LatencyCounter = field(default_factory=LatencyCounter)
    total_ro_delegations: int = 0
    total_ro_revokes: int = 0
    # pyctdbd's own
    redirects: int = 0
    migrations_out: int = 0       # records this node gave away (REQ_DMASTER or REPLY_DMASTER sent)
    migrations_in: int = 0        # records that landed here (this node became dmaster)
    collapsed_calls: int = 0      # client calls that joined a migration already under way
    deferred_calls: int = 0       # peer calls held until a record in flight to us landed
    reissued_calls: int = 0       # calls sent again (new generation or collapse timeout)
    errors_sent: int = 0          # REPLY_ERRORs sent to peers and clients

    def count_hops(self, hopcount: int) -> None:
        self.max_hop_count = max(self.max_hop_count, hopcount)
        self.hop_count_bucket[hop_bucket(hopcount)] += 1

    def ctdb_fields(self) -> dict[str, object]:
        """The values under the member names of ``struct ctdb_statistics``."""
        lat = self.call_latency
        return {
            "node.req_call": self.node_req_call, "node.reply_call": self.node_reply_call,
            "node.req_dmaster": self.node_req_dmaster, "node.reply_dmaster": self.node_reply_dmaster,
            "node.reply_error": self.node_reply_error, "client.req_call": self.client_req_call,
            "total_calls": self.total_calls, "pending_calls": self.pending_calls,
            "max_hop_count": self.max_hop_count, "hop_count_bucket": list(self.hop_count_bucket),
            "call_latency": (lat.num, lat.min, lat.max, lat.total),
            "total_ro_delegations": self.total_ro_delegations,
            "total_ro_revokes": self.total_ro_revokes,
        }


@dataclass
class DbCallStatistics:
    """The call part of ``struct ctdb_db_statistics``: hop buckets and hot keys of one database."""

    db_ro_delegations: int = 0
    db_ro_revokes: int = 0
    hop_count_bucket: list[int] = field(default_factory=lambda: [0] * MAX_COUNT_BUCKETS)
    hot_keys: list[tuple[int, bytes]] = field(default_factory=list)   # (count, key), smallest first
    #: key -> (window start, migrations in the window): ctdbd's hash_count of migrations.
    migrations: dict[bytes, tuple[float, int]] = field(default_factory=dict)

    def count_hops(self, hopcount: int) -> None:
        self.hop_count_bucket[hop_bucket(hopcount)] += 1

    def count_migration(self, key: bytes, now: float) -> None:
        """The record landed here for this node's own call (hash_count_increment, 1 s interval)."""
        start, count = self.migrations.get(key, (now, 0))
        if now >= start + MIGRATION_WINDOW:
            start, count = now, 0
        self.migrations[key] = (start, count + 1)
        self.note_hot_key(key, count + 1)

    def expire_migrations(self, now: float) -> None:
        """hash_count_expire: forget keys whose window has ended."""
        for key in [k for k, (start, _) in self.migrations.items() if now >= start + MIGRATION_WINDOW]:
            del self.migrations[key]

    def note_hot_key(self, key: bytes, count: int) -> None:
        """ctdb_update_db_stat_hot_keys: a full list takes a key only above its smallest count
        (which it replaces); a known key only moves up; the list stays sorted smallest first."""
        if len(self.hot_keys) >= MAX_HOT_KEYS and count <= self.hot_keys[0][0]:
            return
        for i, (known_count, known) in enumerate(self.hot_keys):
            if known == key:
                if count <= known_count:
                    return
                self.hot_keys[i] = (count, key)
                break
        else:
            if len(self.hot_keys) < MAX_HOT_KEYS:
                self.hot_keys.append((count, key))
            else:
                self.hot_keys[0] = (count, key)
        self.hot_keys.sort(key=lambda e: e[0])
