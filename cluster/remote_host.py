"""One machine of a remote-hosts cluster, reached only through SSH, with LabHost's interface.

Scenarios use a host through ``run``, ``popen``, ``stop_process``, ``python_argv`` and
``powered`` — the same calls as on a Mininet LabHost — so they run unchanged on real blades.

Background processes (the probes) run under a small bash wrapper on the host that turns lines on
its stdin into signals for the process, and SIGTERMs it when stdin closes (our ``ssh`` died, or
the connection did).  Signals sent to the local ``ssh`` client would never reach the remote
process, and a remote process without a terminal gets no SIGHUP when its connection goes: the
wrapper is what makes ``ProbeProcess.signal()`` and ``stop()`` mean the same as in Mininet.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Sequence

from .ssh import SshConnection, kill_group, remote_command_text, with_hangup_default

# $1.. is the command.  Lines on stdin are signal names for it; EOF means TERM.  The wrapper
# ends when the command does and exits with its status.
SIGNAL_WRAPPER = r"""
"$@" </dev/null &
p=$!
while kill -0 "$p" 2>/dev/null; do
  if read -r -t 0.5 sig; then
    kill -s "$sig" "$p" 2>/dev/null
  elif [ $? -le 128 ]; then
    kill -TERM "$p" 2>/dev/null
    break
  fi
done
wait "$p"
"""

# Every process of the host whose program is one of argv[1:]: "pid name starttime" lines,
# with the same notion of "program" as chaos.processes.program_name (python scripts by name).
# "Of the host" = in the network namespace of this SSH session: on a blade that is the whole
# machine, and it keeps out daemons in containers there — and, in the lab test, where the
# stand-in blades share one PID namespace, every other blade's and every other lab's processes.
FIND_PROGRAMS = r"""
import os, sys
want = set(sys.argv[1:])
mine = os.readlink("/proc/self/ns/net")
for entry in os.listdir("/proc"):
    if not entry.isdigit():
        continue
    try:
        if os.readlink(f"/proc/{entry}/ns/net") != mine:
            continue
        argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        comm = open(f"/proc/{entry}/comm").read().strip()
        start = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        continue
    name = next((os.path.basename(a.decode(errors="replace")) for a in argv[:2]
                 if os.path.basename(a.decode(errors="replace")) in ("ctdbd", "pyctdbd")), comm)
    if name in want:
        print(entry, name, start)
"""


class RemotePopen(subprocess.Popen):
    """A local ``ssh`` running SIGNAL_WRAPPER: ``send_signal`` goes to the remote process.

    ``returncode`` reads as a local Popen's would: the wrapper's 128+N (killed by signal N on
    the host) becomes -N, so callers that treat -15 as "stopped by us" keep working.
    """

    host_name = ""

    @property
    def returncode(self):
        raw = self.__dict__.get("_raw_returncode")
        if raw is not None and 128 < raw < 128 + 65:
            return -(raw - 128)
        return raw

    @returncode.setter
    def returncode(self, value):
        self.__dict__["_raw_returncode"] = value

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None or self.stdin is None or self.stdin.closed:
            return
        try:
            self.stdin.write(f"{signal.Signals(sig).name[3:]}\n".encode())
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        kill_group(self)


@dataclass
class RemoteHost:
    """A cluster node (``role="node"``, ``index`` = PNN) or a client host, over SSH."""

    name: str
    index: int
    role: str
    ssh: SshConnection
    ips: dict[str, str]                     # interface (or "mgmt") -> address[/prefixlen]
    python: str = "python3"                 # interpreter for the probes
    lib_dir: str = ""                       # where the payload's `ctdblab` package lives
    powered: bool = True
    programs: dict[str, str] = field(default_factory=dict)    # e.g. {"pyctdbd": its path there}
    background: list[subprocess.Popen] = field(default_factory=list)

    # -- LabHost's interface ------------------------------------------------------------------------
    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        if not self.powered:
            raise RuntimeError(f"{self.name} is powered off")
        return self.ssh.run(command, timeout=timeout, check=check, input=input)

    def popen(self, command: str | Sequence[str], **kwargs) -> subprocess.Popen:
        """A long-running command on the host (no time limit); see SIGNAL_WRAPPER."""
        if not self.powered:
            raise RuntimeError(f"{self.name} is powered off")
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        remote = remote_command_text(["bash", "-c", SIGNAL_WRAPPER, "ctdblab-wrapper", *argv], None)
        kwargs["stdin"] = subprocess.PIPE
        kwargs.setdefault("start_new_session", True)
        kwargs.pop("env", None)
        proc = RemotePopen(with_hangup_default([*self.ssh.base_argv(), "-T", self.ssh.target, "--", remote]),
                           **kwargs)
        proc.host_name = self.name
        self.background.append(proc)
        return proc

    def stop_process(self, proc: subprocess.Popen, timeout: float = 3.0) -> None:
        """TERM the remote process and wait for its last output; kill our ssh if it lingers
        (or at once when the host is off: nobody is there to answer)."""
        if proc.poll() is not None:
            return
        if self.powered:
            proc.terminate()
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        kill_group(proc)
        proc.wait(5)

    def python_argv(self) -> list[str]:
        """How to start the payload's Python modules (``python_argv() + ["-m", module]``)."""
        return ["env", f"PYTHONPATH={self.lib_dir}", self.python]

    def describe(self) -> dict:
        return {"name": self.name, "index": self.index, "role": self.role, "ssh": self.ssh.target,
                "ips": self.ips, "powered": self.powered}

    # -- processes (the chaos faults' view of a host) -----------------------------------------------
    def find_programs(self, names: Sequence[str]) -> list[tuple[int, str, int]]:
        """(pid, program, start time) of every process running one of ``names``."""
        result = self.run([self.python, "-c", FIND_PROGRAMS, *names], timeout=15, check=True)
        found = []
        for line in result.stdout.splitlines():
            pid, name, start = line.split()
            found.append((int(pid), name, int(start)))
        return found

    def signal_processes(self, pids: Sequence[int], sig: int) -> None:
        if pids:
            self.run(signal_argv(pids, sig), timeout=15)

    def forget_background(self) -> None:
        """After a power-off: kill our local ssh clients of this host at once."""
        for proc in self.background:
            if proc.poll() is None:
                kill_group(proc)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.background.clear()


def signal_argv(pids: Sequence[int], sig: int) -> list[str]:
    """``kill -s NAME PID...``; an already gone process is not an error (``|| true`` semantics
    are left to the caller: kill's exit status says whether all were signalled)."""
    return ["kill", "-s", signal.Signals(sig).name[3:], *(str(p) for p in pids)]


def lib_dir_of(install_dir: str) -> str:
    return str(PurePosixPath(install_dir) / "lib")
