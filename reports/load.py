"""Load and validate what a run left behind: ``results.json`` and ``history.jsonl``.

A *run directory* holds both files.  ``load_datasets(path)`` accepts a run directory or a parent
directory whose sub-directories (up to two levels down) are run directories, e.g. the demo's
``out/`` with ``out/pyctdbd/`` and ``out/ctdb/``.  Anything missing or malformed raises
``UserError`` with one line that names the file (and the field or line) that is wrong.

The reports read nothing else: never the cluster.  Histories are read with the lab's one
reader (``ctdblab.history.load_history``: a truncated last line is skipped with a warning, lines
of the retired ``milestone`` kind in older histories are ignored).

The failover milestones (detect, takeover, ...) come from ``results.json``, not from the history:
they are the checker's verdict, written once when the run was checked.  Recomputing them here
would let a plot disagree with the figures CI compared against its thresholds whenever the
checker changed in between; re-checking an old history is the checker's job
(``scenarios.checkers.check_failover``), not the report's.  The history gives the reports what
no verdict holds: client operations, faults and the orchestrator's notes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdblab.errors import UserError
from ctdblab.events import DATA_WORKLOAD_OPS
from ctdblab.history import load_history

RESULTS = "results.json"
HISTORY = "history.jsonl"

# Top-level fields that are data, not run parameters.
_DATA_FIELDS = ("runs", "points", "summary")
# Fields of a failover run that describe it rather than measure it.
_RUN_DESCRIPTION_FIELDS = ("run", "victim", "victim_role", "t_cut", "notes", "watched_s",
                           "not_applicable")
_SEARCH_DEPTH = 2


@dataclass(frozen=True)
class FailoverRun:
    """One repetition of a failover scenario; every metric is seconds after the cut, or None."""

    run: int
    victim: int | None
    victim_role: str  # "leader", "nonleader" or "unknown"
    t_cut: float | None
    metrics: dict[str, float | None]
    notes: tuple[str, ...] = ()  # the checker's: why a metric is null
    # Metrics the daemon cannot have (keepalived: no membership, no tickles) and why.
    not_applicable: dict[str, str] = field(default_factory=dict)
    watched_s: float | None = None  # how long the run watched after the cut


@dataclass(frozen=True)
class ScalingPoint:
    nodes: int
    client: str
    mb_s: float
    run: int | None


@dataclass(frozen=True)
class ClientOp:
    """A completed client operation (an ``ok`` or ``fail`` op event)."""

    t: float
    latency_s: float
    ok: bool
    role: str  # "survivor", "victim" or "unknown"
    run: int | None
    target: str | None
    error: str | None


@dataclass(frozen=True)
class Note:
    t: float
    run: int | None
    text: str


@dataclass(frozen=True)
class FaultEvent:
    t: float
    run: int | None
    fault: str
    node: Any
    phase: str | None


@dataclass
class Dataset:
    """Everything the reports know about one run directory."""

    path: Path
    scenario: str
    daemon: str
    params: dict[str, Any]  # scalar top-level fields of results.json (nodes, tunables, bw_mbit, ...)
    runs: list[FailoverRun] = field(default_factory=list)
    points: list[ScalingPoint] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    ops: list[ClientOp] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)
    has_history: bool = False
    declared_summary: dict[str, Any] = field(default_factory=dict)  # results.json "summary", as written
    data_checks: list[dict[str, Any]] = field(default_factory=list)  # runs[i]["data"] (--check-data), with "run"
    raw: dict[str, Any] = field(default_factory=dict)  # results.json as read (the soak's checks)
    warnings: list[str] = field(default_factory=list)
    label: str = ""  # set by assign_labels: how plots and tables name this dataset

    @property
    def is_failover(self) -> bool:
        return self.scenario != "scaling" and bool(self.runs)

    @property
    def is_scaling(self) -> bool:
        return self.scenario == "scaling"


# -- finding run directories ---------------------------------------------------------------------
def find_run_dirs(path: str | Path) -> list[Path]:
    """The run directories at or below ``path`` (itself, or sub-directories up to two levels)."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such directory")
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (give a run directory holding {RESULTS})")
    if (root / RESULTS).exists():
        return [root]
    found: list[Path] = []
    _collect_run_dirs(root, _SEARCH_DEPTH, found)
    if not found:
        raise UserError(f"{root}: no {RESULTS} in it or in its sub-directories")
    return found


def _collect_run_dirs(directory: Path, depth: int, found: list[Path]) -> None:
    if depth == 0:
        return
    for child in sorted(p for p in directory.iterdir() if p.is_dir()):
        if (child / RESULTS).exists():
            found.append(child)
        else:
            _collect_run_dirs(child, depth - 1, found)


