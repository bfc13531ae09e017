"""pyctdbd's native parts, in C, loaded with ctypes: the heartbeat pacer thread
(heartbeat_pacer.c, this module) and the node plane (node_plane.c, node_plane.py). Both are
optional: without the pacer the daemon paces its fast heartbeats with a Python thread
(server/heartbeat_pacer.py), which costs 0.2-0.3 % of a core more at 20 ms beats
(docs/fast-profile-idle.md); without the plane it carries the node connections with asyncio's
transports and answers every record call in Python (docs/native-hot-path.md).

Each library is built from the shipped source with the system's C compiler, by `./ctdblab.sh`
in the lab, by the Debian package's postinst, or by hand:

    python3 -m pyctdbd.native            (python3 -m ctdblab.daemon.native in the lab's tree)

Its file name carries a hash of the source, so a library built from another version of the
source is never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "heartbeat_pacer.c"
#: "0" in the daemon's environment: no native part is used (the pacer's Python thread paces the
#: beats, the node plane stays off), to compare or to rule them out when debugging.
NATIVE_ENV = "PYCTDBD_NATIVE"
#: Every native source the daemon ships (node_plane.c: see node_plane.py).
SOURCES = (SOURCE, HERE / "node_plane.c")
ABI = 1                      # HP_ABI in the source

# (argtypes, restype) of every function the library exports
_SIGNATURES: dict[str, tuple[list, object]] = {
    "hp_abi": ([], ctypes.c_int),
    "hp_create": ([ctypes.c_int, ctypes.c_int, ctypes.c_int32, ctypes.c_uint32, ctypes.c_uint32,
                   ctypes.c_uint32], ctypes.c_void_p),
    "hp_set_timing": ([ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                       ctypes.c_double], None),
    "hp_loop_alive": ([ctypes.c_void_p, ctypes.c_double], None),
    "hp_set_targets": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32),
                        ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32)], ctypes.c_int),
    "hp_set_peers": ([ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int32), ctypes.c_char_p,
                      ctypes.POINTER(ctypes.c_int32)], ctypes.c_int),
    "hp_set_watched": ([ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int32)], ctypes.c_int),
    "hp_take": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_double),
                 ctypes.c_int], ctypes.c_int),
    "hp_counters": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)], None),
    "hp_beat": ([ctypes.c_void_p, ctypes.c_double, ctypes.c_double], ctypes.c_int),
    "hp_start": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "hp_running": ([ctypes.c_void_p], ctypes.c_int),
    "hp_destroy": ([ctypes.c_void_p], None),
}


class NativeBuildError(Exception):
    pass


def library_name(source: Path = SOURCE) -> str:
    """``_<source stem>-<hash of the source>.so``."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return f"_{source.stem}-{digest}.so"


def library_path(source: Path = SOURCE) -> Path:
    return HERE / library_name(source)


def build(out_dir: Path | None = None, source: Path = SOURCE) -> Path:
    """Compile one library (the pacer's by default) next to its source (or into `out_dir`);
    returns its path. Stale builds of other versions of that source there are removed."""
    out_dir = out_dir or HERE
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NativeBuildError("no C compiler (cc or gcc) found: install Debian's gcc and libc6-dev")
    target = out_dir / library_name(source)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")   # builds may race
    command = [compiler, "-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-o", str(partial), str(source), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise NativeBuildError(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    os.replace(partial, target)
    for stale in out_dir.glob(f"_{source.stem}-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def load_library(path: Path, signatures: dict[str, tuple[list, object]], abi_function: str,
                 abi: int) -> ctypes.CDLL:
    """Load a built library and declare its functions; OSError (AttributeError for a missing
    function) if it is not the ABI this source expects."""
    lib = ctypes.CDLL(str(path))
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = restype
    found = getattr(lib, abi_function)()
    if found != abi:
        raise OSError(f"ABI {found}, expected {abi}")
    return lib


_loaded: ctypes.CDLL | None = None
_load_error: str | None = None


def heartbeat_pacer_library() -> ctypes.CDLL | None:
    """The built library with its signatures declared, or None (see `load_error`)."""
    global _loaded, _load_error
    if _loaded is not None or _load_error is not None:
        return _loaded
    path = library_path()
    if not path.exists():
        _load_error = f"{path.name} is not built (python3 -m {__name__} builds it)"
        return None
    try:
        lib = load_library(path, _SIGNATURES, "hp_abi", ABI)
    except (OSError, AttributeError) as exc:
        _load_error = f"{path} cannot be loaded: {exc}"
        return None
    _loaded = lib
    return lib


def forget_load_error() -> None:
    """Look for the library again at the next call (after a build)."""
    global _load_error
    _load_error = None


def load_error() -> str | None:
    """Why `heartbeat_pacer_library()` returned None."""
    return _load_error


def main_thread_scheduling() -> tuple[int, int]:
    """(policy, priority) of the process's main thread -- the event loop's, SCHED_RR in the lab
    and as ctdbd runs -- for a native thread to take itself (a thread a real-time thread with
    RESET_ON_FORK makes starts SCHED_OTHER); (-1, 0) when unknown: the thread keeps its own."""
    try:
        main = os.getpid()       # the main thread's id is the process id
        return os.sched_getscheduler(main), os.sched_getparam(main).sched_priority
    except (OSError, AttributeError):
        return -1, 0


def sockaddr_bytes(address: str, port: int) -> bytes:
    """struct sockaddr_in or sockaddr_in6 for an address and port, as the kernel takes it."""
    if ":" in address:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
            + socket.inet_pton(socket.AF_INET6, address) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
        + socket.inet_pton(socket.AF_INET, address) + bytes(8)


def address_key(address: str) -> tuple[int, bytes]:
    """(family, 16 address bytes) as the library matches a datagram's source; an IPv4-mapped
    IPv6 address counts as IPv4, as the kernel reports it either way."""
    if ":" in address:
        raw = socket.inet_pton(socket.AF_INET6, address)
        if raw[:12] != bytes(10) + b"\xff\xff":
            return socket.AF_INET6, raw
        raw = raw[12:]
    else:
        raw = socket.inet_pton(socket.AF_INET, address)
    return socket.AF_INET, raw + bytes(12)
