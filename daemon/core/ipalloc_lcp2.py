"""CTDB's LCP2 public-IP allocation (``IPAllocAlgorithm`` 2, the default).

Cost model: the distance of two IPs counts leading zero bits of each 32-bit word of
their XOR-ed 128-bit keys (so it is the common-prefix length while the first differing
word is the last one, as for any two IPv4 addresses). A node's imbalance is the sum of
squared distances over all pairs of IPs it hosts, so IPs from one subnet spread out.

1. Unassign IPs from nodes where they are not available.
2. Nodes hosting nothing are "rebalance candidates" (newly healthy), as are the forced ones.
3. Repeatedly give the unassigned IP whose cheapest node adds the least imbalance to that
   node (ties: earliest IP in list order, then lowest PNN).
4. Unless NoIPFailback or no candidates: take nodes by imbalance, highest first, and
   from the first one where it helps, move the IP that lowers the sum of source and
   destination imbalances most onto a candidate node; repeat until no move helps.

Speed: CTDB recomputes distance sums by walking the IP list for every (IP, node) pair.
Here ``_DistanceSums`` keeps, for every node, each IP's sum of squared distances to the
IPs on that node, and updates one column per assignment, so 900 IPs take well under a
second instead of minutes.
"""

from __future__ import annotations

from collections.abc import Iterable

from .ipalloc_common import UNASSIGNED, AllocState, LogLevel, c_int32, ip_key, location

_SQUARES = [d * d for d in range(129)]
_LOW_WORD = (1 << 32) - 1
_U32 = _LOW_WORD  # CTDB keeps imbalances in uint32_t; see _Lcp2
_DASHES = " " + "-" * 40
_PLUSES = "+" * 41


def _distance(xor: int) -> int:
    """CTDB's ip_distance for two keys whose XOR is ``xor``: per 32-bit word, 32 if the
    word is zero, else its count of leading zeros, summed over the four words."""
    if xor <= _LOW_WORD:
        return 128 - xor.bit_length()
    total = 0
    for shift in (96, 64, 32, 0):
        total += 32 - ((xor >> shift) & _LOW_WORD).bit_length()
    return total


class _DistanceSums:
    """``column[node][i]``: sum of squared distances from IP i to the other IPs on node."""

    def __init__(self, keys: list[int], owners: list[int], num_nodes: int) -> None:
        self._keys = keys
        # Usual case (all IPv4): keys agree above bit 32, so every XOR fits in one word.
        self._one_word = len({key >> 32 for key in keys}) <= 1
        self.column = [[0] * len(keys) for _ in range(num_nodes)]
        for index, owner in enumerate(owners):
            if owner != UNASSIGNED:
                self.add(index, owner)

    def _row(self, index: int) -> list[int]:
        """Squared distances from IP ``index`` to every IP, 0 to itself."""
        key = self._keys[index]
        squares = _SQUARES
        if self._one_word:
            row = [squares[128 - (key ^ other).bit_length()] for other in self._keys]
        else:
            row = [squares[_distance(key ^ other)] for other in self._keys]
        row[index] = 0
        return row

    def add(self, index: int, node: int) -> None:
        row = self._row(index)
        self.column[node] = [a + b for a, b in zip(self.column[node], row)]

    def move(self, index: int, src: int, dst: int) -> None:
        row = self._row(index)
        self.column[src] = [a - b for a, b in zip(self.column[src], row)]
        self.column[dst] = [a + b for a, b in zip(self.column[dst], row)]


