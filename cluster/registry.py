"""Which lab clusters exist on this machine: slots, name prefixes, state files, clean-up.

Each cluster holds one of 16 *slots* (an fcntl lock on ``/run/ctdblab/slot-N.lock`` for as long as
its owner process lives).  The slot gives the cluster its subnets (see addressing.py) and its name
prefix ``cxN`` (N in hex): bridges ``cxNsp``/``cxNsu``, nodes ``cxNn1..``, clients ``cxNc1..``.
A state file ``/run/ctdblab/cxN.json`` describes the running cluster so that ``ctdblab exec`` and
``ctdblab down`` can find it from another process; a cluster brought up with ``--detach`` lives on
after its owner exits.

A slot whose owner died without cleaning up (a crash, a kill -9) is cleaned when it is next
allocated: every process in the prefix's namespaces is killed and every ``cxN*`` link deleted.
Nothing outside the prefix is touched; ``mn -c`` is never used.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctdblab.errors import UserError

from .addressing import SLOTS
from .procs import kill_netns, netns_of

STATE_DIR = Path(os.environ.get("CTDBLAB_STATE_DIR", "/run/ctdblab"))


def prefix_for(slot: int) -> str:
    return f"cx{slot:x}"


@dataclass
class SlotLease:
    """A held slot. ``release()`` (or process exit) gives it back."""

    slot: int
    prefix: str
    _fd: int | None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def acquire_slot() -> SlotLease:
    """Take the first free slot, cleaning up after a dead owner if needed."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    for slot in range(SLOTS):
        fd = os.open(STATE_DIR / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        prefix = prefix_for(slot)
        state = read_state(prefix)
        if state is not None and state.get("detached") and _alive(state):
            os.close(fd)  # a detached cluster still runs here
            continue
        cleanup_prefix(prefix)
        return SlotLease(slot, prefix, fd)
    raise UserError(f"all {SLOTS} lab slots are in use; bring a cluster down with `ctdblab down`")


def state_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def write_state(prefix: str, state: dict[str, Any]) -> None:
    path = state_path(prefix)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


def read_state(prefix: str) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(prefix).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"prefix": prefix, "corrupt": True}


def running_clusters() -> list[dict[str, Any]]:
    """State of every cluster whose nodes are still alive."""
    found = []
    for path in sorted(STATE_DIR.glob("cx*.json")):
        state = read_state(path.stem)
        if state and not state.get("corrupt") and _alive(state):
            found.append(state)
    return found


def _alive(state: dict[str, Any]) -> bool:
    for member in state.get("nodes", []) + state.get("clients", []):
        pid = member.get("pid")
        if pid and netns_of(pid) == member.get("netns"):
            return True
    return False


def cleanup_prefix(prefix: str) -> dict[str, int]:
    """Kill everything in the prefix's namespaces and delete its links and bridges."""
    name_re = re.compile(rf"^{re.escape(prefix)}[ncs]")
    namespaces: set[str] = set()
    state = read_state(prefix)
    if state and not state.get("corrupt"):
        for member in state.get("nodes", []) + state.get("clients", []):
            if member.get("netns"):
                namespaces.add(member["netns"])
    namespaces |= _namespaces_with_links(name_re)
    own = netns_of(os.getpid())
    namespaces.discard(own)
    killed = 0
    for ns in namespaces:
        killed += kill_netns(ns)
    links = _root_links(name_re)
    for link in links:
        subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=10)
    try:
        state_path(prefix).unlink()
    except FileNotFoundError:
        pass
    return {"processes": killed, "links": len(links), "namespaces": len(namespaces)}


def _root_links(name_re: re.Pattern[str]) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         timeout=10).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(": ")
        if len(parts) > 1:
            name = parts[1].split("@")[0]
            if name_re.match(name):
                names.append(name)
    # Delete bridges last, ports first; deleting one veth end removes its peer too.
    return sorted(names, key=lambda n: n.endswith(("sp", "su")))


def _namespaces_with_links(name_re: re.Pattern[str]) -> set[str]:
    """Namespaces of processes that see an interface of this prefix (crash clean-up)."""
    found: set[str] = set()
    seen: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        ns = netns_of(int(entry.name))
        if ns is None or ns in seen:
            continue
        seen.add(ns)
        try:
            dev = Path(f"/proc/{entry.name}/net/dev").read_text()
        except OSError:
            continue
        for line in dev.splitlines()[2:]:
            if name_re.match(line.split(":")[0].strip()):
                found.add(ns)
                break
    return found
