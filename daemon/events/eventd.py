"""A server for CTDB's event-daemon protocol, so Debian's stock ``ctdb-event`` (which
``ctdb event ...`` and ``ctdb scriptstatus`` exec) works against pyctdbd.

ctdb-event 4.17 connects to ``<rundir>/eventd.socket``: ``/run/ctdb/eventd.socket`` normally,
``$CTDB_BASE/run/eventd.socket`` when ``CTDB_TEST_MODE`` is set (``ctdb/common/path.c``;
``CTDB_SOCKET`` only moves ctdbd's socket, not eventd's). Only ``run`` and ``status`` use the
socket; ``script list/enable/disable`` work on the directories directly (``/etc/ctdb/events/<c>``
and ``/usr/share/ctdb/events/<c>``). We still serve the SCRIPT command, as ctdb-eventd does.

Requests on one connection are served concurrently and answered in completion order (the client
matches replies by reqid). A packet that does not decode (or a length prefix out of range) is logged
and the connection is closed (ctdb-eventd 4.17 drops such a client with EPROTO; verified).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Mapping

from .eventd_protocol import (
    EventdProtocolError, EventReply, EventRequest, PacketFramer, RunRequest,
    ScriptAction, ScriptRequest, StatusReply, StatusRequest, Timeval, WireScript, decode_reply,
    decode_request, encode_reply, encode_request,
)
from .runner import EventResult, EventRunner
from .scriptdir import EventScriptError

log = logging.getLogger("ctdblab.daemon.events.eventd")

DEFAULT_RUNDIR = Path("/run/ctdb")


def eventd_socket_path(rundir: str | os.PathLike[str] = DEFAULT_RUNDIR) -> Path:
    """Where ctdb-event looks: ``<rundir>/eventd.socket``."""
    return Path(rundir) / "eventd.socket"


def run_reply_result(result: EventResult) -> int:
    """The RUN reply's result for a finished event (``event_cmd_run_done``)."""
    if result.cancelled:
        return errno.ECANCELED
    if result.timed_out:
        return errno.ETIMEDOUT
    return errno.ENOEXEC if result.summary != 0 else 0


def status_body(result: EventResult) -> StatusReply:
    return StatusReply(result.summary, tuple(
        WireScript(s.name, Timeval.from_float(s.begin), Timeval.from_float(s.end), s.result,
                   s.output or None)
        for s in result.scripts))


def split_args(args: str | None) -> list[str]:
    """ctdb-eventd splits the argument string with strtok(" "): empty words disappear."""
    return [] if args is None else [word for word in args.split(" ") if word]


class EventDaemonServer:
    """Serves ``components`` (name -> runner; CTDB has only "legacy") on a Unix socket."""

    def __init__(self, components: Mapping[str, EventRunner],
                 socket_path: str | os.PathLike[str]) -> None:
        self.components = dict(components)
        self.socket_path = Path(socket_path)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- dispatch (no sockets involved; unit-testable) -----------------------------------------
    async def handle_packet(self, packet: bytes) -> bytes | None:
        """Decode one request and return the encoded reply (None: ignore the packet)."""
        try:
            request = decode_request(packet)
        except EventdProtocolError as exc:
            log.error("Invalid packet received, buflen=%d: %s", len(packet), exc)
            return None
        reply = await self.dispatch(request)
        return encode_reply(reply)

    async def dispatch(self, request: EventRequest) -> EventReply:
        body = request.body
        try:
            if isinstance(body, RunRequest):
                result, status = await self._run(body), None
            elif isinstance(body, StatusRequest):
                result, status = self._status(body)
            else:
                result, status = self._script(body), None
        except Exception:                       # never let one request kill the server
            log.exception("Command %s failed", request.cmd.name)
            result, status = errno.EIO, None
        return EventReply(request.reqid, request.cmd, result, status)

    def _runner(self, component: str | None) -> EventRunner | int:
        """The component's runner, or the errno ctdb-eventd answers: EINVAL when the request
        names no component, ENOENT for an unknown one."""
        if component is None:
            return errno.EINVAL
        return self.components.get(component, errno.ENOENT)

    async def _run(self, body: RunRequest) -> int:
        runner = self._runner(body.component)
        if isinstance(runner, int):
            return runner
        if body.event is None:
            return errno.EINVAL
        try:
            result = await runner.run(body.event, split_args(body.args), float(body.timeout),
                                      run_all=body.run_all)
        except EventScriptError as exc:
            return exc.errno
        except ValueError:
            return errno.EINVAL
        return run_reply_result(result)

    def _status(self, body: StatusRequest) -> tuple[int, StatusReply | None]:
        runner = self._runner(body.component)
        if isinstance(runner, int):
            return runner, None
        last = runner.last_result(body.event) if body.event is not None else None
        if last is None:
            return errno.EINVAL, None           # "Event X has never run in legacy"
        return 0, status_body(last)

    def _script(self, body: ScriptRequest) -> int:
        runner = self._runner(body.component)
        if isinstance(runner, int):
            return runner
        if body.script is None:
            return errno.EINVAL
        try:
            if body.action == ScriptAction.ENABLE:
                runner.enable_script(body.script)
            else:
                runner.disable_script(body.script)
        except EventScriptError as exc:
            return exc.errno
        return 0

    # -- socket --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.socket_path.unlink()           # a stale socket from a previous run
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._serve_client,
                                                       path=str(self.socket_path))
        log.info("listening on %s", self.socket_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        framer = PacketFramer()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    packets = framer.feed(data)
                except EventdProtocolError as exc:
                    log.error("closing event client connection: %s", exc)
                    break
                try:
                    requests = [decode_request(packet) for packet in packets]
                except EventdProtocolError as exc:
                    # ctdb-eventd drops the client on a packet it cannot parse (EPROTO)
                    log.error("Invalid packet received, closing the connection: %s", exc)
                    break
                for request in requests:
                    task = asyncio.get_running_loop().create_task(self._answer(request, writer))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, request: EventRequest, writer: asyncio.StreamWriter) -> None:
        reply = encode_reply(await self.dispatch(request))
        if writer.is_closing():
            return                              # client gone: the event still ran (as eventd)
        try:
            writer.write(reply)
            await writer.drain()
        except ConnectionError:
            pass


async def call_eventd(socket_path: str | os.PathLike[str], request: EventRequest,
                      timeout: float | None = None) -> EventReply:
    """Send one request to an event daemon and wait for its reply (a minimal client)."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(encode_request(request))
        await writer.drain()
        framer = PacketFramer()
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                raise EventdProtocolError("event daemon closed the connection without a reply")
            for packet in framer.feed(data):
                reply = decode_reply(packet)
                if reply.reqid == request.reqid:
                    return reply
    finally:
        writer.close()


__all__ = ["EventDaemonServer", "call_eventd", "eventd_socket_path", "run_reply_result",
           "split_args", "status_body"]
