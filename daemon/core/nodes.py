"""The node map: every node's flags as this daemon sees them, runstates, bans and admin changes.

Ownership of flags follows CTDB:

* DISCONNECTED is purely local: it says whether *this* daemon has a working connection pair to
  the peer (a peer starts DISCONNECTED|UNHEALTHY and gets both bits set again when it dies).
* Every other flag of node X is decided by X itself (health from its monitor event, admin
  disable/stop, bans) and pushed to the others; a receiver keeps its own DISCONNECTED bit and
  takes the rest from the push.
* DELETED comes from the nodes file (a commented-out line).

Pure state and decisions: no I/O, time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol.constants import NodeFlag, Runstate

#: The flags a node owns and pushes to the others (everything but the local DISCONNECTED bit).
PUSHED_FLAGS = (NodeFlag.UNHEALTHY | NodeFlag.PERMANENTLY_DISABLED | NodeFlag.BANNED
                | NodeFlag.STOPPED | NodeFlag.DELETED)


def flags_text(flags: int) -> str:
    """Flags in the `ctdb status` spelling (`DISCONNECTED|UNHEALTHY|INACTIVE`, or `OK`)."""
    names = [("DISCONNECTED", NodeFlag.DISCONNECTED), ("UNKNOWN", NodeFlag.UNKNOWN),
             ("DISABLED", NodeFlag.PERMANENTLY_DISABLED), ("BANNED", NodeFlag.BANNED),
             ("UNHEALTHY", NodeFlag.UNHEALTHY), ("DELETED", NodeFlag.DELETED),
             ("STOPPED", NodeFlag.STOPPED), ("INACTIVE", NodeFlag.INACTIVE)]
    parts = [name for name, bit in names if flags & bit]
    return "|".join(parts) if parts else "OK"


@dataclass
class FlagChange:
    """A change of one node's flags (the payload of CTDB's `ctdb_node_flag_change`)."""

    pnn: int
    old_flags: int
    new_flags: int

    def __str__(self) -> str:
        return (f"node {self.pnn} flags 0x{self.old_flags:x} ({flags_text(self.old_flags)}) -> "
                f"0x{self.new_flags:x} ({flags_text(self.new_flags)})")


@dataclass
class Node:
    pnn: int
    address: str          # "0.0.0.0" for a deleted node, as CTDB reports it
    flags: int
    runstate: int = Runstate.UNKNOWN   # last runstate the node reported (own node: the real one)

    @property
    def deleted(self) -> bool:
        return bool(self.flags & NodeFlag.DELETED)

    @property
    def connected(self) -> bool:
        return not self.flags & (NodeFlag.DISCONNECTED | NodeFlag.DELETED)

    @property
    def active(self) -> bool:
        """In the vnnmap: neither deleted, disconnected, banned nor stopped."""
        return not self.flags & NodeFlag.INACTIVE


@dataclass
class BanState:
    """This node's own ban: when it started and for how long (CTDB's `ctdb_ban_state`)."""

    seconds: int = 0
    since: float = 0.0

    @property
    def banned(self) -> bool:
        return self.seconds > 0

    def expires_at(self) -> float:
        return self.since + self.seconds


@dataclass
class NodeMap:
    """The cluster's nodes as this daemon sees them. `addresses[i]` is PNN i's address, or None
    for a deleted (commented-out) line."""

    my_pnn: int
    nodes: list[Node] = field(default_factory=list)
    ban: BanState = field(default_factory=BanState)

    @classmethod
    def from_addresses(cls, addresses: list[str | None], my_pnn: int, *,
                       start_disabled: bool = False, start_stopped: bool = False) -> NodeMap:
        if not 0 <= my_pnn < len(addresses) or addresses[my_pnn] is None:
            raise ValueError(f"PNN {my_pnn} is not a live entry of the {len(addresses)}-line nodes list")
        nodes = []
        for pnn, address in enumerate(addresses):
            if address is None:
                nodes.append(Node(pnn, "0.0.0.0", int(NodeFlag.DELETED)))
            elif pnn == my_pnn:
                # Unhealthy until the first monitor event succeeds, as ctdbd.
                flags = NodeFlag.UNHEALTHY
                if start_disabled:
                    flags |= NodeFlag.PERMANENTLY_DISABLED
                if start_stopped:
                    flags |= NodeFlag.STOPPED
                nodes.append(Node(pnn, address, int(flags), Runstate.INIT))
            else:
                nodes.append(Node(pnn, address, int(NodeFlag.DISCONNECTED | NodeFlag.UNHEALTHY)))
        return cls(my_pnn, nodes)

    # -- queries ---------------------------------------------------------------------------------
    @property
    def me(self) -> Node:
        return self.nodes[self.my_pnn]

    def __len__(self) -> int:
        return len(self.nodes)

    def get(self, pnn: int) -> Node | None:
        return self.nodes[pnn] if 0 <= pnn < len(self.nodes) else None

    def peers(self) -> list[Node]:
        """All other nodes that are not deleted."""
        return [n for n in self.nodes if n.pnn != self.my_pnn and not n.deleted]

    def connected_pnns(self) -> list[int]:
        """This node plus every peer it is connected to, in PNN order."""
        return [n.pnn for n in self.nodes if n.pnn == self.my_pnn or n.connected]

    def active_pnns(self) -> list[int]:
        return [n.pnn for n in self.nodes if n.active and (n.pnn == self.my_pnn or n.connected)]

    def pnn_by_address(self, address: str) -> int | None:
        for node in self.nodes:
            if not node.deleted and node.address == address:
                return node.pnn
        return None

    def wire_entries(self) -> list[tuple[int, int, str]]:
        """(pnn, flags, address) per node, for GET_NODEMAP."""
        return [(n.pnn, n.flags, n.address) for n in self.nodes]

    # -- connectivity (local view) --------------------------------------------------------------
    def mark_connected(self, pnn: int) -> FlagChange | None:
        node = self._peer(pnn)
        if node is None or not node.flags & NodeFlag.DISCONNECTED:
            return None
        old = node.flags
        node.flags &= ~NodeFlag.DISCONNECTED
        return FlagChange(pnn, old, node.flags)

    def mark_disconnected(self, pnn: int) -> FlagChange | None:
        """A peer died or its connection dropped: DISCONNECTED|UNHEALTHY as ctdbd does; its other
        flags are kept until it pushes fresh ones."""
        node = self._peer(pnn)
        if node is None or node.flags & NodeFlag.DISCONNECTED:
            return None
        old = node.flags
        node.flags |= NodeFlag.DISCONNECTED | NodeFlag.UNHEALTHY
        node.runstate = Runstate.UNKNOWN
        return FlagChange(pnn, old, node.flags)

    def apply_pushed_state(self, pnn: int, flags: int, runstate: int | None = None) -> FlagChange | None:
        """Node `pnn` told us its own flags (and maybe runstate). Returns the change, if any.
        Claims about this node itself are ignored: we own our flags."""
        node = self._peer(pnn)
        if node is None:
            return None
        if runstate is not None:
            node.runstate = runstate
        new = (node.flags & NodeFlag.DISCONNECTED) | (flags & PUSHED_FLAGS & ~NodeFlag.DELETED)
        if new == node.flags:
            return None
        old = node.flags
        node.flags = new
        return FlagChange(pnn, old, new)

    def _peer(self, pnn: int) -> Node | None:
        node = self.get(pnn)
        if node is None or node.pnn == self.my_pnn or node.deleted:
            return None
        return node

    # -- this node's own flags ------------------------------------------------------------------
    def _set_own(self, bit: int, on: bool) -> FlagChange | None:
        me = self.me
        new = (me.flags | bit) if on else (me.flags & ~bit)
        if new == me.flags:
            return None
        old = me.flags
        me.flags = new
        return FlagChange(self.my_pnn, old, new)

    def set_healthy(self, healthy: bool) -> FlagChange | None:
        return self._set_own(NodeFlag.UNHEALTHY, not healthy)

    def disable(self) -> FlagChange | None:
        return self._set_own(NodeFlag.PERMANENTLY_DISABLED, True)

    def enable(self) -> FlagChange | None:
        return self._set_own(NodeFlag.PERMANENTLY_DISABLED, False)

    def stop(self) -> FlagChange | None:
        return self._set_own(NodeFlag.STOPPED, True)

    def cont(self) -> FlagChange | None:
        return self._set_own(NodeFlag.STOPPED, False)

    def set_ban(self, seconds: int, now: float) -> FlagChange | None:
        """SET_BAN_STATE for this node: seconds > 0 bans (re-banning restarts the period),
        0 lifts the ban."""
        if seconds < 0:
            raise ValueError(f"ban time must not be negative, got {seconds}")
        if seconds == 0:
            self.ban = BanState()
            return self._set_own(NodeFlag.BANNED, False)
        self.ban = BanState(seconds, now)
        return self._set_own(NodeFlag.BANNED, True)

    def expire_ban(self, now: float) -> FlagChange | None:
        """Lift the ban once its time is up; call from a timer at `ban.expires_at()`."""
        if self.ban.banned and now >= self.ban.expires_at():
            self.ban = BanState()
            return self._set_own(NodeFlag.BANNED, False)
        return None

    def ban_remaining(self, now: float) -> int:
        if not self.ban.banned:
            return 0
        return max(0, int(round(self.ban.expires_at() - now)))

    def set_runstate(self, runstate: int) -> bool:
        if self.me.runstate == runstate:
            return False
        self.me.runstate = runstate
        return True

    # -- derived properties of this node --------------------------------------------------------
    @property
    def inactive(self) -> bool:
        return bool(self.me.flags & NodeFlag.INACTIVE)

    def can_host_ips(self) -> bool:
        """CTDB's rule for "available" public IPs (interface link state is checked elsewhere)."""
        return (self.me.runstate == Runstate.RUNNING
                and not self.me.flags & (NodeFlag.INACTIVE | NodeFlag.DISABLED))
