"""Payload codecs for REQ_MESSAGE, chosen by srvid (Samba 4.17 `protocol_message.c`).

``pack_message(srvid, value)`` / ``unpack_message(srvid, data)``. Srvids not listed in
``MESSAGES`` (Samba's pid/unique-id messages, traverse replies, TAKEOVER_RUN replies, ...) carry
raw bytes. The i32 reply a recovery daemon sends to a SrvidMessage's (pnn, srvid) is raw too;
use ``pack_i32_reply`` / ``unpack_i32_reply``.
"""

from __future__ import annotations

import struct
from typing import Any

from ._wire import I32, Buffer, as_bytes
from .constants import Srvid
from .controls import RAW_CODEC, STRING_CODEC, U32_CODEC, Codec, wire_codec
from .errors import ProtocolError
from .types import (
    DisableMessage, ElectionMessage, NodeFlagChange, PublicIp, RecBuffer, SrvidMessage,
)

_EMPTY = Codec("empty", lambda v: b"" if v is None else _not_empty(v), lambda d: None)


def _not_empty(value: Any) -> bytes:
    raise ProtocolError(f"message carries no data, got {value!r}")


#: srvid -> codec. Values: u32 codecs take int, STRING takes "a.b.c.d" (str | None).
MESSAGES: dict[int, Codec] = {
    Srvid.BANNING: U32_CODEC,  # pnn to give ban credits to
    Srvid.ELECTION: wire_codec(ElectionMessage),
    Srvid.LEADER: U32_CODEC,  # leader pnn; UNKNOWN_PNN = election in progress
    Srvid.RECONFIGURE: _EMPTY,
    Srvid.RELEASE_IP: STRING_CODEC,  # "198.19.8.1\0"
    Srvid.TAKE_IP: STRING_CODEC,
    Srvid.SET_NODE_FLAGS: wire_codec(NodeFlagChange),
    Srvid.RECD_UPDATE_IP: wire_codec(PublicIp),
    Srvid.VACUUM_FETCH: wire_codec(RecBuffer),
    Srvid.DETACH_DATABASE: U32_CODEC,  # db_id
    Srvid.MEM_DUMP: wire_codec(SrvidMessage),
    Srvid.GETLOG: _EMPTY,
    Srvid.CLEARLOG: _EMPTY,
    Srvid.PUSH_NODE_FLAGS: wire_codec(NodeFlagChange),
    Srvid.RELOAD_NODES: _EMPTY,
    Srvid.TAKEOVER_RUN: wire_codec(SrvidMessage),
    Srvid.REBALANCE_NODE: U32_CODEC,  # pnn
    Srvid.DISABLE_TAKEOVER_RUNS: wire_codec(DisableMessage),
    Srvid.DISABLE_RECOVERIES: wire_codec(DisableMessage),
    Srvid.DISABLE_IP_CHECK: U32_CODEC,  # timeout
}


def codec_for(srvid: int) -> Codec:
    return MESSAGES.get(srvid, RAW_CODEC)


def pack_message(srvid: int, value: Any) -> bytes:
    return codec_for(srvid).pack(value)


def unpack_message(srvid: int, data: Buffer) -> Any:
    try:
        return codec_for(srvid).unpack(data)
    except ProtocolError as exc:
        raise ProtocolError(f"message to srvid 0x{srvid:016x}: {exc}") from None


def pack_i32_reply(value: int) -> bytes:
    try:
        return I32.pack(value)
    except struct.error as exc:
        raise ProtocolError(f"i32 reply: cannot encode {value!r}: {exc}") from None


def unpack_i32_reply(data: Buffer) -> int:
    data = as_bytes(data, "i32 reply")
    if len(data) < 4:
        raise ProtocolError(f"i32 reply: need 4 bytes, got {len(data)}")
    return I32.unpack_from(data, 0)[0]
