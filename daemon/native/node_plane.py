"""The native node plane (node_plane.c), loaded with ctypes: a thread that moves the node
connections' bytes and frames them without the Python loop, waking the loop once per burst.

The native path for hot record packets (docs/native-hot-path.md). Unless its environment says
otherwise (net/plane_links.py native_path_wanted) the daemon hands it the node connections
(net/plane_links.py) and lets it answer the lmaster's grant itself (server/native_grants.py).
Tested on its own (tests/unit/test_native_node_plane.py, tests/unit/test_native_grants.py),
including against PacketReader's framing rules and the migration core's decisions.

Use from one thread (the event loop's): ``NodePlane(max_packet)``; ``add(sock, RECEIVE|SEND|CLIENT)``
takes over a connected socket (the plane closes it); ``send(id, frame)``; ``close(id)``;
``wake_fd`` becomes readable when events wait, and ``events()`` takes them all:
``(FRAME, id, frame)``, ``(CLOSED, id, reason)``, ``(CLOSED_BAD, id, reason)`` (the peer
sent malformed data, or data on a send-only connection) and ``(CLOSED_STALLED, id, reason)`` (a
client evicted by ``set_max_partial``'s bound). After a close event, or
``close(id)``, the id has no more events.

Grants: ``enable_grants(tdb_functions(libtdb), max_key)`` (the calling thread holds the plane's
rest from then on); around every sleep of the loop ``rest_release()`` / ``rest_take()``;
``publish(blob)`` what grants must respect (see ``np_grant_publish`` in the source);
``grants()`` takes what the thread granted.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import NamedTuple

from . import HERE, NativeBuildError, build, library_path, load_library, main_thread_scheduling

SOURCE = HERE / "node_plane.c"
ABI = 7                       # NP_ABI in the source
#: event kinds (CLOSED_BAD: for what the peer sent; CLOSED_STALLED: a client's incomplete packet
#: made no progress while clients held more than the plane's max_partial)
FRAME, CLOSED, CLOSED_BAD, CLOSED_STALLED = 1, 2, 3, 4
#: what a connection is for (CLIENT: a local client, framed as net/local.py frames, read and written)
RECEIVE, SEND, CLIENT = 1, 2, 3

_EVENT_HEAD = struct.Struct("=IiI")
_INITIAL_TAKE = 1 << 20
_GRANT_HEAD = struct.Struct("<6IQII")        # GRANT_ENTRY_HEAD in the source: before the key
#: np_rest_take's answer: grants wait to be taken; smbd's calls the thread took wait to be taken.
GRANTS_WAITING, CALLS_WAITING = 1, 2
#: Grant entries' `what` bits.
GRANTED, SCHEDULED, REPLY_LOST = 1, 2, 4


class TdbFunctions(ctypes.Structure):
    """libtdb's functions the grant calls (struct np_tdb_fns)."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("fetch", "store", "chainlock_nonblock", "chainunlock", "hash", "error",
                 "set_logging", "logging_private", "loop_log_fn", "delete")]


def tdb_functions(libtdb: ctypes.CDLL, log_function: int) -> TdbFunctions:
    """The functions of the libtdb the daemon loaded (its store's), for the grant, and the log
    function its files were opened with (put back after each grant)."""
    names = ("tdb_fetch", "tdb_store", "tdb_chainlock_nonblock", "tdb_chainunlock",
             "tdb_jenkins_hash", "tdb_error", "tdb_set_logging_function", "tdb_get_logging_private")
    return TdbFunctions(*[ctypes.cast(getattr(libtdb, n), ctypes.c_void_p) for n in names], log_function,
                        ctypes.cast(libtdb.tdb_delete, ctypes.c_void_p))


#: np_vacuum_triage's verdicts, in the order of the source's enum
VT_SKIP, VT_DELETED, VT_DELETE_LIST, VT_TO_LMASTER, VT_BUSY, VT_LOOP = range(6)
_TRIAGE_HEAD = struct.Struct("<QII")             # rsn, flags, keylen (then the key, padded to 8)


