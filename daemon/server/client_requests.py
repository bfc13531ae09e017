"""What local clients (the `ctdb` tool, smbd, helpers) send the daemon, routed: controls for
this node go to the control dispatcher, controls for another node are forwarded and their
replies passed back, broadcasts fan out; messages go through the messenger; REQ_CALLs (record
migration) to the record-calls service. A client that sends bytes that are not a CTDB packet
is disconnected with a log line naming it."""

from __future__ import annotations

from collections.abc import Callable

from ..core.nodes import NodeMap
from ..log import log
from ..net.local import Client
from ..net.rpc import ControlError
from ..protocol import (
    CURRENT_NODE, ControlFlag, Operation, ProtocolError, ReplyControl, decode_packet, encode_packet,
)
from .dispatch import ControlDispatcher, Request, Result
from .messenger import BROADCASTS, Messenger
from .record_calls import RecordCalls
from .tasks import Tasks


class ClientRequests:
    def __init__(self, my_pnn: int, nodemap: NodeMap, dispatcher: ControlDispatcher, messenger: Messenger,
                 record_calls: RecordCalls, tasks: Tasks, control_timeout: Callable[[], float]) -> None:
        self.my_pnn = my_pnn
        self.nodemap = nodemap
        self.dispatcher = dispatcher
        self.messenger = messenger
        self.record_calls = record_calls
        self.tasks = tasks
        self.control_timeout = control_timeout

    def on_frame(self, client: Client, frame: bytes) -> None:
        try:
            packet = decode_packet(frame)
        except ProtocolError as exc:
            log.error("Malformed packet from client %u (pid %u): %s; disconnecting it",
                      client.client_id, client.pid, exc)
            client.close()
            return
        header, body = packet.header, packet.body
        op = header.operation
        if op == Operation.REQ_CONTROL:
            self._control(client, header, body)
        elif op == Operation.REQ_MESSAGE:
            dest = self.my_pnn if header.destnode == CURRENT_NODE else header.destnode
            if dest != self.my_pnn and dest not in BROADCASTS and self.nodemap.get(dest) is None:
                log.warning("Client %u (pid %u) sent a message to unknown node %u", client.client_id,
                            client.pid, dest)
                return
            self.messenger.send_message(dest, body.srvid, body.data)
        elif op == Operation.REQ_CALL:
            self.record_calls.client_call(client, header, body)
        else:
            log.warning("Client %u (pid %u) sent unsupported operation %u; ignored",
                        client.client_id, client.pid, op)

    def _control(self, client: Client, header, body) -> None:
        dest = self.my_pnn if header.destnode == CURRENT_NODE else header.destnode
        noreply = bool(body.flags & ControlFlag.NOREPLY)

        def answer(res: Result, srcnode: int = self.my_pnn) -> None:
            if not noreply:
                client.send(encode_packet(
                    ReplyControl(res.status, res.data if res.status == 0 else b"", res.errmsg),
                    destnode=header.srcnode, srcnode=srcnode, reqid=header.reqid))
            if res.after is not None:
                res.after()

        def local_request() -> Request:
            return Request(body.opcode, body.flags, body.srvid, client.client_id, body.data, self.my_pnn, client)

        if dest == self.my_pnn:
            self.dispatcher.dispatch(local_request(), answer)
            return
        if dest in BROADCASTS:
            if not noreply:
                answer(Result(-1, errmsg="Attempt to broadcast control without NOREPLY"))
                return
            for pnn in self.messenger.broadcast_targets(dest):
                if pnn == self.my_pnn:
                    self.dispatcher.dispatch(local_request(), answer)
                else:
                    self.messenger.send_noreply(pnn, body.opcode, body.data, srvid=body.srvid, flags=body.flags)
            return
        node = self.nodemap.get(dest)
        if node is None or node.deleted:
            answer(Result(-1, errmsg=f"node {dest} does not exist"))
            return
        if not self.messenger.is_connected(dest):
            answer(Result(-1, errmsg="ctdb_control to disconnected node"))
            return
        if noreply:
            self.messenger.send_noreply(dest, body.opcode, body.data, srvid=body.srvid, flags=body.flags)
            return

        async def forward() -> None:
            try:
                reply = await self.messenger.rpc.request(
                    dest, body.opcode, body.data, flags=body.flags, srvid=body.srvid,
                    client_id=client.client_id, timeout=self.control_timeout())
                answer(Result(reply.status, reply.data, reply.errmsg), dest)
            except ControlError as exc:
                answer(Result(-1, errmsg=str(exc)))

        self.tasks.spawn(forward(), f"forward-{body.opcode}-to-{dest}")
