"""Processes inside a lab node: run with a timeout, find them by network namespace, kill them.

A lab node is a network + mount namespace pair (made by Mininet's ``mnexec -n``).  Everything
here identifies a node by the inode of its network namespace and enters it with
``mnexec -a PID``, which joins that PID's network *and* mount namespaces — so inside, stock tools
see the node's own ``/etc/ctdb``, ``/run/ctdb`` and so on.  Mininet's own ``Host.cmd`` is never
used after a node is built: it blocks forever once the node's shell is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Mapping, Sequence

DEFAULT_TIMEOUT = 30.0

# Variables that would point stock tools away from the node's default paths.
_SCRUBBED_ENV = ("CTDB_SOCKET", "CTDB_BASE", "CTDB_TEST_MODE", "CTDB_PIDFILE")


def netns_of(pid: int) -> str | None:
    """The network namespace of a process, e.g. ``net:[4026532318]``; None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def named_netns(name: str) -> str | None:
    """The identity (as `netns_of` gives it) of a namespace made with ``ip netns add NAME``;
    None if there is no such namespace."""
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return None


def mntns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def pids_in_netns(netns: str) -> list[int]:
    """Every process whose network namespace is ``netns``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            if netns_of(pid) == netns:
                found.append(pid)
    return found


def kill_netns(netns: str, *, keep: Sequence[int] = (), timeout: float = 5.0) -> int:
    """SIGSTOP then SIGKILL every process in a network namespace, until none is left.

    Stopping first keeps a dying parent from forking or sending anything more.  Repeats until
    the namespace is empty (catching forks), or raises TimeoutError.  Returns how many were killed.
    """
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in pids_in_netns(netns) if p not in keep and p != os.getpid()]
        if not pids:
            return len(killed)
        for pid in pids:
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
            killed.add(pid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes still alive in {netns}: {pids}")
        time.sleep(0.005)


def program_name(pid: int) -> str:
    """The program a process runs: ``ctdbd``/``pyctdbd`` even under an interpreter, else comm."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return ""
    for arg in argv[:2]:            # "python .../pyctdbd" or "/usr/sbin/ctdbd"
        name = os.path.basename(arg.decode(errors="replace"))
        if name in ("ctdbd", "pyctdbd"):
            return name
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (a huge number if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 1 << 62


def signal_pids(pids: Sequence[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids``; one already gone is skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def node_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if extra:
        env.update(extra)
    return env


def _argv(pid: int, command: str | Sequence[str]) -> list[str]:
    if isinstance(command, str):
        return ["mnexec", "-a", str(pid), "sh", "-c", command]
    return ["mnexec", "-a", str(pid), *command]


def run_in(pid: int, command: str | Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
           check: bool = False, env: Mapping[str, str] | None = None,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespaces of ``pid`` and wait at most ``timeout`` seconds.

    A string runs through ``sh -c``; a list runs as it is.  On timeout the command's whole
    process group is killed and ``subprocess.TimeoutExpired`` is raised.
    """
    proc = subprocess.Popen(_argv(pid, command), stdin=subprocess.PIPE if input is not None else
                            subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=node_env(env), start_new_session=True)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, proc.args, out, err)
    return result


def popen_in(pid: int, command: str | Sequence[str], *, env: Mapping[str, str] | None = None,
             **kwargs) -> subprocess.Popen:
    """Start a background process inside the namespaces of ``pid`` (its own session)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(_argv(pid, command), env=node_env(env), **kwargs)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(proc: subprocess.Popen, timeout: float = 3.0) -> None:
    """SIGTERM a process we started (and its group), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait(timeout)
