"""When to believe another node's "node X is dead".

A node whose fast detector finds a watched peer silent for `DeadTimeoutMs` tells every node, so
the whole cluster acts at once instead of each waiting for its own evidence. A report is only a
claim, though: a stale one, a forged one, or one from a node whose own link to X broke must not
make a healthy node drop a live peer (IPs would move back and forth). The rules:

* The report must come on the reporter's own connection, from a connected node, about another
  connected node (the shell and NodeCore check that).
* If we watch X ourselves (its fast heartbeats reach us), our own evidence decides. X sends its
  heartbeats to all its watchers at the same instants, so when X died, the reporter's dead
  timeout ran out at about the moment ours does: we believe the report when we have not heard
  from X for at least three quarters of the dead timeout. A live X heartbeats us every
  `HeartbeatIntervalMs`, so a report about it finds a recent packet: under half the dead
  timeout of silence refutes the report. In between (two or three heartbeats missed: a loaded
  machine, a lossy moment) we ask X as a non-watcher does. Believing at half the dead timeout
  once made a node drop a healthy peer on the word of a node under packet loss (soak: 2 false
  deaths in 200 faults).
* If we watch X and hold it past its timeout because its kernel answers (core/membership.py: a
  stalled daemon on a live host), the report is refuted: our detector declares X dead itself
  if the stall outlasts the hold.
* Otherwise we have no fresh evidence (non-watchers hear from X only every few seconds), so we
  ask X: a control it answers at once (`ProbePeer`). Any packet from X within `confirm_timeout`
  refutes the report; silence confirms it. This costs a non-watcher `confirm_timeout` (by
  default half the dead timeout) on a real death, and nothing else: a three-node cluster has
  every node watch every other node.
* The same question goes, unprompted, to every peer we do not watch when our own detector
  finds a watched peer dead: if we are the one cut off (a partition), the others do not answer
  either and count as gone, which is how an isolated node learns it is in a minority
  (core/quorum.py) within a dead timeout and a half instead of the keepalive limit.

Sans-I/O: calls with the current time, verdicts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    BELIEVE = "believe"
    REFUTED = "refuted"      # we heard from the node too recently
    PROBE = "probe"          # ask the node, decide at the deadline
    PENDING = "pending"      # already asking it


@dataclass
class _Probe:
    reporter: int
    sent: float
    deadline: float


@dataclass
class DeathReports:
    dead_timeout: float          # s; 0 when the fast path is off
    keepalive_interval: float    # s; the probe's patience without a fast path
    _probes: dict[int, _Probe] = field(default_factory=dict)

    @property
    def confirm_timeout(self) -> float:
        return self.dead_timeout / 2 if self.dead_timeout > 0 else min(1.0, self.keepalive_interval)

    def judge(self, dead: int, reporter: int, watching: bool, silence: float | None,
              now: float, held: bool = False) -> Verdict:
        """A report that `dead` is dead. `watching`: its fast heartbeats reach us; `silence`:
        seconds since we last heard from it (None: not connected); `held`: it is past its
        timeout but its kernel answers."""
        if watching and held:
            return Verdict.REFUTED
        if watching and silence is not None:
            if silence >= self.dead_timeout * 3 / 4:
                return Verdict.BELIEVE
            if silence < self.dead_timeout / 2:
                return Verdict.REFUTED
        if dead in self._probes:
            return Verdict.PENDING
        self._probes[dead] = _Probe(reporter, now, now + self.confirm_timeout)
        return Verdict.PROBE

    def ask(self, pnn: int, asker: int, now: float) -> bool:
        """Ask `pnn` whether it lives for another reason (we lost a peer we watch and may be
        the one cut off); `asker` is recorded as the reporter. False if already asking."""
        if pnn in self._probes:
            return False
        self._probes[pnn] = _Probe(asker, now, now + self.confirm_timeout)
        return True

    def due(self, now: float, last_heard: dict[int, float | None]) -> list[tuple[int, int, bool]]:
        """Probes whose time is up: (node, reporter, answered). `last_heard[node]` is when we
        last heard from it (None: it is gone already, the probe is dropped)."""
        out = []
        for pnn, probe in list(self._probes.items()):
            if now < probe.deadline:
                continue
            del self._probes[pnn]
            heard = last_heard.get(pnn)
            if heard is not None:
                out.append((pnn, probe.reporter, heard > probe.sent))
        return out

    def forget(self, pnn: int) -> None:
        """`pnn` disconnected: nothing left to decide."""
        self._probes.pop(pnn, None)

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._probes.values()), default=None)

    def pending(self) -> list[int]:
        return sorted(self._probes)