def vacuum_triage(lib: ctypes.CDLL, functions: TdbFunctions, context: int, pnn: int,
                  lmasters: tuple[int, ...], entries: list[tuple[bytes, int, int]]) -> tuple[bytes, int]:
    """np_vacuum_triage over `entries` (key, queued rsn, queued flags) of the database whose
    libtdb context is `context`: one VT_* verdict per entry, and how many chain locks it took.
    The caller holds the database's turn and, with grants on, the plane's rest (the loop)."""
    parts = []
    for key, rsn, flags in entries:
        parts.append(_TRIAGE_HEAD.pack(rsn, flags, len(key)))
        parts.append(key)
        parts.append(bytes(-len(key) % 8))
    blob = b"".join(parts)
    out = (ctypes.c_uint8 * max(1, len(entries)))()
    masters = (ctypes.c_uint32 * max(1, len(lmasters)))(*lmasters)
    locked = lib.np_vacuum_triage(ctypes.byref(functions), context, pnn, masters, len(lmasters),
                                  blob, len(blob), len(entries), out)
    if locked < 0:
        raise ValueError("np_vacuum_triage refused its input")
    return bytes(out)[:len(entries)], locked


#: Call log entries' kinds (CL_* in the source).
CALL_ANSWERED_HERE, CALL_FLIGHT, CALL_LANDED, CALL_STORE_FAILED, CALL_SCHEDULED = 1, 2, 3, 4, 5
_CALL_HEAD = struct.Struct("<12IQQII")          # CALL_ENTRY_HEAD in the source, before the stores
_CALL_STORE = struct.Struct("<IIQII")           # effect, flags, rsn, dmaster, reserved1
_CALL_ENTRY_HEAD = _CALL_HEAD.size + 2 * _CALL_STORE.size


class CallEntry(NamedTuple):
    """One entry of the call log: what the thread did for a client's call (step 3b)."""

    kind: int                   # CALL_ANSWERED_HERE, CALL_FLIGHT, CALL_LANDED, CALL_STORE_FAILED,
    #                             CALL_SCHEDULED (smbd's SCHEDULE_FOR_DELETION: stores[0] its header)
    db_id: int
    key: bytes
    conn: int                   # the client's plane connection
    client_reqid: int
    client_src: int             # the srcnode of the client's REQ_CALL (the reply's destnode)
    callid: int
    flags: int                  # the call's flags (WANT_READONLY off), for a flight
    reqid: int                  # the REQ_CALL sent on (FLIGHT, LANDED)
    generation: int
    peer: int                   # FLIGHT: where it went; LANDED: who sent the REPLY_DMASTER
    calldata: bytes
    at: float                   # monotonic seconds: sent (FLIGHT), answered, landed
    started: float              # LANDED: when the client asked
    reply_lost: bool            # the frame could not be queued
    stores: tuple[tuple[int, tuple[int, int, int, int]], ...]   # (STORE_*, (rsn, dmaster, reserved1, flags))


def parse_call_log(raw: bytes) -> list[CallEntry]:
    out: list[CallEntry] = []
    pos = 0
    while pos < len(raw):
        (kind, db_id, keylen, conn, client_reqid, client_src, callid, flags, reqid, generation, peer,
         calldatalen, at_ns, started_ns, nstores, lost) = _CALL_HEAD.unpack_from(raw, pos)
        stores = []
        for i in range(min(nstores, 2)):
            effect, rflags, rsn, dmaster, reserved1 = _CALL_STORE.unpack_from(raw, pos + _CALL_HEAD.size
                                                                              + i * _CALL_STORE.size)
            stores.append((effect, (rsn, dmaster, reserved1, rflags)))
        start = pos + _CALL_ENTRY_HEAD
        key = raw[start:start + keylen]
        calldata = raw[start + keylen:start + keylen + calldatalen]
        out.append(CallEntry(kind, db_id, key, ctypes.c_int32(conn).value, client_reqid, client_src, callid,
                             flags, reqid, generation, peer, calldata, at_ns / 1e9, started_ns / 1e9,
                             bool(lost), tuple(stores)))
        pos += (_CALL_ENTRY_HEAD + keylen + calldatalen + 7) & ~7
    return out


