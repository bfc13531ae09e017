"""protocol/ltdb.py: the 24-byte record header on stored values, and the Jenkins hash."""

from __future__ import annotations

import os
import random

import pytest

from ctdblab.daemon.protocol import (
    DB_SEQNUM_TDB_KEY, LTDB_HEADER_SIZE, pack_seqnum, unpack_seqnum, LtdbHeader, ProtocolError, RecordFlag, db_id_of, is_empty_record, is_record,
    jenkins_hash, pack_record, unpack_header, unpack_record,
)
from ctdblab.daemon.protocol.ltdb import RECORD_FLAGS_4_17

# `ctdb getdbmap` of a real ctdbd 4.17.12 in the lab (1 node, clustered smbd running, then
# `ctdb attach foo` and `ctdb attach bar persistent`).
LAB_DBMAP = {
    "bar": 0xE72564A3, "foo": 0xCD3F77E5,
    "smbXsrv_open_global.tdb": 0x66F71B8C, "passdb.tdb": 0x3EF19640,
    "account_policy.tdb": 0x2CA251CF, "group_mapping.tdb": 0xA1413774,
    "share_info.tdb": 0xC3078FBA, "registry.tdb": 0x6CF2837D, "leases.tdb": 0x06916E77,
    "locking.tdb": 0x7A19D84D, "brlock.tdb": 0x4E66C2B2, "smbXsrv_tcon_global.tdb": 0x68C12C2C,
    "smbXsrv_session_global.tdb": 0x6B06A26D, "smbXsrv_client_global.tdb": 0x477D2E20,
    "smbXsrv_version_global.tdb": 0x521B7544, "g_lock.tdb": 0x4D2A432B,
    "secrets.tdb": 0x7132C184, "ctdb.tdb": 0x6645C6C4,
}

# Values exactly as `tdbdump` printed them from that ctdbd's files, after `ctdb writekey foo k v`
# (volatile foo.0) and `ctdb pstore bar pk pv` (persistent bar.0).
REAL_FOO_K = b"\x02" + b"\x00" * 23 + b"v"
REAL_BAR_PK = b"\x01" + b"\x00" * 23 + b"pv"
REAL_BAR_SEQNUM = b"\x01" + b"\x00" * 23 + b"\x01" + b"\x00" * 7


def test_header_layout_matches_real_ctdbd_records():
    header, data = unpack_record(REAL_FOO_K)
    assert header == LtdbHeader(rsn=2, dmaster=0, reserved1=0, flags=0)
    assert bytes(data) == b"v"
    assert pack_record(header, b"v") == REAL_FOO_K
    header, data = unpack_record(REAL_BAR_PK)
    assert (header.rsn, header.dmaster, bytes(data)) == (1, 0, b"pv")
    header, data = unpack_record(REAL_BAR_SEQNUM)
    assert unpack_seqnum(data) == 1
    assert pack_record(header, pack_seqnum(1)) == REAL_BAR_SEQNUM


def test_seqnum_record():
    # tdbdump of the real bar.0: key(23) = "__db_sequence_number__\00"
    assert DB_SEQNUM_TDB_KEY == b"__db_sequence_number__\0" and len(DB_SEQNUM_TDB_KEY) == 23
    assert unpack_seqnum(pack_seqnum(2**64 - 1)) == 2**64 - 1
    assert unpack_seqnum(b"\1" * 7) == 0  # not 8 bytes: ctdbd reads 0
    assert unpack_seqnum(b"") == 0
    with pytest.raises(ProtocolError):
        pack_seqnum(-1)
    with pytest.raises(ProtocolError):
        pack_seqnum(2**64)


def test_field_offsets():
    raw = pack_record(LtdbHeader(rsn=0x0102030405060708, dmaster=0x11223344, reserved1=0x55667788,
                                 flags=0x01010000), b"DATA")
    assert len(raw) == LTDB_HEADER_SIZE + 4 == 28
    assert raw[0:8] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # u64 rsn, little-endian
    assert raw[8:12] == bytes([0x44, 0x33, 0x22, 0x11])  # dmaster
    assert raw[12:16] == bytes([0x88, 0x77, 0x66, 0x55])  # reserved1
    assert raw[16:20] == bytes([0x00, 0x00, 0x01, 0x01])  # flags
    assert raw[20:24] == b"\0\0\0\0"  # padding
    assert raw[24:] == b"DATA"


