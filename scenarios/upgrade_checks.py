"""The rolling upgrade's checker: ``check_upgrade(history) -> checks`` (results.json only).

It reads the history alone: the run's start event (plan, builds, targets), the ``upgrade``
phase events, the ``daemon_running`` captures and the clients' ``op`` events.

Per step (one node, from its ``step`` begin to its end or fail):

worst_interruption_s   the longest time between two successive successful operations of one
                       client, over the gaps the step owns: a gap belongs to the step in which
                       it ended (the client recovered there; a gap that began in the previous
                       step's last moments was caused by this one), else — a gap still open at
                       the end, or ending after the last step — to the step in which it began.
                       A client that never succeeded again has an open gap up to the end of the
                       observation (``window_end``).  While nothing fails the gap is the
                       clients' own pace (0.1 s plus the operation).
errors                 every failed client operation that ended inside the step, split into
                       ``absorbed`` (the same client succeeded later: its retry absorbed it)
                       and ``unrecovered`` (it never succeeded again); operations cut short by
                       the probe's own stop (``aborted``) are not errors
upgraded               the daemon on the node after the step runs the "to" build's version and
                       is a new process (its pid changed): proved by the ``daemon_running``
                       capture taken after the start, whose command line names the build's
                       executable (ctdb: from and to are the installed package; a restart)
phases_s               seconds per phase; ``failed`` names the phase that failed, if one did

Outside the steps (the clients' warm-up before the first and the tail after the last) the same
figures are given as ``outside_steps``.  The targets (``Targets``): no unrecovered client error,
and a worst interruption of at most ``max_interruption_s`` per step; ``passed`` also needs every
planned step completed and proved.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from ctdblab.events import RUN_START, RUN_WINDOW_END, Event

MAX_ERRORS_LISTED = 50


@dataclass(frozen=True)
class Targets:
    max_interruption_s: float = 1.0
    max_unrecovered_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class IncompleteHistory(ValueError):
    """The history lacks what the checker cannot do without (no start event)."""


@dataclass(frozen=True)
class ClientSeries:
    """One client's completed operations: when each success ended, and its failures."""

    oks: list[float]
    fails: list[Event]


def clients_of(events: list[Event]) -> dict[str, ClientSeries]:
    oks: dict[str, list[float]] = {}
    fails: dict[str, list[Event]] = {}
    for e in events:
        if e["kind"] != "op" or e.get("role") != "client":
            continue
        process = str(e.get("process"))
        oks.setdefault(process, [])
        fails.setdefault(process, [])
        if e.get("type") == "ok":
            oks[process].append(e["t"])
        elif e.get("type") == "fail" and not e.get("aborted"):
            fails[process].append(e)
    return {p: ClientSeries(sorted(oks[p]), sorted(fails[p], key=lambda e: e["t"])) for p in oks}


def gaps(series: ClientSeries, end: float) -> list[tuple[float, float]]:
    """(from, to) between successive successes, and from the last success to ``end``."""
    times = series.oks
    out = list(zip(times, times[1:]))
    if times and end > times[-1]:
        out.append((times[-1], end))
    return out


Window = tuple[float, float]


def gap_owner(a: float, b: float, windows: list[Window]) -> int | None:
    """Which window owns the gap (a, b): the one it ended in, else the one it began in."""
    for point in (b, a):
        for i, (begin, end) in enumerate(windows):
            if begin <= point <= end:
                return i
    return None


def window_figures(clients: dict[str, ClientSeries], begin: float, end: float,
                   observation_end: float, owns: Callable[[float, float], bool] | None = None
                   ) -> dict[str, Any]:
    """Worst interruption and errors of every client within [begin, end]; the gaps counted are
    those ``owns`` accepts (default: every gap overlapping the window)."""
    owns = owns or (lambda a, b: b >= begin and a <= end)
    worst, worst_client, worst_gap = 0.0, None, None
    absorbed, unrecovered, listed = 0, 0, []
    per_client: dict[str, dict[str, int]] = {}
    for process, series in sorted(clients.items()):
        for a, b in gaps(series, observation_end):
            if owns(a, b) and b - a > worst:
                worst, worst_client, worst_gap = b - a, process, [round(a, 4), round(b, 4)]
        counts = {"absorbed": 0, "unrecovered": 0}
        for fail in series.fails:
            if not begin <= fail["t"] <= end:
                continue
            recovered = any(t > fail["t"] for t in series.oks)
            kind = "absorbed" if recovered else "unrecovered"
            counts[kind] += 1
            if len(listed) < MAX_ERRORS_LISTED:
                listed.append({"t": round(fail["t"], 4), "client": process, "op": fail.get("f"),
                               "error": str(fail.get("error"))[:200], "recovered": recovered,
                               **({"phase": fail["phase"]} if fail.get("phase") else {})})
        absorbed += counts["absorbed"]
        unrecovered += counts["unrecovered"]
        if any(counts.values()):
            per_client[process] = counts
    return {"worst_interruption_s": round(worst, 4) if worst_client else None,
            "worst_client": worst_client, "worst_gap": worst_gap,
            "errors": absorbed + unrecovered, "errors_absorbed": absorbed,
            "errors_unrecovered": unrecovered, "errors_by_client": per_client,
            "error_list": listed}