class Grant(NamedTuple):
    """One entry of the grant log: what the thread did for a peer's REQ_CALL."""

    db_id: int
    srcnode: int
    hopcount: int
    what: int                   # GRANTED | SCHEDULED | REPLY_LOST
    stores: int
    key: bytes
    scheduled: tuple[int, int, int]      # (rsn, dmaster, flags) of the record queued for deletion


def _parse_events(raw: bytes) -> list[tuple[int, int, bytes | str]]:
    out = []
    pos = 0
    while pos < len(raw):
        kind, conn, length = _EVENT_HEAD.unpack_from(raw, pos)
        body = raw[pos + 12:pos + 12 + length]
        out.append((kind, conn, body if kind == FRAME else body.decode("utf-8", "replace")))
        pos += (12 + length + 7) & ~7
    return out


def _parse_grant_log(raw: bytes) -> list[Grant]:
    out = []
    pos = 0
    while pos < len(raw):
        db_id, src, hop, what, stores, keylen, rsn, dmaster, flags = _GRANT_HEAD.unpack_from(raw, pos)
        start = pos + _GRANT_HEAD.size
        out.append(Grant(db_id, src, hop, what, stores, raw[start:start + keylen], (rsn, dmaster, flags)))
        pos += (_GRANT_HEAD.size + keylen + 7) & ~7
    return out


_SIGNATURES: dict[str, tuple[list, object]] = {
    "np_abi": ([], ctypes.c_int),
    "np_create": ([ctypes.c_int, ctypes.c_uint32], ctypes.c_void_p),
    "np_start": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "np_add": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int32),
    "np_send": ([ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int64),
    "np_close": ([ctypes.c_void_p, ctypes.c_int32], None),
    "np_set_max_partial": ([ctypes.c_void_p, ctypes.c_uint64], None),
    "np_client_partial": ([ctypes.c_void_p], ctypes.c_uint64),
    "np_take": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64], ctypes.c_int64),
    "np_counters": ([ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_uint64)], ctypes.c_int),
    "np_wakes": ([ctypes.c_void_p], ctypes.c_uint64),
    "np_destroy": ([ctypes.c_void_p], None),
    "np_grant_setup": ([ctypes.c_void_p, ctypes.POINTER(TdbFunctions), ctypes.c_uint32], ctypes.c_int),
    "np_rest_release": ([ctypes.c_void_p], None),
    "np_rest_take": ([ctypes.c_void_p], ctypes.c_int),
    "np_grant_publish": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64], ctypes.c_int),
    "np_grant_take": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64], ctypes.c_int64),
    "np_grant_counters": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)], None),
    "np_grant_wanted_flag": ([ctypes.c_void_p], ctypes.c_void_p),
    "np_grant_asked_flag": ([ctypes.c_void_p], ctypes.c_void_p),
    "np_grant_record": ([ctypes.POINTER(TdbFunctions), ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p,
                         ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint64,
                         ctypes.POINTER(ctypes.c_uint64)], ctypes.c_int64),
    "np_calls_setup": ([ctypes.c_void_p], ctypes.c_int),
    "np_calls_publish": ([ctypes.c_void_p, ctypes.c_uint32], None),
    "np_calls_disable": ([ctypes.c_void_p], None),
    "np_calls_next_reqid": ([ctypes.c_void_p], ctypes.c_uint32),
    "np_calls_take": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64], ctypes.c_int64),
    "np_calls_counters": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64)], None),
    "np_call_decide": ([ctypes.POINTER(TdbFunctions), ctypes.c_void_p, ctypes.c_uint32,
                        ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p, ctypes.c_uint64,
                        ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64)], ctypes.c_int64),
    "np_vacuum_triage": ([ctypes.POINTER(TdbFunctions), ctypes.c_void_p, ctypes.c_uint32,
                          ctypes.POINTER(ctypes.c_uint32), ctypes.c_uint32, ctypes.c_char_p, ctypes.c_uint64,
                          ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint8)], ctypes.c_int64),
}