def test_round_trip_random():
    rng = random.Random(4)
    for _ in range(200):
        header = LtdbHeader(rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(32),
                            rng.getrandbits(32))
        data = rng.randbytes(rng.randrange(0, 100))
        got_header, got_data = unpack_record(pack_record(header, data))
        assert got_header == header and bytes(got_data) == data


def test_unpack_record_does_not_copy_the_data():
    buf = bytearray(pack_record(LtdbHeader(1, 2), b"abc"))
    _, data = unpack_record(buf)
    buf[-1] = ord("X")
    assert bytes(data) == b"abX"


def test_padding_is_ignored_on_read_and_zero_on_write():
    raw = bytearray(pack_record(LtdbHeader(5, 1), b"x"))
    raw[20:24] = b"\xff\xff\xff\xff"  # ctdbd does not check the pad
    header, _ = unpack_record(raw)
    assert header == LtdbHeader(5, 1)
    assert pack_record(header, b"x")[20:24] == b"\0\0\0\0"


@pytest.mark.parametrize("short", [b"", b"\0" * 8, b"\0" * 23])
def test_short_values_are_protocol_errors(short):
    with pytest.raises(ProtocolError):
        unpack_header(short)
    with pytest.raises(ProtocolError):
        unpack_record(short)
    with pytest.raises(ProtocolError):
        is_empty_record(short)
    assert not is_record(short)


def test_empty_and_missing_records():
    assert is_empty_record(pack_record(LtdbHeader(3, 0)))
    assert not is_empty_record(pack_record(LtdbHeader(3, 0), b"v"))
    assert is_record(pack_record(LtdbHeader(3, 0)))
    assert not is_record(None)


def test_bad_inputs_to_pack():
    with pytest.raises(ProtocolError):
        pack_record(LtdbHeader(rsn=1 << 64), b"")
    with pytest.raises(ProtocolError):
        pack_record(LtdbHeader(dmaster=-1), b"")
    with pytest.raises(ProtocolError):
        pack_record((1, 2, 3, 4), b"")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        pack_record(LtdbHeader(), "text")  # type: ignore[arg-type]


def test_record_flags_are_samba_4_17s():
    # ctdb/protocol/protocol.h of Samba 4.17.12.
    assert RecordFlag.MIGRATED_WITH_DATA == 0x00010000
    assert RecordFlag.VACUUM_MIGRATED == 0x00020000
    assert RecordFlag.AUTOMATIC == 0x00040000
    assert RecordFlag.RO_HAVE_DELEGATIONS == 0x01000000
    assert RecordFlag.RO_HAVE_READONLY == 0x02000000
    assert RecordFlag.RO_REVOKING_READONLY == 0x04000000
    assert RecordFlag.RO_REVOKE_COMPLETE == 0x08000000
    assert RecordFlag.RO_FLAGS == 0x0F000000
    assert RECORD_FLAGS_4_17 == 0x0F070000
    assert not RECORD_FLAGS_4_17 & (RecordFlag.PERSISTENT | RecordFlag.PERSISTENT_IN_PROGRESS)


@pytest.mark.parametrize("name", sorted(LAB_DBMAP))
def test_db_ids_match_real_ctdbd(name):
    assert db_id_of(name) == LAB_DBMAP[name]


def test_jenkins_known_vectors():
    # lookup3.c's own self-test values for hashlittle("Four score and seven years ago", 30, ...).
    text = b"Four score and seven years ago"
    assert jenkins_hash(text, 0) == 0x17770551
    assert jenkins_hash(text, 1) == 0xCD628161
    assert jenkins_hash(b"", 0) == 0xDEADBEEF  # no final mix for the empty key


def test_jenkins_matches_libtdb():
    libtdb = pytest.importorskip("ctdblab.daemon.store.libtdb")
    rng = random.Random(17)
    for length in list(range(0, 40)) + [rng.randrange(40, 2000) for _ in range(40)]:
        data = rng.randbytes(length)
        assert jenkins_hash(data) == libtdb.jenkins_hash(data), length
    assert jenkins_hash(memoryview(b"abc")) == libtdb.jenkins_hash(b"abc")
    assert jenkins_hash(os.urandom(0)) == libtdb.jenkins_hash(b"")


@pytest.mark.parametrize("bad", ["", "a\0b", None, b"bytes"])
def test_db_id_of_rejects_bad_names(bad):
    with pytest.raises(ProtocolError):
        db_id_of(bad)  # type: ignore[arg-type]
    if bad is None:
        with pytest.raises(ProtocolError):
            jenkins_hash(bad)  # type: ignore[arg-type]
