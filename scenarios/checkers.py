"""Failover checkers: from one run's history events to its record in results.json.

A checker is ``check(history) -> verdict`` (Jepsen): it takes the events alone, never values
from the orchestrator's memory, and its verdicts go to ``results.json``, never back into the
history.  Everything it needs was recorded when it happened:

=============  ==================================================================================
victim, vip    the run's ``run``/``start`` event (also victim_role, leader, survivor_ip)
cut, killed    the ``cut`` and ``killed`` steps of the victim's ``power_off`` fault
power-on       the ``up`` step of the victim's ``power_on`` fault (absent: never powered on)
window end     the run's ``run``/``window_end`` event (absent: a run cut short; no bound)
settled        the run's ``run``/``settled`` event: the failover was over as far as the run waits
               (absent: the window ended first, or an older history)
=============  ==================================================================================

A metric that cannot exist with the daemon under test (keepalived has no failure detector of its
own, no membership, no tickle list) is named with its reason in the start event's
``not_applicable``; it is None too, the run record lists it under ``not_applicable`` and its note
says "n/a" — never a figure.  ``watched_s`` is how long the run watched after the cut (window end
minus cut): a metric that is None and applicable did not happen within it.

Every metric is seconds after the cut (the instant the victim's switch ports went down), so all
of them sit on one time axis; ``survivor_stall_s`` alone is a duration.  How long the victim took
to rejoin once powered on is ``rejoin_s - power_on_s``.  A metric that did not happen is None,
and the checker says why in a note (returned alongside; results.json keeps it in the run's
``notes``).

=====================  =================================================================
detect_s               first survivor log line declaring the victim dead (CTDB wording:
                       "dead count reached" / "node X is dead"); else the first 10 Hz status
                       poll showing it DISCONNECTED
takeover_s             "Takeover of IP <vip>" in a survivor's log; else the poll that saw it move
ping_s                 first ping reply from the vip after the kill finished
reset_s                the client blocked in recv() on vip:445 (registered by smbd) gets ECONNRESET
smb_resumed_s          first successful SMB connect+read through the vip (staggered retriers)
survivor_stall_s       worst open+read+close latency through a surviving node's IP around the fault
                       (ops started from the cut until the run settled, else the window end)
power_on_s             the victim was powered on again (a fresh node, same identity)
rejoin_s               a survivor sees the victim OK again
failback_s             the victim hosts a public IP again
unregistered_reset_s   a plain TCP connection nobody registered gets ECONNRESET (CTDB: never)
tickled_reset_s        a plain TCP connection added with `ctdb addtickle` gets ECONNRESET
smb_session_closed_s   the open SMB session (reads every 0.2 s) sees its connection closed
=====================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ctdblab.events import DATA_WORKLOAD_OPS, RUN_SETTLED, RUN_START, RUN_WINDOW_END, Event
from ctdblab.history import events_of_run, run_indexes

SMB_PORT = 445
PLAIN_PORT = 7777      # a listener on the victim that nobody registers with the daemon
TICKLED_PORT = 7778    # the same, registered on every node with `ctdb addtickle`

METRICS = ("detect_s", "takeover_s", "ping_s", "reset_s", "smb_resumed_s", "survivor_stall_s",
           "power_on_s", "rejoin_s", "failback_s", "unregistered_reset_s", "tickled_reset_s",
           "smb_session_closed_s")

WHY = {
    "detect_s": "no survivor logged or showed the victim as dead",
    "takeover_s": "the victim's public IP was never taken over",
    "ping_s": "the public IP never answered ping after the cut",
    "reset_s": "the client blocked on vip:445 never got a reset",
    "smb_resumed_s": "no SMB operation through the public IP succeeded after the cut",
    "survivor_stall_s": "no SMB operation through a survivor ran during the fault",
    "power_on_s": "the victim was not powered on again",
    "rejoin_s": "the victim never showed OK again after power-on",
    "failback_s": "the victim hosted no public IP again after power-on",
    "unregistered_reset_s": "the unregistered TCP connection was never reset (the daemon did "
                            "not know it: no tickle)",
    "tickled_reset_s": "the TCP connection added with `ctdb addtickle` was never reset",
    "smb_session_closed_s": "the open SMB session never noticed its server was gone",
}


class IncompleteHistory(ValueError):
    """The history lacks an event the checker cannot do without (e.g. a run killed before the cut)."""


@dataclass(frozen=True)
class FailoverFacts:
    """What the run was, as its history recorded it."""

    run: int | None
    victim: int
    vip: str
    start: Event           # the run's start event, with all its parameters
    t_cut: float
    t_killed: float
    t_power_on: float | None
    window_end: float | None
    settled: float | None = None


def failover_facts(events: Iterable[Event]) -> FailoverFacts:
    """Victim, VIP, cut, kill, power-on and window end of one run, from its events."""
    events = list(events)
    starts = [e for e in events if e["kind"] == "run" and e.get("event") == RUN_START]
    if len(starts) != 1:
        raise IncompleteHistory(f"expected one run start event, found {len(starts)} "
                                "(give one run's events: history.events_of_run)")
    (start,) = starts
    victim, vip = start.get("victim"), start.get("vip")
    if not isinstance(victim, int) or not isinstance(vip, str):
        raise IncompleteHistory(f"run {start.get('run')}: the start event names no victim and vip")

    def step(fault: str, name: str) -> float | None:
        times = [e["t"] for e in events if e["kind"] == "fault" and e.get("fault") == fault
                 and e.get("node") == victim and e.get("phase") == "step" and e.get("step") == name]
        return min(times) if times else None

    t_cut, t_killed = step("power_off", "cut"), step("power_off", "killed")
    if t_cut is None or t_killed is None:
        raise IncompleteHistory(f"run {start.get('run')}: node {victim} was never powered off "
                                "(no cut or kill step in the history)")
    t_on = step("power_on", "up")
    if t_on is not None and t_on < t_cut:
        t_on = None
    ends = [e["t"] for e in events if e["kind"] == "run" and e.get("event") == RUN_WINDOW_END]
    settles = [e["t"] for e in events if e["kind"] == "run" and e.get("event") == RUN_SETTLED]
    return FailoverFacts(run=start.get("run"), victim=victim, vip=vip, start=start, t_cut=t_cut,
                         t_killed=t_killed, t_power_on=t_on,
                         window_end=min(ends) if ends else None,
                         settled=min(settles) if settles else None)


def failover_metrics(events: Iterable[Event]) -> tuple[dict[str, float | None], list[str]]:
    """Every metric of METRICS for one run, and a note for each one that did not happen."""
    events = [e for e in events if isinstance(e.get("t"), (int, float))]
    facts = failover_facts(events)
    t_cut, victim, vip = facts.t_cut, facts.victim, facts.vip
    after_cut = [e for e in events if e["t"] >= t_cut]

    def since_cut(t: float | None) -> float | None:
        return None if t is None else round(t - t_cut, 4)

    def first(predicate: Callable[[Event], bool], pool: list[Event] = after_cut) -> float | None:
        times = [e["t"] for e in pool if predicate(e)]
        return min(times) if times else None

    m: dict[str, float | None] = {}
    m["detect_s"] = since_cut(
        first(lambda e: e["kind"] == "state" and e.get("what") == "log"
              and e.get("event") == "detect" and e.get("dead_node") == victim)
        or first(lambda e: e["kind"] == "state" and e.get("what") == "node_state"
                 and e.get("subject") == victim and "DISCONNECTED" in str(e.get("value"))))
    m["takeover_s"] = since_cut(
        first(lambda e: e["kind"] == "state" and e.get("what") == "log"
              and e.get("event") == "takeover" and e.get("ip") == vip)
        or first(lambda e: e["kind"] == "state" and e.get("what") == "ip_owner"
                 and e.get("ip") == vip and e.get("value", -1) not in (-1, victim)))
    m["ping_s"] = since_cut(first(
        lambda e: e.get("probe") == "ping" and e.get("what") == "reply"
        and e["t"] > facts.t_killed))
    m["reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{SMB_PORT}")))
    m["unregistered_reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{PLAIN_PORT}")))
    m["tickled_reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{TICKLED_PORT}")))
    resumed = first_smb_resumed(after_cut, t_cut)
    m["smb_resumed_s"] = since_cut(None if resumed is None else resumed["t"])
    m["smb_session_closed_s"] = since_cut(first(
        lambda e: e.get("probe") == "smb_hold" and e.get("what") == "closed"))
    # Ops started up to the settling (else the window end): a run that goes on watching for a
    # reset that cannot come (keepalived) must not count more of the machine's noise as stall.
    stall_end = next((t for t in (facts.settled, facts.window_end) if t is not None), float("inf"))
    stall = [e["latency_s"] for e in after_cut
             if e["kind"] == "op" and e.get("role") == "survivor" and e.get("type") in ("ok", "fail")
             and e.get("f") not in DATA_WORKLOAD_OPS     # the data checker judges those
             and not e.get("aborted")          # cut short because the probe was stopping
             and e.get("latency_s") is not None and e["t"] - e["latency_s"] <= stall_end]
    m["survivor_stall_s"] = round(max(stall), 4) if stall else None
    m["power_on_s"] = since_cut(facts.t_power_on)
    if facts.t_power_on is not None:
        after_on = [e for e in events if e["t"] >= facts.t_power_on]
        m["rejoin_s"] = since_cut(first(
            lambda e: e["kind"] == "state" and e.get("what") == "node_state"
            and e.get("subject") == victim and e.get("value") == "OK", after_on))
        m["failback_s"] = since_cut(first(
            lambda e: e["kind"] == "state" and e.get("what") == "ip_owner"
            and e.get("value") == victim, after_on))
    else:
        m["rejoin_s"] = m["failback_s"] = None
    not_applicable = not_applicable_metrics(facts.start)
    for name in not_applicable:
        m[name] = None
    watched = ("" if facts.window_end is None
               else f" (watched {facts.window_end - t_cut:.1f} s after the cut)")
    notes = [f"{name}: n/a: {not_applicable[name]}" if name in not_applicable
             else f"{name}: {WHY[name]}{watched}" for name in METRICS if m.get(name) is None]
    return m, notes


def _smb_retry_success_after(e: Event, t_cut: float) -> bool:
    """A connect+read of the SMB retriers that began at or after the cut and succeeded."""
    return (e["kind"] == "op" and str(e.get("process", "")).startswith("smb-retry")
            and e.get("type") == "ok" and e["t"] - e.get("latency_s", 0) >= t_cut)


def first_smb_resumed(events: Iterable[Event], t_cut: float) -> Event | None:
    """The op that ends smb_resumed_s: the first successful retry begun after the cut."""
    done = [e for e in events if isinstance(e.get("t"), (int, float)) and _smb_retry_success_after(e, t_cut)]
    return min(done, key=lambda e: e["t"]) if done else None


#: The SMB client's phases, in the order a retry goes through them (scenarios/probes/smbops.py).
SMB_STEPS = ("connect", "session", "tree", "open", "read", "close")


def smb_resume_steps(events: Iterable[Event], t_cut: float) -> dict[str, float] | None:
    """Where the retry that resumed SMB spent its time: when it began after the cut
    (``began_s``), each phase's seconds, and when it ended (``done_s``); None without one."""
    op = first_smb_resumed(events, t_cut)
    if op is None or not isinstance(op.get("latency_s"), (int, float)):
        return None
    steps = op.get("steps") if isinstance(op.get("steps"), dict) else {}
    out = {"began_s": round(op["t"] - op["latency_s"] - t_cut, 4)}
    out.update({name: float(steps[name]) for name in SMB_STEPS
                if isinstance(steps.get(name), (int, float))})
    out["done_s"] = round(op["t"] - t_cut, 4)
    return out


