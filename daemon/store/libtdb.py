"""ctypes binding of the system ``libtdb.so.1`` (Debian package libtdb1, 1.4.8 on Debian 12): the
library clustered smbd links, so both sides agree on the file format, the hash and the locks.

Why not python3-tdb: it has no chain locks, no ``tdb_parse_record``, no ``*_mark`` calls, no
Jenkins hash and no mutex constant, and it only imports into Debian's own interpreter. Mixing it
with this binding on one file in one process is refused by libtdb (EBUSY): libtdb keeps one open
per (device, inode) per process.

Only prototypes and error mapping live here; :mod:`.tdbfile` is the Python-facing class.
Prototypes follow Samba 4.17's ``lib/tdb/include/tdb.h``; ``tdb_transaction_write_lock_mark`` /
``_unmark`` are exported but not in tdb.h (ctdbd declares them itself, ``ctdb_lock.c``).

Every foreign call releases the GIL (ctypes.CDLL). errno is captured per call (``use_errno``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno as errno_mod
import itertools
import os
import platform
import re
from collections.abc import Callable
from ctypes import (
    CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_int, c_size_t, c_uint, c_uint64, c_ubyte,
    c_void_p,
)

LIBTDB_SONAME = "libtdb.so.1"

# tdb_store() flags (tdb.h).
TDB_REPLACE = 1
TDB_INSERT = 2
TDB_MODIFY = 3


class TdbErr(enum.IntEnum):
    """``enum TDB_ERROR``."""

    SUCCESS = 0
    CORRUPT = 1
    IO = 2
    LOCK = 3
    OOM = 4
    EXISTS = 5
    NOLOCK = 6
    LOCK_TIMEOUT = 7
    NOEXIST = 8
    EINVAL = 9
    RDONLY = 10
    NESTING = 11


class TdbError(OSError):
    """A libtdb call failed. ``ecode`` is libtdb's TDB_ERROR, ``errno`` the C errno after the
    call (0 if none), ``op`` the libtdb function, ``path`` the database file."""

    def __init__(self, op: str, ecode: int, err: int, path: str | None = None,
                 detail: str | None = None) -> None:
        try:
            ecode = TdbErr(ecode)
            ename = ecode.name
        except ValueError:
            ename = str(ecode)
        text = f"{op}: {ename}"
        if err:
            text += f" ({errno_mod.errorcode.get(err, err)}: {os.strerror(err)})"
        if detail:
            text += f": {detail}"
        super().__init__(err or None, text, path)
        self.op = op
        self.ecode = ecode
        # OSError.errno is None when 0; keep the number the caller can compare.
        self.c_errno = err

    def __str__(self) -> str:
        return f"{self.strerror} [{self.filename}]" if self.filename else str(self.strerror)


class TDB_DATA(Structure):
    """``TDB_DATA {unsigned char *dptr; size_t dsize;}`` — passed by value."""

    _fields_ = [("dptr", POINTER(c_ubyte)), ("dsize", c_size_t)]


class TDB_KEY(Structure):
    """A TDB_DATA the caller passes in (keys, values to store): the same layout with ``dptr`` as
    ``char *``, so Python bytes go in without a ctypes cast (a third of the cost of a record
    lookup on the migration path, which makes a dozen of them per call)."""

    _fields_ = [("dptr", c_char_p), ("dsize", c_size_t)]


# int (*parser)(TDB_DATA key, TDB_DATA data, void *private_data)
PARSER = CFUNCTYPE(c_int, TDB_DATA, TDB_DATA, c_void_p)
# int (*tdb_traverse_func)(struct tdb_context *, TDB_DATA key, TDB_DATA dbuf, void *state)
TRAVERSER = CFUNCTYPE(c_int, c_void_p, TDB_DATA, TDB_DATA, c_void_p)


def _load() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(LIBTDB_SONAME, use_errno=True)
    except OSError:
        found = ctypes.util.find_library("tdb")
        if found is None:
            raise OSError(f"{LIBTDB_SONAME} not found: install Debian's libtdb1") from None
        return ctypes.CDLL(found, use_errno=True)


lib = _load()


def _proto(name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


_CTX = c_void_p  # struct tdb_context *
_INT_CTX = ("tdb_close", "tdb_error", "tdb_get_seqnum", "tdb_hash_size", "tdb_get_flags",
            "tdb_fd", "tdb_lockall", "tdb_lockall_nonblock", "tdb_unlockall", "tdb_lockall_read",
            "tdb_lockall_read_nonblock", "tdb_unlockall_read", "tdb_lockall_mark",
            "tdb_lockall_unmark", "tdb_transaction_start", "tdb_transaction_start_nonblock",
            "tdb_transaction_prepare_commit", "tdb_transaction_commit", "tdb_transaction_cancel",
            "tdb_transaction_write_lock_mark", "tdb_transaction_write_lock_unmark",
            "tdb_wipe_all", "tdb_repack", "tdb_freelist_size")
_INT_CTX_KEY = ("tdb_chainlock", "tdb_chainlock_nonblock", "tdb_chainunlock", "tdb_chainlock_read",
                "tdb_chainlock_read_nonblock", "tdb_chainunlock_read", "tdb_chainlock_mark",
                "tdb_chainlock_unmark", "tdb_delete", "tdb_exists")

# struct tdb_context *tdb_open_ex(name, hash_size, tdb_flags, open_flags, mode, log_ctx, hash_fn)
_proto("tdb_open_ex", _CTX, c_char_p, c_int, c_int, c_int, c_uint, c_void_p, c_void_p)
for _name in _INT_CTX:
    _proto(_name, c_int, _CTX)
for _name in _INT_CTX_KEY:
    _proto(_name, c_int, _CTX, TDB_KEY)
_proto("tdb_errorstr", c_char_p, _CTX)
_proto("tdb_name", c_char_p, _CTX)
_proto("tdb_fetch", TDB_DATA, _CTX, TDB_KEY)
_proto("tdb_parse_record", c_int, _CTX, TDB_KEY, PARSER, c_void_p)
_proto("tdb_store", c_int, _CTX, TDB_KEY, TDB_KEY, c_int)
_proto("tdb_storev", c_int, _CTX, TDB_KEY, POINTER(TDB_KEY), c_int, c_int)
_proto("tdb_traverse", c_int, _CTX, TRAVERSER, c_void_p)
_proto("tdb_traverse_read", c_int, _CTX, TRAVERSER, c_void_p)
_proto("tdb_transaction_active", c_bool, _CTX)
_proto("tdb_add_flags", None, _CTX, c_uint)
_proto("tdb_remove_flags", None, _CTX, c_uint)
_proto("tdb_enable_seqnum", None, _CTX)
_proto("tdb_increment_seqnum_nonblock", None, _CTX)
_proto("tdb_map_size", c_size_t, _CTX)
_proto("tdb_jenkins_hash", c_uint, POINTER(TDB_KEY))
_proto("tdb_check", c_int, _CTX, c_void_p, c_void_p)
_proto("tdb_runtime_check_for_robust_mutexes", c_bool)

libc = ctypes.CDLL(None, use_errno=True)
libc.free.restype = None
libc.free.argtypes = [c_void_p]


def key_data(key: bytes) -> TDB_KEY:
    """A TDB_KEY pointing into ``key`` (kept alive by the structure). Empty is NULL/0."""
    if not key:
        return TDB_KEY(None, 0)
    if type(key) is not bytes:
        key = bytes(key)
    return TDB_KEY(key, len(key))


def jenkins_hash(data: bytes) -> int:
    """libtdb's ``tdb_jenkins_hash`` (lookup3 hashlittle, initval 0): ctdbd's db_id of
    ``name + NUL``, a record key's hash for its lmaster (``ltdbrules.use_key_hash``: ~0.7 µs
    a key against 3-7 µs for the pure lookup3 of ``protocol/ltdb.py``), and the hash of keys in
    TDB_INCOMPATIBLE_HASH files. Passed as a TDB_KEY: no copy of the bytes."""
    return int(lib.tdb_jenkins_hash(ctypes.byref(key_data(data))))


_ROBUST: bool | None = None


def robust_mutexes_available() -> bool:
    """``tdb_runtime_check_for_robust_mutexes()``, cached: whether MUTEX_LOCKING can be used
    (ctdbd adds the flag only when this says yes). The check forks a child once."""
    global _ROBUST
    if _ROBUST is None:
        _ROBUST = bool(lib.tdb_runtime_check_for_robust_mutexes())
    return _ROBUST


# --- libtdb's log messages ------------------------------------------------------------------------
#
# ``tdb_open_ex`` takes a ``struct tdb_logging_context {log_fn, log_private}``; without one libtdb
# drops its messages, among them the only report of a corrupt file: ``tdb_parse_record`` and
# ``tdb_fetch`` answer NOEXIST when the hash chain leads to a record with a bad magic, so the
# record looks missing. ctdbd passes a log function (``tdb_wrap``: ``tdb(<path>): <message>``); so
# does pyctdbd.
#
# The log function is variadic: ``void log_fn(struct tdb_context *, enum tdb_debug_level, const
# char *fmt, ...)``. ctypes cannot receive ``...``, so the callback is declared with the format
# followed by a few word-sized arguments. On x86-64 (System V) and aarch64 Linux, integer and
# pointer arguments of a variadic call travel exactly as those of a fixed call, so the words are
# the caller's arguments; the format (checked by the compiler against them, PRINTF_ATTRIBUTE)
# says how many there are and of what kind. Only integer, character, string and pointer
# conversions are rendered, and only as many words as the format names are used (a %s is read
# only when the format says the caller passed one); anything else — floating point, '*' widths,
# more arguments than words, another architecture — is logged as the bare format.

TDB_DEBUG_FATAL, TDB_DEBUG_ERROR, TDB_DEBUG_WARNING, TDB_DEBUG_TRACE = range(4)

_LOG_WORDS = 6
LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p, *([c_uint64] * _LOG_WORDS))


class TDB_LOGGING_CONTEXT(Structure):
    _fields_ = [("log_fn", LOG_FN), ("log_private", c_void_p)]


_CONVERSION = re.compile(r"%([-+ #0]*)(\d+|\*)?(?:\.(\d+|\*))?(hh|h|ll|l|z|j|t|L|q)?([diouxXcspn%aAeEfFgG])")
_WORD_ARGS = platform.system() == "Linux" and platform.machine() in ("x86_64", "amd64", "aarch64", "arm64")
_WIDE = ("l", "ll", "z", "j", "t", "q")


def format_log(fmt: bytes, words: tuple[int, ...], word_args: bool = _WORD_ARGS) -> str:
    """A libtdb message: ``fmt`` rendered with the caller's argument words where that is safe
    (see above), else the bare format. Never raises."""
    text = fmt.decode("utf-8", "replace")
    try:
        specs = list(_CONVERSION.finditer(text))
        wanted = [m for m in specs if m.group(5) != "%"]
        if not word_args or len(wanted) > len(words) or any(
                m.group(5) in "naAeEfFgG" or "*" in (m.group(2) or "") + (m.group(3) or "")
                for m in wanted):
            return text.rstrip("\n")
        args = iter(words)
        out = []
        last = 0
        for m in specs:
            out.append(text[last:m.start()])
            last = m.end()
            flags, width, precision, length, conv = m.groups()
            if conv == "%":
                out.append("%")
                continue
            word = next(args)
            spec = "%" + flags + (width or "") + (f".{precision}" if precision is not None else "")
            if conv in "di":
                value = word if length in _WIDE else word & 0xFFFFFFFF
                bits = 64 if length in _WIDE else 32
                if value >= 1 << (bits - 1):
                    value -= 1 << bits
                out.append((spec + "d") % value)
            elif conv in "ouxX":
                value = word if length in _WIDE else word & 0xFFFFFFFF
                out.append((spec + conv) % value)
            elif conv == "c":
                out.append((spec + "c") % chr(word & 0xFF))
            elif conv == "s":
                value = ctypes.string_at(word).decode("utf-8", "replace") if word else "(null)"
                out.append((spec + "s") % value)
            else:                                                   # p
                out.append(f"0x{word:x}")
        out.append(text[last:])
        return "".join(out).rstrip("\n")
    except Exception:                                               # never into libtdb
        return text.rstrip("\n")


#: log_private token -> sink(level, message); a file's sink is removed when it is closed.
_SINKS: dict[int, Callable[[int, str], None]] = {}
_TOKENS = itertools.count(1)


@LOG_FN
def _log_fn(tdb: int, level: int, fmt: bytes, *words: int) -> None:
    try:
        if level >= TDB_DEBUG_TRACE or fmt is None:
            return
        private = lib.tdb_get_logging_private(tdb) if tdb else None
        sink = _SINKS.get(private or 0)
        if sink is not None:
            sink(level, format_log(fmt, words))
    except Exception:                                               # never into libtdb
        pass


_proto("tdb_get_logging_private", c_void_p, _CTX)


def logging_context(sink: Callable[[int, str], None] | None) -> tuple[TDB_LOGGING_CONTEXT | None, int]:
    """A logging context for ``tdb_open_ex`` that hands libtdb's messages (TRACE excluded) to
    ``sink(level, text)``, and its token (release it with :func:`drop_logging`)."""
    if sink is None:
        return None, 0
    token = next(_TOKENS)
    _SINKS[token] = sink
    return TDB_LOGGING_CONTEXT(_log_fn, token), token


def drop_logging(token: int) -> None:
    _SINKS.pop(token, None)


def log_function_address() -> int:
    """The address of the log function every context opened through :func:`logging_context`
    has (native code that swaps a context's logging for a while puts this one back)."""
    return ctypes.cast(_log_fn, c_void_p).value
