"""Commands on remote hosts over OpenSSH: never a prompt, never a hang.

Every ``ssh`` runs with ``BatchMode=yes`` (no password or passphrase prompt: a missing key is an
error at once), ``ConnectTimeout`` and ``ServerAlive*`` (a host that dies mid-command is noticed
in seconds), and through one ControlMaster per host, so the hundreds of short commands of a run
(the 10 Hz ``ctdb status`` polls) each cost a channel on an open connection, not a handshake.

The master is started on its own (``ControlPersist``, output to /dev/null): a master forked by a
command whose output we read would keep that pipe open and the read would wait for it.  Later
commands say ``ControlMaster=no``: they use the master when it is up and connect directly when it
is not (after a host's reset).  ``close()`` ends the master (``ssh -O exit``); ``ControlPersist``
ends it anyway after 10 idle minutes if this process dies first.

A command's time limit is enforced twice: locally (the ``ssh`` client's process group is killed)
and on the host (``timeout -k 2 T``), so a hung remote command does not outlive its deadline.
An SSH failure (exit 255) is an ``SshError`` naming the host and the command.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .inventory import SshSettings

SSH_FAILED = 255
CONTROL_PERSIST_S = 600
MASTER_START_TIMEOUT_GRACE = 5.0


class SshError(RuntimeError):
    """The SSH connection itself failed (not the remote command)."""


class SshTimeout(subprocess.TimeoutExpired):
    def __init__(self, host: str, command: str, timeout: float):
        super().__init__(command, timeout)
        self.host = host

    def __str__(self) -> str:
        return f"{self.host}: `{_short(self.cmd)}` did not finish within {self.timeout:g} s"


def remote_command_text(command: str | Sequence[str], timeout: float | None) -> str:
    """What ssh sends as the remote command: a list as one shell-quoted line, a string through
    ``sh -c`` (as the Mininet backend runs strings); with a limit, under coreutils ``timeout``."""
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    if timeout is not None:
        argv = ["timeout", "-k", "2", f"{timeout:g}", *argv]
    return shlex.join(argv)


class SshConnection:
    """How to reach one host: ``argv()`` builds ssh command lines, ``run()`` runs one."""

    def __init__(self, name: str, target: str, settings: SshSettings, control_dir: Path):
        self.name = name
        self.target = target
        self.settings = settings
        self.control_path = control_dir / f"{name}.sock"

    def base_argv(self, *, master: bool = False) -> list[str]:
        s = self.settings
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(max(1, s.connect_timeout))}",
                "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3",
                "-o", f"ControlPath={self.control_path}",
                "-o", f"StrictHostKeyChecking={s.strict_host_key_checking}",
                "-o", "LogLevel=ERROR"]
        argv += (["-o", "ControlMaster=yes", "-o", f"ControlPersist={CONTROL_PERSIST_S}"]
                 if master else ["-o", "ControlMaster=no"])
        if s.identity_file:
            argv += ["-o", "IdentitiesOnly=yes", "-i", os.path.expanduser(s.identity_file)]
        if s.known_hosts_file:
            argv += ["-o", f"UserKnownHostsFile={os.path.expanduser(s.known_hosts_file)}"]
        if s.user:
            argv += ["-l", s.user]
        return argv + list(s.options)

    def argv(self, command: str | Sequence[str], timeout: float | None = None) -> list[str]:
        return [*self.base_argv(), "-T", self.target, "--", remote_command_text(command, timeout)]

    # -- the master -------------------------------------------------------------------------------
    def start_master(self) -> None:
        """Open the shared connection (idempotent).  Raises SshError when the host is unreachable."""
        if self.master_alive():
            return
        argv = [*self.base_argv(master=True), "-T", self.target, "true"]
        limit = self.settings.connect_timeout + MASTER_START_TIMEOUT_GRACE
        try:
            result = subprocess.run(with_hangup_default(argv), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True, timeout=limit,
                                    start_new_session=True)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.name}: ssh {self.target} did not connect within {limit:g} s") from None
        if result.returncode != 0:
            raise SshError(f"{self.name}: ssh {self.target} failed (exit {result.returncode}): "
                           f"{result.stderr.strip() or 'no message'}")

    def master_alive(self) -> bool:
        if not self.control_path.exists():
            return False
        result = subprocess.run(with_hangup_default([*self.base_argv(), "-O", "check", self.target]),
                                stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        return result.returncode == 0

    def close(self) -> None:
        if self.control_path.exists():
            try:
                subprocess.run(with_hangup_default([*self.base_argv(), "-O", "exit", self.target]),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # -- commands ---------------------------------------------------------------------------------
    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            input: str | bytes | None = None, check: bool = False,
            text: bool = True) -> subprocess.CompletedProcess:
        """Run a command on the host; at most ``timeout`` s (default: the inventory's)."""
        timeout = timeout if timeout is not None else self.settings.command_timeout
        argv = self.argv(command, timeout)
        proc = subprocess.Popen(with_hangup_default(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                                start_new_session=True)
        # The local limit allows the connection set-up on top of the remote one.
        try:
            out, err = proc.communicate(input=input, timeout=timeout + self.settings.connect_timeout + 2)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.communicate()
            raise SshTimeout(self.name, _describe(command), timeout) from None
        if proc.returncode == SSH_FAILED:
            message = (err if isinstance(err, str) else err.decode(errors="replace")).strip()
            raise SshError(f"{self.name}: ssh {self.target} failed running `{_short(_describe(command))}`: "
                           f"{message or 'exit 255, no message'}")
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and result.returncode != 0:
            text_err = err if isinstance(err, str) else err.decode(errors="replace")
            raise RuntimeError(f"{self.name}: `{_short(_describe(command))}` failed "
                               f"(exit {result.returncode}): {text_err.strip()[-300:]}")
        return result

    def reachable(self, timeout: float) -> bool:
        try:
            return self.run(["true"], timeout=timeout).returncode == 0
        except (SshError, SshTimeout):
            return False

    def wait_reachable(self, timeout: float, interval: float = 1.0) -> float:
        """Until the host answers SSH again (after a reset); the instant it did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.reachable(timeout=max(2.0, self.settings.connect_timeout)):
                return time.time()
            if time.monotonic() > deadline:
                raise SshError(f"{self.name}: ssh {self.target} still unreachable after {timeout:g} s")
            time.sleep(interval)


def with_hangup_default(argv: list[str]) -> list[str]:
    """ssh ends a ProxyCommand (or ProxyJump's ssh) with SIGHUP when it gives up; started from
    `nohup` (SIGHUP ignored, inherited by every child) that proxy would survive, keep the
    output pipes open, and a silent host would hold a command until the local limit instead of
    ssh's ConnectTimeout.  coreutils' env restores the default for the ssh it starts."""
    return ["env", "--default-signal=HUP", *argv]


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
