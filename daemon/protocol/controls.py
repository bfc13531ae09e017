"""Typed payload codecs for every control opcode.

``CONTROLS[opcode]`` says what the request and the reply carry (`None` = empty payload) and,
for the "simple" controls, what the reply's i32 `status` means. The codecs follow Samba 4.17's
protocol library (`ctdb/protocol/protocol_control.c`), which is what the `ctdb` CLI and the
helpers build and parse; smbd's hand-built payloads have the same layouts.

Controls that answer in `status` with an empty `data` (STATUS_CONTROLS):
GET_PNN (pnn), GET_PID (pid), PING (number of connected clients), GET_RECMODE (RecMode),
PROCESS_EXISTS and CHECK_PID_SRVID (0 = the process exists, else -1). Every other control uses
status 0 for success and non-zero (usually -1) for failure with an optional error text.

Values by codec kind:
- a WireType class (NodeMap, PublicIp, ...): an instance of it;
- "u32"/"i32"/"u64"/"pid": int; "double": float;
- "string": str | None (NUL-terminated, length from the payload; None = empty payload);
- "stringn": str | None (u32 length + NUL-terminated string);
- "raw": bytes (statistics blobs are passed through undecoded);
- "db_id+pad": int (GET_DB_SEQNUM's request is a u32 db_id followed by 4 pad bytes).

Decoding ignores bytes after the structure (as Samba's library does) and raises ProtocolError
for anything short or malformed. Opcodes without a codec raise ProtocolError("no codec ...").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from ._wire import DOUBLE, I32, U32, U64, Buffer, as_bytes, need
from .constants import Control
from .errors import ProtocolError
from .partial_recovery import RecBufferList, RecoveryDefer, RecoveryScan, ScanResult, SweepKeys
from .types import (
    AddrInfo, BanState, Connection, DbMap, DbVacuum, EchoData, Iface, IfaceList, KeyData,
    NodeFlagChange, NodeMap, NotifyData, PidSrvid, PublicIp, PublicIpInfo, PublicIpList, PullDbExt,
    RecBuffer, RecData, SockAddr, TickleList, TransDb, TraverseAll, TraverseAllExt, TraverseStart,
    TraverseStartExt, Tunable, TunableList, Uptime, VarList, VnnMap, WireType, pack_string,
    pack_stringn, unpack_string, unpack_stringn,
)


@dataclass(frozen=True, slots=True)
class Codec:
    """A named pair of functions: value -> bytes and bytes -> value."""

    name: str
    pack: Callable[[Any], bytes]
    unpack: Callable[[Buffer], Any]


def _scalar(name: str, st: struct.Struct) -> Codec:
    def pack(value: Any) -> bytes:
        try:
            return st.pack(value)
        except struct.error as exc:
            raise ProtocolError(f"{name}: cannot encode {value!r}: {exc}") from None

    def unpack(data: Buffer) -> Any:
        need(data, 0, st.size, name)
        return st.unpack_from(data, 0)[0]

    return Codec(name, pack, unpack)


def wire_codec(cls: type[WireType]) -> Codec:
    def pack(value: Any) -> bytes:
        if not isinstance(value, cls):
            raise ProtocolError(f"{cls.__name__}: expected a {cls.__name__}, got {type(value).__name__}")
        return value.pack()

    return Codec(cls.__name__, pack, cls.unpack)


def _pack_db_id_pad(value: Any) -> bytes:
    try:
        return struct.pack("<I4x", value)
    except struct.error as exc:
        raise ProtocolError(f"db_id+pad: cannot encode {value!r}: {exc}") from None


def _unpack_db_id_pad(data: Buffer) -> int:
    need(data, 0, 8, "db_id+pad")
    return U32.unpack_from(data, 0)[0]


U32_CODEC = _scalar("u32", U32)
I32_CODEC = _scalar("i32", I32)
U64_CODEC = _scalar("u64", U64)
PID_CODEC = _scalar("pid", I32)
DOUBLE_CODEC = _scalar("double", DOUBLE)
STRING_CODEC = Codec("string", lambda v: pack_string(v), unpack_string)
STRINGN_CODEC = Codec("stringn", lambda v: pack_stringn(v), lambda d: unpack_stringn(d, 0)[0])
RAW_CODEC = Codec("raw", lambda v: as_bytes(v, "raw"), bytes)
DB_ID_PAD_CODEC = Codec("db_id+pad", _pack_db_id_pad, _unpack_db_id_pad)


@dataclass(frozen=True, slots=True)
class ControlSpec:
    opcode: Control
    request: Codec | None
    reply: Codec | None
    #: What `status` carries when it is a value rather than just success/failure.
    status: str | None = None
    note: str = ""


def _spec(opcode: Control, request: Codec | type[WireType] | None, reply: Codec | type[WireType] | None,
          status: str | None = None, note: str = "") -> ControlSpec:
    def codec(c: Codec | type[WireType] | None) -> Codec | None:
        if c is None or isinstance(c, Codec):
            return c
        return wire_codec(c)

    return ControlSpec(opcode, codec(request), codec(reply), status, note)


C = Control
_SPECS = [
    # Process and node identity
    _spec(C.PROCESS_EXISTS, PID_CODEC, None, "0 if the pid exists, else -1"),
    _spec(C.CHECK_PID_SRVID, PidSrvid, None, "0 if pid exists and registered srvid, else -1",
          "smbd: pid + unique_id, packed 12 bytes"),
    _spec(C.GET_PNN, None, None, "pnn of the answering node"),
    _spec(C.GET_PID, None, None, "pid of ctdbd"),
    _spec(C.PING, None, None, "number of connected clients"),
    _spec(C.GET_RECMODE, None, None, "RecMode (0 NORMAL, 1 ACTIVE)"),
    _spec(C.SET_RECMODE, U32_CODEC, None),
    _spec(C.GET_RUNSTATE, None, U32_CODEC, note="Runstate"),
    _spec(C.GET_CAPABILITIES, None, U32_CODEC, note="CAP_* bits"),
    _spec(C.UPTIME, None, Uptime),
    _spec(C.SHUTDOWN, None, None),
    _spec(C.STARTUP, None, None, note="broadcast when a node reaches RUNNING"),
    _spec(C.RECD_PING, None, None),
    _spec(C.RECD_RECLOCK_LATENCY, DOUBLE_CODEC, None),
    _spec(C.GET_DEBUG, None, U32_CODEC, note="DebugLevel"),
    _spec(C.SET_DEBUG, U32_CODEC, None, note="DebugLevel"),
    _spec(C.GET_RECLOCK_FILE, None, STRING_CODEC, note="None when no cluster lock is set"),
    _spec(C.DUMP_MEMORY, None, STRING_CODEC),
    _spec(C.STATISTICS, None, RAW_CODEC, note="ctdb_statistics passed through as bytes"),
    _spec(C.STATISTICS_RESET, None, None),
    _spec(C.GET_STAT_HISTORY, None, RAW_CODEC, note="ctdb_statistics_list passed through as bytes"),
    # Node map, vnnmap, flags
    _spec(C.GET_NODEMAP, None, NodeMap),
    _spec(C.GET_NODES_FILE, None, NodeMap),
    _spec(C.RELOAD_NODES_FILE, None, None),
    _spec(C.GETVNNMAP, None, VnnMap),
    _spec(C.SETVNNMAP, VnnMap, None),
    _spec(C.MODIFY_FLAGS, NodeFlagChange, None, note="receiver adopts new_flags (not for itself)"),
    _spec(C.STOP_NODE, None, None),
    _spec(C.CONTINUE_NODE, None, None),
    _spec(C.DISABLE_NODE, None, None),
    _spec(C.ENABLE_NODE, None, None),
    _spec(C.SET_BAN_STATE, BanState, None),
    _spec(C.GET_BAN_STATE, None, BanState),
    _spec(C.SET_LMASTERROLE, U32_CODEC, None),
    _spec(C.SET_RECMASTERROLE, U32_CODEC, None),
    # Tunables
    _spec(C.GET_ALL_TUNABLES, None, TunableList),
    _spec(C.GET_TUNABLE, STRINGN_CODEC, U32_CODEC),
    _spec(C.SET_TUNABLE, Tunable, None),
    _spec(C.LIST_TUNABLES, None, VarList, note="names in TUNABLE_LISTVARS_ORDER"),
    # Recovery
    _spec(C.START_RECOVERY, None, None),
    _spec(C.END_RECOVERY, None, None),
    _spec(C.FREEZE, None, None),
    _spec(C.DB_FREEZE, U32_CODEC, None, note="db_id"),
    _spec(C.DB_THAW, U32_CODEC, None, note="db_id"),
    _spec(C.DB_TRANSACTION_START, TransDb, None),
    _spec(C.DB_TRANSACTION_COMMIT, TransDb, None),
    _spec(C.DB_TRANSACTION_CANCEL, U32_CODEC, None, note="db_id"),
    _spec(C.WIPE_DATABASE, TransDb, None),
    _spec(C.DB_PULL, PullDbExt, U32_CODEC, note="reply = number of records streamed to srvid"),
    _spec(C.DB_PUSH_START, PullDbExt, None),
    _spec(C.DB_PUSH_CONFIRM, U32_CODEC, U32_CODEC, note="db_id -> number of records"),
    _spec(C.DB_SET_HEALTHY, U32_CODEC, None, note="db_id"),
    _spec(C.DB_GET_HEALTH, U32_CODEC, STRING_CODEC, note="db_id -> reason, None if healthy"),
    _spec(C.PYCTDB_RECOVERY_HANDOFFS, RecoveryScan, ScanResult, note="pyctdbd only"),
    _spec(C.PYCTDB_RECOVERY_DEFER, RecoveryDefer, None, note="pyctdbd only"),
    _spec(C.PYCTDB_GATHER_COPIES, RecBufferList, RecBufferList, note="pyctdbd only"),
    _spec(C.PYCTDB_SWEEP_KEYS, SweepKeys, RecBufferList, note="pyctdbd only"),
    _spec(C.PYCTDB_LEADER, None, U32_CODEC, note="pyctdbd only: the leader followed (UNKNOWN_PNN: none)"),
    # Databases
    _spec(C.DB_ATTACH, STRING_CODEC, U32_CODEC, note="name -> db_id; flags may carry ATTACH_RECOVERY"),
    _spec(C.DB_ATTACH_PERSISTENT, STRING_CODEC, U32_CODEC, note="name -> db_id"),
    _spec(C.DB_ATTACH_REPLICATED, STRING_CODEC, U32_CODEC, note="name -> db_id"),
    _spec(C.DB_DETACH, U32_CODEC, None, note="db_id"),
    _spec(C.GETDBPATH, U32_CODEC, STRING_CODEC, note="db_id -> path"),
    _spec(C.GET_DBNAME, U32_CODEC, STRING_CODEC, note="db_id -> name"),
    _spec(C.GET_DBMAP, None, DbMap),
    _spec(C.DB_OPEN_FLAGS, U32_CODEC, I32_CODEC, note="db_id -> tdb_open flags (TdbFlag)"),
    _spec(C.ENABLE_SEQNUM, U32_CODEC, None, note="db_id"),
    _spec(C.UPDATE_SEQNUM, U32_CODEC, None, note="db_id"),
    _spec(C.GET_DB_SEQNUM, DB_ID_PAD_CODEC, U64_CODEC, note="request is u32 db_id + 4 pad bytes"),
    _spec(C.SET_DB_READONLY, U32_CODEC, None, note="db_id"),
    _spec(C.SET_DB_STICKY, U32_CODEC, None, note="db_id"),
    _spec(C.GET_DB_STATISTICS, U32_CODEC, RAW_CODEC, note="db_id -> ctdb_db_statistics as bytes"),
    _spec(C.SCHEDULE_FOR_DELETION, KeyData, None, note="sent NOREPLY by smbd"),
    _spec(C.TRANS3_COMMIT, RecBuffer, None, note="smbd puts db_id in the header srvid too"),
    _spec(C.UPDATE_RECORD, RecBuffer, None),
    _spec(C.TRY_DELETE_RECORDS, RecBuffer, RecBuffer, note="reply = records that could not be deleted"),
    _spec(C.VACUUM_FETCH, RecBuffer, None),
    _spec(C.DB_VACUUM, DbVacuum, None),
    # Traverse
    _spec(C.TRAVERSE_START, TraverseStart, None),
    _spec(C.TRAVERSE_START_EXT, TraverseStartExt, None),
    _spec(C.TRAVERSE_ALL, TraverseAll, None),
    _spec(C.TRAVERSE_ALL_EXT, TraverseAllExt, None),
    _spec(C.TRAVERSE_DATA, RecData, None),
    _spec(C.TRAVERSE_KILL, TraverseStart, None),
    # Messaging
    _spec(C.REGISTER_SRVID, None, None, note="srvid in the control header"),
    _spec(C.DEREGISTER_SRVID, None, None, note="srvid in the control header"),
    _spec(C.REGISTER_NOTIFY, NotifyData, None),
    _spec(C.DEREGISTER_NOTIFY, U64_CODEC, None, note="srvid"),
    _spec(C.TUNNEL_REGISTER, None, None, note="tunnel id in the control header srvid"),
    _spec(C.TUNNEL_DEREGISTER, None, None, note="tunnel id in the control header srvid"),
    _spec(C.ECHO_DATA, EchoData, EchoData),
    # Public IPs and interfaces
    _spec(C.GET_PUBLIC_IPS, None, PublicIpList, note="flags may carry ONLY_AVAILABLE"),
    _spec(C.GET_PUBLIC_IP_INFO, SockAddr, PublicIpInfo),
    _spec(C.RELEASE_IP, PublicIp, None, note="pnn = new owner"),
    _spec(C.TAKEOVER_IP, PublicIp, None, note="pnn = new owner"),
    _spec(C.IPREALLOCATED, None, None),
    _spec(C.START_IPREALLOCATE, None, None, note=">= 4.21"),
    _spec(C.RELOAD_PUBLIC_IPS, None, None),
    _spec(C.ADD_PUBLIC_IP, AddrInfo, None),
    _spec(C.DEL_PUBLIC_IP, AddrInfo, None),
    _spec(C.SEND_GRATUITOUS_ARP, AddrInfo, None),
    _spec(C.GET_IFACES, None, IfaceList),
    _spec(C.SET_IFACE_LINK_STATE, Iface, None, note="link_state 0 = down, 1 = up"),
    # TCP connection tracking
    _spec(C.TCP_CLIENT, Connection, None, note="smbd sends it NOREPLY; src = client"),
    _spec(C.TCP_ADD, Connection, None),
    _spec(C.TCP_REMOVE, Connection, None),
    _spec(C.TCP_ADD_DELAYED_UPDATE, Connection, None),
    _spec(C.TCP_CLIENT_DISCONNECTED, Connection, None, note=">= 4.20"),
    _spec(C.TCP_CLIENT_PASSED, Connection, None, note=">= 4.20"),
    _spec(C.GET_TCP_TICKLE_LIST, SockAddr, TickleList),
    _spec(C.SET_TCP_TICKLE_LIST, TickleList, None),
]
del C

#: opcode -> spec. Every live opcode except PUSH_RECORD (master-only, layout not pinned down).
CONTROLS: dict[int, ControlSpec] = {s.opcode: s for s in _SPECS}

#: Controls whose reply value is carried in `status` (data empty).
STATUS_CONTROLS: frozenset[Control] = frozenset(s.opcode for s in _SPECS if s.status is not None)


def spec_for(opcode: int) -> ControlSpec:
    try:
        return CONTROLS[opcode]
    except KeyError:
        try:
            name = Control(opcode).name
        except ValueError:
            name = "unknown or obsolete"
        raise ProtocolError(f"no codec for control {opcode} ({name})") from None


def _pack(codec: Codec | None, opcode: int, value: Any, what: str) -> bytes:
    if codec is None:
        if value is not None:
            raise ProtocolError(f"control {_name(opcode)} carries no {what} data, got {value!r}")
        return b""
    return codec.pack(value)


def _unpack(codec: Codec | None, opcode: int, data: Buffer, what: str) -> Any:
    if codec is None:
        return None  # extra bytes are ignored, as Samba's library does
    try:
        return codec.unpack(data)
    except ProtocolError as exc:
        raise ProtocolError(f"control {_name(opcode)} {what}: {exc}") from None


def _name(opcode: int) -> str:
    try:
        return f"{Control(opcode).name} ({opcode})"
    except ValueError:
        return str(opcode)


def pack_request(opcode: int, value: Any = None) -> bytes:
    return _pack(spec_for(opcode).request, opcode, value, "request")


def unpack_request(opcode: int, data: Buffer) -> Any:
    return _unpack(spec_for(opcode).request, opcode, data, "request")


def pack_reply(opcode: int, value: Any = None) -> bytes:
    return _pack(spec_for(opcode).reply, opcode, value, "reply")


def unpack_reply(opcode: int, data: Buffer) -> Any:
    return _unpack(spec_for(opcode).reply, opcode, data, "reply")
