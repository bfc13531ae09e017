"""CTDB's embedded wire types (reference §2.4) as dataclasses.

Every type has ``pack() -> bytes``, ``unpack(buf) -> instance`` (reads from offset 0, ignores
trailing bytes, as Samba's protocol library does) and ``unpack_from(buf, offset) -> (instance,
end_offset)`` for parsing inside larger structures. Decoding raises only :class:`ProtocolError`.
Encoding raises ProtocolError for values that do not fit (negative u32, over-long names, ...).

Layouts are little-endian x86-64 C layouts with CTDB's explicit padding; the sizes in the
docstrings are wire sizes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ClassVar, Iterable, Sequence, TypeVar

from ._wire import (
    U16, U16BE, U32, U32BE, Buffer, as_bytes, decode_text, encode_text, need, pack_or_raise,
    read_bool, read_u32,
)
from .constants import IFACE_NAME_SIZE
from .errors import ProtocolError

T = TypeVar("T", bound="WireType")

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 10  # Linux value
SOCK_ADDR_SIZE = 28  # sizeof(ctdb_sock_addr): the sockaddr_in6 arm of the union

_U32x2 = struct.Struct("<II")
_U64 = struct.Struct("<Q")


class WireType:
    """Base of every embedded type."""

    __slots__ = ()
    #: Wire size when fixed, else None.
    SIZE: ClassVar[int | None] = None

    def pack(self) -> bytes:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def unpack_from(cls: type[T], buf: Buffer, offset: int = 0) -> tuple[T, int]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def unpack(cls: type[T], buf: Buffer) -> T:
        """Decode from the start of `buf`; bytes after the structure are ignored."""
        return cls.unpack_from(buf, 0)[0]


class _Fixed(WireType):
    """A fixed-size struct whose fields map one-to-one, in order, onto `_ST`."""

    __slots__ = ()
    _ST: ClassVar[struct.Struct]
    _WHAT: ClassVar[str]

    def pack(self) -> bytes:
        return pack_or_raise(self._ST, self._WHAT, *[getattr(self, name) for name in self.__match_args__])

    @classmethod
    def unpack_from(cls: type[T], buf: Buffer, offset: int = 0) -> tuple[T, int]:
        st = cls._ST  # type: ignore[attr-defined]
        need(buf, offset, st.size, cls._WHAT)  # type: ignore[attr-defined]
        return cls(*st.unpack_from(buf, offset)), offset + st.size


# ---------------------------------------------------------------------------------------------
# Strings and length-prefixed blobs


def pack_string(text: str | None, what: str = "string") -> bytes:
    """A NUL-terminated string whose length is given by the surrounding structure.
    None packs to nothing (Samba's NULL string)."""
    if text is None:
        return b""
    return encode_text(text, what) + b"\0"


def unpack_string(buf: Buffer) -> str | None:
    """The whole of `buf` as a C string: empty means None, text stops at the first NUL."""
    if len(buf) == 0:
        return None
    return decode_text(buf)


def pack_stringn(text: str | None, what: str = "stringn") -> bytes:
    """"stringn": u32 length (NUL included) then the NUL-terminated bytes; None is length 0."""
    raw = pack_string(text, what)
    return U32.pack(len(raw)) + raw


def unpack_stringn(buf: Buffer, offset: int = 0, what: str = "stringn") -> tuple[str | None, int]:
    length = read_u32(buf, offset, f"{what} length")
    need(buf, offset + 4, length, f"{what} ({length} bytes)")
    end = offset + 4 + length
    return unpack_string(buf[offset + 4:end]), end


def pack_datan(data: bytes, what: str = "blob") -> bytes:
    """TDB_DATA with a u32 length prefix."""
    data = as_bytes(data, what)
    return U32.pack(len(data)) + data


def unpack_datan(buf: Buffer, offset: int = 0, what: str = "blob") -> tuple[bytes, int]:
    length = read_u32(buf, offset, f"{what} length")
    need(buf, offset + 4, length, f"{what} ({length} bytes)")
    end = offset + 4 + length
    return bytes(buf[offset + 4:end]), end


def _unpack_counted(
    buf: Buffer, offset: int, item: type[T], what: str
) -> tuple[list[T], int]:
    """u32 count followed by `count` fixed-size items; the count is checked against the
    remaining bytes before anything is allocated."""
    count = read_u32(buf, offset, f"{what} count")
    offset += 4
    size = item.SIZE
    assert size is not None
    if count * size > len(buf) - offset:
        raise ProtocolError(
            f"{what}: count {count} needs {count * size} bytes at offset {offset}, "
            f"only {max(len(buf) - offset, 0)} left"
        )
    items = []
    for _ in range(count):
        value, offset = item.unpack_from(buf, offset)
        items.append(value)
    return items, offset


def _pack_counted(items: Sequence[WireType]) -> bytes:
    return U32.pack(len(items)) + b"".join(i.pack() for i in items)


# ---------------------------------------------------------------------------------------------
# Addresses


def _to_ip(value: Any) -> IPv4Address | IPv6Address | None:
    if value is None or isinstance(value, (IPv4Address, IPv6Address)):
        return value
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError as exc:
            raise ProtocolError(f"sock_addr: {exc}") from None
    raise ProtocolError(f"sock_addr: expected an IP address, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class SockAddr(WireType):
    """`ctdb_sock_addr`: a raw sockaddr_in / sockaddr_in6 in a 28-byte union.

    Family is a little-endian u16; port (and IPv6 flowinfo) are big-endian. Only the bytes that
    belong to the family are read: smbd 4.17 leaves garbage after a sockaddr_in, so equality
    must ignore the tail. `ip=None` is AF_UNSPEC (all zeros). Equality ignores flowinfo.
    A v4-mapped IPv6 address (::ffff:a.b.c.d) is *not* equal to the IPv4 one; use
    :meth:`canonical` (what ctdbd does to TCP_CLIENT addresses) before comparing.
    """

    ip: IPv4Address | IPv6Address | None = None
    port: int = 0
    flowinfo: int = field(default=0, compare=False)
    scope_id: int = 0
    SIZE: ClassVar[int] = SOCK_ADDR_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.ip, (IPv4Address, IPv6Address)) and self.ip is not None:
            object.__setattr__(self, "ip", _to_ip(self.ip))

    @property
    def family(self) -> int:
        if self.ip is None:
            return AF_UNSPEC
        return AF_INET if self.ip.version == 4 else AF_INET6

    def canonical(self) -> SockAddr:
        """The IPv4 address for a v4-mapped IPv6 one (port kept); otherwise self."""
        if isinstance(self.ip, IPv6Address) and self.ip.ipv4_mapped is not None:
            return SockAddr(self.ip.ipv4_mapped, self.port)
        return self

    def same_ip(self, other: SockAddr) -> bool:
        """Same address after v4-mapped canonicalisation, ports ignored."""
        return self.canonical().ip == other.canonical().ip

    def __str__(self) -> str:
        if self.ip is None:
            return ""
        return str(self.ip)

    def pack(self) -> bytes:
        ip = self.ip
        try:
            if ip is None:
                return bytes(SOCK_ADDR_SIZE)
            if ip.version == 4:
                return U16.pack(AF_INET) + U16BE.pack(self.port) + ip.packed + bytes(20)
            return (U16.pack(AF_INET6) + U16BE.pack(self.port) + U32BE.pack(self.flowinfo)
                    + ip.packed + U32.pack(self.scope_id))
        except struct.error as exc:
            raise ProtocolError(f"sock_addr: cannot encode {self!r}: {exc}") from None

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[SockAddr, int]:
        need(buf, offset, SOCK_ADDR_SIZE, "sock_addr")
        family = U16.unpack_from(buf, offset)[0]
        end = offset + SOCK_ADDR_SIZE
        if family == AF_INET:
            port = U16BE.unpack_from(buf, offset + 2)[0]
            return cls(IPv4Address(bytes(buf[offset + 4:offset + 8])), port), end
        if family == AF_INET6:
            port = U16BE.unpack_from(buf, offset + 2)[0]
            flowinfo = U32BE.unpack_from(buf, offset + 4)[0]
            scope_id = U32.unpack_from(buf, offset + 24)[0]
            return cls(IPv6Address(bytes(buf[offset + 8:offset + 24])), port, flowinfo, scope_id), end
        if family == AF_UNSPEC:
            return cls(), end
        raise ProtocolError(f"sock_addr: unknown address family {family} at offset {offset}")


@dataclass(frozen=True, slots=True)
class Connection(WireType):
    """`ctdb_connection` (56 B): `src` is the *client* end, `dst` the *server* (public IP) end,
    as smbd sends it in TCP_CLIENT. (protocol.h's union aliases name them the other way round.)"""

    src: SockAddr
    dst: SockAddr
    SIZE: ClassVar[int] = 2 * SOCK_ADDR_SIZE

    def pack(self) -> bytes:
        return self.src.pack() + self.dst.pack()

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[Connection, int]:
        need(buf, offset, cls.SIZE, "connection")
        src, offset = SockAddr.unpack_from(buf, offset)
        dst, offset = SockAddr.unpack_from(buf, offset)
        return cls(src, dst), offset

    def canonical(self) -> Connection:
        return Connection(self.src.canonical(), self.dst.canonical())


# ---------------------------------------------------------------------------------------------
# Nodes, public IPs, interfaces


@dataclass(slots=True)
class NodeAndFlags(WireType):
    """`ctdb_node_and_flags` (36 B): u32 pnn, u32 flags, sock_addr."""

    pnn: int
    flags: int
    addr: SockAddr
    SIZE: ClassVar[int] = 8 + SOCK_ADDR_SIZE

    def pack(self) -> bytes:
        return pack_or_raise(_U32x2, "node_and_flags", self.pnn, self.flags) + self.addr.pack()

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[NodeAndFlags, int]:
        need(buf, offset, cls.SIZE, "node_and_flags")
        pnn, flags = _U32x2.unpack_from(buf, offset)
        addr, end = SockAddr.unpack_from(buf, offset + 8)
        return cls(pnn, flags, addr), end


@dataclass(slots=True)
class NodeMap(WireType):
    """`ctdb_node_map`: u32 num + num × node_and_flags (GET_NODEMAP, GET_NODES_FILE)."""

    nodes: list[NodeAndFlags] = field(default_factory=list)

    def pack(self) -> bytes:
        return _pack_counted(self.nodes)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[NodeMap, int]:
        nodes, offset = _unpack_counted(buf, offset, NodeAndFlags, "node_map")
        return cls(nodes), offset


@dataclass(slots=True)
class PublicIp(WireType):
    """`ctdb_public_ip` (32 B): u32 pnn (current or new owner), sock_addr."""

    pnn: int
    addr: SockAddr
    SIZE: ClassVar[int] = 4 + SOCK_ADDR_SIZE

    def pack(self) -> bytes:
        return pack_or_raise(U32, "public_ip", self.pnn) + self.addr.pack()

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[PublicIp, int]:
        need(buf, offset, cls.SIZE, "public_ip")
        pnn = U32.unpack_from(buf, offset)[0]
        addr, end = SockAddr.unpack_from(buf, offset + 4)
        return cls(pnn, addr), end


@dataclass(slots=True)
class PublicIpList(WireType):
    """`ctdb_public_ip_list`: u32 num + num × public_ip (GET_PUBLIC_IPS)."""

    ips: list[PublicIp] = field(default_factory=list)

    def pack(self) -> bytes:
        return _pack_counted(self.ips)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[PublicIpList, int]:
        ips, offset = _unpack_counted(buf, offset, PublicIp, "public_ip_list")
        return cls(ips), offset


_IFACE = struct.Struct(f"<{IFACE_NAME_SIZE}sHI")


@dataclass(slots=True)
class Iface(WireType):
    """`ctdb_iface` (24 B): char name[18] (NUL-terminated), u16 link_state (1 = up),
    u32 references (public IPs on it)."""

    name: str
    link_state: int = 1
    references: int = 0
    SIZE: ClassVar[int] = _IFACE.size

    def pack(self) -> bytes:
        raw = encode_text(self.name, "iface name")
        if len(raw) >= IFACE_NAME_SIZE:
            raise ProtocolError(f"iface name {self.name!r} is longer than {IFACE_NAME_SIZE - 1} bytes")
        return pack_or_raise(_IFACE, "iface", raw, self.link_state, self.references)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[Iface, int]:
        need(buf, offset, cls.SIZE, "iface")
        raw, link_state, references = _IFACE.unpack_from(buf, offset)
        # ctdb_chararray_pull forces the last byte to NUL; decode_text stops at the first.
        return cls(decode_text(raw[:IFACE_NAME_SIZE - 1]), link_state, references), offset + cls.SIZE


@dataclass(slots=True)
class IfaceList(WireType):
    """`ctdb_iface_list`: u32 num + num × iface (GET_IFACES)."""

    ifaces: list[Iface] = field(default_factory=list)

    def pack(self) -> bytes:
        return _pack_counted(self.ifaces)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[IfaceList, int]:
        ifaces, offset = _unpack_counted(buf, offset, Iface, "iface_list")
        return cls(ifaces), offset


@dataclass(slots=True)
class PublicIpInfo(WireType):
    """`ctdb_public_ip_info` (GET_PUBLIC_IP_INFO reply): public_ip (32 B), u32 active_idx
    (index into `ifaces` of the interface holding the IP), then an iface_list (u32 num +
    num × 24 B). Total 40 + 24n."""

    ip: PublicIp
    active_idx: int
    ifaces: list[Iface] = field(default_factory=list)

    def pack(self) -> bytes:
        return self.ip.pack() + pack_or_raise(U32, "public_ip_info", self.active_idx) + _pack_counted(self.ifaces)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[PublicIpInfo, int]:
        ip, offset = PublicIp.unpack_from(buf, offset)
        active_idx = read_u32(buf, offset, "public_ip_info active_idx")
        ifaces, offset = _unpack_counted(buf, offset + 4, Iface, "public_ip_info ifaces")
        return cls(ip, active_idx, ifaces), offset


@dataclass(slots=True)
class AddrInfo(WireType):
    """`ctdb_addr_info` (ADD/DEL_PUBLIC_IP, SEND_GRATUITOUS_ARP): sock_addr, u32 mask bits,
    stringn iface."""

    addr: SockAddr
    mask: int
    iface: str | None

    def pack(self) -> bytes:
        return self.addr.pack() + pack_or_raise(U32, "addr_info mask", self.mask) + pack_stringn(self.iface, "addr_info iface")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[AddrInfo, int]:
        addr, offset = SockAddr.unpack_from(buf, offset)
        mask = read_u32(buf, offset, "addr_info mask")
        iface, offset = unpack_stringn(buf, offset + 4, "addr_info iface")
        return cls(addr, mask, iface), offset


@dataclass(slots=True)
class TickleList(WireType):
    """`ctdb_tickle_list` (GET/SET_TCP_TICKLE_LIST): sock_addr (the public IP), u32 num,
    num × connection."""

    addr: SockAddr
    connections: list[Connection] = field(default_factory=list)

    def pack(self) -> bytes:
        return self.addr.pack() + _pack_counted(self.connections)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[TickleList, int]:
        addr, offset = SockAddr.unpack_from(buf, offset)
        conns, offset = _unpack_counted(buf, offset, Connection, "tickle_list")
        return cls(addr, conns), offset


# ---------------------------------------------------------------------------------------------
# Small fixed structs


@dataclass(slots=True)
class BanState(_Fixed):
    """`ctdb_ban_state` (8 B): u32 pnn, u32 time (seconds; 0 = unban)."""

    pnn: int
    time: int
    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("<II")
    _WHAT: ClassVar[str] = "ban_state"


@dataclass(slots=True)
class NodeFlagChange(_Fixed):
    """`ctdb_node_flag_change` (12 B): MODIFY_FLAGS and SRVID_PUSH_NODE_FLAGS.
    A 4.17 ctdbd receiving MODIFY_FLAGS sets the node's flags to `new_flags` (keeping its own view
    of DISCONNECTED, and ignoring changes about itself); `old_flags` is informational."""

    pnn: int
    new_flags: int
    old_flags: int
    SIZE: ClassVar[int] = 12
    _ST: ClassVar[struct.Struct] = struct.Struct("<III")
    _WHAT: ClassVar[str] = "node_flag_change"


@dataclass(slots=True)
class TransDb(_Fixed):
    """`ctdb_transdb` (8 B): u32 db_id, u32 tid (WIPE_DATABASE, DB_TRANSACTION_START/COMMIT)."""

    db_id: int
    tid: int
    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("<II")
    _WHAT: ClassVar[str] = "transdb"


@dataclass(slots=True)
class PidSrvid(_Fixed):
    """`ctdb_pid_srvid` (CHECK_PID_SRVID): pid_t pid, u64 srvid — packed, 12 bytes, no padding."""

    pid: int
    srvid: int
    SIZE: ClassVar[int] = 12
    _ST: ClassVar[struct.Struct] = struct.Struct("<iQ")
    _WHAT: ClassVar[str] = "pid_srvid"


@dataclass(slots=True)
class DbId(_Fixed):
    """`ctdb_dbid` (8 B): u32 db_id, u8 flags (DbFlag), 3 pad."""

    db_id: int
    flags: int = 0
    SIZE: ClassVar[int] = 8
    _ST: ClassVar[struct.Struct] = struct.Struct("<IB3x")
    _WHAT: ClassVar[str] = "dbid"


@dataclass(slots=True)
class DbMap(WireType):
    """`ctdb_dbid_map`: u32 num + num × dbid (GET_DBMAP)."""

    dbs: list[DbId] = field(default_factory=list)

    def pack(self) -> bytes:
        return _pack_counted(self.dbs)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[DbMap, int]:
        dbs, offset = _unpack_counted(buf, offset, DbId, "dbid_map")
        return cls(dbs), offset


@dataclass(slots=True)
class VnnMap(WireType):
    """`ctdb_vnn_map`: u32 generation, u32 size, size × u32 pnn."""

    generation: int
    map: list[int] = field(default_factory=list)

    def pack(self) -> bytes:
        try:
            return struct.pack(f"<II{len(self.map)}I", self.generation, len(self.map), *self.map)
        except struct.error as exc:
            raise ProtocolError(f"vnn_map: cannot encode {self!r}: {exc}") from None

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[VnnMap, int]:
        need(buf, offset, 8, "vnn_map")
        generation, size = _U32x2.unpack_from(buf, offset)
        offset += 8
        need(buf, offset, 4 * size, f"vnn_map ({size} entries)")
        pnns = list(struct.unpack_from(f"<{size}I", buf, offset))
        return cls(generation, pnns), offset + 4 * size


@dataclass(slots=True)
class Timeval(_Fixed):
    """`struct timeval` on x86-64 (16 B): i64 seconds, i64 microseconds."""

    sec: int = 0
    usec: int = 0
    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<qq")
    _WHAT: ClassVar[str] = "timeval"

    @classmethod
    def from_seconds(cls, seconds: float) -> Timeval:
        sec, usec = divmod(round(seconds * 1_000_000), 1_000_000)
        return cls(sec, usec)

    def to_seconds(self) -> float:
        return self.sec + self.usec / 1_000_000


@dataclass(slots=True)
class Uptime(WireType):
    """`ctdb_uptime` (64 B): four timevals."""

    current_time: Timeval
    ctdbd_start_time: Timeval
    last_recovery_started: Timeval
    last_recovery_finished: Timeval
    SIZE: ClassVar[int] = 64

    def pack(self) -> bytes:
        return (self.current_time.pack() + self.ctdbd_start_time.pack()
                + self.last_recovery_started.pack() + self.last_recovery_finished.pack())

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[Uptime, int]:
        need(buf, offset, cls.SIZE, "uptime")
        values = struct.unpack_from("<8q", buf, offset)
        tvs = [Timeval(values[i], values[i + 1]) for i in range(0, 8, 2)]
        return cls(*tvs), offset + cls.SIZE


@dataclass(slots=True)
class ElectionMessage(WireType):
    """`ctdb_election_message` (32 B, SRVID_ELECTION): u32 num_connected, 4 pad,
    timeval priority_time, u32 pnn, u32 node_flags."""

    num_connected: int
    priority_time: Timeval
    pnn: int
    node_flags: int
    SIZE: ClassVar[int] = 32
    _ST: ClassVar[struct.Struct] = struct.Struct("<I4xqqII")

    def pack(self) -> bytes:
        return pack_or_raise(self._ST, "election_message", self.num_connected, self.priority_time.sec,
                             self.priority_time.usec, self.pnn, self.node_flags)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[ElectionMessage, int]:
        need(buf, offset, cls.SIZE, "election_message")
        num, sec, usec, pnn, flags = cls._ST.unpack_from(buf, offset)
        return cls(num, Timeval(sec, usec), pnn, flags), offset + cls.SIZE


@dataclass(slots=True)
class SrvidMessage(_Fixed):
    """`ctdb_srvid_message` (16 B): u32 pnn, 4 pad, u64 srvid — "reply to (pnn, srvid)";
    srvid 0 means no reply wanted (SRVID_TAKEOVER_RUN, MEM_DUMP)."""

    pnn: int
    srvid: int
    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<I4xQ")
    _WHAT: ClassVar[str] = "srvid_message"


@dataclass(slots=True)
class DisableMessage(_Fixed):
    """`ctdb_disable_message` (24 B): u32 pnn, 4 pad, u64 srvid, u32 timeout (s), 4 pad
    (SRVID_DISABLE_TAKEOVER_RUNS, SRVID_DISABLE_RECOVERIES)."""

    pnn: int
    srvid: int
    timeout: int
    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("<I4xQI4x")
    _WHAT: ClassVar[str] = "disable_message"


@dataclass(slots=True)
class TraverseStart(_Fixed):
    """`ctdb_traverse_start` (16 B): u32 db_id, u32 reqid, u64 srvid (TRAVERSE_START, TRAVERSE_KILL)."""

    db_id: int
    reqid: int
    srvid: int
    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<IIQ")
    _WHAT: ClassVar[str] = "traverse_start"


@dataclass(slots=True)
class TraverseAll(_Fixed):
    """`ctdb_traverse_all` (24 B, node to node): db_id, reqid, pnn, client_reqid, u64 srvid."""

    db_id: int
    reqid: int
    pnn: int
    client_reqid: int
    srvid: int
    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("<IIIIQ")
    _WHAT: ClassVar[str] = "traverse_all"


@dataclass(slots=True)
class TraverseStartExt(WireType):
    """`ctdb_traverse_start_ext` (24 B): traverse_start + bool withemptyrecords + 7 pad."""

    db_id: int
    reqid: int
    srvid: int
    withemptyrecords: bool = False
    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("<IIQB7x")

    def pack(self) -> bytes:
        return pack_or_raise(self._ST, "traverse_start_ext", self.db_id, self.reqid, self.srvid,
                             1 if self.withemptyrecords else 0)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[TraverseStartExt, int]:
        need(buf, offset, cls.SIZE, "traverse_start_ext")
        db_id, reqid, srvid, _ = cls._ST.unpack_from(buf, offset)
        empty = read_bool(buf, offset + 16, "traverse_start_ext withemptyrecords")
        return cls(db_id, reqid, srvid, empty), offset + cls.SIZE


@dataclass(slots=True)
class TraverseAllExt(WireType):
    """`ctdb_traverse_all_ext` (32 B): traverse_all + bool withemptyrecords + 7 pad."""

    db_id: int
    reqid: int
    pnn: int
    client_reqid: int
    srvid: int
    withemptyrecords: bool = False
    SIZE: ClassVar[int] = 32
    _ST: ClassVar[struct.Struct] = struct.Struct("<IIIIQB7x")

    def pack(self) -> bytes:
        return pack_or_raise(self._ST, "traverse_all_ext", self.db_id, self.reqid, self.pnn,
                             self.client_reqid, self.srvid, 1 if self.withemptyrecords else 0)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[TraverseAllExt, int]:
        need(buf, offset, cls.SIZE, "traverse_all_ext")
        db_id, reqid, pnn, client_reqid, srvid, _ = cls._ST.unpack_from(buf, offset)
        empty = read_bool(buf, offset + 24, "traverse_all_ext withemptyrecords")
        return cls(db_id, reqid, pnn, client_reqid, srvid, empty), offset + cls.SIZE


@dataclass(slots=True)
class PullDbExt(_Fixed):
    """`ctdb_pulldb_ext` (16 B, DB_PULL / DB_PUSH_START): u32 db_id, u32 lmaster, u64 srvid."""

    db_id: int
    lmaster: int
    srvid: int
    SIZE: ClassVar[int] = 16
    _ST: ClassVar[struct.Struct] = struct.Struct("<IIQ")
    _WHAT: ClassVar[str] = "pulldb_ext"


@dataclass(slots=True)
class DbVacuum(WireType):
    """`ctdb_db_vacuum` (DB_VACUUM): u32 db_id, bool full_vacuum_run — 5 bytes, no padding."""

    db_id: int
    full_vacuum_run: bool = False
    SIZE: ClassVar[int] = 5

    def pack(self) -> bytes:
        return pack_or_raise(U32, "db_vacuum", self.db_id) + (b"\x01" if self.full_vacuum_run else b"\x00")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[DbVacuum, int]:
        db_id = read_u32(buf, offset, "db_vacuum db_id")
        full = read_bool(buf, offset + 4, "db_vacuum full_vacuum_run")
        return cls(db_id, full), offset + 5


@dataclass(slots=True)
class NotifyData(WireType):
    """`ctdb_notify_data` (REGISTER_NOTIFY): u64 srvid, u32 len, data."""

    srvid: int
    data: bytes = b""

    def pack(self) -> bytes:
        return pack_or_raise(_U64, "notify_data", self.srvid) + pack_datan(self.data, "notify_data")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[NotifyData, int]:
        need(buf, offset, 8, "notify_data srvid")
        srvid = _U64.unpack_from(buf, offset)[0]
        data, offset = unpack_datan(buf, offset + 8, "notify_data")
        return cls(srvid, data), offset


@dataclass(slots=True)
class EchoData(WireType):
    """`ctdb_echo_data` (ECHO_DATA, both ways): u32 timeout (ms), u32 len, data."""

    timeout: int
    data: bytes = b""

    def pack(self) -> bytes:
        return pack_or_raise(U32, "echo_data", self.timeout) + pack_datan(self.data, "echo_data")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[EchoData, int]:
        timeout = read_u32(buf, offset, "echo_data timeout")
        data, offset = unpack_datan(buf, offset + 4, "echo_data")
        return cls(timeout, data), offset


# ---------------------------------------------------------------------------------------------
# Tunables

#: `struct ctdb_tunable_list` field order = GET_ALL_TUNABLES wire order, by the names
#: `ctdb listvars` shows (names are case-insensitive). Obsolete tunables keep their slot.
TUNABLE_NAMES: tuple[str, ...] = (
    "MaxRedirectCount", "SeqnumInterval", "ControlTimeout", "TraverseTimeout",
    "KeepaliveInterval", "KeepaliveLimit", "RecoverTimeout", "RecoverInterval",
    "ElectionTimeout", "TakeoverTimeout", "MonitorInterval", "TickleUpdateInterval",
    "EventScriptTimeout", "MonitorTimeoutCount", "EventScriptUnhealthyOnTimeout",
    "RecoveryGracePeriod", "RecoveryBanPeriod", "DatabaseHashSize", "DatabaseMaxDead",
    "RerecoveryTimeout", "EnableBans", "DeterministicIPs", "ReclockPingPeriod", "NoIPFailback",
    "DisableIPFailover", "VerboseMemoryNames", "RecdPingTimeout", "RecdFailCount",
    "LogLatencyMs", "RecLockLatencyMs", "RecoveryDropAllIPs", "VerifyRecoveryLock",
    "VacuumInterval", "VacuumMaxRunTime", "RepackLimit", "VacuumLimit", "MaxQueueDropMsg",
    "AllowUnhealthyDBRead", "StatHistoryInterval", "DeferredAttachTO", "VacuumFastPathCount",
    "LCP2PublicIPs", "AllowClientDBAttach", "RecoverPDBBySeqNum", "DeferredRebalanceOnNodeAdd",
    "FetchCollapse", "HopcountMakeSticky", "StickyDuration", "StickyPindown", "NoIPTakeover",
    "DBRecordCountWarn", "DBRecordSizeWarn", "DBSizeWarn", "PullDBPreallocation",
    "NoIPHostOnAllDisabled", "Samba3AvoidDeadlocks", "TDBMutexEnabled", "LockProcessesPerDB",
    "RecBufferSizeLimit", "QueueBufferSize", "IPAllocAlgorithm", "AllowMixedVersions",
)
assert len(TUNABLE_NAMES) == 62

#: Order of ctdbd's tunable table (`ctdb/common/tunable.c`), which is the order LIST_TUNABLES
#: returns and `ctdb listvars` prints. It differs from the wire order in two places:
#: LCP2PublicIPs comes right after DeterministicIPs, and VacuumFastPathCount right after VacuumLimit.
TUNABLE_LISTVARS_ORDER: tuple[str, ...] = (
    TUNABLE_NAMES[:22] + ("LCP2PublicIPs",) + TUNABLE_NAMES[22:36] + ("VacuumFastPathCount",)
    + TUNABLE_NAMES[36:40] + TUNABLE_NAMES[42:]
)
assert sorted(TUNABLE_LISTVARS_ORDER) == sorted(TUNABLE_NAMES)

_TUNABLE_INDEX = {name.lower(): i for i, name in enumerate(TUNABLE_NAMES)}
_TUNABLE_LIST = struct.Struct("<62I")


def tunable_index(name: str) -> int:
    """Wire position of a tunable (case-insensitive); KeyError if CTDB has no such tunable."""
    return _TUNABLE_INDEX[name.lower()]


@dataclass(slots=True)
class TunableList(WireType):
    """`ctdb_tunable_list` (GET_ALL_TUNABLES reply): 62 u32 = 248 bytes in TUNABLE_NAMES order."""

    values: list[int]
    SIZE: ClassVar[int] = 248
    NAMES: ClassVar[tuple[str, ...]] = TUNABLE_NAMES

    def __post_init__(self) -> None:
        if len(self.values) != len(TUNABLE_NAMES):
            raise ProtocolError(f"tunable_list: need {len(TUNABLE_NAMES)} values, got {len(self.values)}")

    @classmethod
    def from_mapping(cls, values: dict[str, int]) -> TunableList:
        """Build from {name: value}; every one of the 62 names must be present (any case)."""
        by_lower = {k.lower(): v for k, v in values.items()}
        missing = [n for n in TUNABLE_NAMES if n.lower() not in by_lower]
        if missing:
            raise ProtocolError(f"tunable_list: missing {', '.join(missing)}")
        return cls([by_lower[n.lower()] for n in TUNABLE_NAMES])

    def get(self, name: str) -> int:
        return self.values[tunable_index(name)]

    def as_dict(self) -> dict[str, int]:
        return dict(zip(TUNABLE_NAMES, self.values))

    def pack(self) -> bytes:
        return pack_or_raise(_TUNABLE_LIST, "tunable_list", *self.values)

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[TunableList, int]:
        need(buf, offset, cls.SIZE, "tunable_list")
        return cls(list(_TUNABLE_LIST.unpack_from(buf, offset))), offset + cls.SIZE


@dataclass(slots=True)
class Tunable(WireType):
    """`ctdb_tunable` (SET_TUNABLE request): u32 value, then stringn name."""

    name: str | None
    value: int

    def pack(self) -> bytes:
        return pack_or_raise(U32, "tunable value", self.value) + pack_stringn(self.name, "tunable name")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[Tunable, int]:
        value = read_u32(buf, offset, "tunable value")
        name, offset = unpack_stringn(buf, offset + 4, "tunable name")
        return cls(name, value), offset


@dataclass(slots=True)
class VarList(WireType):
    """`ctdb_var_list` (LIST_TUNABLES reply): u32 length, then the names joined by ':' and
    NUL-terminated. Empty names are dropped on decode (strtok semantics)."""

    names: list[str] = field(default_factory=list)

    def pack(self) -> bytes:
        for name in self.names:
            if ":" in name or not name:
                raise ProtocolError(f"var_list: name {name!r} is empty or contains ':'")
        raw = pack_string(":".join(self.names), "var_list") if self.names else b""
        return U32.pack(len(raw)) + raw

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[VarList, int]:
        text, offset = unpack_stringn(buf, offset, "var_list")
        names = [n for n in (text or "").split(":") if n]
        return cls(names), offset


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(slots=True)
class LtdbHeader(_Fixed):
    """`ctdb_ltdb_header` (24 B), stored before every value in a CTDB TDB:
    u64 rsn, u32 dmaster, u32 reserved1, u32 flags (RecordFlag), 4 pad."""

    rsn: int = 0
    dmaster: int = 0
    reserved1: int = 0
    flags: int = 0
    SIZE: ClassVar[int] = 24
    _ST: ClassVar[struct.Struct] = struct.Struct("<QIII4x")
    _WHAT: ClassVar[str] = "ltdb_header"

    @classmethod
    def split(cls, record: Buffer) -> tuple[LtdbHeader, bytes]:
        """A stored record (header + value) as (header, value)."""
        header, end = cls.unpack_from(record, 0)
        return header, bytes(record[end:])


_KEY_DATA_HEAD = struct.Struct("<I4x")


@dataclass(slots=True)
class KeyData(WireType):
    """`ctdb_key_data` (SCHEDULE_FOR_DELETION): u32 db_id, 4 pad, ltdb_header (24 B),
    u32 keylen, key — 36 + keylen bytes."""

    db_id: int
    header: LtdbHeader
    key: bytes

    def pack(self) -> bytes:
        return (pack_or_raise(_KEY_DATA_HEAD, "key_data", self.db_id) + self.header.pack()
                + pack_datan(self.key, "key_data key"))

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[KeyData, int]:
        need(buf, offset, 8, "key_data db_id")
        db_id = _KEY_DATA_HEAD.unpack_from(buf, offset)[0]
        header, offset = LtdbHeader.unpack_from(buf, offset + 8)
        key, offset = unpack_datan(buf, offset, "key_data key")
        return cls(db_id, header, key), offset


_REC_DATA_HEAD = struct.Struct("<IIII")


@dataclass(slots=True)
class RecData(WireType):
    """`ctdb_rec_data`: u32 length (whole record, this field included), u32 reqid, u32 keylen,
    u32 datalen, key, data. When a record carries its ltdb header, the header is the first 24
    bytes of `data` (use :meth:`with_header` / :meth:`split_header`). A record with empty key
    and data ends a traverse."""

    reqid: int
    key: bytes
    data: bytes
    HEAD_SIZE: ClassVar[int] = 16

    @classmethod
    def with_header(cls, reqid: int, key: bytes, header: LtdbHeader, value: bytes) -> RecData:
        return cls(reqid, key, header.pack() + value)

    def split_header(self) -> tuple[LtdbHeader, bytes]:
        return LtdbHeader.split(self.data)

    def pack(self) -> bytes:
        key = as_bytes(self.key, "rec_data key")
        data = as_bytes(self.data, "rec_data data")
        length = 16 + len(key) + len(data)
        return pack_or_raise(_REC_DATA_HEAD, "rec_data", length, self.reqid, len(key), len(data)) + key + data

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RecData, int]:
        need(buf, offset, 16, "rec_data")
        length, reqid, keylen, datalen = _REC_DATA_HEAD.unpack_from(buf, offset)
        # Senders pack records back to back; the length must match what it frames.
        if length != 16 + keylen + datalen:
            raise ProtocolError(
                f"rec_data at offset {offset}: length {length} != 16 + keylen {keylen} + datalen {datalen}"
            )
        need(buf, offset, length, f"rec_data (length {length})")
        start = offset + 16
        key = bytes(buf[start:start + keylen])
        data = bytes(buf[start + keylen:start + keylen + datalen])
        return cls(reqid, key, data), offset + length


