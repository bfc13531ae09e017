"""Records of CTDB's local TDB files ("LTDB") and the hash that names databases and places keys.

Every value ctdbd and clustered smbd keep in a CTDB database starts with the 24-byte
``ctdb_ltdb_header`` (Samba 4.17 ``ctdb/protocol/protocol.h``; codec ``LtdbHeader`` in
:mod:`.types`): u64 rsn, u32 dmaster, u32 reserved1, u32 flags (:class:`RecordFlag`), 4 bytes of
padding, little-endian on every platform we target. The key is stored as is. Facts this module
relies on (``ctdb/common/ctdb_ltdb.c``, ``protocol_types.c``):

- a stored value shorter than 24 bytes is "no record" for ctdbd (``ctdb_ltdb_fetch_fn``); a value of
  exactly 24 bytes is an *empty* record (smbd's delete, or a record whose data migrated away);
- ctdbd ignores the contents of the 4 padding bytes when it reads and writes zeros;
- the record flags of 4.17 are MIGRATED_WITH_DATA 0x10000, VACUUM_MIGRATED 0x20000, AUTOMATIC
  0x40000 and the read-only delegation bits 0x0F000000. ``RecordFlag.PERSISTENT`` (0x1) and
  ``PERSISTENT_IN_PROGRESS`` (0x2) exist only in Samba master (per-record persistent databases);
  a 4.17 peer never sets them.

The hash is Bob Jenkins' lookup3 ``hashlittle`` (public domain), which libtdb exports as
``tdb_jenkins_hash``: ctdbd's database id is the hash of the name *including* its NUL
(``locking.tdb`` -> 0x7a19d84d), and a key's lmaster is ``vnnmap[hash(key) % size]``. This pure
version lets the I/O-free cores compute both; tests check it against libtdb's.

Pure functions, no I/O; bad input raises :class:`ProtocolError`.
"""

from __future__ import annotations

import struct

from ._wire import U64, Buffer, need
from .constants import DB_SEQNUM_KEY, RecordFlag
from .errors import ProtocolError
from .types import LtdbHeader

#: ``sizeof(struct ctdb_ltdb_header)``.
LTDB_HEADER_SIZE = LtdbHeader.SIZE

#: The record flags a Samba 4.17 node may store or send (``RecordFlag`` also lists newer ones).
RECORD_FLAGS_4_17 = (RecordFlag.MIGRATED_WITH_DATA | RecordFlag.VACUUM_MIGRATED
                     | RecordFlag.AUTOMATIC | RecordFlag.RO_FLAGS)


#: The persistent databases' sequence-number record as a TDB key. ctdbd and smbd both include the
#: NUL (``key.dsize = strlen(CTDB_DB_SEQNUM_KEY) + 1``; a real ctdbd's bar.0 shows key(23)), unlike
#: ``DB_SEQNUM_KEY``, which is the bare name.
DB_SEQNUM_TDB_KEY = DB_SEQNUM_KEY + b"\0"


def pack_seqnum(seqnum: int) -> bytes:
    """The data of the sequence-number record (after its header): a u64."""
    try:
        return U64.pack(seqnum)
    except Exception as exc:  # struct.error, TypeError
        raise ProtocolError(f"db seqnum {seqnum!r}: {exc}") from None


def unpack_seqnum(data: Buffer) -> int:
    """The u64 of the sequence-number record's data; 0 unless it is exactly 8 bytes, as
    ctdbd's GET_DB_SEQNUM reads it (``ctdb_get_db_seqnum``)."""
    return U64.unpack(data)[0] if len(data) == 8 else 0


def unpack_header(record: Buffer) -> LtdbHeader:
    """The header at the start of a stored value; ProtocolError if it is shorter than 24 bytes."""
    return LtdbHeader.unpack_from(record, 0)[0]


def unpack_record(record: Buffer) -> tuple[LtdbHeader, memoryview]:
    """A stored value as (header, data). ``data`` is a view into ``record`` (no copy): keep it
    only as long as ``record`` is valid, or copy it with ``bytes()``."""
    header = unpack_header(record)
    return header, memoryview(record)[LTDB_HEADER_SIZE:]


def pack_record(header: LtdbHeader, data: Buffer = b"") -> bytes:
    """Header + data, as ctdbd stores it (``tdb_storev`` of the two parts)."""
    if not isinstance(header, LtdbHeader):
        raise ProtocolError(f"ltdb record: expected LtdbHeader, got {type(header).__name__}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"ltdb record data: expected bytes, got {type(data).__name__}")
    return header.pack() + bytes(data)


def is_record(record: Buffer | None) -> bool:
    """True if ctdbd would see a record here (a value of at least 24 bytes)."""
    return record is not None and len(record) >= LTDB_HEADER_SIZE


def is_empty_record(record: Buffer) -> bool:
    """A header with no data: smbd's deleted record, or one whose data migrated away."""
    need(record, 0, LTDB_HEADER_SIZE, "ltdb record")
    return len(record) == LTDB_HEADER_SIZE


# --- Jenkins lookup3 hashlittle ---------------------------------------------------------------

_M32 = 0xFFFFFFFF
_BLOCK = struct.Struct("<III")


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def jenkins_hash(data: Buffer, initval: int = 0) -> int:
    """lookup3 ``hashlittle(data, len(data), initval)`` — libtdb's ``tdb_jenkins_hash`` for
    ``initval`` 0. Works on the bytes alone, so it is the same on every host."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"jenkins_hash: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _M32
    offset = 0
    while length - offset > 12:
        x, y, z = _BLOCK.unpack_from(data, offset)
        a = (a + x) & _M32
        b = (b + y) & _M32
        c = (c + z) & _M32
        # mix(a, b, c)
        a = (a - c) & _M32
        a ^= _rot(c, 4)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 6)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 8)
        b = (b + a) & _M32
        a = (a - c) & _M32
        a ^= _rot(c, 16)
        c = (c + b) & _M32
        b = (b - a) & _M32
        b ^= _rot(a, 19)
        a = (a + c) & _M32
        c = (c - b) & _M32
        c ^= _rot(b, 4)
        b = (b + a) & _M32
        offset += 12
    if length == offset:  # only for the empty key: lookup3 returns c without the final mix
        return c
    x, y, z = _BLOCK.unpack(data[offset:].ljust(12, b"\0"))
    a = (a + x) & _M32
    b = (b + y) & _M32
    c = (c + z) & _M32
    # final(a, b, c)
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return c


def db_id_of(name: str) -> int:
    """ctdbd's database id: the Jenkins hash of the name and its terminating NUL."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ProtocolError(f"database name {name!r}: must be a non-empty string without NUL")
    return jenkins_hash(name.encode("utf-8", "surrogateescape") + b"\0")
