"""CTDB's deterministic (``IPAllocAlgorithm`` 0) and non-deterministic (1) allocations.

Deterministic: the IP at list position i goes "home" to node ``i % num_nodes``; IPs whose
home cannot host them go to the least-loaded eligible node. There is no failback step
(the modulo step already moves IPs home), so NoIPFailback is ignored with a warning.

Non-deterministic: keep current owners where the IP is still available, give unassigned
IPs to the least-loaded eligible node, then (unless NoIPFailback) even out counts: while
some IP's eligible nodes differ by two or more in load, move the first IP of the most
loaded of them (at most ``num_ips + 5`` moves).
"""

from __future__ import annotations

from .ipalloc_common import UNASSIGNED, AllocState, LogLevel, location


def allocate_deterministic(state: AllocState) -> None:
    """Run the deterministic allocation over ``state`` in place."""
    state.log(LogLevel.NOTICE, "Deterministic IPs enabled. Resetting all ip allocations")
    for index in range(len(state.pnn)):
        state.pnn[index] = index % state.num_nodes
    if state.no_ip_failback:
        # sic: CTDB's message lacks the closing quote.
        state.log(
            LogLevel.WARNING,
            "WARNING: 'NoIPFailback' set but ignored - incompatible with 'Deterministic IPs",
        )
    state.unassign_unsuitable()
    state.basic_allocate_unassigned()


def allocate_nondeterministic(state: AllocState) -> None:
    """Run the non-deterministic allocation over ``state`` in place."""
    num_ips = len(state.pnn)
    state.unassign_unsuitable()
    state.basic_allocate_unassigned()
    if not state.no_ip_failback:
        _basic_failback(state, max_moves=num_ips + 5)


def _basic_failback(state: AllocState, max_moves: int) -> None:
    counts = state.counts()
    moves = 0
    while _move_once(state, counts, moves < max_moves):
        moves += 1


def _move_once(state: AllocState, counts: list[int], may_move: bool) -> bool:
    """One pass of CTDB's basic_failback; True if it moved (re-offered) an IP."""
    for index, owner in enumerate(state.pnn):
        if owner == UNASSIGNED:
            continue
        nodes = state.takeover_nodes(index)
        if not nodes:
            state.log(
                LogLevel.WARNING,
                f"{location('ipalloc_nondeterministic.c', 96)} Could not find maxnode. "
                f"May not be able to serve ip '{state.label(index)}'",
            )
            continue
        # Most and least loaded eligible nodes, lowest PNN first on ties.
        most = max(nodes, key=lambda n: (counts[n], -n))
        least = min(nodes, key=lambda n: (counts[n], n))
        if counts[most] > counts[least] + 1 and may_move:
            # Re-offer the first IP of the busiest node to the least loaded node that
            # may host that IP (which can be the busiest node itself; it still counts).
            victim = state.pnn.index(most)
            state.find_takeover_node(victim, counts)
            return True
    return False
