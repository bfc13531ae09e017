"""A control to answer (where it came from, its raw payload) and the answer to send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .net.local import Client


@dataclass
class Request:
    """One control to answer: where it came from and its raw payload."""

    opcode: int
    flags: int
    srvid: int
    client_id: int
    data: bytes
    src: int                       # origin node (this node for local clients)
    client: Client | None = None


@dataclass
class Result:
    status: int = 0
    data: bytes = b""
    errmsg: str | None = None
    after: Callable[[], None] | None = None     # run once the reply has been sent
