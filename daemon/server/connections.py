"""TCP connection tracking across the cluster: this node's tickle table (`core.tickles`), the
replication of its changes (TCP_ADD / TCP_REMOVE at once, SET_TCP_TICKLE_LIST periodically and
to nodes that connect), and discovery of connections to the IPs this node holds that no service
registered (sock_diag), so clients of services that never talk to the daemon are tickled too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from ..config import Tunables
from ..core.tickles import REMOTE, Connection, TickleTable, client_source
from ..failover.effects import ConnPair, Effects
from ..log import log
from ..protocol import BROADCAST_CONNECTED, Control, SockAddr, TickleList, pack_request
from .messenger import Messenger
from .tasks import Tasks, wait_for_wakeup
from .wire import conn_of, wire_conn

# s between looks at the TCP counters (while holding IPs). Each look costs ~40-60 us (reading
# /proc/net/snmp); every 0.2 s rather than every 100 ms heartbeat tick took 0.03 % of a core off an
# idle daemon, and a connection younger than that is one the client is still setting up.
# The looks ride on the heartbeat timer, so with paced heartbeats they come once a look of the
# loop (heartbeat_pacer.look_interval: 120 ms at 20 ms beats, 600 ms at the default 100 ms).
POLL_INTERVAL = 0.2
FALLBACK_INTERVAL = 1.0      # s; the loop's own pace when no heartbeat timer drives polls
DRIVEN_INTERVAL = 30.0       # s; ... when one does (only to notice HeartbeatIntervalMs set to 0)
SCAN_MAX_INTERVAL = 30.0     # s between full connection scans when the counters are quiet
SCAN_CPU_BUDGET = 0.005      # long-run fraction of a core the scans may use
SCAN_BURST = 0.05            # s of scan CPU that may be spent at once (credit cap)


class ConnectionTracker:
    def __init__(self, table: TickleTable, messenger: Messenger, effects: Effects, tunables: Tunables,
                 tasks: Tasks, *, held_ips: Callable[[], list[str]], failover_disabled: bool,
                 clock: Callable[[], float]) -> None:
        self.table = table
        self.messenger = messenger
        self.effects = effects
        self.tunables = tunables
        self.tasks = tasks
        self.held_ips = held_ips
        self.failover_disabled = failover_disabled
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._next_poll = 0.0
        self._last_scan = 0.0
        self._last_counter: tuple[bytes, ...] | None = None
        self._credit = SCAN_BURST
        self._last_refill = 0.0
        self._last_push = 0.0

    # -- what services and controls tell it -------------------------------------------------------
    def connections(self, ip: str, port: int = 0) -> list[Connection]:
        return self.table.connections(ip, port) if self.table.knows_ip(ip) else []

    def knows_ip(self, ip: str) -> bool:
        return self.table.knows_ip(ip)

    def set_public_ips(self, ips: Iterable[str]) -> None:
        self.table.set_public_ips(ips)

    def add_local(self, conn: Connection, client_id: int) -> None:
        """A local client (smbd) registered a connection it serves (TCP_CLIENT)."""
        if self.table.add(conn, client_source(client_id)):
            self.changed(conn, True)

    def add_remote(self, conn: Connection, from_tool: bool) -> None:
        """TCP_ADD from a peer, or `ctdb addtickle` (then every node learns it now)."""
        if self.table.add(conn, REMOTE) and from_tool:
            self.changed(conn, True)

    def remove(self, conn: Connection, from_tool: bool) -> None:
        if self.table.remove(conn) and from_tool:
            self.changed(conn, False)

    def client_disconnected(self, conn: Connection, client_id: int) -> None:
        if self.table.drop_source(conn, client_source(client_id)):
            self.changed(conn, False)

    def client_passed(self, conn: Connection, client_id: int) -> None:
        self.table.add(conn, client_source(client_id))

    def client_gone(self, client_id: int, is_held: Callable[[str], bool]) -> None:
        """A local client went away: what only it registered goes, cluster-wide for held IPs."""
        for conn in self.table.drop_client(client_id):
            if is_held(conn.dst_ip):
                self.changed(conn, False)

    def replace_list(self, ip: str, conns: list[Connection]) -> None:
        """SET_TCP_TICKLE_LIST from the node that hosts `ip`."""
        self.table.replace(ip, conns)

    def after_takeover(self, ip: str) -> None:
        """The tickle rounds for a freshly taken `ip` are over: forget connections learnt from
        elsewhere that this host has no socket for (their clients were reset)."""
        try:
            alive = [conn_of(pair) for pair in self.effects.established([ip])]
        except Exception as exc:
            log.debug("connection scan after takeover of %s failed: %s", ip, exc)
            return
        removed = self.table.prune_after_takeover(ip, alive)
        if removed:
            log.info("Forgot %u tickled connections to %s that did not survive the takeover",
                     len(removed), ip)
            self.push_list(ip, BROADCAST_CONNECTED)

    def ip_taken(self) -> None:
        """Start looking for connections to a freshly taken IP now."""
        self._wakeup.set()

    # -- replication ------------------------------------------------------------------------------
    def changed(self, conn: Connection, added: bool) -> None:
        """A connection learnt locally (client, tool, kernel): tell the other nodes at once."""
        opcode = Control.TCP_ADD if added else Control.TCP_REMOVE
        data = pack_request(opcode, wire_conn(conn))
        for pnn in self.messenger.connected_peers():
            self.messenger.send_noreply(pnn, opcode, data)

    def push_list(self, ip: str, dest: int) -> None:
        data = pack_request(Control.SET_TCP_TICKLE_LIST,
                            TickleList(SockAddr(ip, 0), [wire_conn(c) for c in self.table.connections(ip)]))
        targets = self.messenger.connected_peers() if dest == BROADCAST_CONNECTED else [dest]
        for pnn in targets:
            self.messenger.send_noreply(pnn, Control.SET_TCP_TICKLE_LIST, data)

    def push_all(self, dest: int) -> None:
        """Our lists for every IP we hold, to `dest` (a node that just connected or started)."""
        for ip in self.held_ips():
            self.push_list(ip, dest)

    # -- discovery --------------------------------------------------------------------------------
    def poll(self, now: float, force: bool = False) -> None:
        """Find connections to the IPs we hold that nobody registered (sock_diag), and push
        changed tickle lists every TickleUpdateInterval.

        Runs from the heartbeat timer, so looking costs no wake-up of its own (a separate
        asyncio loop at 10 Hz cost a quarter of a percent of a core). A full socket dump walks
        the kernel's whole TCP hash table (2-3 ms on a host with a lot of memory), so it runs
        only when the namespace's TCP counters moved (about 40 us a look, every POLL_INTERVAL)
        or SCAN_MAX_INTERVAL passed. Dumps are paid from a CPU credit that refills at
        SCAN_CPU_BUDGET of a core and holds at most SCAN_BURST: a new connection is found
        within about one poll interval, while constant churn cannot make the dumps cost more
        than the budget."""
        if not force and now < self._next_poll:
            return
        # A little slack, so that heartbeat ticks with jitter poll every POLL_INTERVAL, not a tick later.
        self._next_poll = now + POLL_INTERVAL * 0.9
        if self.failover_disabled:
            return
        held = self.held_ips()
        if not held:
            return
        self._credit = min(SCAN_BURST, self._credit + (now - self._last_refill) * SCAN_CPU_BUDGET)
        self._last_refill = now
        counter = self.effects.connection_counter()
        due = (counter is None or counter != self._last_counter
               or now - self._last_scan >= SCAN_MAX_INTERVAL)
        if due and self._credit > 0:
            self._last_counter = counter
            self._last_scan = now
            started = time.perf_counter()
            try:
                found = self.effects.established(held)
            except Exception as exc:
                log.debug("connection scan failed: %s", exc)
                found = []
            self._credit -= time.perf_counter() - started
            self._sync_kernel(held, found)
        if now - self._last_push >= self.tunables.get("TickleUpdateInterval"):
            self._last_push = now
            for ip in self.table.take_dirty(held):
                self.push_list(ip, BROADCAST_CONNECTED)

    async def run(self) -> None:
        """Polls at once when this node takes an IP (the wake-up), and at a slow pace in case
        no heartbeat timer runs (HeartbeatIntervalMs = 0); `poll` skips when not due."""
        self._last_push = self._last_refill = self.clock()
        while not self.tasks.shutting_down:
            driven = self.tunables.get("HeartbeatIntervalMs") > 0
            woken = await wait_for_wakeup(self._wakeup, DRIVEN_INTERVAL if driven else FALLBACK_INTERVAL)
            if not self.tasks.shutting_down:
                self.poll(self.clock(), force=woken)

    def _sync_kernel(self, held: list[str], found: list[ConnPair]) -> None:
        by_ip: dict[str, list[Connection]] = {ip: [] for ip in held}
        for pair in found:
            conn = conn_of(pair)
            by_ip.setdefault(conn.dst_ip, []).append(conn)
        for ip, conns in by_ip.items():
            added, removed = self.table.sync_kernel(ip, conns)
            for conn in added:
                self.changed(conn, True)
            for conn in removed:
                self.changed(conn, False)