@dataclass(slots=True)
class RecBuffer(WireType):
    """`ctdb_rec_buffer` / `ctdb_marshall_buffer`: u32 db_id, u32 count, count × rec_data
    (TRANS3_COMMIT, UPDATE_RECORD, TRY_DELETE_RECORDS, VACUUM_FETCH, DB_PULL streams)."""

    db_id: int
    records: list[RecData] = field(default_factory=list)

    def pack(self) -> bytes:
        return pack_or_raise(_U32x2, "rec_buffer", self.db_id, len(self.records)) + b"".join(
            r.pack() for r in self.records
        )

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RecBuffer, int]:
        need(buf, offset, 8, "rec_buffer")
        db_id, count = _U32x2.unpack_from(buf, offset)
        offset += 8
        if count * RecData.HEAD_SIZE > len(buf) - offset:
            raise ProtocolError(f"rec_buffer: count {count} cannot fit in {len(buf) - offset} bytes at offset {offset}")
        records = []
        for _ in range(count):
            rec, offset = RecData.unpack_from(buf, offset)
            records.append(rec)
        return cls(db_id, records), offset


@dataclass(slots=True)
class RawBytes(WireType):
    """Opaque payload kept as bytes (ctdb_statistics, statistics lists, db statistics)."""

    data: bytes = b""

    def pack(self) -> bytes:
        return as_bytes(self.data, "raw")

    @classmethod
    def unpack_from(cls, buf: Buffer, offset: int = 0) -> tuple[RawBytes, int]:
        return cls(bytes(buf[offset:])), len(buf)


def iter_records(buf: Buffer, offset: int = 0) -> Iterable[RecData]:
    """Records packed back to back until the end of `buf` (no count field)."""
    while offset < len(buf):
        rec, offset = RecData.unpack_from(buf, offset)
        yield rec
