"""Controls this daemon sends to other nodes, matched to their replies by reqid.

Used for the daemon's own work (takeover runs, flag pushes) and to forward a local client's
control to the node it names. A pending control fails with a `ControlError` when its timeout
passes or when the node disconnects ("node is disconnected", as ctdbd answers); a control to a
node that is not connected fails at once. One that was queued for a node still connecting fails
when that queue is thrown away or the node comes up: its reply may have been lost with the
connections that came and went, and a recovery must not wait the whole timeout for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from ..protocol.constants import ControlFlag
from ..protocol.packets import ReplyControl, ReqControl, encode_packet


class ControlError(Exception):
    """A control failed: a non-zero status from the node, a timeout or a disconnect."""

    def __init__(self, message: str, status: int = -1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Pending:
    pnn: int
    opcode: int
    future: asyncio.Future


@dataclass
class ControlClient:
    my_pnn: int
    send_to_node: Callable[[int, bytes], bool]
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _next_reqid: int = 0x10000

    def _reqid(self) -> int:
        for _ in range(0x100000):
            self._next_reqid = self._next_reqid + 1 if self._next_reqid < 0x7FFFFFF0 else 0x10000
            if self._next_reqid not in self._pending:
                return self._next_reqid
        raise ControlError("no free request id")

    async def call(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0, srvid: int = 0,
                   client_id: int = 0, timeout: float = 10.0, generation: int = 0) -> ReplyControl:
        """Send a control and wait for its reply. Raises ControlError unless the reply's status
        is 0 (the reply is attached as `.reply` for callers that need a non-zero status)."""
        reply = await self.request(pnn, opcode, data, flags=flags, srvid=srvid, client_id=client_id,
                                   timeout=timeout, generation=generation)
        if reply.status != 0:
            raise ControlError(f"control {opcode} to node {pnn} failed with status {reply.status}"
                               + (f": {reply.errmsg}" if reply.errmsg else ""), reply.status)
        return reply

    async def request(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0, srvid: int = 0,
                      client_id: int = 0, timeout: float = 10.0, generation: int = 0) -> ReplyControl:
        """Send a control and return its reply whatever the status; ControlError only for
        timeouts and disconnects."""
        reqid = self._reqid()
        frame = encode_packet(ReqControl(opcode, srvid, client_id, flags, data), destnode=pnn,
                              srcnode=self.my_pnn, reqid=reqid, generation=generation)
        future = asyncio.get_running_loop().create_future()
        self._pending[reqid] = _Pending(pnn, opcode, future)
        try:
            if not self.send_to_node(pnn, frame):
                raise ControlError("ctdb_control to disconnected node")
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise ControlError(f"control {opcode} to node {pnn} timed out after {timeout:g} s") from None
        finally:
            self._pending.pop(reqid, None)

    def send_noreply(self, pnn: int, opcode: int, data: bytes = b"", *, srvid: int = 0,
                     flags: int = 0) -> bool:
        frame = encode_packet(ReqControl(opcode, srvid, 0, flags | ControlFlag.NOREPLY, data),
                              destnode=pnn, srcnode=self.my_pnn, reqid=0)
        return self.send_to_node(pnn, frame)

    def reply_received(self, srcnode: int, reqid: int, reply: ReplyControl) -> bool:
        pending = self._pending.get(reqid)
        if pending is None or pending.pnn != srcnode:
            return False
        if not pending.future.done():
            pending.future.set_result(reply)
        return True

    def node_down(self, pnn: int, reason: str = "node is disconnected") -> int:
        """Fail every control waiting on `pnn`; returns how many."""
        failed = 0
        for pending in list(self._pending.values()):
            if pending.pnn == pnn and not pending.future.done():
                pending.future.set_exception(ControlError(reason))
                failed += 1
        return failed

    def pending_count(self) -> int:
        return len(self._pending)