_loaded: ctypes.CDLL | None = None


def library(build_if_missing: bool = False) -> ctypes.CDLL:
    """The built library with its signatures declared; OSError (or NativeBuildError) if it is
    missing or unusable."""
    global _loaded
    if _loaded is not None:
        return _loaded
    path = library_path(SOURCE)
    if not path.exists():
        if not build_if_missing:
            raise OSError(f"{path.name} is not built (python3 -m pyctdbd.native builds it)")
        build(source=SOURCE)
    try:
        lib = load_library(path, _SIGNATURES, "np_abi", ABI)
    except OSError as exc:
        raise OSError(f"{path} cannot be loaded: {exc}") from None
    _loaded = lib
    return lib


class NodePlane:
    def __init__(self, max_packet: int, *, lib: ctypes.CDLL | None = None) -> None:
        self._lib = lib or library()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._plane = self._lib.np_create(self.wake_fd, max_packet)
        if not self._plane:
            os.close(self.wake_fd)
            raise OSError(f"np_create({max_packet}) failed")
        rc = self._lib.np_start(self._plane, *main_thread_scheduling())
        if rc != 0:
            self._lib.np_destroy(self._plane)
            os.close(self.wake_fd)
            raise OSError(-rc, f"the node plane's thread did not start: {os.strerror(-rc)}")
        self._buf = ctypes.create_string_buffer(_INITIAL_TAKE)

    def add(self, sock: socket.socket, kind: int) -> int:
        """Take over ``sock`` (connected; detached here, closed by the plane); its id."""
        sock.setblocking(False)
        fd = sock.detach()
        conn = self._lib.np_add(self._plane, fd, kind)
        if conn < 0:
            os.close(fd)
            raise OSError(-conn, f"the node plane cannot take the connection: {os.strerror(-conn)}")
        return conn

    def send(self, conn: int, frame: bytes) -> int | None:
        """Write or queue ``frame``; the bytes still queued on the connection, None if it is
        gone (its CLOSED event says why, unless the loop closed it)."""
        left = self._lib.np_send(self._plane, conn, frame, len(frame))
        return None if left < 0 else left

    def close(self, conn: int) -> None:
        self._lib.np_close(self._plane, conn)

    def set_max_partial(self, limit: int) -> None:
        """Bound the bytes of incomplete packets all CLIENT connections hold together."""
        self._lib.np_set_max_partial(self._plane, limit)

    @property
    def client_partial(self) -> int:
        """Bytes of incomplete packets the CLIENT connections hold now."""
        return self._lib.np_client_partial(self._plane)

    def events(self) -> list[tuple[int, int, bytes]]:
        """Every event waiting, in order (the wake descriptor is cleared first, so an event
        queued meanwhile wakes the loop again)."""
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        return self._take_all(self._lib.np_take, _parse_events)

    def _take_all(self, take, parse) -> list:
        """Everything one of the plane's queues holds (its events, the grant log, the call
        log), taken in whole entries by ``take`` and decoded by ``parse``; the buffer grows
        when one entry does not fit."""
        out: list = []
        while True:
            got = take(self._plane, self._buf, len(self._buf))
            if got < 0:                                   # one entry larger than the buffer
                self._buf = ctypes.create_string_buffer(-got)
                continue
            if got == 0:
                return out
            out += parse(ctypes.string_at(self._buf, got))  # the taken bytes only, not the buffer

    def counters(self, conn: int) -> tuple[int, int, int, int, int] | None:
        """(frames in, frames out, bytes in, bytes out, bytes queued) or None if gone."""
        out = (ctypes.c_uint64 * 5)()
        if self._lib.np_counters(self._plane, conn, out) != 0:
            return None
        return tuple(out)  # type: ignore[return-value]

    @property
    def wakes(self) -> int:
        """How often the plane has woken the loop."""
        return self._lib.np_wakes(self._plane)

    # -- the lmaster's grant ---------------------------------------------------------------------
    def enable_grants(self, functions: TdbFunctions, max_key: int) -> None:
        """Let the thread grant; the calling thread (the loop's) holds the rest from now on."""
        self._tdb_functions = functions          # kept alive: the thread calls through it
        rc = self._lib.np_grant_setup(self._plane, ctypes.byref(functions), max_key)
        if rc != 0:
            raise OSError(-rc, f"np_grant_setup failed: {os.strerror(-rc)}")
        self._wanted = ctypes.c_int.from_address(self._lib.np_grant_wanted_flag(self._plane))
        self._asked = ctypes.c_int.from_address(self._lib.np_grant_asked_flag(self._plane))

    def rest_release(self) -> None:
        self._lib.np_rest_release(self._plane)

    def rest_take(self) -> int:
        """GRANTS_WAITING when the thread granted while the loop slept, else 0."""
        return self._lib.np_rest_take(self._plane)

    def publish(self, blob: bytes | None) -> None:
        """What grants must respect now (None: the same as last time)."""
        rc = self._lib.np_grant_publish(self._plane, blob, 0 if blob is None else len(blob))
        if rc != 0:
            raise ValueError("np_grant_publish refused the state (malformed, or none yet)")

    def grants(self) -> list[Grant]:
        """The thread's grants since the last call, in order."""
        return self._take_all(self._lib.np_grant_take, _parse_grant_log)

    # -- smbd's calls (step 3b) --------------------------------------------------------------------
    def enable_calls(self) -> None:
        """Let the thread take clients' calls while the loop sleeps (after enable_grants)."""
        rc = self._lib.np_calls_setup(self._plane)
        if rc != 0:
            raise OSError(-rc, f"np_calls_setup failed: {os.strerror(-rc)}")

    def disable_calls(self) -> None:
        self._lib.np_calls_disable(self._plane)

    def publish_calls(self, next_reqid: int) -> None:
        """With ``publish``, for the same loop run: the core's next reqid."""
        self._lib.np_calls_publish(self._plane, next_reqid)

    @property
    def next_reqid(self) -> int:
        """The reqid the core goes on from after the thread's calls."""
        return self._lib.np_calls_next_reqid(self._plane)

    def calls(self) -> list[CallEntry]:
        """The thread's call log since the last call, in order."""
        return self._take_all(self._lib.np_calls_take, parse_call_log)

    def call_counters(self) -> dict[str, int]:
        out = (ctypes.c_uint64 * 4)()
        self._lib.np_calls_counters(self._plane, out)
        return dict(zip(("answered", "sent", "landed", "left"), out))

    @property
    def grants_wanted(self) -> bool:
        """Whether peers have asked this node as their lmaster (per the published lmasters); read
        from the plane's memory without a call."""
        return self._wanted.value != 0

    def take_fresh_state_request(self) -> bool:
        """Whether the thread asked for a fresh state since the last call (cleared here)."""
        if self._asked.value == 0:
            return False
        self._asked.value = 0
        return True

    def grant_counters(self) -> dict[str, int]:
        out = (ctypes.c_uint64 * 5)()
        self._lib.np_grant_counters(self._plane, out)
        return dict(zip(("granted", "stale", "busy", "order", "other"), out))

    def destroy(self) -> None:
        """Stop the thread; close every connection it holds and the wake descriptor."""
        if self._plane:
            self._lib.np_destroy(self._plane)
            self._plane = None
            os.close(self.wake_fd)


