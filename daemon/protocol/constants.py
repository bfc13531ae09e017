"""CTDB wire constants: magic, operations, control opcodes, SRVIDs, flags and enums.

Values are those of Samba 4.17.12 (`ctdb/protocol/protocol.h`, `source3/include/ctdb_srvids.h`,
`lib/tdb/include/tdb.h`); the few added by later releases are marked with the version that
introduced them. Names drop CTDB's prefixes (`CTDB_CONTROL_GET_PNN` is `Control.GET_PNN`).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

CTDB_MAGIC = 0x43544442  # "CTDB" read as a little-endian u32 is b"BDTC" on the wire
CTDB_PROTOCOL_VERSION = 1
HEADER_SIZE = 32
CTDB_PORT = 4379
#: Every daemon-sent packet is zero-padded to a multiple of this many bytes.
PACKET_ALIGNMENT = 8

# Special destination node numbers (header.destnode).
CURRENT_NODE = 0xF0000001  # "the daemon I am connected to" (local Unix socket)
BROADCAST_ALL = 0xF0000002  # every node in the nodes file, active or not
BROADCAST_ACTIVE = 0xF0000003  # every node in the current vnnmap
BROADCAST_CONNECTED = 0xF0000004  # every connected node
MULTICAST = 0xF0000005  # selected connected nodes
UNKNOWN_PNN = 0xFFFFFFFF
#: The vnnmap generation of a node that is INACTIVE; never used for a real recovery.
INVALID_GENERATION = 1
#: pyctdbd's PYCTDB_RECOVERY_HANDOFFS answer of a node whose last recovery did not finish (it
#: entered recovery mode on its own, e.g. cut off from the majority): never a generation, which
#: recoveries draw from 2..0xFFFFFFFE.
STALE_GENERATION = 0xFFFFFFFF
#: Pull from any lmaster (ctdb_pulldb.lmaster).
LMASTER_ANY = 0xFFFFFFFF

#: Key of the u64 sequence number in every persistent database.
DB_SEQNUM_KEY = b"__db_sequence_number__"

#: Width of ctdb_iface.name on Linux (IFNAMSIZ + 2), NUL included.
IFACE_NAME_SIZE = 18


def keepalive_version(major: int, minor: int) -> int:
    """The u32 a ctdbd of Samba `major.minor` puts in REQ_KEEPALIVE (`major << 16 | minor`)."""
    return (major << 16) | minor


#: What a Debian 12 (Samba 4.17) ctdbd sends in its keepalives: 0x00040011.
KEEPALIVE_VERSION_4_17 = keepalive_version(4, 17)


class Operation(IntEnum):
    """`enum ctdb_operation`: the header's `operation` field (6 was removed)."""

    REQ_CALL = 0
    REPLY_CALL = 1
    REQ_DMASTER = 2
    REPLY_DMASTER = 3
    REPLY_ERROR = 4
    REQ_MESSAGE = 5
    REQ_CONTROL = 7
    REPLY_CONTROL = 8
    REQ_KEEPALIVE = 9
    REQ_TUNNEL = 10  # Samba >= 4.8


