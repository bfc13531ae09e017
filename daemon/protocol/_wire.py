"""Primitives shared by the codec modules: precompiled structs, bounds checks, text.

CTDB marshals host-order C structs; every CTDB deployment we target is x86-64 or another
little-endian 64-bit Linux, so the wire is little-endian with explicit padding. The only
big-endian fields are the port and IPv6 flowinfo inside a sockaddr.
"""

from __future__ import annotations

import struct
from typing import Union

from .errors import ProtocolError

Buffer = Union[bytes, bytearray, memoryview]

U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U16BE = struct.Struct(">H")
U32 = struct.Struct("<I")
U32BE = struct.Struct(">I")
I32 = struct.Struct("<i")
U64 = struct.Struct("<Q")
DOUBLE = struct.Struct("<d")
U32_PAIR = struct.Struct("<II")


def need(buf: Buffer, offset: int, size: int, what: str) -> None:
    """Raise unless `size` bytes are available at `offset`."""
    left = len(buf) - offset
    if size > left:
        raise ProtocolError(f"{what}: need {size} bytes at offset {offset}, only {max(left, 0)} left")


def read_u32(buf: Buffer, offset: int, what: str) -> int:
    need(buf, offset, 4, what)
    return U32.unpack_from(buf, offset)[0]


def read_bool(buf: Buffer, offset: int, what: str) -> bool:
    """CTDB bools are one byte that must be 0 or 1 (ctdb_bool_pull returns EINVAL otherwise)."""
    need(buf, offset, 1, what)
    value = buf[offset]
    if value > 1:
        raise ProtocolError(f"{what}: bool byte at offset {offset} is {value}, not 0 or 1")
    return value == 1


def decode_text(raw: Buffer) -> str:
    """Bytes up to the first NUL as text. Invalid UTF-8 survives as surrogate escapes, so
    decoding never fails and re-encoding gives the same bytes back."""
    raw = bytes(raw)
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    return raw.decode("utf-8", "surrogateescape")


def encode_text(text: str, what: str) -> bytes:
    """Text as bytes without a terminator; refuses embedded NULs (C would truncate there)."""
    if not isinstance(text, str):
        raise ProtocolError(f"{what}: expected str, got {type(text).__name__}")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{what}: cannot encode {text!r}: {exc}") from None
    if b"\0" in raw:
        raise ProtocolError(f"{what}: {text!r} contains a NUL byte")
    return raw


def as_bytes(value: object, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ProtocolError(f"{what}: expected bytes, got {type(value).__name__}")


def pack_or_raise(st: struct.Struct, what: str, *values: object) -> bytes:
    """struct.pack with out-of-range values reported as ProtocolError."""
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ProtocolError(f"{what}: cannot encode {values!r}: {exc}") from None


def pad8(length: int) -> int:
    """`length` rounded up to a multiple of 8."""
    return (length + 7) & ~7
