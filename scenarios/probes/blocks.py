"""Numbered, checksummed blocks: what the data writers put on the share and how a read-back
recognises them.

A block is BLOCK_SIZE bytes at offset ``number * BLOCK_SIZE`` of its writer's file::

    magic (8) | writer id (32, NUL-padded ASCII) | number (u64 BE) | random payload | crc32 (u32 BE)

The CRC covers everything before it, and the payload is random, so a read-back that finds the
block with the CRC the writer recorded at the ack has found exactly the bytes that were written.
Pure functions: the probes, the checker's tests and the read-back share them.
"""

from __future__ import annotations

import os
import struct
import zlib

BLOCK_SIZE = 4096
MAGIC = b"CTDBLABK"
_HEAD = struct.Struct(">8s32sQ")
_CRC = struct.Struct(">I")
PAYLOAD_SIZE = BLOCK_SIZE - _HEAD.size - _CRC.size


def make_block(writer: str, number: int, payload: bytes | None = None) -> tuple[bytes, int]:
    """The block's bytes and its CRC (as recorded in the history)."""
    wid = writer.encode()
    if len(wid) > 32:
        raise ValueError(f"writer id longer than 32 bytes: {writer!r}")
    body = _HEAD.pack(MAGIC, wid, number) + (payload if payload is not None
                                             else os.urandom(PAYLOAD_SIZE))
    if len(body) != BLOCK_SIZE - _CRC.size:
        raise ValueError("payload of the wrong size")
    crc = zlib.crc32(body)
    return body + _CRC.pack(crc), crc


def parse_block(data: bytes, writer: str, slot: int) -> int | None:
    """The CRC of a valid block ``slot`` of ``writer`` in ``data``, else None."""
    if len(data) != BLOCK_SIZE:
        return None
    body, (crc,) = data[:-_CRC.size], _CRC.unpack(data[-_CRC.size:])
    magic, wid, number = _HEAD.unpack_from(body)
    if magic != MAGIC or wid.rstrip(b"\0") != writer.encode() or number != slot:
        return None
    return crc if zlib.crc32(body) == crc else None


def scan_file(content: bytes, writer: str) -> tuple[dict[int, int], list[int]]:
    """Every slot of a file: ``({number: crc} of valid blocks, [numbers of slots that hold
    something but no valid block])``.  An all-zero slot (a hole) is simply absent."""
    valid: dict[int, int] = {}
    bad: list[int] = []
    for slot in range((len(content) + BLOCK_SIZE - 1) // BLOCK_SIZE):
        chunk = content[slot * BLOCK_SIZE:(slot + 1) * BLOCK_SIZE]
        if not chunk.strip(b"\0"):
            continue
        crc = parse_block(chunk, writer, slot)
        if crc is None:
            bad.append(slot)
        else:
            valid[slot] = crc
    return valid, bad