class Control(IntEnum):
    """The live control opcodes (`enum ctdb_controls` minus the obsolete ones).

    All are in 4.17 except TCP_CLIENT_DISCONNECTED/TCP_CLIENT_PASSED (>= 4.20),
    START_IPREALLOCATE (>= 4.21) and PUSH_RECORD (master only).
    """

    PROCESS_EXISTS = 0
    STATISTICS = 1
    PING = 3
    GETDBPATH = 4
    GETVNNMAP = 5
    SETVNNMAP = 6
    GET_DEBUG = 7
    SET_DEBUG = 8
    GET_DBMAP = 9
    GET_RECMODE = 15
    SET_RECMODE = 16
    STATISTICS_RESET = 17
    DB_ATTACH = 18
    TRAVERSE_START = 20
    TRAVERSE_ALL = 21
    TRAVERSE_DATA = 22
    REGISTER_SRVID = 23
    DEREGISTER_SRVID = 24
    GET_DBNAME = 25
    ENABLE_SEQNUM = 26
    UPDATE_SEQNUM = 27
    DUMP_MEMORY = 29
    GET_PID = 30
    FREEZE = 33
    GET_PNN = 35
    SHUTDOWN = 36
    TCP_CLIENT = 44
    TCP_ADD = 45
    TCP_REMOVE = 46
    STARTUP = 47
    SET_TUNABLE = 48
    GET_TUNABLE = 49
    LIST_TUNABLES = 50
    MODIFY_FLAGS = 52
    GET_ALL_TUNABLES = 53
    GET_TCP_TICKLE_LIST = 55
    SET_TCP_TICKLE_LIST = 56
    DB_ATTACH_PERSISTENT = 61
    UPDATE_RECORD = 63
    SEND_GRATUITOUS_ARP = 64
    WIPE_DATABASE = 67
    UPTIME = 69
    START_RECOVERY = 70
    END_RECOVERY = 71
    RELOAD_NODES_FILE = 72
    TRY_DELETE_RECORDS = 74
    ADD_PUBLIC_IP = 77
    DEL_PUBLIC_IP = 78
    GET_CAPABILITIES = 80
    RECD_PING = 87
    RELEASE_IP = 88
    TAKEOVER_IP = 89
    GET_PUBLIC_IPS = 90
    GET_NODEMAP = 91
    TRAVERSE_KILL = 97
    RECD_RECLOCK_LATENCY = 98
    GET_RECLOCK_FILE = 99
    STOP_NODE = 101
    CONTINUE_NODE = 102
    SET_LMASTERROLE = 104
    SET_RECMASTERROLE = 105
    SET_BAN_STATE = 109
    GET_BAN_STATE = 110
    REGISTER_NOTIFY = 114
    DEREGISTER_NOTIFY = 115
    TRANS3_COMMIT = 119
    GET_DB_SEQNUM = 120
    DB_SET_HEALTHY = 121
    DB_GET_HEALTH = 122
    GET_PUBLIC_IP_INFO = 123
    GET_IFACES = 124
    SET_IFACE_LINK_STATE = 125
    TCP_ADD_DELAYED_UPDATE = 126
    GET_STAT_HISTORY = 127
    SCHEDULE_FOR_DELETION = 128
    SET_DB_READONLY = 129
    TRAVERSE_START_EXT = 131
    GET_DB_STATISTICS = 132
    SET_DB_STICKY = 133
    RELOAD_PUBLIC_IPS = 134
    TRAVERSE_ALL_EXT = 135
    IPREALLOCATED = 137
    GET_RUNSTATE = 138
    DB_DETACH = 139
    GET_NODES_FILE = 140
    DB_FREEZE = 141
    DB_THAW = 142
    DB_TRANSACTION_START = 143
    DB_TRANSACTION_COMMIT = 144
    DB_TRANSACTION_CANCEL = 145
    DB_PULL = 146
    DB_PUSH_START = 147
    DB_PUSH_CONFIRM = 148
    DB_OPEN_FLAGS = 149
    DB_ATTACH_REPLICATED = 150
    CHECK_PID_SRVID = 151
    TUNNEL_REGISTER = 152
    TUNNEL_DEREGISTER = 153
    VACUUM_FETCH = 154
    DB_VACUUM = 155
    ECHO_DATA = 156
    DISABLE_NODE = 157
    ENABLE_NODE = 158
    TCP_CLIENT_DISCONNECTED = 159  # >= 4.20
    TCP_CLIENT_PASSED = 160  # >= 4.20
    START_IPREALLOCATE = 161  # >= 4.21
    PUSH_RECORD = 162  # master only
    # pyctdbd's own, between pyctdbd nodes only (protocol/partial_recovery.py): the recovery
    # after a node loss that freezes nothing. A real ctdbd answers them as unknown controls.
    # (0x70790001-3 were the earlier recovery's scan, apply and fetch: not reused, so a node of
    # an older build answers the new ones as unknown and the leader falls back to CTDB's way.)
    PYCTDB_RECOVERY_DEFER = 0x70790004
    PYCTDB_GATHER_COPIES = 0x70790005
    PYCTDB_RECOVERY_HANDOFFS = 0x70790006
    PYCTDB_SWEEP_KEYS = 0x70790007      # a node's keys a sweeping lmaster must settle
    PYCTDB_LEADER = 0x70790008          # the leader the answering node follows


#: Opcodes CTDB still defines but marks obsolete; a daemon answers them with an error.
OBSOLETE_CONTROLS = frozenset(
    {2, 10, 11, 12, 13, 14, 19, 28, 31, 32, 34, 37, 38, 39, 40, 41, 42, 43, 51, 54, 57, 58, 59,
     60, 62, 65, 66, 68, 73, 75, 76, 79, 81, 82, 83, 84, 85, 86, 96, 100, 103, 107, 108, 111,
     112, 113, 116, 117, 118, 130, 136}
)


