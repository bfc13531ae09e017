"""CTDB's event-daemon protocol (``ctdb/event/event_protocol.[ch]``, samba-4.17.12): pure
encode/decode, no I/O.

Everything is host byte order (little-endian on x86-64) without padding:

* header: ``u32 length`` (whole packet, header included), ``u32 version``, ``u32 reqid``.
  CTDB_EVENT_PROTOCOL_VERSION is 1, but neither 4.17's ``ctdb-event`` nor ``ctdb-eventd`` ever
  fills the field: both send 0 (verified by capturing the real binaries). We send 0 as well and
  accept any value.
* a *stringn* is ``u32 n`` followed by ``n`` bytes: the string and its NUL (n = strlen + 1), or
  n = 0 for a NULL string (e.g. RUN without arguments).
* a *timeval* is ``struct timeval``: ``i64 tv_sec, i64 tv_usec``.
* request: header, ``u32 cmd``, then for RUN (1) ``stringn component, stringn event,
  stringn args (space separated), u32 timeout (s), u32 flags (RUN_ALL=1)``; STATUS (2)
  ``stringn component, stringn event``; SCRIPT (3) ``stringn component, stringn script,
  u32 action (0 disable, 1 enable)``.
* reply: header (reqid echoed), ``u32 cmd``, ``i32 result`` (0 or a positive errno); only a
  STATUS reply with result 0 carries a body: ``i32 summary, i32 num_scripts`` and per script
  ``stringn name, timeval begin, timeval end, i32 result, stringn output``.

Result codes the daemon uses: RUN 0 / ENOEXEC (a script failed) / ETIMEDOUT / ECANCELED / ENOENT
(no such component); STATUS EINVAL (event never ran) / ENOENT; SCRIPT errno of the chmod.
Hostile bytes raise ``EventdProtocolError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Union

PROTOCOL_VERSION = 1              # CTDB_EVENT_PROTOCOL_VERSION (documentary, see above)
WIRE_VERSION = 0                  # what 4.17 actually puts in the header
HEADER_SIZE = 12
MAX_PACKET_SIZE = 1 << 20         # requests are tiny; anything bigger is hostile
CTDB_EVENT_RUN_ALL = 1

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_HEADER = struct.Struct("<III")
_TIMEVAL = struct.Struct("<qq")


class EventdProtocolError(ValueError):
    """Bytes that are not a valid event-daemon packet."""


class EventCommand(IntEnum):
    RUN = 1
    STATUS = 2
    SCRIPT = 3


class ScriptAction(IntEnum):
    DISABLE = 0
    ENABLE = 1


@dataclass(frozen=True)
class EventHeader:
    length: int
    version: int
    reqid: int


@dataclass(frozen=True)
class Timeval:
    sec: int
    usec: int

    @classmethod
    def from_float(cls, t: float) -> Timeval:
        sec = int(t // 1)
        usec = int(round((t - sec) * 1_000_000))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        return cls(sec, usec)

    def to_float(self) -> float:
        return self.sec + self.usec / 1_000_000


@dataclass(frozen=True)
class RunRequest:
    component: str | None
    event: str | None
    args: str | None          # space-separated, None when there are none
    timeout: int              # seconds; 0 times out at once (as in CTDB)
    flags: int = 0

    @property
    def run_all(self) -> bool:
        return bool(self.flags & CTDB_EVENT_RUN_ALL)


@dataclass(frozen=True)
class StatusRequest:
    component: str | None
    event: str | None


@dataclass(frozen=True)
class ScriptRequest:
    component: str | None
    script: str | None
    action: ScriptAction


RequestBody = Union[RunRequest, StatusRequest, ScriptRequest]
_COMMAND_OF = {RunRequest: EventCommand.RUN, StatusRequest: EventCommand.STATUS,
               ScriptRequest: EventCommand.SCRIPT}


@dataclass(frozen=True)
class EventRequest:
    reqid: int
    body: RequestBody
    version: int = WIRE_VERSION

    @property
    def cmd(self) -> EventCommand:
        return _COMMAND_OF[type(self.body)]


@dataclass(frozen=True)
class WireScript:
    name: str | None
    begin: Timeval
    end: Timeval
    result: int
    output: str | None


@dataclass(frozen=True)
class StatusReply:
    summary: int
    scripts: tuple[WireScript, ...]


@dataclass(frozen=True)
class EventReply:
    reqid: int
    cmd: EventCommand
    result: int
    status: StatusReply | None = None     # only for STATUS with result 0
    version: int = WIRE_VERSION


# -- primitives ------------------------------------------------------------------------------
def _push_stringn(out: bytearray, value: str | None) -> None:
    if value is None:
        out += _U32.pack(0)
        return
    raw = value.encode("utf-8", errors="surrogateescape")
    if b"\0" in raw:
        raise EventdProtocolError(f"string {value!r} contains a NUL byte")
    out += _U32.pack(len(raw) + 1)
    out += raw
    out += b"\0"


def _check_u32(what: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise EventdProtocolError(f"{what} {value} does not fit in a u32")
    return value


def _check_i32(what: str, value: int) -> int:
    if not -0x80000000 <= value <= 0x7FFFFFFF:
        raise EventdProtocolError(f"{what} {value} does not fit in an i32")
    return value


class _Reader:
    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.what = what

    def _take(self, n: int, field: str) -> memoryview:
        if len(self.buf) - self.pos < n:
            raise EventdProtocolError(
                f"{self.what}: truncated at {field} (offset {self.pos}, need {n} bytes, "
                f"have {len(self.buf) - self.pos})")
        chunk = self.buf[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u32(self, field: str) -> int:
        return _U32.unpack(self._take(4, field))[0]

    def i32(self, field: str) -> int:
        return _I32.unpack(self._take(4, field))[0]

    def timeval(self, field: str) -> Timeval:
        sec, usec = _TIMEVAL.unpack(self._take(_TIMEVAL.size, field))
        return Timeval(sec, usec)

    def stringn(self, field: str) -> str | None:
        n = self.u32(field + " length")
        if n == 0:
            return None
        raw = bytes(self._take(n, field))
        if raw[-1] != 0 or b"\0" in raw[:-1]:
            raise EventdProtocolError(
                f"{self.what}: {field} is not one NUL-terminated string of {n} bytes")
        return raw[:-1].decode("utf-8", errors="surrogateescape")

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise EventdProtocolError(
                f"{self.what}: {len(self.buf) - self.pos} unexpected trailing bytes")


def _header(reader: _Reader, total: int) -> EventHeader:
    length, version, reqid = (reader.u32("length"), reader.u32("version"), reader.u32("reqid"))
    if length != total:
        raise EventdProtocolError(
            f"{reader.what}: length field says {length} bytes but the packet has {total}")
    return EventHeader(length, version, reqid)


def _command(reader: _Reader) -> EventCommand:
    value = reader.u32("cmd")
    try:
        return EventCommand(value)
    except ValueError:
        raise EventdProtocolError(f"{reader.what}: unknown command {value}") from None


def _finish(out: bytearray) -> bytes:
    if len(out) > 0xFFFFFFFF:
        raise EventdProtocolError("packet too large")
    out[0:4] = _U32.pack(len(out))
    return bytes(out)


# -- requests --------------------------------------------------------------------------------
def encode_request(request: EventRequest) -> bytes:
    out = bytearray(_HEADER.pack(0, _check_u32("version", request.version),
                                 _check_u32("reqid", request.reqid)))
    out += _U32.pack(request.cmd)
    body = request.body
    if isinstance(body, RunRequest):
        _push_stringn(out, body.component)
        _push_stringn(out, body.event)
        _push_stringn(out, body.args)
        out += _U32.pack(_check_u32("timeout", body.timeout))
        out += _U32.pack(_check_u32("flags", body.flags))
    elif isinstance(body, StatusRequest):
        _push_stringn(out, body.component)
        _push_stringn(out, body.event)
    else:
        _push_stringn(out, body.component)
        _push_stringn(out, body.script)
        out += _U32.pack(ScriptAction(body.action))
    return _finish(out)


def decode_request(buf: bytes) -> EventRequest:
    reader = _Reader(buf, "event request")
    header = _header(reader, len(buf))
    cmd = _command(reader)
    body: RequestBody
    if cmd is EventCommand.RUN:
        body = RunRequest(reader.stringn("component"), reader.stringn("event"),
                          reader.stringn("args"), reader.u32("timeout"), reader.u32("flags"))
    elif cmd is EventCommand.STATUS:
        body = StatusRequest(reader.stringn("component"), reader.stringn("event"))
    else:
        component, script = reader.stringn("component"), reader.stringn("script")
        action = reader.u32("action")
        if action not in (0, 1):
            raise EventdProtocolError(f"event request: invalid script action {action}")
        body = ScriptRequest(component, script, ScriptAction(action))
    reader.end()
    return EventRequest(header.reqid, body, header.version)


# -- replies ---------------------------------------------------------------------------------
def encode_reply(reply: EventReply) -> bytes:
    out = bytearray(_HEADER.pack(0, _check_u32("version", reply.version),
                                 _check_u32("reqid", reply.reqid)))
    out += _U32.pack(EventCommand(reply.cmd))
    out += _I32.pack(_check_i32("result", reply.result))
    if reply.result == 0 and reply.cmd == EventCommand.STATUS:
        if reply.status is None:
            raise EventdProtocolError("a successful STATUS reply needs a status body")
        out += _I32.pack(_check_i32("summary", reply.status.summary))
        out += _I32.pack(len(reply.status.scripts))
        for script in reply.status.scripts:
            _push_stringn(out, script.name)
            out += _TIMEVAL.pack(script.begin.sec, script.begin.usec)
            out += _TIMEVAL.pack(script.end.sec, script.end.usec)
            out += _I32.pack(_check_i32("script result", script.result))
            _push_stringn(out, script.output)
    return _finish(out)


def decode_reply(buf: bytes) -> EventReply:
    reader = _Reader(buf, "event reply")
    header = _header(reader, len(buf))
    cmd = _command(reader)
    result = reader.i32("result")
    status = None
    if result == 0 and cmd is EventCommand.STATUS:
        summary = reader.i32("summary")
        count = reader.i32("num_scripts")
        if count < 0:
            raise EventdProtocolError(f"event reply: negative script count {count}")
        scripts = []
        for i in range(count):
            scripts.append(WireScript(reader.stringn(f"script {i} name"),
                                      reader.timeval(f"script {i} begin"),
                                      reader.timeval(f"script {i} end"),
                                      reader.i32(f"script {i} result"),
                                      reader.stringn(f"script {i} output")))
        status = StatusReply(summary, tuple(scripts))
    reader.end()
    return EventReply(header.reqid, cmd, result, status, header.version)


# -- stream framing --------------------------------------------------------------------------
class PacketFramer:
    """Splits a byte stream into packets by their leading u32 length."""

    def __init__(self, max_size: int = MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete packets. Raises ``EventdProtocolError`` on a length
        that cannot be right (the stream cannot be resynchronised after that)."""
        self._buf += data
        packets = []
        while len(self._buf) >= 4:
            length = _U32.unpack_from(self._buf, 0)[0]
            if length < HEADER_SIZE or length > self._max:
                raise EventdProtocolError(
                    f"event packet length {length} out of range {HEADER_SIZE}..{self._max}")
            if len(self._buf) < length:
                break
            packets.append(bytes(self._buf[:length]))
            del self._buf[:length]
        return packets

    @property
    def pending(self) -> int:
        return len(self._buf)
