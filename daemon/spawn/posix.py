"""posix_spawn(3) through ctypes: start a program without holding Python's GIL until it execs.

Why not ``subprocess.Popen``: on Python 3.11 (Debian 12) Popen forks with vfork and keeps the GIL
until the child has exec'd (Python 3.12 first lets it go). The daemon's children start
SCHED_OTHER (SCHED_RESET_ON_FORK) while the daemons are real-time, so when real-time work keeps
the cores busy the child can wait for a CPU for up to the kernel's real-time throttling period
(950 ms of every second) before it execs -- and all that time the thread that called Popen holds
the GIL, so the event loop, which needs the GIL for its next timer, sleeps: a loop stall with no
CPU used ("blocked in the kernel" in the daemon's stall log). Measured on this machine with the
caller at SCHED_FIFO 2 and a SCHED_FIFO 1 spinner on the same core: Popen in a worker thread
left a 1 ms loop timer 950-997 ms late at worst; this binding, whose foreign call releases the
GIL like every ctypes call, 1.2-53 ms (50 ms is the kernel's real-time throttling;
``benchmarks.spawn_inversion``, 3 runs).

glibc's posix_spawn clones with CLONE_VM | CLONE_VFORK and returns the child's exec error (so
a missing program is an OSError here, as with Popen). The child's file actions: the chosen
descriptors are duplicated onto 0, 1, 2 and then 3, 4, ... (``keep``), every other descriptor
from there up is closed, the directory is changed; its signal mask is emptied and SIGPIPE and
SIGXFSZ, which Python ignores, go back to their defaults (as Popen's ``restore_signals``). A
``scheduler`` is set by the child first of all; with SCHED_RESET_ON_FORK, which glibc's setter
refuses, it is written into the attribute's policy field (found at import and checked by
reading it back), so a child can stay real-time until it execs while nothing it forks is.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
from collections.abc import Mapping, Sequence

_libc = ctypes.CDLL(None, use_errno=True)
#: glibc 2.34 and later (Debian 12 has 2.36). Without it only the descriptors Python opens are
#: closed (close-on-exec, PEP 446) -- everything the daemon opens itself.
_HAS_CLOSEFROM = hasattr(_libc, "posix_spawn_file_actions_addclosefrom_np")

# glibc's flag values (spawn.h).
_SETPGROUP = 0x02
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSCHEDULER = 0x20
_SETSID = 0x80

#: Opaque glibc types, allocated larger than they are (80, 336 and 128 bytes on x86-64).
_OPAQUE_SIZE = 1024

DEVNULL = -1  #: a standard stream from /dev/null
#: What DEVNULL opens (stdin read-only, stdout and stderr write-only).
NULL_DEVICE = b"/dev/null"


RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)


def _write_policy(attr: ctypes.Array, offset: int, policy: int) -> None:
    ctypes.memmove(ctypes.addressof(attr) + offset, policy.to_bytes(4, "little"), 4)


def _policy_offset() -> int | None:
    """Where posix_spawnattr_t keeps the policy, found by setting it twice (glibc's setter
    refuses SCHED_RESET_ON_FORK, its child passes the field to sched_setscheduler as it is)."""
    attr = ctypes.create_string_buffer(_OPAQUE_SIZE)
    if _libc.posix_spawnattr_init(attr) != 0:
        return None
    try:
        _libc.posix_spawnattr_setschedpolicy(attr, os.SCHED_RR)
        first = attr.raw
        _libc.posix_spawnattr_setschedpolicy(attr, os.SCHED_FIFO)
        second = attr.raw
        for offset in range(0, _OPAQUE_SIZE - 3, 4):
            if (int.from_bytes(first[offset:offset + 4], "little") == os.SCHED_RR
                    and int.from_bytes(second[offset:offset + 4], "little") == os.SCHED_FIFO):
                _write_policy(attr, offset, os.SCHED_RR | RESET_ON_FORK)
                policy = ctypes.c_int(0)
                _libc.posix_spawnattr_getschedpolicy(attr, ctypes.byref(policy))
                return offset if policy.value == os.SCHED_RR | RESET_ON_FORK else None
        return None
    finally:
        _libc.posix_spawnattr_destroy(attr)


#: The policy field's offset; None where it cannot be found (then no child starts real-time).
_POLICY_OFFSET = _policy_offset()
#: Can a child keep a real-time policy until it execs, with SCHED_RESET_ON_FORK set (so nothing
#: it forks is real-time)? See :func:`spawn`'s ``scheduler``.
REALTIME_UNTIL_EXEC = _POLICY_OFFSET is not None


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


def _strings(items: Sequence[str | bytes]) -> ctypes.Array:
    encoded = [item if isinstance(item, bytes) else os.fsencode(item) for item in items]
    for item in encoded:
        if b"\0" in item:          # C would cut the string there (Popen refuses it too)
            raise ValueError(f"embedded null byte in {item[:40]!r}")
    return (ctypes.c_char_p * (len(encoded) + 1))(*encoded, None)


def _set_scheduler(attr: ctypes.Array, policy: int, priority: int) -> None:
    _check(_libc.posix_spawnattr_setschedpolicy(attr, policy & ~RESET_ON_FORK), "setschedpolicy")
    _check(_libc.posix_spawnattr_setschedparam(attr, ctypes.byref(ctypes.c_int(priority))),
           "setschedparam")
    if policy & RESET_ON_FORK:
        if _POLICY_OFFSET is None:
            raise OSError(22, "this C library's posix_spawn cannot set SCHED_RESET_ON_FORK")
        _write_policy(attr, _POLICY_OFFSET, policy)


def _above(fd: int, floor: int, dups: list[int]) -> int:
    """``fd`` itself if it is at least ``floor``, else a close-on-exec copy of it that is (so
    duplicating it onto a low number cannot overwrite another source descriptor first)."""
    if fd >= floor:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    dups.append(copy)
    return copy


def spawn(argv: Sequence[str], *, executable: str | None = None,
          env: Mapping[str, str] | None = None, cwd: str | None = None,
          stdin: int = DEVNULL, stdout: int = DEVNULL, stderr: int = DEVNULL,
          keep: Sequence[int] = (), new_session: bool = False,
          new_process_group: bool = False,
          scheduler: tuple[int, int] | None = None) -> int:
    """Start ``executable`` (default ``argv[0]``, searched in this process's $PATH when it has
    no ``/``) and return its pid. ``stdin``/``stdout``/``stderr`` are descriptors of this
    process or DEVNULL; ``keep`` are descriptors the child gets as 3, 4, ...; everything else
    is closed. ``scheduler`` (policy, priority): the child sets it before its file actions; the
    policy may carry SCHED_RESET_ON_FORK when REALTIME_UNTIL_EXEC."""
    if not argv:
        raise ValueError("spawn: empty argv")
    program = executable if executable is not None else argv[0]
    search = executable is None and "/" not in argv[0]
    environ = os.environ if env is None else env
    envp = _strings([f"{key}={value}" for key, value in environ.items()])
    args = _strings(list(argv))

    floor = 3 + len(keep)
    dups: list[int] = []
    actions = ctypes.create_string_buffer(_OPAQUE_SIZE)
    attr = ctypes.create_string_buffer(_OPAQUE_SIZE)
    _check(_libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    try:
        _check(_libc.posix_spawnattr_init(attr), "posix_spawnattr_init")
        try:
            for target, source in ((0, stdin), (1, stdout), (2, stderr)):
                if source == DEVNULL:
                    mode = os.O_RDONLY if target == 0 else os.O_WRONLY
                    _check(_libc.posix_spawn_file_actions_addopen(
                        actions, target, NULL_DEVICE, mode, 0), "addopen /dev/null")
                else:
                    _check(_libc.posix_spawn_file_actions_adddup2(
                        actions, _above(source, floor, dups), target), "adddup2")
            for index, source in enumerate(keep):
                _check(_libc.posix_spawn_file_actions_adddup2(
                    actions, _above(source, floor, dups), 3 + index), "adddup2")
            if _HAS_CLOSEFROM:
                _check(_libc.posix_spawn_file_actions_addclosefrom_np(actions, floor),
                       "addclosefrom_np")
            if cwd is not None:
                _check(_libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)),
                       "addchdir_np")

            empty = ctypes.create_string_buffer(_OPAQUE_SIZE)
            _libc.sigemptyset(empty)
            defaults = ctypes.create_string_buffer(_OPAQUE_SIZE)
            _libc.sigemptyset(defaults)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                _libc.sigaddset(defaults, int(sig))
            _check(_libc.posix_spawnattr_setsigmask(attr, empty), "setsigmask")
            _check(_libc.posix_spawnattr_setsigdefault(attr, defaults), "setsigdefault")
            flags = _SETSIGMASK | _SETSIGDEF
            if new_session:
                flags |= _SETSID
            elif new_process_group:
                flags |= _SETPGROUP
                _check(_libc.posix_spawnattr_setpgroup(attr, 0), "setpgroup")
            if scheduler is not None:
                _set_scheduler(attr, *scheduler)
                flags |= _SETSCHEDULER
            _check(_libc.posix_spawnattr_setflags(attr, ctypes.c_short(flags)), "setflags")

            pid = ctypes.c_int(0)
            call = _libc.posix_spawnp if search else _libc.posix_spawn
            result = call(ctypes.byref(pid), os.fsencode(program), actions, attr, args, envp)
            if result != 0:
                raise OSError(result, os.strerror(result), program)
            return pid.value
        finally:
            _libc.posix_spawnattr_destroy(attr)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
        for fd in dups:
            os.close(fd)