class ControlFlag(IntFlag):
    """`ctdb_req_control.flags`. The high 16 bits are opcode-specific."""

    NOREPLY = 0x00000001
    ONLY_AVAILABLE = 0x00010000  # GET_PUBLIC_IPS: only IPs this node can host now
    ATTACH_RECOVERY = 0x00020000  # DB_ATTACH*: attach requested by the recovery helper


CONTROL_FLAG_OPCODE_SPECIFIC = 0xFFFF0000


class Srvid:
    """Message service ids (u64) used by CTDB and Samba. A namespace, not an enum: several
    names share a value (SAMBA_NOTIFY is the SAMBA_RANGE base)."""

    ALL = 0xFFFFFFFFFFFFFFFF
    RECOVERY = 0xF001000000000000  # + n: DB push streams during recovery
    BANNING = 0xF002000000000000
    ELECTION = 0xF100000000000000
    LEADER = 0xF101000000000000
    RECONFIGURE = 0xF200000000000000
    RELEASE_IP = 0xF300000000000000
    TAKE_IP = 0xF301000000000000
    IPREALLOCATED = 0xF302000000000000  # >= 4.20
    START_IPREALLOCATE = 0xF303000000000000  # >= 4.21
    SET_NODE_FLAGS = 0xF400000000000000  # obsolete
    RECD_UPDATE_IP = 0xF500000000000000
    VACUUM_FETCH = 0xF700000000000000
    DETACH_DATABASE = 0xF701000000000000
    MEM_DUMP = 0xF800000000000000
    GETLOG = 0xF801000000000000
    CLEARLOG = 0xF802000000000000
    PUSH_NODE_FLAGS = 0xF900000000000000
    RELOAD_NODES = 0xFA00000000000000
    TAKEOVER_RUN = 0xFB00000000000000
    REBALANCE_NODE = 0xFB01000000000000
    DISABLE_TAKEOVER_RUNS = 0xFB03000000000000
    DISABLE_RECOVERIES = 0xFB04000000000000
    DISABLE_IP_CHECK = 0xFC00000000000000
    # Range bases (the top byte is reserved for one kind of user).
    PID_RANGE = 0x0000000000000000
    SAMBA_RANGE = 0xFE00000000000000
    NFSD_RANGE = 0xEE00000000000000
    ISCSID_RANGE = 0xDE00000000000000
    TOOL_RANGE = 0xCE00000000000000
    CLIENT_RANGE = 0xBE00000000000000
    TEST_RANGE = 0xAE00000000000000
    SERVER_RANGE = 0x9E00000000000000  # newer than 4.17
    # Samba's own (source3/include/ctdb_srvids.h).
    SAMBA_NOTIFY = 0xFE00000000000000
    SAMBA_NOTIFY_PROXY = 0xFE00000000000001
    SAMBA_PROCESS = 0xFE00000000000002
    # The 4.17 `ctdb` tool: TOOL | 0x0001<<48 | (pid & 0xFFFF) << 16.
    CTDB_TOOL = 0xCE01000000000000
    CTDB_PUSHDB = 0xCE02000000000000
    RANGE_MASK = 0xFF00000000000000

    @staticmethod
    def tool(pid: int) -> int:
        """The srvid the 4.17 `ctdb` CLI registers for replies to its own messages."""
        return Srvid.CTDB_TOOL | ((pid & 0xFFFF) << 16)

    @staticmethod
    def client(pid: int) -> int:
        """The srvid the client library uses for a traverse (`catdb`)."""
        return Srvid.CLIENT_RANGE | (pid & 0xFFFFFFFF)


class NodeFlag(IntFlag):
    """Node flags in the nodemap (`NODE_FLAGS_*`)."""

    DISCONNECTED = 0x01
    UNHEALTHY = 0x02
    PERMANENTLY_DISABLED = 0x04
    BANNED = 0x08
    DELETED = 0x10
    STOPPED = 0x20
    #: Invented by the `ctdb` tool while its own runstate is <= FIRST_RECOVERY; never on the wire.
    UNKNOWN = 0x40
    DISABLED = UNHEALTHY | PERMANENTLY_DISABLED  # 0x06: in the vnnmap, hosts no IPs
    INACTIVE = DELETED | DISCONNECTED | BANNED | STOPPED  # 0x39: out of the vnnmap


class Runstate(IntEnum):
    UNKNOWN = 0
    INIT = 1
    SETUP = 2
    FIRST_RECOVERY = 3
    STARTUP = 4
    RUNNING = 5
    SHUTDOWN = 6


