"""Read the daemons' logs for the internal steps of a failover (microsecond timestamps).

CTDB 4.17 logging to a file writes RFC 3339 lines::

    2026-11-23T21:52:40.999974+00:00 vm ctdbd[10113]: Takeover of IP 198.19.8.3/20 on interface cx0n1-eth1

pyctdbd keeps that format and CTDB's wording for the events the lab looks for, so one parser reads
both.  The older CTDB format ``2026/11/23 21:52:40.999974 ctdbd[10113]: ...`` is accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z))\s+\S+\s+"
                      r"([\w.-]+)\[(\d+)\]:\s?(.*)$")
_CLASSIC = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s+([\w.-]+)\[(\d+)\]:\s?(.*)$")


@dataclass(frozen=True)
class LogLine:
    t: float           # epoch seconds
    program: str       # ctdbd, ctdb-recoverd, pyctdbd, ...
    pid: int
    message: str


def parse_line(line: str) -> LogLine | None:
    m = _RFC3339.match(line)
    if m:
        stamp = m.group(1).replace("Z", "+00:00")
        t = datetime.fromisoformat(stamp).timestamp()
    else:
        m = _CLASSIC.match(line)
        if not m:
            return None
        t = datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S.%f" if "." in m.group(1)
                              else "%Y/%m/%d %H:%M:%S").timestamp()
    return LogLine(t, m.group(2), int(m.group(3)), m.group(4))


def read_log(path: Path, since: float = 0.0) -> Iterator[LogLine]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    for raw in text.splitlines():
        line = parse_line(raw)
        if line is not None and line.t >= since:
            yield line


# What a failover looks like in the logs: name -> pattern (CTDB's wording, kept by pyctdbd).
EVENTS = {
    "detect": re.compile(r"dead count reached for node (?P<pnn>\d+)"
                         r"|node (?P<addr>[\d.]+):\d+ is dead"),
    "election": re.compile(r"Start election|Leader broadcast timeout"),
    "leader": re.compile(r"Took cluster lock, leader=(?P<pnn>\d+)|leader=(?P<pnn2>\d+)|"
                         r"This node \((?P<pnn3>\d+)\) is now the leader"),
    "recovery_start": re.compile(r"Recovery has started|Recovery mode set to ACTIVE"),
    "recovery_end": re.compile(r"Recovery has finished"),
    "takeover": re.compile(r"Takeover of IP (?P<ip>[\da-fA-F.:]+)/\d+ on interface (?P<iface>\S+)"),
    "release": re.compile(r"Release of IP (?P<ip>[\da-fA-F.:]+)/\d+ on interface"),
    "healthy": re.compile(r"Node became HEALTHY"),
    "unhealthy": re.compile(r"Node became UNHEALTHY|monitor event failed"),
}


def find_events(lines: Iterable[LogLine], name: str) -> list[tuple[LogLine, dict[str, str]]]:
    pattern = EVENTS[name]
    found = []
    for line in lines:
        m = pattern.search(line.message)
        if m:
            found.append((line, {k: v for k, v in m.groupdict().items() if v is not None}))
    return found
