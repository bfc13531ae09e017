"""The soak's checkers: safety invariants over the ground truth in one history, and nothing else.

``check_soak(numbered_events)`` takes ``(line number, event)`` pairs (``history.load_numbered``)
and returns the verdicts for ``results.json``: per check ok or not, every violation with the
history lines that prove it, and per fault its convergence time.  It reads:

- the run's start event: ``public_ips``, ``public_macs`` (MAC -> PNN), ``schedule``, ``bounds``;
- ``truth``/``sample`` captures (what each node really has configured, the leader and node states
  its daemon reports: ``events.truth_sample``) and ``arp``/``answers`` captures (who answered a
  client's ARP who-has for each public IP);
- the nemesis' fault events, each carrying ``soak_index``: an *episode* is every fault event of one
  index, from the first begin (the fault applied) to the last end or fail (it was undone).

Invariants (``soak_invariants``: ``ip_unique``, ``leader_agreed``, ``nodes_ok``) are evaluated
at every sample and ARP round.

Checks (each a list of violations; a check with none is ok):

``converged``      after an episode is undone, all invariants hold again within
                   ``settle_s[kind]``: the convergence time is when the first unbroken stretch of
                   ``stable_s`` began in which they all held, judged from samples and ARP rounds
                   taken after the undo
``settled``        after convergence and until the next fault, the invariants keep holding
                   (stretches up to ``transient_s`` forgiven)
``arp_exclusive``  from the undo until the next fault, never two nodes answering one ARP round
                   for the same IP (both had it configured at once); stretches already reported
                   by ``both_sides`` are not reported again; a thawed node's own answers in its
                   first ``thaw_release_s`` after the thaw are not counted
``nodes_ok_bound`` every powered node OK within ``node_ok_s`` of the undo
``takeover``       while a node is powered off, crashed or frozen, from ``takeover_s`` after the
                   fault on, every public IP is configured on exactly one *live* node (powered,
                   not the victim)
``both_sides``     during a partition, no public IP held (configured, or answering ARP) on both
                   sides for longer than ``both_sides_s`` in one stretch
``runaway``        from ``runaway_grace_s`` after an undo until the next fault, no daemon's CPU
                   rate above ``cpu_cores`` or log growth above ``log_bytes_per_s``, measured
                   over spans of at least ``runaway_span_s``
``false_deaths``   no node declared dead by a daemon unless a fault involving it or the declaring
                   node was under way or undone less than ``death_grace_s`` before
                   (``soak_deaths``; made only when the history holds the daemons' deaths)

A violation lists ``lines``: the history lines of the samples (or ARP rounds, or fault events)
that show it, first and last of each stretch and the fault's own events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from ctdblab.events import RUN_END, RUN_START, Event
from ctdblab.stats import summarize

from .soak_deaths import false_deaths
from .soak_invariants import answer_nodes, arp_violations, ip_holders, node_violations, nodes_text

Numbered = tuple[int, Event]
CHECKS = ("converged", "settled", "arp_exclusive", "nodes_ok_bound", "takeover", "both_sides",
          "runaway")
MAX_LINES = 12


def _default_settle() -> dict[str, float]:
    return {"power_cycle": 45.0, "crash_restart": 45.0, "freeze_leader": 30.0,
            "freeze_nonleader": 30.0, "partition_minority": 30.0, "partition_leader": 30.0,
            "flap": 30.0, "loss": 30.0}


@dataclass(frozen=True)
class Bounds:
    """Every bound a verdict depends on, in seconds unless named otherwise.  Recorded in the
    run's start event, so a re-check of an old history uses the bounds it ran with.

    ``settle_s`` per fault kind: from the undo (power-on, restart, thaw, heal, link up, loss
    cleared) to all invariants holding.  A node that powers on boots its daemon and Samba afresh:
    real ctdbd with the aggressive profile needs ~10-20 s to start, recover and pass its first
    monitor event (MonitorInterval 5 s) before it is OK and gets IPs, so power_cycle and
    crash_restart get 45 s; a thawed, healed or reconnected node only has to be re-admitted
    (election ~1 s, recovery, takeover run with TakeoverTimeout 3 s), so 30 s.
    ``node_ok_s``: every powered node OK after an undo; the longest settle bound (45 s), since
    a fresh daemon is the slowest to become OK.
    ``takeover_s``: a dead, crashed or frozen node's IPs on exactly one live node; the
    aggressive profile declares a node dead after ~2-3 s (KeepaliveInterval 1 x KeepaliveLimit
    2) and the takeover run follows, so 10 s leaves room for an election and a loaded machine.
    ``both_sides_s``: an IP held on both sides of a partition (followed past the heal until one
    side lets go).  A node cut off sees its peers dead after ~2-3 s (as above) and should drop
    its IPs then, while the majority takes them over: 5 s leaves 2 s for the takeover runs.
    The soak holds partitions 8-20 s, so a side that never lets go cannot hide under the bound.
    Real CTDB keeps them up to RecoveryDropAllIPs = 120 s by design: it is expected to violate.
    ``transient_s``: once settled, a stretch of failing observations no longer than this is
    not a violation — except two nodes answering ARP for one IP at once, which always is.  The
    nodes are read by separate shells tens of ms apart, so an IP moved by a rebalancing takeover
    run (release here, then add there: legitimately on no node for a moment) can look doubled
    or missing in one round, and a ``ctdb`` call can miss its 1 s timeout once on this loaded
    2-core machine.  1.5 s is three sampling periods: a move lasting that long, or a daemon not
    answering for that long, is reported.
    ``stable_s``: converged means every invariant held without a break for this long (two
    sampling periods); one consistent instant in the middle of a takeover run does not count.
    The convergence time is when that unbroken stretch began.
    ``thaw_release_s``: a frozen node's kernel keeps answering ARP for the addresses it had
    (the lab freezes the daemon's processes, not the host's kernel) until its daemon runs again
    and drops what moved away: pyctdbd did so 4 ms after SIGCONT (soak seed 12, 2026-12-05),
    an ARP request in those ms got two answers. 0.1 s covers the scheduling of a woken daemon on
    a loaded machine; later answers from it count.
    ``death_grace_s``: a node undone (thawed, healed, powered on) may still be declared dead,
    or declare others dead, while it catches up -- a thawed daemon's timers fire late, a booting
    one connects and is re-admitted; pyctdbd converges within ~2 s and real ctdbd within ~10 s
    of an undo (README, soak table), so 10 s. A death later than that, or of a node no fault
    touched, is a false failover.
    ``runaway_*``: after ``runaway_grace_s`` (10 s) of catching up, a daemon idles at a few %
    of a core (README: idle cost) and logs a few lines per fault; above half a core or 20 kB/s
    of log over 10 s or more it is spinning.
    """

    settle_s: dict[str, float] = field(default_factory=_default_settle)
    node_ok_s: float = 45.0
    takeover_s: float = 10.0
    both_sides_s: float = 5.0
    transient_s: float = 1.5
    stable_s: float = 1.0
    runaway_grace_s: float = 10.0
    runaway_span_s: float = 10.0
    cpu_cores: float = 0.5
    log_bytes_per_s: float = 20000.0
    death_grace_s: float = 10.0
    thaw_release_s: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Bounds":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown bounds: {', '.join(sorted(unknown))}")
        settle = {**_default_settle(), **data.pop("settle_s", {})}
        return cls(settle_s=settle, **{k: float(v) for k, v in data.items()})

    def settle(self, kind: str) -> float:
        return self.settle_s.get(kind, max(self.settle_s.values()))


# -- reading the history ---------------------------------------------------------------------------
@dataclass
class Episode:
    index: int
    kind: str
    target: int | None = None
    begin: float | None = None
    undo_begin: float | None = None   # the undoing fault began (heal, thaw, power_on, ...)
    undone: float | None = None       # the last end/fail: the cluster is whole again
    groups: list[list[int]] | None = None
    failed: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


@dataclass
class Observation:
    t: float
    line: int
    source: str                       # "truth" or "arp"
    nodes: dict[str, Any] | None = None
    answers: dict[str, list[str]] | None = None


@dataclass
class SoakFacts:
    start: Event
    public_ips: list[str]
    macs: dict[str, int]
    bounds: Bounds
    episodes: list[Episode]
    observations: list[Observation]
    t_end: float


UNDO_FAULTS = ("power_on", "restart", "thaw", "heal", "clear_loss")


def soak_facts(numbered: Iterable[Numbered], bounds: Bounds | None = None) -> SoakFacts:
    numbered = list(numbered)
    starts = [e for _, e in numbered if e["kind"] == "run" and e.get("event") == RUN_START
              and e.get("scenario") == "soak"]
    if len(starts) != 1:
        raise ValueError(f"expected one soak run start event, found {len(starts)}")
    start = starts[0]
    public_ips = list(start.get("public_ips") or [])
    macs = {str(m).lower(): int(p) for m, p in (start.get("public_macs") or {}).items()}
    bounds = bounds or Bounds.from_dict(start.get("bounds"))
    schedule = {f["index"]: f for f in start.get("schedule", [])}
    episodes: dict[int, Episode] = {}
    observations: list[Observation] = []
    t_end = max((e["t"] for _, e in numbered), default=0.0)
    for line, e in numbered:
        if e["kind"] == "fault" and isinstance(e.get("soak_index"), int):
            i = e["soak_index"]
            ep = episodes.setdefault(i, Episode(i, str(schedule.get(i, {}).get("kind", e.get("fault")))))
            ep.lines.append(line)
            phase, fault = e.get("phase"), e.get("fault")
            if phase == "begin":
                if ep.begin is None:
                    ep.begin = e["t"]
                    ep.target = e.get("node") if e.get("node") is not None else e.get("target")
                if fault in UNDO_FAULTS:
                    ep.undo_begin = e["t"]
                if fault == "partition":
                    ep.groups = e.get("groups")
            elif phase in ("end", "fail"):
                ep.undone = e["t"]
                if fault == "flap":
                    ep.undo_begin = e["t"]
                if fault == "partition" and phase == "end" and e.get("groups"):
                    ep.groups = e["groups"]
                if phase == "fail":
                    ep.failed.append(f"{fault}: {e.get('error')}")
        elif e["kind"] == "capture" and e.get("probe") == "truth" and e.get("what") == "sample":
            observations.append(Observation(e["t"], line, "truth", nodes=e.get("nodes") or {}))
        elif e["kind"] == "capture" and e.get("probe") == "arp" and e.get("what") == "answers":
            observations.append(Observation(arp_round_time(e), line, "arp", answers=e.get("answers") or {}))
        elif e["kind"] == "run" and e.get("event") == RUN_END:
            t_end = e["t"]
    observations.sort(key=lambda o: o.t)
    return SoakFacts(start, public_ips, macs, bounds,
                     [episodes[i] for i in sorted(episodes)], observations, t_end)


def arp_round_time(e: Event) -> float:
    """When an ARP round saw what it saw: its last reply's arrival (``t_replied``).  Not the
    window's close (``t``): a round asked just before a fault was undone is answered within
    milliseconds, by the nodes as they were *during* the fault, and must not count as after
    the undo.  Histories without ``t_replied`` fall back to ``t_sent`` (replies on the lab's
    bridge take well under a millisecond), then to ``t``."""
    for key in ("t_replied", "t_sent", "t"):
        if isinstance(e.get(key), (int, float)):
            return float(e[key])
    raise ValueError("ARP round without a time")


# -- the checks ------------------------------------------------------------------------------------
class _State:
    """The latest truth sample and ARP round as time moves on; violations of the pair."""

    def __init__(self, facts: SoakFacts, since: float):
        self.facts, self.since = facts, since
        self.truth: Observation | None = None
        self.arp: Observation | None = None

    def feed(self, obs: Observation) -> None:
        if obs.t < self.since:
            return
        if obs.source == "truth":
            self.truth = obs
        else:
            self.arp = obs

    def complete(self) -> bool:
        return self.truth is not None and self.arp is not None

    def violations(self) -> list[tuple[str, str]]:
        return [(kind, message) for kind, message, _ in self.proven()]

    def proven(self) -> list[tuple[str, str, int]]:
        """(invariant, message, the history line of the observation that shows it)."""
        found = []
        if self.truth:
            found += [(k, m, self.truth.line)
                      for k, m in node_violations(self.truth.nodes, self.facts.public_ips)]
        if self.arp:
            found += [(k, m, self.arp.line) for k, m in
                      arp_violations(self.arp.answers, self.facts.macs, self.facts.public_ips)]
        return found

    def lines(self) -> list[int]:
        return [o.line for o in (self.truth, self.arp) if o is not None]


def _violation(check: str, ep: Episode | None, message: str, lines: Iterable[int], **extra: Any) -> dict:
    lines = sorted(set(lines))
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES // 2] + lines[-MAX_LINES // 2:]
    v = {"check": check, "message": message, "lines": lines}
    if ep is not None:
        v.update(episode=ep.index, fault=ep.kind, target=ep.target)
    v.update({k: (round(x, 3) if isinstance(x, float) else x) for k, x in extra.items()})
    return v


def _window(facts: SoakFacts, t0: float, t1: float) -> list[Observation]:
    return [o for o in facts.observations if t0 <= o.t < t1]


def check_episode(facts: SoakFacts, ep: Episode, t_next: float) -> tuple[dict, list[dict]]:
    """Convergence, settled invariants, node-OK bound and runaway after one episode, and the
    takeover and both-sides checks while it held."""
    b = facts.bounds
    found: list[dict] = []
    record = {"index": ep.index, "kind": ep.kind, "target": ep.target, "begin": ep.begin,
              "undone": ep.undone, "failed": ep.failed, "convergence_s": None,
              "nodes_ok_s": None, "groups": ep.groups}
    if ep.undone is None:
        found.append(_violation("converged", ep, "the fault was never undone (run cut short?)",
                                ep.lines))
        return record, found
    found += _during(facts, ep)
    state = _State(facts, ep.undone)
    conv_t = ok_t = good_since = None
    last_bad: tuple[list[tuple[str, str]], list[int]] | None = None
    settled_runs: dict[str, list] = {}
    for obs in _window(facts, ep.undone, t_next):
        state.feed(obs)
        if not state.complete():
            continue
        bad = state.violations()
        if ok_t is None and obs.source == "truth" and not any(k == "nodes_ok" for k, _ in bad):
            ok_t = obs.t
        if conv_t is None:
            if bad:
                last_bad, good_since = (bad, state.lines()), None
            elif good_since is None:
                good_since = obs.t
            if good_since is not None and obs.t - good_since >= b.stable_s:
                conv_t = good_since
            continue
        _extend_runs(settled_runs, state.proven(), obs, found, ep, b.transient_s)
    _close_runs(settled_runs, found, ep, b.transient_s)
    settle = b.settle(ep.kind)
    if conv_t is not None:
        record["convergence_s"] = round(conv_t - ep.undone, 3)
    if conv_t is None or conv_t - ep.undone > settle:
        why = "; ".join(m for _, m in (last_bad[0] if last_bad else [])[:4]) or "no samples"
        took = "never" if conv_t is None else f"after {conv_t - ep.undone:.1f} s"
        found.append(_violation("converged", ep, f"did not converge within {settle:g} s ({took}): "
                                f"{why}", ep.lines + (last_bad[1] if last_bad else []),
                                bound_s=settle))
    if ok_t is not None:
        record["nodes_ok_s"] = round(ok_t - ep.undone, 3)
    if ok_t is None or ok_t - ep.undone > b.node_ok_s:
        samples = [o.line for o in _window(facts, ep.undone, ep.undone + b.node_ok_s)
                   if o.source == "truth"][-2:]
        found.append(_violation("nodes_ok_bound", ep, f"not every powered node OK within "
                                f"{b.node_ok_s:g} s of the undo", ep.lines + samples,
                                bound_s=b.node_ok_s))
    found += _runaway(facts, ep, ep.undone + b.runaway_grace_s, t_next)
    found += _doubled_answers(facts, ep, t_next, found)
    return record, found


def _extend_runs(runs: dict[str, list], bad: list[tuple[str, str, int]], obs: Observation,
                 found: list[dict], ep: Episode, transient_s: float) -> None:
    """Stretches of consecutive failing observations, per invariant message; each stretch
    cites the lines of the observations that showed it."""
    now = {m: (k, line) for k, m, line in bad}
    for message in list(runs):
        if message not in now:
            _emit_run(runs.pop(message), found, ep, transient_s)
    for message, (kind, line) in now.items():
        run = runs.setdefault(message, [kind, obs.t, obs.t, [], message])
        run[2] = obs.t
        run[3].append(line)


def _close_runs(runs: dict[str, list], found: list[dict], ep: Episode, transient_s: float) -> None:
    for message in list(runs):
        _emit_run(runs.pop(message), found, ep, transient_s)


def _emit_run(run: list, found: list[dict], ep: Episode, transient_s: float) -> None:
    kind, t0, t1, lines, message = run
    if t1 - t0 <= transient_s:
        return
    found.append(_violation("settled", ep, f"{kind}: {message}", lines, invariant=kind,
                            t_first=t0, t_last=t1, duration_s=t1 - t0))


def _during(facts: SoakFacts, ep: Episode) -> list[dict]:
    b = facts.bounds
    found: list[dict] = []
    if ep.begin is None or ep.undo_begin is None:
        return found
    if ep.kind in ("power_cycle", "crash_restart", "freeze_leader", "freeze_nonleader") \
            and ep.target is not None:
        stretch: dict[str, list] = {}
        for obs in _window(facts, ep.begin + b.takeover_s, ep.undo_begin):
            if obs.source != "truth":
                continue
            live = {k: v for k, v in obs.nodes.items() if int(k) != ep.target}
            wrong = {ip: ip_holders(live, ip) for ip in facts.public_ips}
            wrong = {ip: h for ip, h in wrong.items() if len(h) != 1}
            for ip in list(stretch):
                if ip not in wrong:
                    _emit_stretch("takeover", stretch.pop(ip), ep, found)
            for ip, holders in wrong.items():
                s = stretch.setdefault(ip, [ip, obs.t, obs.t, [], holders])
                s[2], s[4] = obs.t, holders
                s[3].append(obs.line)
        for s in stretch.values():
            _emit_stretch("takeover", s, ep, found)
    if ep.kind.startswith("partition") and ep.groups:
        side = {p: i for i, g in enumerate(ep.groups) for p in g}
        state = _State(facts, ep.begin)
        open_: dict[str, list] = {}            # ip -> [t_first, t_last, lines]
        stretches: list[tuple[str, list]] = []
        # A stretch that began during the partition is followed past the heal until it ends:
        # the doubled IP is the partition's doing until one side lets go.
        for obs in _window(facts, ep.begin, ep.undone + b.settle(ep.kind)):
            state.feed(obs)
            for ip in facts.public_ips:
                if len(_sides_holding(state, ip, side, facts.macs)) >= 2:
                    if ip in open_ or obs.t < ep.undo_begin:
                        s = open_.setdefault(ip, [obs.t, obs.t, []])
                        s[1] = obs.t
                        s[2].append(obs.line)
                elif ip in open_:
                    stretches.append((ip, open_.pop(ip)))
        stretches += list(open_.items())
        for ip, (t0, t1, lines) in stretches:
            if t1 - t0 > b.both_sides_s:
                found.append(_violation(
                    "both_sides", ep, f"{ip} held on both sides of partition {ep.groups} for "
                    f"{t1 - t0:.1f} s (bound {b.both_sides_s:g} s)", ep.lines + lines, ip=ip,
                    t_first=t0, t_last=t1, duration_s=t1 - t0, bound_s=b.both_sides_s))
    return found


def _doubled_answers(facts: SoakFacts, ep: Episode, t_next: float, found: list[dict]) -> list[dict]:
    """Stretches of ARP rounds after the undo in which two nodes answered for one IP."""
    reported = [(v["ip"], v["t_first"], v["t_last"]) for v in found if v["check"] == "both_sides"]
    open_: dict[str, list] = {}             # ip -> [t_first, t_last, lines, nodes seen]
    stretches: list[tuple[str, list]] = []
    thawed = ep.target if ep.kind.startswith("freeze") else None
    for obs in _window(facts, ep.undone, t_next):
        if obs.source != "arp":
            continue
        waking = thawed is not None and obs.t < ep.undone + facts.bounds.thaw_release_s
        for ip in facts.public_ips:
            who = answer_nodes(obs.answers.get(ip, []), facts.macs)
            if waking and thawed in who:
                continue
            if len(who) >= 2 and not any(i == ip and t0 <= obs.t <= t1 for i, t0, t1 in reported):
                s = open_.setdefault(ip, [obs.t, obs.t, [], set()])
                s[1] = obs.t
                s[2].append(obs.line)
                s[3].update(who)
            elif ip in open_:
                stretches.append((ip, open_.pop(ip)))
    stretches += list(open_.items())
    return [_violation("arp_exclusive", ep, f"{ip} answered over ARP by "
                       f"{nodes_text(sorted(nodes, key=str))} at once, in {len(lines)} "
                       f"round{'s' if len(lines) > 1 else ''} over {t1 - t0:.1f} s",
                       lines, ip=ip, t_first=t0, t_last=t1, duration_s=t1 - t0)
            for ip, (t0, t1, lines, nodes) in sorted(stretches, key=lambda x: x[1][0])]


def _sides_holding(state: _State, ip: str, side: dict[int, int], macs: dict[str, int]) -> set[int]:
    """The partition sides on which ``ip`` is configured or answers ARP right now."""
    holders = set(ip_holders(state.truth.nodes, ip)) if state.truth else set()
    if state.arp:
        holders |= {p for p in answer_nodes(state.arp.answers.get(ip, []), macs) if p in side}
    return {side[p] for p in holders if p in side}


def _emit_stretch(check: str, s: list, ep: Episode, found: list[dict]) -> None:
    ip, t0, t1, lines, holders = s
    found.append(_violation(check, ep, f"{ip} on {nodes_text(holders)} among live nodes "
                            f"(victim {ep.target} excluded) from {t0:.1f} to {t1:.1f}",
                            ep.lines[:1] + lines, ip=ip, t_first=t0, t_last=t1,
                            duration_s=t1 - t0))


def _runaway(facts: SoakFacts, ep: Episode, t0: float, t1: float) -> list[dict]:
    b = facts.bounds
    found: list[dict] = []
    samples = [o for o in _window(facts, t0, t1) if o.source == "truth"]
    for pnn in sorted({int(p) for o in samples for p in o.nodes}):
        key = str(pnn)
        for what, bound, unit in (("cpu_s", b.cpu_cores, "cores"),
                                  ("log_bytes", b.log_bytes_per_s, "bytes/s")):
            worst = None
            j = 0
            for i, first in enumerate(samples):
                a = first.nodes.get(key, {}).get(what)
                if a is None:
                    continue
                j = max(j, i)
                while j < len(samples) and samples[j].t - first.t < b.runaway_span_s:
                    j += 1
                if j >= len(samples):
                    break
                z = samples[j].nodes.get(key, {}).get(what)
                if z is None or z < a:            # restarted, rotated, or gone
                    continue
                rate = (z - a) / (samples[j].t - first.t)
                if worst is None or rate > worst[0]:
                    worst = (rate, first, samples[j])
            if worst and worst[0] > bound:
                rate, s0, s1 = worst
                found.append(_violation("runaway", ep, f"node {pnn} {what.split('_')[0]} rate "
                                        f"{rate:.3g} {unit} over {s1.t - s0.t:.1f} s (bound "
                                        f"{bound:g})", [s0.line, s1.line], node=pnn,
                                        rate=rate, t_first=s0.t, t_last=s1.t))
    return found


def check_soak(numbered: Iterable[Numbered], bounds: Bounds | None = None) -> dict[str, Any]:
    """Every check over the whole soak history: the ``checks`` part of results.json."""
    numbered = list(numbered)
    facts = soak_facts(numbered, bounds)
    episodes, violations = [], []
    for k, ep in enumerate(facts.episodes):
        nxt = facts.episodes[k + 1].begin if k + 1 < len(facts.episodes) else None
        record, found = check_episode(facts, ep, nxt if nxt is not None else facts.t_end + 1e-6)
        episodes.append(record)
        violations += found
    by_kind: dict[str, list] = {}
    for rec in episodes:
        by_kind.setdefault(rec["kind"], []).append(rec)
    convergence = {}
    for kind, recs in sorted(by_kind.items()):
        conv = [r["convergence_s"] for r in recs if r["convergence_s"] is not None]
        s = summarize(conv)
        convergence[kind] = {"faults": len(recs), "converged": len(conv),
                             "p50_s": s.get("p50"), "max_s": s.get("max"),
                             "failed_to_apply": sum(1 for r in recs if r["failed"])}
    checks = list(CHECKS)
    not_checked = {}
    imported, deaths = false_deaths(numbered, facts.episodes, facts.bounds.death_grace_s,
                                     facts.t_end)
    if imported:
        checks.append("false_deaths")
        violations += deaths
    else:
        not_checked["false_deaths"] = "the history holds no deaths from the daemons' logs"
    counts = {c: sum(1 for v in violations if v["check"] == c) for c in checks}
    return {
        "verdicts": {c: {"ok": counts[c] == 0, "violations": counts[c]} for c in checks},
        "not_checked": not_checked,
        "violations": violations,
        "episodes": episodes,
        "convergence": convergence,
        "observations": {"truth_samples": sum(o.source == "truth" for o in facts.observations),
                         "arp_rounds": sum(o.source == "arp" for o in facts.observations)},
        "bounds": facts.bounds.as_dict(),
    }