class RecMode(IntEnum):
    NORMAL = 0
    ACTIVE = 1


# Node capabilities (GET_CAPABILITIES reply).
CAP_RECMASTER = 0x00000001  # may become leader ("recmaster" before 4.16's rename)
CAP_LMASTER = 0x00000002
CAP_LVS = 0x00000004  # obsolete
CAP_NATGW = 0x00000008  # obsolete
CAP_PARALLEL_RECOVERY = 0x00010000
CAP_FRAGMENTED_CONTROLS = 0x00020000
CAP_FEATURES = CAP_PARALLEL_RECOVERY | CAP_FRAGMENTED_CONTROLS
CAP_DEFAULT = CAP_RECMASTER | CAP_LMASTER | CAP_FEATURES  # 0x00030003


class Capability(IntFlag):
    RECMASTER = CAP_RECMASTER
    LMASTER = CAP_LMASTER
    LVS = CAP_LVS
    NATGW = CAP_NATGW
    PARALLEL_RECOVERY = CAP_PARALLEL_RECOVERY
    FRAGMENTED_CONTROLS = CAP_FRAGMENTED_CONTROLS


class CallFunc(IntEnum):
    """Built-in call ids for REQ_CALL.callid."""

    NULL_FUNC = 0xFF000001  # no-op: used to migrate a record
    FETCH_FUNC = 0xFF000002  # reply = value without the ltdb header
    FETCH_WITH_HEADER_FUNC = 0xFF000003  # reply = ltdb header + value


class CallFlag(IntFlag):
    IMMEDIATE_MIGRATION = 0x1
    VACUUM_MIGRATION = 0x2
    WANT_READONLY = 0x4


class RecordFlag(IntFlag):
    """`ctdb_ltdb_header.flags`."""

    DEFAULT = 0x00000000
    PERSISTENT = 0x00000001  # master only (per-record persistency)
    PERSISTENT_IN_PROGRESS = 0x00000002  # master only
    MIGRATED_WITH_DATA = 0x00010000
    VACUUM_MIGRATED = 0x00020000
    AUTOMATIC = 0x00040000
    RO_HAVE_DELEGATIONS = 0x01000000
    RO_HAVE_READONLY = 0x02000000
    RO_REVOKING_READONLY = 0x04000000
    RO_REVOKE_COMPLETE = 0x08000000
    RO_FLAGS = 0x0F000000


class DbFlag(IntFlag):
    """`ctdb_dbid.flags` in the GET_DBMAP reply."""

    PERSISTENT = 0x01
    READONLY = 0x02
    STICKY = 0x04
    REPLICATED = 0x08


class TdbFlag(IntFlag):
    """tdb_open() flags (tdb.h); DB_OPEN_FLAGS returns a combination of these."""

    DEFAULT = 0
    CLEAR_IF_FIRST = 1
    INTERNAL = 2
    NOLOCK = 4
    NOMMAP = 8
    CONVERT = 16
    BIGENDIAN = 32
    NOSYNC = 64
    SEQNUM = 128
    VOLATILE = 256
    ALLOW_NESTING = 512
    DISALLOW_NESTING = 1024
    INCOMPATIBLE_HASH = 2048
    MUTEX_LOCKING = 4096


class TunnelFlag(IntFlag):
    REQUEST = 0x01
    REPLY = 0x02
    NOREPLY = 0x10


class Event(IntEnum):
    """`enum ctdb_event` (event-script events, in order)."""

    INIT = 0
    SETUP = 1
    STARTUP = 2
    START_RECOVERY = 3  # script name "startrecovery"
    RECOVERED = 4
    TAKE_IP = 5  # "takeip"
    RELEASE_IP = 6  # "releaseip"
    STOPPED = 7  # deprecated
    MONITOR = 8
    STATUS = 9  # deprecated
    SHUTDOWN = 10
    RELOAD = 11  # deprecated
    UPDATE_IP = 12  # "updateip"
    IPREALLOCATED = 13
    START_IPREALLOCATE = 14  # >= 4.21 ("startipreallocate"); 4.17's CTDB_EVENT_MAX is 14


class DebugLevel(IntEnum):
    """GET_DEBUG / SET_DEBUG values (Samba's DBGLVL_*; names as `ctdb setdebug` takes them)."""

    ERROR = 0
    WARNING = 1
    NOTICE = 3
    INFO = 5
    DEBUG = 10
