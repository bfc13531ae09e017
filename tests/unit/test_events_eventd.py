"""The event-daemon protocol (golden bytes from the real 4.17 binaries, round trips, hostile
input) and the server, including Debian's stock ctdb-event binary talking to it."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ctdblab.daemon.events import (
    CTDB_EVENT_RUN_ALL, EventCommand, EventDaemonServer, EventdProtocolError, EventReply,
    EventRequest, EventRunner, RunRequest, ScriptAction, ScriptRequest, StatusReply,
    StatusRequest, WireScript, decode_reply, decode_request, encode_reply, encode_request,
    eventd_socket_path,
)
from ctdblab.daemon.events.eventd import call_eventd, split_args
from ctdblab.daemon.events.eventd_protocol import PacketFramer, Timeval

# Captured between Debian 12's /usr/libexec/ctdb/ctdb-event and ctdb-eventd (2:4.17.12) in test
# mode, through a recording proxy. Scripts: 01.ok (echo "ok $*"), 02.fail (monitor: echo fail;
# exit 2), 03.off (not executable), 04.slow (takeip: sleep 5).  Command sequence: run 5 legacy
# monitor; status legacy monitor; run 1 legacy takeip eth1 198.19.8.1 20; status legacy takeip;
# status legacy never; run 5 legacy startup; status legacy startup; status nosuch startup;
# run 5 nosuch startup.
GOLDEN = [
    ('run monitor', 'req',
     "330000000000000038ffff7f01000000070000006c656761637900080000006d6f6e69746f7200000000"
     "000500000000000000"),
    ('run monitor: ENOEXEC', 'rep',
     "140000000000000038ffff7f0100000008000000"),
    ('status monitor', 'req',
     "270000000000000038ffff7f02000000070000006c656761637900080000006d6f6e69746f7200"),
    ('status monitor: OK + ERROR', 'rep',
     "940000000000000038ffff7f020000000000000002000000020000000600000030312e6f6b00cfb7046b"
     "0000000057fc020000000000cfb7046b00000000d311030000000000000000000c0000006f6b206d6f6e"
     "69746f720a000800000030322e6661696c00cfb7046b00000000f211030000000000cfb7046b00000000"
     "f11803000000000002000000060000006661696c0a00"),
    ('run takeip with args', 'req',
     "450000000000000038ffff7f01000000070000006c6567616379000700000074616b6569700013000000"
     "65746831203139382e31392e382e31203230000100000000000000"),
    ('run takeip: ETIMEDOUT', 'rep',
     "140000000000000038ffff7f010000006e000000"),
    ('status takeip', 'req',
     "260000000000000038ffff7f02000000070000006c6567616379000700000074616b65697000"),
    ('status takeip: OK, OK, DISABLED, TIMEDOUT', 'rep',
     "070100000000000038ffff7f020000000000000092ffffff040000000600000030312e6f6b00cfb7046b"
     "000000001ae4030000000000cfb7046b0000000016ea030000000000000000001e0000006f6b2074616b"
     "6569702065746831203139382e31392e382e312032300a000800000030322e6661696c00cfb7046b0000"
     "00004aea030000000000cfb7046b00000000aaf903000000000000000000000000000700000030332e6f"
     "666600cfb7046b00000000adf9030000000000cfb7046b00000000b4f9030000000000f8ffffff000000"
     "000800000030342e736c6f7700cfb7046b00000000b4f9030000000000d0b7046b000000002cee030000"
     "00000092ffffff00000000"),
    ('status never', 'req',
     "250000000000000038ffff7f02000000070000006c656761637900060000006e6576657200"),
    ('status never: EINVAL', 'rep',
     "140000000000000038ffff7f0200000016000000"),
    ('run startup (NULL args)', 'req',
     "330000000000000038ffff7f01000000070000006c656761637900080000007374617274757000000000"
     "000500000000000000"),
    ('run startup: 0', 'rep',
     "140000000000000038ffff7f0100000000000000"),
    ('status startup', 'req',
     "270000000000000038ffff7f02000000070000006c656761637900080000007374617274757000"),
    ('status startup: 4 scripts', 'rep',
     "f50000000000000038ffff7f020000000000000000000000040000000600000030312e6f6b00d0b7046b"
     "0000000026ae050000000000d0b7046b000000005ab4050000000000000000000c0000006f6b20737461"
     "727475700a000800000030322e6661696c00d0b7046b000000006db4050000000000d0b7046b00000000"
     "96ca05000000000000000000000000000700000030332e6f666600d0b7046b000000009aca0500000000"
     "00d0b7046b00000000a4ca050000000000f8ffffff000000000800000030342e736c6f7700d0b7046b00"
     "000000a5ca050000000000d0b7046b00000000f0cf0500000000000000000000000000"),
    ('status nosuch', 'req',
     "270000000000000038ffff7f02000000070000006e6f7375636800080000007374617274757000"),
    ('status nosuch: ENOENT', 'rep',
     "140000000000000038ffff7f0200000002000000"),
    ('run nosuch', 'req',
     "330000000000000038ffff7f01000000070000006e6f7375636800080000007374617274757000000000"
     "000500000000000000"),
    ('run nosuch: ENOENT', 'rep',
     "140000000000000038ffff7f0100000002000000"),
]

REQID = 0x7FFFFF38          # the first reqid ctdb-event uses (INT_MAX - 200 + 1)


def golden(name: str) -> bytes:
    for n, _, h in GOLDEN:
        if n == name:
            return bytes.fromhex(h)
    raise KeyError(name)


# -- golden bytes ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, direction, hexdata", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_round_trip(name: str, direction: str, hexdata: str) -> None:
    raw = bytes.fromhex(hexdata)
    if direction == "req":
        message = decode_request(raw)
        assert encode_request(message) == raw
    else:
        message = decode_reply(raw)
        assert encode_reply(message) == raw
    assert message.reqid == REQID
    assert message.version == 0          # 4.17 never fills in the version field


def test_golden_request_contents() -> None:
    assert decode_request(golden("run takeip with args")).body == RunRequest(
        "legacy", "takeip", "eth1 198.19.8.1 20", 1, 0)
    assert decode_request(golden("run startup (NULL args)")).body == RunRequest(
        "legacy", "startup", None, 5, 0)
    assert decode_request(golden("status never")).body == StatusRequest("legacy", "never")


def test_golden_reply_contents() -> None:
    assert decode_reply(golden("run monitor: ENOEXEC")).result == errno.ENOEXEC
    assert decode_reply(golden("run takeip: ETIMEDOUT")).result == errno.ETIMEDOUT
    assert decode_reply(golden("status never: EINVAL")).result == errno.EINVAL
    assert decode_reply(golden("status nosuch: ENOENT")).result == errno.ENOENT
    status = decode_reply(golden("status takeip: OK, OK, DISABLED, TIMEDOUT")).status
    assert status.summary == -errno.ETIMEDOUT
    assert [(s.name, s.result) for s in status.scripts] == [
        ("01.ok", 0), ("02.fail", 0), ("03.off", -errno.ENOEXEC), ("04.slow", -errno.ETIMEDOUT)]
    assert status.scripts[0].output == "ok takeip eth1 198.19.8.1 20\n"
    assert status.scripts[2].output is None and status.scripts[3].output is None
    assert status.scripts[3].end.to_float() - status.scripts[3].begin.to_float() == \
        pytest.approx(1.0, abs=0.05)


def test_encoding_our_messages_gives_ctdbs_bytes() -> None:
    assert encode_request(EventRequest(REQID, RunRequest("legacy", "takeip", "eth1 198.19.8.1 20",
                                                         1))) == golden("run takeip with args")
    assert encode_reply(EventReply(REQID, EventCommand.RUN, errno.ETIMEDOUT)) == \
        golden("run takeip: ETIMEDOUT")


def test_script_request_layout() -> None:
    raw = encode_request(EventRequest(7, ScriptRequest("legacy", "03.off", ScriptAction.ENABLE)))
    assert raw == (struct.pack("<IIII", len(raw), 0, 7, 3) + struct.pack("<I", 7) + b"legacy\0"
                   + struct.pack("<I", 7) + b"03.off\0" + struct.pack("<I", 1))


# -- round trips -----------------------------------------------------------------------------
texts = st.one_of(st.none(), st.text(st.characters(blacklist_characters="\0",
                                                   blacklist_categories=("Cs",)), max_size=40))
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-2**31, 2**31 - 1)
timevals = st.builds(Timeval, st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1))
bodies = st.one_of(
    st.builds(RunRequest, texts, texts, texts, u32, u32),
    st.builds(StatusRequest, texts, texts),
    st.builds(ScriptRequest, texts, texts, st.sampled_from(ScriptAction)))
scripts = st.builds(WireScript, texts, timevals, timevals, i32, texts)


@given(st.builds(EventRequest, u32, bodies, u32))
def test_request_round_trip(request: EventRequest) -> None:
    assert decode_request(encode_request(request)) == request


@given(u32, st.sampled_from(EventCommand), i32, i32, st.lists(scripts, max_size=4), u32)
def test_reply_round_trip(reqid, cmd, result, summary, script_list, version) -> None:
    status = StatusReply(summary, tuple(script_list)) \
        if cmd is EventCommand.STATUS and result == 0 else None
    reply = EventReply(reqid, cmd, result, status, version)
    assert decode_reply(encode_reply(reply)) == reply


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_hostile_bytes_only_raise_protocol_errors(data: bytes) -> None:
    for decode in (decode_request, decode_reply):
        try:
            decode(data)
        except EventdProtocolError:
            pass
    try:
        PacketFramer().feed(data)
    except EventdProtocolError:
        pass


@settings(max_examples=200)
@given(st.builds(EventRequest, u32, bodies, u32), st.data())
def test_truncated_and_mutated_requests(request: EventRequest, data) -> None:
    raw = encode_request(request)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(EventdProtocolError):
        decode_request(raw[:cut])
    pos = data.draw(st.integers(0, len(raw) - 1))
    mutated = bytearray(raw)
    mutated[pos] ^= data.draw(st.integers(1, 255))
    try:
        decode_request(bytes(mutated))
    except EventdProtocolError:
        pass


@pytest.mark.parametrize("raw, words", [
    (struct.pack("<IIII", 16, 0, 1, 9), "unknown command 9"),
    (struct.pack("<IIII", 16, 0, 1, 2), "truncated at component length"),
    (struct.pack("<IIII", 99, 0, 1, 2) + struct.pack("<II", 0, 0), "length field says 99"),
    (struct.pack("<IIII", 28, 0, 1, 2) + struct.pack("<I", 4) + b"abcd" + struct.pack("<I", 0),
     "not one NUL-terminated"),
    (struct.pack("<IIII", 28, 0, 1, 2) + struct.pack("<I", 4) + b"a\0c\0" + struct.pack("<I", 0),
     "not one NUL-terminated"),
    (struct.pack("<IIII", 28, 0, 1, 2) + struct.pack("<III", 0, 0, 7), "trailing"),
    (struct.pack("<IIII", 28, 0, 1, 3) + struct.pack("<III", 0, 0, 2), "invalid script action"),
])
def test_malformed_requests_are_named(raw: bytes, words: str) -> None:
    with pytest.raises(EventdProtocolError, match=words):
        decode_request(raw)


def test_negative_script_count_rejected() -> None:
    raw = struct.pack("<IIIIiii", 28, 0, 1, 2, 0, 0, -1)
    with pytest.raises(EventdProtocolError, match="negative script count"):
        decode_reply(raw)


def test_encoder_refuses_nul_in_strings_and_out_of_range_numbers() -> None:
    with pytest.raises(EventdProtocolError):
        encode_request(EventRequest(1, StatusRequest("leg\0acy", "monitor")))
    with pytest.raises(EventdProtocolError):
        encode_request(EventRequest(1, RunRequest("legacy", "monitor", None, 2**32)))
    with pytest.raises(EventdProtocolError):
        encode_reply(EventReply(1, EventCommand.STATUS, 0, None))


def test_framer_splits_and_joins() -> None:
    a, b = golden("run monitor"), golden("status monitor")
    framer = PacketFramer()
    stream = a + b
    got = []
    for i in range(0, len(stream), 5):
        got += framer.feed(stream[i:i + 5])
    assert got == [a, b] and framer.pending == 0
    with pytest.raises(EventdProtocolError, match="out of range"):
        PacketFramer().feed(struct.pack("<I", 4))
    with pytest.raises(EventdProtocolError, match="out of range"):
        PacketFramer().feed(struct.pack("<I", 1 << 30))


def test_split_args_like_strtok() -> None:
    assert split_args(None) == []
    assert split_args("  eth1   198.19.8.1 20 ") == ["eth1", "198.19.8.1", "20"]


def test_timeval_from_float() -> None:
    assert Timeval.from_float(12.5) == Timeval(12, 500000)
    assert Timeval.from_float(12.9999999) == Timeval(13, 0)


# -- server dispatch -------------------------------------------------------------------------
def make_scripts(d: Path) -> None:
    d.mkdir(parents=True)
    for name, body, mode in (
            ("01.ok", 'echo "ok $*"\n', 0o755),
            ("02.fail", '[ "$1" = monitor ] && { echo fail; exit 2; }\nexit 0\n', 0o755),
            ("03.off", "exit 0\n", 0o644),
            ("04.slow", '[ "$1" = takeip ] && exec sleep 5\nexit 0\n', 0o755)):
        path = d / f"{name}.script"
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(mode)


def test_dispatch(tmp_path: Path) -> None:
    legacy = tmp_path / "events" / "legacy"
    make_scripts(legacy)
    runner = EventRunner(legacy, kill_grace=0.2)
    server = EventDaemonServer({"legacy": runner}, tmp_path / "run" / "eventd.socket")

    async def ask(body):
        return await server.dispatch(EventRequest(5, body))

    async def go():
        replies = {
            "never": await ask(StatusRequest("legacy", "monitor")),
            "monitor": await ask(RunRequest("legacy", "monitor", None, 5)),
            "monitor status": await ask(StatusRequest("legacy", "monitor")),
            "takeip": await ask(RunRequest("legacy", "takeip", "eth1 198.19.8.1 20", 1)),
            "startup": await ask(RunRequest("legacy", "startup", None, 5)),
            "startup status": await ask(StatusRequest("legacy", "startup")),
            "runall": await ask(RunRequest("legacy", "monitor", None, 5, CTDB_EVENT_RUN_ALL)),
            "runall status": await ask(StatusRequest("legacy", "monitor")),
            "nosuch run": await ask(RunRequest("nosuch", "startup", None, 5)),
            "nosuch status": await ask(StatusRequest("nosuch", "startup")),
            "null event": await ask(RunRequest("legacy", None, None, 5)),
            "enable": await ask(ScriptRequest("legacy", "03.off", ScriptAction.ENABLE)),
            "enable missing": await ask(ScriptRequest("legacy", "99.x", ScriptAction.ENABLE)),
        }
        await runner.close()
        return replies
    r = asyncio.run(go())
    assert r["never"].result == errno.EINVAL
    assert r["monitor"].result == errno.ENOEXEC
    status = r["monitor status"].status
    assert status.summary == 2 and [s.name for s in status.scripts] == ["01.ok", "02.fail"]
    assert status.scripts[1].output == "fail\n"
    assert r["takeip"].result == errno.ETIMEDOUT
    assert r["startup"].result == 0
    assert [(s.name, s.result, s.output) for s in r["startup status"].status.scripts] == [
        ("01.ok", 0, "ok startup\n"), ("02.fail", 0, None), ("03.off", -errno.ENOEXEC, None),
        ("04.slow", 0, None)]
    assert r["runall"].result == errno.ENOEXEC
    assert [s.name for s in r["runall status"].status.scripts] == [
        "01.ok", "02.fail", "03.off", "04.slow"]
    assert r["nosuch run"].result == errno.ENOENT and r["nosuch status"].result == errno.ENOENT
    assert r["null event"].result == errno.EINVAL
    assert r["enable"].result == 0 and os.access(legacy / "03.off.script", os.X_OK)
    assert r["enable missing"].result == errno.ENOENT
    for reply in r.values():
        assert reply.reqid == 5
        encode_reply(reply)


# -- the socket ------------------------------------------------------------------------------
def test_socket_serves_concurrent_requests_and_drops_bad_clients(tmp_path: Path) -> None:
    legacy = tmp_path / "events" / "legacy"
    make_scripts(legacy)
    runner = EventRunner(legacy)
    sock = eventd_socket_path(tmp_path / "run")

    async def go():
        server = EventDaemonServer({"legacy": runner}, sock)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            # a slow RUN and a STATUS on one connection: the STATUS answer comes first
            (legacy / "02.fail.script").write_text("#!/bin/sh\nsleep 0.5\n")
            writer.write(encode_request(EventRequest(1, RunRequest("legacy", "startup", None, 5))))
            writer.write(encode_request(EventRequest(2, StatusRequest("legacy", "startup"))))
            await writer.drain()
            framer, order = PacketFramer(), []
            while len(order) < 2:
                for packet in framer.feed(await asyncio.wait_for(reader.read(4096), 5)):
                    order.append(decode_reply(packet))
            writer.close()
            # a client sending garbage is disconnected
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(struct.pack("<IIII", 16, 0, 1, 9))
            await writer.drain()
            eof = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
            # the server still works
            reply = await call_eventd(sock, EventRequest(3, StatusRequest("legacy", "startup")), 5)
            return order, eof, reply
        finally:
            await server.close()
            await runner.close()
    order, eof, reply = asyncio.run(go())
    assert [(r.reqid, r.result) for r in order] == [(2, errno.EINVAL), (1, 0)]
    assert eof == b""
    assert reply.result == 0 and reply.status.summary == 0
    assert not sock.exists()


# -- Debian's stock ctdb-event against our server --------------------------------------------
CTDB_EVENT = Path("/usr/libexec/ctdb/ctdb-event")


@pytest.mark.skipif(not CTDB_EVENT.exists(), reason="Debian's ctdb package is not installed")
def test_stock_ctdb_event_binary_against_our_server(tmp_path: Path) -> None:
    # ctdb-event 4.17 looks for $CTDB_BASE/run/eventd.socket in test mode (ctdb/common/path.c);
    # "script list" reads $CTDB_BASE/events/legacy and $CTDB_BASE/share/events/legacy itself.
    base = tmp_path
    legacy = base / "events" / "legacy"
    make_scripts(legacy)
    (base / "share" / "events" / "legacy").mkdir(parents=True)
    runner = EventRunner(legacy, kill_grace=0.2)
    env = dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(base))
    env.pop("CTDB_EVENT_RUN_ALL", None)

    async def tool(*argv: str, extra: dict[str, str] | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**env, **(extra or {})})
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        return proc.returncode, out.decode()

    async def go():
        server = EventDaemonServer({"legacy": runner}, eventd_socket_path(base / "run"))
        await server.start()
        e = str(CTDB_EVENT)
        try:
            return [
                await tool(e, "status", "legacy", "monitor"),
                await tool(e, "run", "5", "legacy", "monitor"),
                await tool(e, "status", "legacy", "monitor"),
                await tool(e, "run", "1", "legacy", "takeip", "eth1", "198.19.8.1", "20"),
                await tool(e, "status", "legacy", "takeip"),
                await tool(e, "run", "5", "legacy", "startup"),
                await tool(e, "status", "nosuch", "startup"),
                await tool(e, "script", "list", "legacy"),
                await tool("ctdb", "scriptstatus"),
                await tool("ctdb", "event", "run", "5", "legacy", "monitor",
                           extra={"CTDB_EVENT_RUN_ALL": "1"}),
                await tool("ctdb", "event", "status", "legacy", "monitor"),
            ]
        finally:
            await server.close()
            await runner.close()
    if shutil.which("ctdb") is None:
        pytest.skip("ctdb CLI not installed")
    out = asyncio.run(go())
    assert out[0] == (errno.EINVAL, "Event monitor has never run in legacy\n")
    assert out[1] == (errno.ENOEXEC, "Event monitor in legacy failed\n")
    rc, text = out[2]
    lines = text.splitlines()
    assert rc == 2 and lines[0].startswith("01.ok                OK         0.0")
    assert lines[1].startswith("02.fail              ERROR      0.0")
    assert lines[2] == "  OUTPUT: fail"
    assert out[3] == (errno.ETIMEDOUT, "Event takeip in legacy timed out\n")
    rc, text = out[4]
    assert rc == errno.ETIMEDOUT
    assert [line.split()[:2] for line in text.splitlines() if not line.startswith(" ")] == [
        ["01.ok", "OK"], ["02.fail", "OK"], ["03.off", "DISABLED"], ["04.slow", "TIMEDOUT"]]
    assert out[5] == (0, "")
    assert out[6] == (errno.ENOENT, "Event dir for nosuch does not exist\n")
    assert out[7] == (0, "* 01.ok\n* 02.fail\n  03.off\n* 04.slow\n")
    rc, text = out[8]                                     # ctdb scriptstatus = status monitor
    assert rc == 0 and "02.fail              ERROR" in text
    assert out[9] == (errno.ENOEXEC, "Event monitor in legacy failed\n")
    rc, text = out[10]                                    # RUN_ALL ran every script
    assert rc == 2
    assert [line.split()[0] for line in text.splitlines() if not line.startswith(" ")
            and line.strip()] == ["01.ok", "02.fail", "03.off", "04.slow"]
