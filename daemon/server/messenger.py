"""How this node talks: messages (REQ_MESSAGE) to one node, to a broadcast group, to this node
itself or to its local clients, and controls to any node, this one included (answered
in-process through the control dispatcher, so a leader's run treats itself like any peer).

Incoming messages are routed by the daemon (`route(src, srvid, data)`); a message this node
sends to itself takes the same route. Services that receive message streams of their own (the
record buffers of a database recovery's pulls and pushes) register a handler for a srvid
(`add_handler`); the daemon's router hands every message to `handle_message` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..core.nodes import NodeMap
from ..log import log
from ..net.local import LocalServer
from ..net.rpc import ControlClient, ControlError
from ..net.transport import NodeTransport
from ..protocol import (
    BROADCAST_ACTIVE, BROADCAST_ALL, BROADCAST_CONNECTED, CURRENT_NODE, ReplyControl, ReqMessage,
    encode_packet,
)
from .dispatch import ControlDispatcher, Request, Result

BROADCASTS = (BROADCAST_ALL, BROADCAST_ACTIVE, BROADCAST_CONNECTED)
Route = Callable[[int, int, bytes], None]
#: A service's handler of messages on one srvid: (src, srvid, data).
MessageHandler = Callable[[int, int, bytes], None]


class Messenger:
    def __init__(self, my_pnn: int, nodemap: NodeMap, dispatcher: ControlDispatcher, route: Route) -> None:
        self.my_pnn = my_pnn
        self.nodemap = nodemap
        self.dispatcher = dispatcher
        self.route = route
        self.transport: NodeTransport | None = None      # set once the mesh is up
        self.local: LocalServer | None = None            # set once the socket is up
        self.rpc = ControlClient(my_pnn, self._send_frame)
        self._handlers: dict[int, MessageHandler] = {}

    # -- messages --------------------------------------------------------------------------------
    def send_message(self, dest: int, srvid: int, data: bytes) -> None:
        if dest == CURRENT_NODE:
            dest = self.my_pnn
        if dest in BROADCASTS:
            self.broadcast(srvid, data, dest)
        elif dest == self.my_pnn:
            self.route(self.my_pnn, srvid, data)
        elif not self.send_frame(dest, encode_packet(ReqMessage(srvid, data), destnode=dest,
                                                      srcnode=self.my_pnn, reqid=0)):
            log.debug("message 0x%016x to node %u dropped: not connected", srvid, dest)

    def broadcast(self, srvid: int, data: bytes, dest: int = BROADCAST_CONNECTED,
                  include_self: bool = True) -> None:
        for pnn in self.broadcast_targets(dest):
            if pnn == self.my_pnn:
                if include_self:
                    self.route(self.my_pnn, srvid, data)
            else:
                self.send_frame(pnn, encode_packet(ReqMessage(srvid, data), destnode=pnn,
                                                   srcnode=self.my_pnn, reqid=0))

    def broadcast_targets(self, dest: int) -> list[int]:
        if dest == BROADCAST_ALL:
            return [n.pnn for n in self.nodemap.nodes if not n.deleted]
        if dest == BROADCAST_ACTIVE:
            return self.nodemap.active_pnns()
        return self.nodemap.connected_pnns()

    def connected_peers(self) -> list[int]:
        return [p for p in self.nodemap.connected_pnns() if p != self.my_pnn]

    def active_peers(self) -> list[int]:
        return [p for p in self.nodemap.active_pnns() if p != self.my_pnn]

    def deliver_local(self, srvid: int, data: bytes, src: int | None = None) -> int:
        """Hand a message to this node's clients that registered `srvid` (or every srvid)."""
        if self.local is None:
            return 0
        frame = encode_packet(ReqMessage(srvid, data), destnode=self.my_pnn,
                              srcnode=self.my_pnn if src is None else src, reqid=0)
        return self.local.deliver(srvid, frame)

    def send_frame(self, pnn: int, frame: bytes) -> bool:
        """A ready frame to a peer (False if it is not connected)."""
        return self.transport is not None and self.transport.send(pnn, frame)

    def is_connected(self, pnn: int) -> bool:
        return self.transport is not None and self.transport.is_connected(pnn)

    # -- message handlers of the daemon's services -----------------------------------------------
    def add_handler(self, srvid: int, handler: MessageHandler) -> None:
        """Hand messages for `srvid` that reach this node to `handler` (ValueError if the srvid
        already has one)."""
        if srvid in self._handlers:
            raise ValueError(f"srvid 0x{srvid:016x} already has a handler")
        self._handlers[srvid] = handler

    def remove_handler(self, srvid: int) -> None:
        self._handlers.pop(srvid, None)

    def has_handler(self, srvid: int) -> bool:
        return srvid in self._handlers

    def handle_message(self, src: int, srvid: int, data: bytes) -> bool:
        """Run the handler registered for `srvid`, if any (the daemon's router calls this for
        every message for this node); True if there was one. A failing handler is logged."""
        handler = self._handlers.get(srvid)
        if handler is None:
            return False
        try:
            handler(src, srvid, data)
        except Exception:
            log.exception("handler of messages 0x%016x from node %u failed", srvid, src)
        return True

    # -- controls --------------------------------------------------------------------------------
    def _send_frame(self, pnn: int, frame: bytes) -> bool:
        # The control client never targets this node: `control()` answers those in-process.
        return self.send_frame(pnn, frame)

    async def control(self, pnn: int, opcode: int, data: bytes = b"", *, flags: int = 0,
                      timeout: float = 10.0, generation: int = 0) -> ReplyControl:
        """A control to any node; raises ControlError unless it succeeded. `generation` goes in
        the packet header (0: none claimed)."""
        if pnn != self.my_pnn:
            return await self.rpc.call(pnn, opcode, data, flags=flags, timeout=timeout,
                                       generation=generation)
        future = asyncio.get_running_loop().create_future()
        req = Request(opcode, flags, 0, 0, data, self.my_pnn, generation=generation)
        self.dispatcher.dispatch(req, lambda res: future.done() or future.set_result(res))
        res: Result = await asyncio.wait_for(future, timeout)
        if res.after is not None:
            res.after()
        if res.status != 0:
            raise ControlError(f"control {opcode} on this node failed with status {res.status}"
                               + (f": {res.errmsg}" if res.errmsg else ""), res.status)
        return ReplyControl(res.status, res.data, res.errmsg)

    async def controls(self, pnns: Iterable[int], opcode: int, data: bytes = b"", *, flags: int = 0,
                       timeout: float) -> dict[int, ReplyControl | ControlError]:
        """The same control to several nodes at once."""
        pnns = list(pnns)

        async def one(pnn: int) -> ReplyControl | ControlError:
            try:
                return await self.control(pnn, opcode, data, flags=flags, timeout=timeout)
            except ControlError as exc:
                return exc

        return dict(zip(pnns, await asyncio.gather(*(one(p) for p in pnns))))

    def send_noreply(self, pnn: int, opcode: int, data: bytes = b"", *, srvid: int = 0,
                     flags: int = 0) -> bool:
        return self.rpc.send_noreply(pnn, opcode, data, srvid=srvid, flags=flags)
