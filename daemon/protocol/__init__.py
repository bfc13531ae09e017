"""CTDB's wire format (Samba 4.17): constants, header, packets, embedded types, control and
message payload codecs, and sans-I/O stream framing. Pure functions, no I/O; every decode
failure raises :class:`ProtocolError`."""

from __future__ import annotations

from .constants import (
    BROADCAST_ACTIVE, BROADCAST_ALL, BROADCAST_CONNECTED, CAP_DEFAULT, CAP_FEATURES,
    CAP_FRAGMENTED_CONTROLS, CAP_LMASTER, CAP_LVS, CAP_NATGW, CAP_PARALLEL_RECOVERY, CAP_RECMASTER,
    CONTROL_FLAG_OPCODE_SPECIFIC, CTDB_MAGIC, CTDB_PORT, CTDB_PROTOCOL_VERSION, CURRENT_NODE,
    DB_SEQNUM_KEY, HEADER_SIZE, IFACE_NAME_SIZE, INVALID_GENERATION, KEEPALIVE_VERSION_4_17, STALE_GENERATION,
    LMASTER_ANY, MULTICAST, OBSOLETE_CONTROLS, PACKET_ALIGNMENT, UNKNOWN_PNN, CallFlag, CallFunc,
    Capability, Control, ControlFlag, DbFlag, DebugLevel, Event, NodeFlag, Operation, RecMode,
    RecordFlag, Runstate, Srvid, TdbFlag, TunnelFlag, keepalive_version,
)
from .controls import (
    CONTROLS, STATUS_CONTROLS, Codec, ControlSpec, pack_reply, pack_request, spec_for,
    unpack_reply, unpack_request,
)
from .errors import ProtocolError
from .header import Header
from .messages import MESSAGES, pack_i32_reply, pack_message, unpack_i32_reply, unpack_message
from .packets import (
    DEFAULT_MAX_PACKET_SIZE, Body, Packet, PacketReader, ReplyCall, ReplyControl, ReplyDmaster,
    ReplyError, ReqCall, ReqControl, ReqDmaster, ReqKeepalive, ReqMessage, ReqTunnel, decode_packet,
    encode_packet,
)
from .types import (
    AF_INET, AF_INET6, AF_UNSPEC, TUNABLE_LISTVARS_ORDER, TUNABLE_NAMES, AddrInfo, BanState,
    Connection, DbId, DbMap, DbVacuum, DisableMessage, EchoData, ElectionMessage, Iface, IfaceList,
    KeyData, LtdbHeader, NodeAndFlags, NodeFlagChange, NodeMap, NotifyData, PidSrvid, PublicIp,
    PublicIpInfo, PublicIpList, PullDbExt, RawBytes, RecBuffer, RecData, SockAddr, SrvidMessage,
    TickleList, Timeval, TransDb, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
    Tunable, TunableList, Uptime, VarList, VnnMap, WireType, iter_records, pack_datan, pack_string,
    pack_stringn, tunable_index, unpack_datan, unpack_string, unpack_stringn,
)

__all__ = [
    "AF_INET", "AF_INET6", "AF_UNSPEC", "AddrInfo", "BROADCAST_ACTIVE", "BROADCAST_ALL",
    "BROADCAST_CONNECTED", "BanState", "Body", "CAP_DEFAULT", "CAP_FEATURES",
    "CAP_FRAGMENTED_CONTROLS", "CAP_LMASTER", "CAP_LVS", "CAP_NATGW", "CAP_PARALLEL_RECOVERY",
    "CAP_RECMASTER", "CONTROLS", "CONTROL_FLAG_OPCODE_SPECIFIC", "CTDB_MAGIC", "CTDB_PORT",
    "CTDB_PROTOCOL_VERSION", "CURRENT_NODE", "CallFlag", "CallFunc", "Capability", "Codec",
    "Connection", "Control", "ControlFlag", "ControlSpec", "DB_SEQNUM_KEY",
    "DEFAULT_MAX_PACKET_SIZE", "DbFlag", "DbId", "DbMap", "DbVacuum", "DebugLevel",
    "DisableMessage", "EchoData", "ElectionMessage", "Event", "HEADER_SIZE", "Header",
    "IFACE_NAME_SIZE", "INVALID_GENERATION", "STALE_GENERATION", "Iface", "IfaceList", "KEEPALIVE_VERSION_4_17",
    "KeyData", "LMASTER_ANY", "LtdbHeader", "MESSAGES", "MULTICAST", "NodeAndFlags", "NodeFlag",
    "NodeFlagChange", "NodeMap", "NotifyData", "OBSOLETE_CONTROLS", "Operation",
    "PACKET_ALIGNMENT", "Packet", "PacketReader", "PidSrvid", "ProtocolError", "PublicIp",
    "PublicIpInfo", "PublicIpList", "PullDbExt", "RawBytes", "RecBuffer", "RecData", "RecMode",
    "RecordFlag", "ReplyCall", "ReplyControl", "ReplyDmaster", "ReplyError", "ReqCall",
    "ReqControl", "ReqDmaster", "ReqKeepalive", "ReqMessage", "ReqTunnel", "Runstate",
    "STATUS_CONTROLS", "SockAddr", "Srvid", "SrvidMessage", "TUNABLE_LISTVARS_ORDER",
    "TUNABLE_NAMES", "TdbFlag", "TickleList", "Timeval", "TransDb", "TraverseAll",
    "TraverseAllExt", "TraverseStart", "TraverseStartExt", "Tunable", "TunableList", "TunnelFlag",
    "UNKNOWN_PNN", "Uptime", "VarList", "VnnMap", "WireType", "decode_packet", "encode_packet",
    "iter_records", "keepalive_version", "pack_datan", "pack_i32_reply", "pack_message",
    "pack_reply", "pack_request", "pack_string", "pack_stringn", "spec_for", "tunable_index",
    "unpack_datan", "unpack_i32_reply", "unpack_message", "unpack_reply", "unpack_request",
    "unpack_string", "unpack_stringn",
]

# Records of CTDB's local TDB files and the Jenkins hash (db ids, lmaster).
from .ltdb import (  # noqa: E402
    LTDB_HEADER_SIZE, RECORD_FLAGS_4_17, db_id_of, is_empty_record, is_record, jenkins_hash,
    pack_record, unpack_header, unpack_record,
)

__all__ += [
    "LTDB_HEADER_SIZE", "RECORD_FLAGS_4_17", "db_id_of", "is_empty_record", "is_record",
    "jenkins_hash", "pack_record", "unpack_header", "unpack_record",
]
from .ltdb import DB_SEQNUM_TDB_KEY, pack_seqnum, unpack_seqnum  # noqa: E402

__all__ += ["DB_SEQNUM_TDB_KEY", "pack_seqnum", "unpack_seqnum"]
from .partial_recovery import (  # noqa: E402
    RecBufferList, RecoveryDefer, RecoveryScan, ScanResult, SweepKeys, iter_scan_result,
    pack_scan_result,
)

__all__ += ["RecBufferList", "RecoveryDefer", "RecoveryScan", "ScanResult", "SweepKeys",
            "iter_scan_result",
            "pack_scan_result"]
