"""TCP connection ("tickle") tables: per public IP, the client connections to tickle after a
takeover, where each entry came from, and what must be replicated.

Sources of an entry, as in CTDB plus one of ours:

* a local client's TCP_CLIENT (smbd): owned by that client, dropped when it disconnects;
* TCP_ADD / SET_TCP_TICKLE_LIST from another node, or TCP_ADD_DELAYED_UPDATE (`ctdb addtickle`);
* pyctdbd's own discovery of established connections to a public IP this node holds
  (sock_diag), so services that never register are tickled too.

An entry stays while any source holds it; TCP_REMOVE (`ctdb deltickle`, a peer's removal) drops
it outright, as in CTDB. Changes made here are returned so the shell can broadcast them
(TCP_ADD / TCP_REMOVE at once, SET_TCP_TICKLE_LIST periodically and to newly connected nodes).
Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .publicips import canonical_ip

REMOTE = "remote"       # learnt from another node or from the ctdb tool
KERNEL = "kernel"       # discovered in this host's socket table


def client_source(client_id: int) -> str:
    return f"client:{client_id}"


@dataclass(frozen=True, order=True)
class Connection:
    """A TCP connection as CTDB's `ctdb_connection` has it: `src` is the client's endpoint and
    `dst` the server's (the public IP)."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int

    @classmethod
    def make(cls, src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> Connection:
        return cls(canonical_ip(src_ip), src_port, canonical_ip(dst_ip), dst_port)

    def __str__(self) -> str:
        return f"{_endpoint(self.src_ip, self.src_port)} -> {_endpoint(self.dst_ip, self.dst_port)}"


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass
class TickleTable:
    """Connections per public IP. `public_ips` limits what is tracked: like ctdbd, entries for
    an address that is not one of this node's public IPs are refused."""

    public_ips: set[str] = field(default_factory=set)
    _entries: dict[str, dict[Connection, set[str]]] = field(default_factory=dict)
    _dirty: set[str] = field(default_factory=set)      # IPs whose full list should be pushed

    def set_public_ips(self, ips: Iterable[str]) -> None:
        self.public_ips = {canonical_ip(ip) for ip in ips}
        for ip in list(self._entries):
            if ip not in self.public_ips:
                del self._entries[ip]
                self._dirty.discard(ip)

    def knows_ip(self, ip: str) -> bool:
        return canonical_ip(ip) in self.public_ips

    # -- changes ---------------------------------------------------------------------------------
    def add(self, conn: Connection, source: str) -> bool:
        """Record `conn` from `source`. True if the connection is new to the table. Raises
        KeyError if its server address is not a public IP of this node."""
        ip = conn.dst_ip
        if ip not in self.public_ips:
            raise KeyError(ip)
        conns = self._entries.setdefault(ip, {})
        sources = conns.get(conn)
        if sources is None:
            conns[conn] = {source}
            self._dirty.add(ip)
            return True
        sources.add(source)
        return False

    def remove(self, conn: Connection) -> bool:
        """Drop `conn` whatever its sources (TCP_REMOVE). True if it was there."""
        conns = self._entries.get(conn.dst_ip)
        if not conns or conn not in conns:
            return False
        del conns[conn]
        if not conns:
            del self._entries[conn.dst_ip]
        self._dirty.add(conn.dst_ip)
        return True

    def drop_source(self, conn: Connection, source: str) -> bool:
        """`source` no longer holds `conn`; True if that removed the connection entirely."""
        conns = self._entries.get(conn.dst_ip)
        if not conns or conn not in conns:
            return False
        sources = conns[conn]
        sources.discard(source)
        if sources:
            return False
        return self.remove(conn)

    def drop_client(self, client_id: int) -> list[Connection]:
        """A local client went away: remove what only it held. Returns the removed ones."""
        source = client_source(client_id)
        removed = []
        for ip in list(self._entries):
            for conn in [c for c, s in self._entries[ip].items() if source in s]:
                if self.drop_source(conn, source):
                    removed.append(conn)
        return removed

    def replace(self, ip: str, conns: Iterable[Connection]) -> None:
        """SET_TCP_TICKLE_LIST from the node hosting `ip`: its list replaces ours, but entries
        our own local clients or kernel scan hold are kept."""
        ip = canonical_ip(ip)
        if ip not in self.public_ips:
            raise KeyError(ip)
        old = self._entries.get(ip, {})
        new: dict[Connection, set[str]] = {}
        for conn, sources in old.items():
            local = {s for s in sources if s != REMOTE}
            if local:
                new[conn] = local
        for conn in conns:
            if conn.dst_ip != ip:
                continue
            new.setdefault(conn, set()).add(REMOTE)
        if new:
            self._entries[ip] = new
        else:
            self._entries.pop(ip, None)

    def sync_kernel(self, ip: str, established: Iterable[Connection]) -> tuple[list[Connection], list[Connection]]:
        """This node holds `ip` and its socket table shows `established` to it. Returns
        (added, removed): connections new to the table, and kernel-found ones that are gone."""
        ip = canonical_ip(ip)
        if ip not in self.public_ips:
            return [], []
        now = {c for c in established if c.dst_ip == ip}
        added = [c for c in sorted(now) if self.add(c, KERNEL)]
        removed = []
        for conn, sources in list(self._entries.get(ip, {}).items()):
            if KERNEL in sources and conn not in now and self.drop_source(conn, KERNEL):
                removed.append(conn)
        return added, removed

    def prune_after_takeover(self, ip: str, established: Iterable[Connection]) -> list[Connection]:
        """After the tickle rounds for a freshly taken `ip`, entries learnt from elsewhere that
        this host has no socket for are dead (the client was reset): forget them."""
        ip = canonical_ip(ip)
        alive = set(established)
        removed = []
        for conn, sources in list(self._entries.get(ip, {}).items()):
            if sources <= {REMOTE, KERNEL} and conn not in alive:
                self.remove(conn)
                removed.append(conn)
        return removed

    # -- queries ---------------------------------------------------------------------------------
    def connections(self, ip: str, port: int = 0) -> list[Connection]:
        """GET_TCP_TICKLE_LIST: the connections to `ip`, only those to server port `port` if
        it is not 0."""
        conns = self._entries.get(canonical_ip(ip), {})
        return [c for c in conns if port == 0 or c.dst_port == port]

    def all_ips(self) -> list[str]:
        return sorted(self._entries)

    def take_dirty(self, held: Iterable[str]) -> list[str]:
        """The held IPs whose list changed since the last push; clears their mark."""
        held_set = {canonical_ip(ip) for ip in held}
        out = sorted(self._dirty & held_set)
        self._dirty -= held_set
        return out

    def __len__(self) -> int:
        return sum(len(c) for c in self._entries.values())
