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
  (not by the nodes that redirect it); ``b`` is the number of base-4 digits of the hop count,
  capped at 15 (:func:`hop_bucket`); the database's own buckets and its ten "hot keys" (the keys
  seen with the highest hop counts) are kept the same way;
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


def hop_bucket(hopcount: int) -> int:
    """The bucket ctdbd counts a hop count in: shift right by 2 until zero, counting the shifts
    (0 -> 0, 1..3 -> 1, 4..15 -> 2, 16..63 -> 3, ...), at most ``MAX_COUNT_BUCKETS - 1``."""
    bucket = 0
    while hopcount:
        hopcount >>= 2
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
    hot_keys: list[tuple[int, bytes]] = field(default_factory=list)   # (hop count, key), highest first

    def count_hops(self, key: bytes, hopcount: int) -> None:
        self.hop_count_bucket[hop_bucket(hopcount)] += 1
        self.note_hot_key(key, hopcount)

    def note_hot_key(self, key: bytes, hopcount: int) -> None:
        """ctdb_update_db_stat_hot_keys: keep the MAX_HOT_KEYS keys seen with the highest hop
        count (a known key only moves up; a full table drops its lowest entry)."""
        if hopcount <= 0:
            return
        for i, (count, known) in enumerate(self.hot_keys):
            if known == key:
                if hopcount > count:
                    self.hot_keys[i] = (hopcount, key)
                    self.hot_keys.sort(key=lambda e: -e[0])
                return
        if len(self.hot_keys) >= MAX_HOT_KEYS:
            if hopcount <= self.hot_keys[-1][0]:
                return
            self.hot_keys.pop()
        self.hot_keys.append((hopcount, key))
        self.hot_keys.sort(key=lambda e: -e[0])