def grant_record(functions: TdbFunctions, context: int, pnn: int, frame: bytes,
                 lib: ctypes.CDLL | None = None) -> tuple[bytes | None, tuple[int, ...]]:
    """The thread's grant decision on one TDB context (for tests): (the REPLY_DMASTER, or None
    when the loop must handle the packet; (stores, scheduled, rsn, dmaster, reserved1, flags))."""
    lib = lib or library()
    out = ctypes.create_string_buffer(len(frame) + (4 << 20))
    info = (ctypes.c_uint64 * 6)()
    n = lib.np_grant_record(ctypes.byref(functions), context, pnn, frame, len(frame), out, len(out), info)
    if n == -2:
        raise ValueError("reply larger than the test's buffer")
    return (ctypes.string_at(out, n) if n > 0 else None), tuple(info)


#: np_call_decide's answers for a client's REQ_CALL
CALL_LEFT, CALL_ANSWERED, CALL_SENT = 0, 1, 2
#: a store's effect on the vacuum's queue, in the call log and np_call_decide's info
STORE_SCHEDULE, STORE_UNSCHEDULE = 1, 2


class CallDecision(NamedTuple):
    """What the native path did with a client's call or a landing (np_call_decide)."""

    result: int                 # CALL_* for a call; 1 landed, 0 left, -1 left after a store
    frame: bytes                # the REPLY_CALL for the client, or the REQ_CALL sent on
    dest: int                   # where that REQ_CALL goes
    stores: tuple[tuple[int, tuple[int, int, int, int]], ...]   # (STORE_*, header) in order


