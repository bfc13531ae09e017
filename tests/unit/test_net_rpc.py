"""Controls sent to other nodes: reply matching, timeouts, disconnects."""

from __future__ import annotations

import asyncio

import pytest

from ctdblab.daemon.net.rpc import ControlClient, ControlError
from ctdblab.daemon.protocol import Control, ReplyControl, decode_packet


def test_reply_matching_timeout_and_disconnect():
    async def main():
        sent = []
        rpc = ControlClient(0, lambda pnn, frame: sent.append((pnn, frame)) or pnn != 9)
        task = asyncio.create_task(rpc.call(1, Control.GET_PNN, timeout=2))
        await asyncio.sleep(0)
        pnn, frame = sent[-1]
        packet = decode_packet(frame)
        assert pnn == 1 and packet.header.destnode == 1 and packet.body.opcode == Control.GET_PNN
        reqid = packet.header.reqid
        assert not rpc.reply_received(2, reqid, ReplyControl(1))      # wrong node: ignored
        assert rpc.reply_received(1, reqid, ReplyControl(0, b"x"))
        assert (await task).data == b"x"
        # Non-zero status raises for call(), not for request().
        task = asyncio.create_task(rpc.call(1, Control.PING, timeout=2))
        await asyncio.sleep(0)
        rpc.reply_received(1, decode_packet(sent[-1][1]).header.reqid, ReplyControl(-1, b"", "nope"))
        with pytest.raises(ControlError, match="nope"):
            await task
        with pytest.raises(ControlError, match="timed out"):
            await rpc.call(1, Control.PING, timeout=0.05)
        task = asyncio.create_task(rpc.request(2, Control.PING, timeout=5))
        await asyncio.sleep(0)
        assert rpc.node_down(2) == 1
        with pytest.raises(ControlError, match="disconnected"):
            await task
        task = asyncio.create_task(rpc.request(2, Control.PING, timeout=5))
        await asyncio.sleep(0)
        assert rpc.node_down(2, "node reconnected while the control waited") == 1
        with pytest.raises(ControlError, match="reconnected"):
            await task
        with pytest.raises(ControlError, match="disconnected"):
            await rpc.request(9, Control.PING)                            # cannot even send
        assert rpc.pending_count() == 0
    asyncio.run(main())
