"""A table of control handlers, filled by the `handles` decorator of each domain module."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import pack_reply, unpack_request
from ..server.dispatch import Handler, Request, Result


class Handlers(dict[int, Handler]):
    def handles(self, *opcodes: int) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            for opcode in opcodes:
                if opcode in self:
                    raise ValueError(f"control {opcode} has two handlers")
                self[opcode] = fn
            return fn
        return register


def value_of(req: Request):
    """The request's payload, decoded (ProtocolError if malformed)."""
    return unpack_request(req.opcode, req.data)


def reply_with(req: Request, value) -> Result:
    """Status 0 and `value` encoded as the control's reply."""
    return Result(0, pack_reply(req.opcode, value))