def call_decide(functions: TdbFunctions, context: int, pnn: int, lmasters: tuple[int, ...], frame: bytes,
                *, reqid: int = 0, generation: int = 0, landing_for: tuple[int, int, int] | None = None,
                lib: ctypes.CDLL | None = None) -> CallDecision:
    """For tests: the native decision on one TDB context — a client's REQ_CALL ``frame`` (sent
    on with ``reqid`` and ``generation`` when the record is elsewhere), or with ``landing_for``
    = (callid, client reqid, client srcnode) the landing of the REPLY_DMASTER ``frame``."""
    lib = lib or library()
    masters = (ctypes.c_uint32 * max(1, len(lmasters)))(*lmasters)
    arg = (ctypes.c_uint32 * 3)(*(landing_for or (reqid, generation, 0)))
    out = ctypes.create_string_buffer(len(frame) + (4 << 20))
    out_len = ctypes.c_uint64()
    info = (ctypes.c_uint64 * 12)()
    result = lib.np_call_decide(ctypes.byref(functions), context, pnn, masters, len(lmasters),
                                0 if landing_for is None else 1, frame, len(frame), arg, out, len(out),
                                ctypes.byref(out_len), info)
    if result < -1:
        raise ValueError(f"np_call_decide refused its input ({result})")
    stores = tuple((info[2 + 5 * i], tuple(info[3 + 5 * i:7 + 5 * i])) for i in range(info[0]))
    return CallDecision(result, ctypes.string_at(out, out_len.value), info[1], stores)  # type: ignore[arg-type]


__all__ = ["NodePlane", "library", "NativeBuildError", "FRAME", "CLOSED", "CLOSED_BAD", "CLOSED_STALLED",
           "RECEIVE", "SEND", "CLIENT",
           "Grant", "TdbFunctions", "tdb_functions", "grant_record", "GRANTS_WAITING",
           "GRANTED", "SCHEDULED", "REPLY_LOST", "CallDecision", "call_decide", "CALL_LEFT",
           "CALL_ANSWERED", "CALL_SENT", "STORE_SCHEDULE", "STORE_UNSCHEDULE", "CALLS_WAITING",
           "CallEntry", "CALL_ANSWERED_HERE", "CALL_FLIGHT", "CALL_LANDED", "CALL_STORE_FAILED",
           "CALL_SCHEDULED"]
