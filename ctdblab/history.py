"""The run history: one JSON object per line, one clock for everything.

Every fault, client operation, daemon state change and capture of a run lands in
``history.jsonl``; the events and their fields are defined once, in ``ctdblab.events``.
Checkers and reports read only this file (and ``results.json``), never the cluster, so a
regression can be re-checked and a plot re-drawn without re-running it.  What checkers derive
(milestones, verdicts) goes to ``results.json``, never back into the history.

``History`` writes; ``load_history`` / ``read_history`` is the one reader, used by the scenarios'
checkers and by the reports.  It forgives exactly one kind of damage: a partial last line, which a
run killed mid-write leaves behind.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError
from .events import KINDS, OP_TYPES, RETIRED_KINDS, RUN_START, Event

__all__ = ["History", "HistoryError", "LoadedHistory", "load_history", "load_numbered",
           "read_history",
           "events_of_run", "run_indexes", "KINDS"]


class HistoryError(UserError):
    """A history file that cannot be read; the message names the file and the line."""


class History:
    """Append-only writer of ``history.jsonl``; safe to share between threads.

    ``run`` (the current repetition) is stamped on every event that has none.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self.run: int | None = None

    def record(self, event: Event) -> Event:
        """Append one event built by a ``ctdblab.events`` constructor."""
        self.extend([event])
        return event

    def extend(self, events: Iterable[Event]) -> None:
        """Append events, e.g. those a probe printed, keeping their own ``t``."""
        lines = []
        for event in events:
            if event.get("kind") not in KINDS:
                raise ValueError(f"unknown history kind {event.get('kind')!r}")
            if self.run is not None:
                event.setdefault("run", self.run)
            lines.append(json.dumps(event, sort_keys=True, default=str) + "\n")
        with self._lock:
            self._file.writelines(lines)

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LoadedHistory:
    """A history's events ordered by time (stable: equal times keep file order)."""

    path: Path
    events: list[Event]
    truncated_line: int | None = None      # a partial last line that was skipped
    retired: int = 0                       # lines of kinds older histories held (milestone)
    warnings: list[str] = field(default_factory=list)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def load_history(path: str | os.PathLike[str]) -> LoadedHistory:
    """Read and check every line; raise HistoryError naming the file and line that is wrong."""
    loaded, numbered = _load(Path(path))
    loaded.events = [event for _, event in numbered]
    return loaded


def load_numbered(path: str | os.PathLike[str]) -> list[tuple[int, Event]]:
    """(line number in the file, event) pairs ordered by time, for checkers that cite the
    history lines proving a verdict."""
    return _load(Path(path))[1]


def _load(path: Path) -> tuple[LoadedHistory, list[tuple[int, Event]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(f"{path}: cannot read: {e}") from None
    lines = text.split("\n")
    last_index = len(lines) - 1            # split leaves "" after a final newline
    loaded = LoadedHistory(path=path, events=[])
    numbered: list[tuple[int, Event]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        lineno = index + 1
        try:
            event = _DECODER.decode(line)
        except ValueError as e:
            if index == last_index:        # no newline after it: the writer died mid-line
                loaded.truncated_line = lineno
                loaded.warnings.append(f"{path.name}: ignored truncated last line {lineno}")
                continue
            raise HistoryError(f"{path}:{lineno}: not a JSON history line: {e}") from None
        _check_event(event, path, lineno)
        if event["kind"] in RETIRED_KINDS:
            loaded.retired += 1
            continue
        numbered.append((lineno, event))
    numbered.sort(key=lambda pair: pair[1]["t"])
    return loaded, numbered


def read_history(path: str | os.PathLike[str]) -> list[Event]:
    """All events of a history file, ordered by time."""
    return load_history(path).events


def _check_event(event: Any, path: Path, lineno: int) -> None:
    where = f"{path}:{lineno}"
    if not isinstance(event, dict):
        raise HistoryError(f"{where}: expected a JSON object, found {_json_type(event)}")
    t = event.get("t")
    if not _is_number(t):
        raise HistoryError(f"{where}: 't' must be a number (epoch seconds), found {t!r}")
    if not isinstance(event.get("kind"), str):
        raise HistoryError(f"{where}: 'kind' must be a string, found {event.get('kind')!r}")
    run = event.get("run")
    if run is not None and (not isinstance(run, int) or isinstance(run, bool)):
        raise HistoryError(f"{where}: 'run' must be an integer, found {run!r}")
    if event["kind"] == "op":
        if event.get("type") not in OP_TYPES:
            raise HistoryError(f"{where}: op 'type' must be invoke, ok or fail, "
                               f"found {event.get('type')!r}")
        latency = event.get("latency_s")
        if latency is not None and not (_is_number(latency) and latency >= 0):
            raise HistoryError(f"{where}: op 'latency_s' must be a non-negative number, "
                               f"found {latency!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


# -- selecting ----------------------------------------------------------------------------------------
def events_of_run(events: Iterable[Event], run: int) -> list[Event]:
    return [e for e in events if e.get("run") == run]


def run_indexes(events: Iterable[Event]) -> list[int]:
    """The repetitions that started, in the order they started."""
    return [e["run"] for e in events
            if e["kind"] == "run" and e.get("event") == RUN_START and isinstance(e.get("run"), int)]