def build_of(cmdline: list[str], builds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The build whose executable the command line runs (a bare name matches by basename)."""
    for build in builds:
        exe = str(build.get("executable", ""))
        for arg in cmdline[:3]:
            if arg == exe or ("/" not in exe and os.path.basename(arg) == exe):
                return build
    return None


def _phase_events(events: list[Event]) -> dict[int, list[Event]]:
    by_index: dict[int, list[Event]] = {}
    for e in events:
        if e["kind"] == "upgrade" and isinstance(e.get("index"), int):
            by_index.setdefault(e["index"], []).append(e)
    return by_index


def _daemon_captures(events: list[Event], node: int) -> list[Event]:
    return [e for e in events if e["kind"] == "capture" and e.get("probe") == "daemon"
            and e.get("what") == "running" and e.get("node") == node]


def step_window(phase_events: list[Event], observation_end: float) -> Window | None:
    """[begin, end] of one step: its ``step`` begin to its end or fail (None: never began)."""
    steps = [e for e in phase_events if e.get("phase") == "step"]
    begin = next((e["t"] for e in steps if e.get("edge") == "begin"), None)
    if begin is None:
        return None
    ended = next((e["t"] for e in steps if e.get("edge") in ("end", "fail")), observation_end)
    return begin, ended


def check_step(planned: dict[str, Any], phase_events: list[Event], events: list[Event],
               clients: dict[str, ClientSeries], builds: list[dict[str, Any]],
               observation_end: float, targets: Targets,
               owns: Callable[[float, float], bool] | None = None) -> dict[str, Any]:
    node = planned["node"]
    record: dict[str, Any] = {"index": planned["index"], "node": node, "completed": False,
                              "begin": None, "end": None, "failed": None, "phases_s": {}}
    steps = [e for e in phase_events if e.get("phase") == "step"]
    begin = next((e["t"] for e in steps if e.get("edge") == "begin"), None)
    if begin is None:
        record["note"] = "not run"
        return record
    ended = next((e for e in steps if e.get("edge") in ("end", "fail")), None)
    end = ended["t"] if ended else observation_end
    record.update(begin=round(begin, 4), end=round(end, 4), duration_s=round(end - begin, 3),
                  completed=bool(ended and ended.get("edge") == "end"))
    for phase in planned.get("phases", []):
        b = next((e["t"] for e in phase_events if e.get("phase") == phase and e.get("edge") == "begin"), None)
        done = next((e for e in phase_events if e.get("phase") == phase
                     and e.get("edge") in ("end", "fail")), None)
        if b is not None and done is not None:
            record["phases_s"][phase] = round(done["t"] - b, 3)
            if done["edge"] == "fail":
                record["failed"] = f"{phase}: {done.get('error')}"
    captures = _daemon_captures(events, node)
    before = [c for c in captures if c["t"] < begin]
    after = [c for c in captures if begin <= c["t"] <= end]
    old = before[-1] if before else None
    new = after[-1] if after else None
    old_build = build_of(old.get("cmdline") or [], builds) if old else None
    new_build = build_of(new.get("cmdline") or [], builds) if new else None
    to_version = next((b.get("version") for b in builds if b.get("label") == "to"), None)
    record.update(pid_before=old.get("pid") if old else None, pid_after=new.get("pid") if new else None,
                  version_before=old_build.get("version") if old_build else None,
                  version_after=new_build.get("version") if new_build else None,
                  cmdline_after=new.get("cmdline") if new else None)
    # By version, not label: ctdb's "from" and "to" are the same installed package (a restart).
    record["upgraded"] = bool(new and new_build is not None and new_build.get("version") == to_version
                              and new.get("pid") is not None and new.get("pid") != record["pid_before"])
    figures = window_figures(clients, begin, end, observation_end, owns)
    record.update(figures)
    record["target_met"] = (record["completed"] and record["upgraded"]
                            and figures["errors_unrecovered"] <= targets.max_unrecovered_errors
                            and figures["worst_interruption_s"] is not None
                            and figures["worst_interruption_s"] <= targets.max_interruption_s)
    return record


def check_upgrade(events: Iterable[Event]) -> dict[str, Any]:
    events = sorted((e for e in events if isinstance(e.get("t"), (int, float))), key=lambda e: e["t"])
    starts = [e for e in events if e["kind"] == "run" and e.get("event") == RUN_START]
    if len(starts) != 1 or starts[0].get("scenario") != "upgrade":
        raise IncompleteHistory(f"expected one upgrade start event, found {len(starts)}")
    start = starts[0]
    targets = Targets(**(start.get("targets") or {}))
    builds = start.get("builds") or []
    window_ends = [e["t"] for e in events if e["kind"] == "run" and e.get("event") == RUN_WINDOW_END]
    observation_end = min(window_ends) if window_ends else events[-1]["t"]
    clients = clients_of(events)
    by_index = _phase_events(events)
    plan = start.get("plan", [])
    windows = [step_window(by_index.get(p["index"], []), observation_end) for p in plan]
    ran = [w for w in windows if w is not None]

    def owned_by(window: Window | None) -> Callable[[float, float], bool] | None:
        if window is None:
            return None
        return lambda a, b: (owner := gap_owner(a, b, ran)) is not None and ran[owner] == window

    steps = [check_step(p, by_index.get(p["index"], []), events, clients, builds, observation_end,
                        targets, owned_by(w)) for p, w in zip(plan, windows)]
    run_steps = [s for s in steps if s["begin"] is not None]
    first_ok = min((s.oks[0] for s in clients.values() if s.oks), default=start["t"])
    outside = _outside(clients, run_steps, first_ok, observation_end)
    failures = []
    for s in steps:
        if s["begin"] is None:
            failures.append(f"step {s['index']} (node {s['node']}) did not run")
            continue
        if not s["completed"]:
            failures.append(f"step {s['index']} (node {s['node']}) failed: {s['failed']}")
        if not s["upgraded"]:
            failures.append(f"step {s['index']} (node {s['node']}): no proof the node runs the new "
                            f"build in a new process (pid {s['pid_before']} -> {s['pid_after']}, "
                            f"version {s['version_before']} -> {s['version_after']})")
        if s["errors_unrecovered"] > targets.max_unrecovered_errors:
            failures.append(f"step {s['index']} (node {s['node']}): {s['errors_unrecovered']} client "
                            "errors never recovered")
        worst = s["worst_interruption_s"]
        if worst is None or worst > targets.max_interruption_s:
            failures.append(f"step {s['index']} (node {s['node']}): worst interruption "
                            f"{'unknown' if worst is None else f'{worst:.3f} s'} > "
                            f"{targets.max_interruption_s:g} s ({s['worst_client']})")
    if outside["errors_unrecovered"] > targets.max_unrecovered_errors:
        failures.append(f"outside the steps: {outside['errors_unrecovered']} client errors never recovered")
    if not clients:
        failures.append("no client operations in the history")
    return {"targets": targets.as_dict(), "steps": steps, "outside_steps": outside,
            "clients": {p: {"ok": len(s.oks), "fail": len(s.fails)} for p, s in sorted(clients.items())},
            "observation": {"begin": round(first_ok, 4), "end": round(observation_end, 4)},
            "passed": not failures, "failures": failures}


def _outside(clients: dict[str, ClientSeries], steps: list[dict[str, Any]], first_ok: float,
             observation_end: float) -> dict[str, Any]:
    """Errors before the first step and after the last, and the worst gap lying wholly before
    the first step (the clients' undisturbed pace, to compare the steps with)."""
    if not steps:
        return window_figures(clients, first_ok, observation_end, observation_end)
    before = window_figures(clients, first_ok, steps[0]["begin"] - 1e-6, observation_end)
    after = window_figures(clients, steps[-1]["end"] + 1e-6, observation_end, observation_end)
    return {"errors": before["errors"] + after["errors"],
            "errors_absorbed": before["errors_absorbed"] + after["errors_absorbed"],
            "errors_unrecovered": before["errors_unrecovered"] + after["errors_unrecovered"],
            "error_list": before["error_list"] + after["error_list"],
            "worst_interruption_before_s": _worst_within(clients, first_ok, steps[0]["begin"],
                                                         observation_end)}


def _worst_within(clients: dict[str, ClientSeries], begin: float, end: float,
                  observation_end: float) -> float | None:
    spans = [b - a for s in clients.values() for a, b in gaps(s, observation_end)
             if a >= begin and b <= end]
    return round(max(spans), 4) if spans else None
