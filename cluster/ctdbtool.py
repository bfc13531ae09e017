"""Parse what Samba's stock ``ctdb`` tool prints (its ``-X`` machine-readable form).

The lab asks both daemons the same questions through the same tool, so one parser serves both:

    ctdb -X status   |Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|
                     |0|198.18.0.1|0|0|0|0|0|0|0|0|Y|
    ctdb -X ip all   |Public IP|Node|
                     |198.19.8.1|2|
"""

from __future__ import annotations

from dataclasses import dataclass

STATUS_FIELDS = ("disconnected", "unknown", "banned", "disabled", "unhealthy", "stopped",
                 "inactive", "partially_online")


@dataclass(frozen=True)
class NodeStatus:
    pnn: int
    ip: str
    flags: dict[str, bool]
    this_node: bool

    @property
    def ok(self) -> bool:
        return not any(self.flags.values())

    def state(self) -> str:
        """The word ``ctdb status`` would print: OK, DISCONNECTED, UNHEALTHY, ..."""
        names = [f.upper() for f, v in self.flags.items() if v and f != "inactive"]
        return "|".join(names) if names else "OK"


def parse_status(text: str) -> list[NodeStatus]:
    nodes = []
    for row in _rows(text):
        if not row or not row[0].isdigit():
            continue
        if len(row) < 11:
            raise ValueError(f"unexpected `ctdb -X status` row: {'|'.join(row)}")
        flags = {name: row[2 + i] == "1" for i, name in enumerate(STATUS_FIELDS)}
        nodes.append(NodeStatus(int(row[0]), row[1], flags, row[10] == "Y"))
    if not nodes:
        raise ValueError("no node rows in `ctdb -X status` output")
    return nodes


def parse_ip_all(text: str) -> dict[str, int]:
    """Public IP -> hosting PNN (-1 when unhosted)."""
    ips = {}
    for row in _rows(text):
        if len(row) >= 2 and row[0] != "Public IP":
            try:
                ips[row[0]] = int(row[1])
            except ValueError:
                raise ValueError(f"unexpected `ctdb -X ip` row: {'|'.join(row)}") from None
    return ips


def _rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            rows.append(line[1:-1].split("|"))
    return rows
