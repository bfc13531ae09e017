"""The run history: one JSON object per line, one clock for everything.

Every fault, client operation, daemon state change and capture of a run lands in
``history.jsonl``.  Checkers and reports read only this file (and ``results.json``), never
the cluster, so a regression can be re-checked and a plot re-drawn without re-running it.

All network namespaces share the kernel clock, so ``t`` (``time.time()``, seconds since the
epoch) taken in the orchestrator, in a client probe or parsed from a daemon log is one clock.

Each event has ``t`` and ``kind``; the rest depends on the kind:

``run``        a repetition starts or ends (``event``: start|end, ``run``: index)
``fault``      a fault was injected (``fault``: power_off|power_on|crash|freeze|thaw|
               partition|heal|flap|loss, ``node``: pnn, ``phase``: begin|end)
``op``         a client operation (``process``, ``f``, ``type``: invoke|ok|fail, ``value``/``error``)
``state``      an observed daemon state change (``node``, ``what``, ``value``)
``milestone``  a derived instant of a failover (``name``, ``run``)
``capture``    a packet or probe observation (``probe``, ``what``, ...)
``note``       free text, e.g. why a metric did not happen in a run
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

KINDS = ("run", "fault", "op", "state", "milestone", "capture", "note")


class History:
    """Append-only writer of ``history.jsonl``; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self.run: int | None = None

    def record(self, kind: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown history kind {kind!r}")
        event: dict[str, Any] = {"t": time.time() if t is None else t, "kind": kind}
        if self.run is not None and "run" not in fields:
            event["run"] = self.run
        event.update(fields)
        line = json.dumps(event, sort_keys=True, default=str)
        with self._lock:
            self._file.write(line + "\n")
        return event

    def extend(self, events: Iterable[dict[str, Any]]) -> None:
        """Append events gathered elsewhere (probe outputs), keeping their own ``t``."""
        with self._lock:
            for event in events:
                if self.run is not None:
                    event.setdefault("run", self.run)
                self._file.write(json.dumps(event, sort_keys=True, default=str) + "\n")

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> "History":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_history(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All events of a history file, ordered by time (stable for equal times)."""
    events = list(iter_history(path))
    events.sort(key=lambda e: e["t"])
    return events


def iter_history(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON history line: {e}") from None
            if "t" not in event or "kind" not in event:
                raise ValueError(f"{path}:{lineno}: history line without 't' or 'kind'")
            yield event