def not_applicable_metrics(start: Event) -> dict[str, str]:
    """{metric: why} of the metrics the run's daemon cannot have (its start event says)."""
    listed = start.get("not_applicable") or {}
    if not isinstance(listed, dict):
        raise IncompleteHistory(f"run {start.get('run')}: not_applicable is not an object")
    return {name: str(why) for name, why in listed.items() if name in METRICS}


def failover_run_record(events: Iterable[Event]) -> dict[str, Any]:
    """One run's entry of results.json ``runs``: what it was, its metrics and why some are null."""
    events = list(events)
    facts = failover_facts(events)
    metrics, notes = failover_metrics(events)
    start = facts.start
    return {"run": facts.run, "victim": facts.victim, "victim_role": start.get("victim_role"),
            "leader_before": start.get("leader"), "vip": facts.vip,
            "survivor_ip": start.get("survivor_ip"), "t_cut": facts.t_cut,
            "t_killed": facts.t_killed, "t_power_on": facts.t_power_on,
            "watched_s": None if facts.window_end is None else round(facts.window_end - facts.t_cut, 3),
            **metrics, "not_applicable": not_applicable_metrics(start), "notes": notes}


def check_failover(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The results.json ``runs`` of a whole failover history, one record per started run."""
    events = list(events)
    return [failover_run_record(events_of_run(events, run)) for run in run_indexes(events)]


def _tcp_reset(event: Event, target: str) -> bool:
    return (event.get("probe") == "tcp_hold" and event.get("target") == target
            and event.get("what") == "reset")