def load_datasets(path: str | Path) -> list[Dataset]:
    """Load every run directory at or below ``path`` and give each a distinct label."""
    datasets = [load_run_dir(d) for d in find_run_dirs(path)]
    assign_labels(datasets)
    return datasets


def load_run_dir(path: str | Path) -> Dataset:
    run_dir = Path(path)
    results_path = run_dir / RESULTS
    results = _read_results(results_path)
    dataset = _parse_results(results, results_path, run_dir)
    history_path = run_dir / HISTORY
    if history_path.exists():
        _read_history(history_path, dataset)
        dataset.has_history = True
    elif dataset.is_failover:
        # Notes (why a metric is null) and client latencies live only in the history.
        raise UserError(f"{history_path}: missing (a failover run directory needs its history)")
    else:
        dataset.warnings.append(f"{history_path.name} is missing; no client latencies or notes")
    return dataset


# -- results.json --------------------------------------------------------------------------------
def _read_results(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {_json_type(data)}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_results(data: dict[str, Any], path: Path, run_dir: Path) -> Dataset:
    scenario = _require(data, "scenario", str, path)
    daemon = _require(data, "daemon", str, path)
    params = {k: v for k, v in data.items()
              if k not in _DATA_FIELDS and (v is None or isinstance(v, (str, int, float, bool)))}
    dataset = Dataset(path=run_dir, scenario=scenario, daemon=daemon, params=params, raw=data)
    if scenario in ("soak", "upgrade"):
        if not isinstance(data.get("checks"), dict):
            raise UserError(f"{path}: missing field 'checks' (the {scenario}'s verdicts)")
    elif scenario == "scaling":
        points = _require(data, "points", list, path)
        dataset.points = [_parse_point(p, i, path) for i, p in enumerate(points)]
    elif "runs" in data:
        runs = _require(data, "runs", list, path)
        dataset.runs = [_parse_failover_run(r, i, path) for i, r in enumerate(runs)]
        dataset.data_checks = [{"run": r.get("run", i), "victim_role": r.get("victim_role"), **r["data"]}
                               for i, r in enumerate(runs)
                               if isinstance(r, dict) and isinstance(r.get("data"), dict)]
        summary = data.get("summary")
        if isinstance(summary, dict):
            dataset.declared_summary = summary
        elif summary is not None:
            dataset.warnings.append(f"{RESULTS}: 'summary' is {_json_type(summary)}, not an object; ignored")
    elif scenario == "failover":
        raise UserError(f"{path}: missing field 'runs'")
    else:
        dataset.warnings.append(f"scenario {scenario!r} has no runs or points this report can draw")
    return dataset


def _parse_failover_run(raw: Any, index: int, path: Path) -> FailoverRun:
    where = f"runs[{index}]"
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {where}: expected an object, found {_json_type(raw)}")
    run = raw.get("run", index)
    if not _is_int(run):
        raise UserError(f"{path}: {where}.run: expected an integer, found {run!r}")
    victim = raw.get("victim")
    if victim is not None and not _is_int(victim):
        raise UserError(f"{path}: {where}.victim: expected an integer or null, found {victim!r}")
    role = raw.get("victim_role")
    if role is None:
        role = "unknown"
    elif not isinstance(role, str):
        raise UserError(f"{path}: {where}.victim_role: expected a string, found {role!r}")
    t_cut = raw.get("t_cut")
    if t_cut is not None and not _is_number(t_cut):
        raise UserError(f"{path}: {where}.t_cut: expected a number or null, found {t_cut!r}")
    notes = raw.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise UserError(f"{path}: {where}.notes: expected an array of strings, found {notes!r}")
    not_applicable = raw.get("not_applicable", {})
    if not isinstance(not_applicable, dict) or not all(isinstance(v, str) for v in not_applicable.values()):
        raise UserError(f"{path}: {where}.not_applicable: expected an object of strings, "
                        f"found {not_applicable!r}")
    watched = raw.get("watched_s")
    if watched is not None and not _is_number(watched):
        raise UserError(f"{path}: {where}.watched_s: expected a number or null, found {watched!r}")
    metrics: dict[str, float | None] = {}
    for key, value in raw.items():
        if key in _RUN_DESCRIPTION_FIELDS or not key.endswith("_s"):
            continue  # fields may be added; only "<name>_s" fields are metrics
        if value is not None and not _is_number(value):
            raise UserError(f"{path}: {where}.{key}: expected seconds (a number) or null, "
                            f"found {value!r}")
        metrics[key] = None if value is None else float(value)
    return FailoverRun(run=run, victim=victim, victim_role=role,
                       t_cut=None if t_cut is None else float(t_cut), metrics=metrics,
                       notes=tuple(notes), not_applicable=dict(not_applicable),
                       watched_s=None if watched is None else float(watched))


def _parse_point(raw: Any, index: int, path: Path) -> ScalingPoint:
    where = f"points[{index}]"
    if not isinstance(raw, dict):
        raise UserError(f"{path}: {where}: expected an object, found {_json_type(raw)}")
    nodes = raw.get("nodes")
    if not _is_int(nodes) or nodes < 1:
        raise UserError(f"{path}: {where}.nodes: expected a positive integer, found {nodes!r}")
    client = raw.get("client")
    if not isinstance(client, str) or not client:
        raise UserError(f"{path}: {where}.client: expected a tool name, found {client!r}")
    mb_s = raw.get("mb_s")
    if not _is_number(mb_s) or mb_s < 0:
        raise UserError(f"{path}: {where}.mb_s: expected a non-negative number, found {mb_s!r}")
    run = raw.get("run")
    if run is not None and not _is_int(run):
        raise UserError(f"{path}: {where}.run: expected an integer or null, found {run!r}")
    return ScalingPoint(nodes=nodes, client=client, mb_s=float(mb_s), run=run)


def _require(data: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    if key not in data:
        raise UserError(f"{path}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is str and not value):
        raise UserError(f"{path}: field {key!r}: expected {_type_name(kind)}, found {value!r}")
    return value


# -- history.jsonl -------------------------------------------------------------------------------
def _read_history(path: Path, dataset: Dataset) -> None:
    loaded = load_history(path)  # HistoryError is a UserError naming the file and line
    dataset.warnings += loaded.warnings
    dataset.events = loaded.events
    _index_events(loaded.events, dataset)


def _index_events(events: list[dict[str, Any]], dataset: Dataset) -> None:
    """Pick out the events the reports use: completed ops, notes and faults."""
    invoked: dict[tuple[Any, Any, Any], float] = {}
    for event in events:
        kind = event["kind"]
        if kind == "op" and event.get("f") in DATA_WORKLOAD_OPS:
            continue            # the data checker's; results.json holds its verdict
        if kind == "op":
            op = _op_from_event(event, invoked)
            if op is not None:
                dataset.ops.append(op)
        elif kind == "note":
            text = event.get("text")
            dataset.notes.append(Note(t=event["t"], run=event.get("run"),
                                      text=text if isinstance(text, str) else json.dumps(text)))
        elif kind == "fault":
            dataset.faults.append(FaultEvent(t=event["t"], run=event.get("run"),
                                             fault=str(event.get("fault", "?")), node=event.get("node"),
                                             phase=event.get("phase")))


def _op_from_event(event: dict[str, Any], invoked: dict[tuple[Any, Any, Any], float]) -> ClientOp | None:
    """An ok/fail op as a ClientOp (the reader has checked its type and latency)."""
    key = (_key_part(event.get("run")), _key_part(event.get("process")), _key_part(event.get("id")))
    if event["type"] == "invoke":
        invoked[key] = event["t"]
        return None
    latency = event.get("latency_s")
    started = invoked.pop(key, None)
    if latency is None:
        # Older probes may omit latency_s; pair with the invoke of the same process and id.
        if started is None:
            return None
        latency = event["t"] - started
    role = event.get("role")
    error = event.get("error")
    return ClientOp(t=event["t"], latency_s=float(latency), ok=event["type"] == "ok",
                    role=role if isinstance(role, str) else "unknown", run=event.get("run"),
                    target=event.get("target"), error=None if error is None else str(error))


def _key_part(value: Any) -> Any:
    """A dict-key-safe stand-in: hostile histories may put lists or objects where ids belong."""
    return value if value is None or isinstance(value, (str, int, float)) else repr(value)


# -- labels --------------------------------------------------------------------------------------
def assign_labels(datasets: list[Dataset]) -> None:
    """Name each dataset by its daemon, adding what tells it apart from same-daemon siblings."""
    for dataset in datasets:
        siblings = [d for d in datasets if d is not dataset and d.daemon == dataset.daemon
                    and d.scenario == dataset.scenario]
        parts = [dataset.daemon]
        for key, show in (("tunables", str), ("nodes", lambda v: f"N={v}"),
                          ("bw_mbit", lambda v: f"{v} Mbit/s")):
            if any(d.params.get(key) != dataset.params.get(key) for d in siblings) \
                    and dataset.params.get(key) is not None:
                parts.append(show(dataset.params[key]))
        dataset.label = " ".join(parts)
    # Whatever is still ambiguous gets its directory name.
    ambiguous = [d for d in datasets
                 if sum(o.label == d.label and o.scenario == d.scenario for o in datasets) > 1]
    for dataset in ambiguous:
        dataset.label = f"{dataset.label} ({dataset.path.name})"


# -- small helpers -------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _type_name(kind: type) -> str:
    return {str: "a non-empty string", list: "an array", dict: "an object"}.get(kind, kind.__name__)
