"""TCP connection tracking across the cluster: replication of tickle-table changes (TCP_ADD /
TCP_REMOVE at once, SET_TCP_TICKLE_LIST periodically and to nodes that connect), and discovery of
connections to the IPs this node holds that no service registered (sock_diag)."""

from __future__ import annotations

import asyncio
import logging
import time

from .convert import conn_of, wire_conn
from .core.tickles import Connection
from .protocol import BROADCAST_CONNECTED, Control, SockAddr, TickleList, pack_request

log = logging.getLogger("ctdblab.daemon")

TICKLE_POLL_INTERVAL = 0.1       # s between looks at the TCP counters (while holding IPs)
TICKLE_FALLBACK_INTERVAL = 1.0   # s; the loop's own pace when no heartbeat timer drives polls
TICKLE_SCAN_MAX_INTERVAL = 30.0  # s between full connection scans when the counters are quiet
SCAN_CPU_BUDGET = 0.005          # long-run fraction of a core the scans may use
SCAN_BURST = 0.05                # s of scan CPU that may be spent at once (credit cap)


class TickleReplication:
    """Mixed into Daemon; uses its tickle table, public-IP table, effects and control client."""

    def tickle_changed(self, conn: Connection, added: bool) -> None:
        """A connection learnt locally (client, tool, kernel): tell the other nodes at once."""
        opcode = Control.TCP_ADD if added else Control.TCP_REMOVE
        data = pack_request(opcode, wire_conn(conn))
        for pnn in self._connected_peers():
            self.rpc.send_noreply(pnn, opcode, data)

    def _push_tickle_list(self, ip: str, dest: int) -> None:
        conns = self.tickles.connections(ip)
        data = pack_request(Control.SET_TCP_TICKLE_LIST,
                            TickleList(SockAddr(ip, 0), [wire_conn(c) for c in conns]))
        targets = self._connected_peers() if dest == BROADCAST_CONNECTED else [dest]
        for pnn in targets:
            self.rpc.send_noreply(pnn, Control.SET_TCP_TICKLE_LIST, data)

    def _push_all_tickle_lists(self, dest: int) -> None:
        for vnn in self.public.held():
            self._push_tickle_list(vnn.ip, dest)

    def _init_tickle_tracking(self) -> None:
        self._tickle_next_poll = 0.0
        self._tickle_last_scan = 0.0
        self._tickle_last_counter: tuple[bytes, ...] | None = None
        self._tickle_credit = SCAN_BURST
        self._tickle_last_refill = 0.0
        self._tickle_last_push = 0.0

    def tickle_poll(self, now: float, force: bool = False) -> None:
        """Find connections to the IPs we hold that nobody registered (sock_diag), and push
        changed tickle lists every TickleUpdateInterval.

        Runs from the heartbeat timer, so looking costs no wake-up of its own (a separate
        asyncio loop at 10 Hz cost a quarter of a percent of a core). A full socket dump walks
        the kernel's whole TCP hash table (2-3 ms on a host with a lot of memory), so it runs
        only when the namespace's TCP counters moved (about 25 us a look, every
        TICKLE_POLL_INTERVAL) or TICKLE_SCAN_MAX_INTERVAL passed. Dumps are paid from a CPU
        credit that refills at SCAN_CPU_BUDGET of a core and holds at most SCAN_BURST: a new
        connection is found within about one poll interval, while constant churn cannot make
        the dumps cost more than the budget."""
        if not force and now < self._tickle_next_poll:
            return
        # A little slack, so that 100 ms heartbeat ticks with jitter poll on every tick.
        self._tickle_next_poll = now + TICKLE_POLL_INTERVAL * 0.9
        if self.failover_disabled:
            return
        held = [v.ip for v in self.public.held()]
        if not held:
            return
        self._tickle_credit = min(SCAN_BURST, self._tickle_credit
                                  + (now - self._tickle_last_refill) * SCAN_CPU_BUDGET)
        self._tickle_last_refill = now
        counter = self.effects.connection_counter()
        due = (counter is None or counter != self._tickle_last_counter
               or now - self._tickle_last_scan >= TICKLE_SCAN_MAX_INTERVAL)
        if due and self._tickle_credit > 0:
            self._tickle_last_counter = counter
            self._tickle_last_scan = now
            started = time.perf_counter()
            try:
                found = self.effects.established(held)
            except Exception as exc:
                log.debug("connection scan failed: %s", exc)
                found = []
            self._tickle_credit -= time.perf_counter() - started
            self._sync_kernel_connections(held, found)
        if now - self._tickle_last_push >= self.tunables.get("TickleUpdateInterval"):
            self._tickle_last_push = now
            for ip in self.tickles.take_dirty(held):
                self._push_tickle_list(ip, BROADCAST_CONNECTED)

    async def _tickle_loop(self) -> None:
        """Polls at once when this node takes an IP (the wake-up), and at a slow pace in case
        no heartbeat timer runs (HeartbeatIntervalMs = 0); tickle_poll skips when not due."""
        self._tickle_last_push = self._tickle_last_refill = self.now
        wakeup = self._tickle_wakeup
        while not self._shutting_down:
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), TICKLE_FALLBACK_INTERVAL)
                woken = True
            except asyncio.TimeoutError:
                woken = False
            if not self._shutting_down:
                self.tickle_poll(self.now, force=woken)

    def _sync_kernel_connections(self, held: list[str], found) -> None:
        by_ip: dict[str, list[Connection]] = {ip: [] for ip in held}
        for server, client in found:
            conn = conn_of(server, client)
            by_ip.setdefault(conn.dst_ip, []).append(conn)
        for ip, conns in by_ip.items():
            added, removed = self.tickles.sync_kernel(ip, conns)
            for conn in added:
                self.tickle_changed(conn, True)
            for conn in removed:
                self.tickle_changed(conn, False)
