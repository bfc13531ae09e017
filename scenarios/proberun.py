"""Start probe programs inside lab hosts and gather their JSON-line events as they arrive."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from ctdblab.cluster.node import LabHost


class ProbeProcess:
    """One probe (``python -m ctdblab.scenarios.probes.<module> ARGS``) running in a host:
    a Mininet LabHost or a RemoteHost, through their common ``popen``/``stop_process``."""

    def __init__(self, host: LabHost, module: str, args: list[str], *, name: str | None = None):
        self.name = name or module
        self.host = host
        self.events: list[dict[str, Any]] = []
        self.stderr_tail: list[str] = []
        self._cond = threading.Condition()
        self.proc = host.popen([*host.python_argv(), "-u", "-m", f"ctdblab.scenarios.probes.{module}",
                                *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, bufsize=0)
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        for raw in iter(self.proc.stdout.readline, b""):
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and "t" in event and "kind" in event:
                event.setdefault("probe_name", self.name)
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def _read_stderr(self) -> None:
        for raw in iter(self.proc.stderr.readline, b""):
            self.stderr_tail = (self.stderr_tail + [raw.decode(errors="replace").rstrip()])[-20:]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict | None:
        """The first event matching ``predicate`` (waiting up to ``timeout``), else None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and seen == len(self.events)):
                    return None
                self._cond.wait(min(left, 0.2))

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> dict | None:
        with self._cond:
            return next((e for e in self.events if predicate(e)), None)

    def signal(self, sig: int = signal.SIGUSR1) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> None:
        self.host.stop_process(self.proc, timeout)
        for t in self._threads:
            t.join(2.0)

    def describe_failure(self) -> str:
        return f"probe {self.name} exited {self.proc.poll()}: {' / '.join(self.stderr_tail[-3:])}"