class _Lcp2:
    """One LCP2 run.

    Node imbalances are kept modulo 2**32 and compared as CTDB compares its uint32_t
    values, so that decisions match CTDB's even where its metric wraps (from roughly 780
    IPs of one /16 on a single node). Per-IP distance sums cannot wrap below 262,144 IPs
    and are kept exact.
    """

    def __init__(self, state: AllocState, force_rebalance_nodes: Iterable[int]) -> None:
        self.state = state
        self.log = state.log
        state.unassign_unsuitable()
        nodes = range(state.num_nodes)
        self.sums = _DistanceSums([ip_key(a) for a in state.addrs], state.pnn, state.num_nodes)
        self.imbalance = [self._node_imbalance(node) for node in nodes]
        # A node that hosts something was healthy before: only the others may gain IPs
        # by rebalancing (CTDB keeps no state between takeover runs to know better).
        hosting = set(state.pnn)
        self.candidate = [node not in hosting for node in nodes]
        for pnn in force_rebalance_nodes:
            if not 0 <= pnn < state.num_nodes:
                self.log(LogLevel.ERR, f"{location('ipalloc_lcp2.c', 183)}unknown node {pnn & _LOW_WORD}")
                continue
            self.log(LogLevel.NOTICE, f"Forcing rebalancing of IPs to node {pnn}")
            self.candidate[pnn] = True
        self.takeover = [state.takeover_nodes(i) for i in range(len(state.addrs))]

    def _node_imbalance(self, node: int) -> int:
        column = self.sums.column[node]
        # Every pair on the node is counted once from each end.
        return (sum(column[i] for i, owner in enumerate(self.state.pnn) if owner == node) // 2) & _U32

    def run(self) -> None:
        self.allocate_unassigned()
        if self.state.no_ip_failback or not any(self.candidate):
            return
        self.failback()

    # -- step 3 -------------------------------------------------------------------------

    def allocate_unassigned(self) -> None:
        state, log = self.state, self.log
        pnn = state.pnn
        # Per node, the unassigned IPs (list order) it could take.
        waiting: list[list[int]] = [[] for _ in range(state.num_nodes)]
        for index, owner in enumerate(pnn):
            if owner == UNASSIGNED:
                for node in self.takeover[index]:
                    waiting[node].append(index)

        while True:
            log(LogLevel.DEBUG, _DASHES)
            log(LogLevel.DEBUG, " CONSIDERING MOVES (UNASSIGNED)")
            if log.wants(LogLevel.DEBUG):
                self._log_unassigned_options()
            best: tuple[int, int, int] | None = None  # (added imbalance, IP index, node)
            for node, indexes in enumerate(waiting):
                if indexes:
                    column = self.sums.column[node]
                    index = min(indexes, key=column.__getitem__)  # first of equals wins
                    option = (column[index], index, node)
                    if best is None or option < best:
                        best = option
            log(LogLevel.DEBUG, _DASHES)
            if best is None:
                break
            added, index, node = best
            pnn[index] = node
            self.imbalance[node] = (self.imbalance[node] + added) & _U32
            self.sums.add(index, node)
            for other in self.takeover[index]:
                waiting[other].remove(index)
            log(LogLevel.INFO, f" {state.label(index)} -> {node} [+{c_int32(added)}]")
            if UNASSIGNED not in pnn:
                return

        for index, owner in enumerate(pnn):
            if owner == UNASSIGNED:
                log(LogLevel.WARNING, f"Failed to find node to cover ip {state.label(index)}")

    def _log_unassigned_options(self) -> None:
        for index, owner in enumerate(self.state.pnn):
            if owner == UNASSIGNED:
                for node in self.takeover[index]:
                    added = c_int32(self.sums.column[node][index])
                    self.log(LogLevel.DEBUG, f" {self.state.label(index)} -> {node} [+{added}]")

    # -- step 4 -------------------------------------------------------------------------

    def failback(self) -> None:
        while True:
            self.log(LogLevel.DEBUG, _PLUSES)
            self.log(LogLevel.DEBUG, "Selecting most imbalanced node from:")
            for node, value in enumerate(self.imbalance):
                self.log(LogLevel.DEBUG, f" {node} [{c_int32(value)}]")
            # CTDB's qsort (glibc merge sort) is stable: equal imbalances keep PNN order.
            order = sorted(range(self.state.num_nodes), key=lambda n: -self.imbalance[n])
            for node in order:
                if self.imbalance[node] == 0:
                    return  # every remaining node holds at most one IP
                if self._move_one_from(node):
                    break
            else:
                return

    def _move_one_from(self, src: int) -> bool:
        """Make the best improving move of one of ``src``'s IPs; False if there is none."""
        state, log = self.state, self.log
        debug = log.wants(LogLevel.DEBUG)
        imbalance, columns = self.imbalance, self.sums.column
        src_imbalance = imbalance[src]
        log(LogLevel.DEBUG, _DASHES)
        log(LogLevel.DEBUG, f" CONSIDERING MOVES FROM {src} [{c_int32(src_imbalance)}]")

        best: tuple[int, int, int, int] | None = None  # (src after, dst after, IP, dst)
        for index, owner in enumerate(state.pnn):
            if owner != src:
                continue
            src_sum = columns[src][index]
            src_after = (src_imbalance - src_sum) & _U32
            for dst in self.takeover[index]:
                if not self.candidate[dst]:
                    continue
                dst_sum = columns[dst][index]
                dst_after = (imbalance[dst] + dst_sum) & _U32
                if debug:
                    log(
                        LogLevel.DEBUG,
                        f" {src} [{c_int32(-src_sum)}] -> {state.label(index)} -> {dst} [+{c_int32(dst_sum)}]",
                    )
                # The destination must end up better than the source was, the IP must
                # cost the destination less than it cost the source, and the pair must
                # beat the best move so far (first found wins ties).
                if (
                    dst_after < src_imbalance
                    and dst_sum < src_sum
                    and (best is None or (src_after + dst_after) & _U32 < (best[0] + best[1]) & _U32)
                ):
                    best = (src_after, dst_after, index, dst)
        log(LogLevel.DEBUG, _DASHES)
        if best is None:
            return False

        src_after, dst_after, index, dst = best
        log(
            LogLevel.INFO,
            f"{src} [{c_int32(src_after - src_imbalance)}] -> {state.label(index)} -> {dst} "
            f"[+{c_int32(dst_after - imbalance[dst])}]",
        )
        imbalance[src] = src_after
        imbalance[dst] = dst_after
        state.pnn[index] = dst
        self.sums.move(index, src, dst)
        return True


def allocate_lcp2(state: AllocState, force_rebalance_nodes: Iterable[int] = ()) -> None:
    """Run LCP2 over ``state`` in place."""
    _Lcp2(state, force_rebalance_nodes).run()
