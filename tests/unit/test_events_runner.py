"""EventRunner: CTDB 4.17's event-script rules (ordering, statuses, timeouts, serialization)."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

import pytest

from ctdblab.daemon.events import (
    EventResult, EventRunner, EventScriptError, ScriptStatus, format_status, list_scripts,
)
from ctdblab.daemon.events.runner import result_of_returncode


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def script(directory: Path, name: str, body: str, executable: bool = True) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def sdir(tmp_path: Path) -> Path:
    d = tmp_path / "etc" / "events" / "legacy"
    d.mkdir(parents=True)
    return d


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return process_gone(pid)


async def wait_for_file(path: Path, within: float = 5.0) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not appear")


# -- script discovery and ordering -----------------------------------------------------------
def test_only_ctdb_script_names_run_in_byte_order(sdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    body = f'echo "$(basename "$0") $1" >> {log}\n'
    for name in ("20.b.script", "10.a.script", "05.c.script", "15.x.y.script", "10.B.script",
                 "README", "10.a.script~", "1.short.script", "10.a.sh", "aa.b.script",
                 "10.script"):
        script(sdir, name, body)
    result = run(EventRunner(sdir).run("startup"))
    ran = [line.split()[0] for line in log.read_text().splitlines()]
    # 4.17 uses fnmatch("[0-9][0-9].*.script"): extra dots are allowed, "~" files are not.
    assert ran == ["05.c.script", "10.B.script", "10.a.script", "15.x.y.script", "20.b.script"]
    assert [s.name for s in result.scripts] == ["05.c", "10.B", "10.a", "15.x.y", "20.b"]
    assert result.ok and all(s.status is ScriptStatus.OK for s in result.scripts)


def test_arguments_and_argv(sdir: Path) -> None:
    script(sdir, "10.args.script", 'echo "$# [$*] $0"\n')
    result = run(EventRunner(sdir).run("takeip", ["eth1", "198.19.8.1", "20"]))
    assert result.scripts[0].output == f"4 [takeip eth1 198.19.8.1 20] {sdir}/10.args.script\n"
    assert result.args == ("eth1", "198.19.8.1", "20")


def test_no_scripts_is_success(sdir: Path) -> None:
    runner = EventRunner(sdir)
    result = run(runner.run("monitor"))
    assert result.ok and result.scripts == ()
    assert runner.last_result("monitor") == result


def test_missing_directory_raises_enoent(tmp_path: Path) -> None:
    with pytest.raises(EventScriptError) as info:
        run(EventRunner(tmp_path / "nope").run("monitor"))
    assert info.value.errno == errno.ENOENT


def test_bad_event_names_rejected(sdir: Path) -> None:
    runner = EventRunner(sdir)
    for bad in ("", "mon\0itor"):
        with pytest.raises(ValueError):
            run(runner.run(bad))
    with pytest.raises(ValueError):
        run(runner.run("takeip", ["a\0b"]))
    with pytest.raises(ValueError):
        run(runner.run("monitor", timeout=-1))


# -- failures and statuses -------------------------------------------------------------------
def test_failure_stops_the_chain_unless_run_all(sdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "30.ran"
    script(sdir, "10.ok.script", "exit 0\n")
    script(sdir, "20.bad.script", "echo broken; exit 3\n")
    script(sdir, "30.after.script", f"touch {marker}\n")
    runner = EventRunner(sdir)

    result = run(runner.run("monitor"))
    assert result.summary == 3 and not result.ok
    assert [s.name for s in result.scripts] == ["10.ok", "20.bad"]   # later ones not reported
    assert result.failed_script.name == "20.bad"
    assert result.scripts[1].status is ScriptStatus.ERROR
    assert result.scripts[1].output == "broken\n"
    assert result.scripts[1].returncode == 3
    assert not marker.exists()

    result = run(runner.run("monitor", run_all=True))
    assert result.summary == 3
    assert [s.name for s in result.scripts] == ["10.ok", "20.bad", "30.after"]
    assert marker.exists()


def test_disabled_scripts_are_listed_and_skipped(sdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script(sdir, "10.off.script", f"touch {marker}\n", executable=False)
    script(sdir, "20.on.script", "exit 0\n")
    result = run(EventRunner(sdir).run("monitor"))
    assert result.ok
    assert [(s.name, s.status) for s in result.scripts] == [
        ("10.off", ScriptStatus.DISABLED), ("20.on", ScriptStatus.OK)]
    assert result.scripts[0].result == -errno.ENOEXEC
    assert not marker.exists()


@pytest.mark.parametrize("body, result, status", [
    ("exit 0\n", 0, ScriptStatus.OK),
    ("exit 1\n", 1, ScriptStatus.ERROR),
    ("exit 255\n", 255, ScriptStatus.ERROR),
    ("exit 63\n", 63, ScriptStatus.ERROR),
    # run_proc reserves 64+errno for exec failures: CTDB reads these as -errno
    ("exit 64\n", 0, ScriptStatus.OK),
    ("exit 65\n", -errno.EPERM, ScriptStatus.CANNOT_RUN),
    ("exit 77\n", -errno.ENOEXEC, ScriptStatus.DISABLED),
    ("exit 174\n", -errno.ETIMEDOUT, ScriptStatus.TIMEDOUT),
    ("kill -TERM $$\n", -errno.EINTR, ScriptStatus.CANNOT_RUN),
])
def test_exit_code_statuses(sdir: Path, body: str, result: int, status: ScriptStatus) -> None:
    script(sdir, "10.x.script", body)
    res = run(EventRunner(sdir).run("monitor"))
    assert res.scripts[0].result == result
    assert res.scripts[0].status is status
    assert res.summary == (0 if result in (0, -errno.ENOEXEC) else result)


def test_result_mapping_matches_ctdb() -> None:
    assert result_of_returncode(-9) == -errno.EINTR
    assert result_of_returncode(64 + errno.ENOENT) == -errno.ENOENT
    assert result_of_returncode(254) == -(254 - 64)
    assert result_of_returncode(2) == 2


def test_dangling_symlink_fails_with_enoent(sdir: Path) -> None:
    (sdir / "10.gone.script").symlink_to(sdir / "nowhere")
    script(sdir, "20.ok.script", "exit 0\n")
    runner = EventRunner(sdir)
    assert [(s.name, s.enabled) for s in runner.script_list()] == [("10.gone", False),
                                                                    ("20.ok", True)]
    result = run(runner.run("monitor"))
    assert result.summary == -errno.ENOENT
    assert [s.name for s in result.scripts] == ["10.gone"]


def test_bad_interpreter_cannot_run(sdir: Path) -> None:
    path = sdir / "10.bad.script"
    path.write_text("#!/nonexistent/interpreter\n")
    path.chmod(0o755)
    result = run(EventRunner(sdir).run("monitor"))
    assert result.scripts[0].result == -errno.ENOENT
    assert result.scripts[0].status is ScriptStatus.CANNOT_RUN


# -- output ----------------------------------------------------------------------------------
def test_output_is_capped_at_511_bytes_and_includes_stderr(sdir: Path) -> None:
    script(sdir, "10.chatty.script",
           "echo to-stderr >&2\nhead -c 200000 /dev/zero | tr '\\0' x\nexit 1\n")
    result = run(EventRunner(sdir).run("monitor"))
    out = result.scripts[0].output
    assert len(out.encode()) == 511
    assert out.startswith("to-stderr\nxxx")


def test_output_of_a_background_grandchild_does_not_delay_the_result(sdir: Path) -> None:
    # The script exits at once but leaves a child holding its output pipe open.
    script(sdir, "10.bg.script", "echo hello\n(sleep 3; echo late) &\nexit 0\n")
    t0 = time.monotonic()
    result = run(EventRunner(sdir).run("startup"))
    assert time.monotonic() - t0 < 2.0
    assert result.ok and result.scripts[0].output == "hello\n"


def test_non_utf8_and_nul_output(sdir: Path) -> None:
    script(sdir, "10.bin.script", "printf 'a\\377b\\000c'\nexit 1\n")
    result = run(EventRunner(sdir).run("monitor"))
    assert result.scripts[0].output == "a\ufffdbc"


# -- timeouts --------------------------------------------------------------------------------
def test_timeout_kills_the_whole_process_group(sdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script(sdir, "10.hang.script",
           f"sleep 30 &\necho $! > {pidfile}\necho started\nsleep 30\n")
    runner = EventRunner(sdir, kill_grace=1.0)

    async def go():
        t0 = time.monotonic()
        result = await runner.run("takeip", ["eth1", "198.19.8.1", "20"], timeout=0.5)
        return result, time.monotonic() - t0
    result, elapsed = run(go())
    assert 0.4 <= elapsed < 2.0
    assert result.timed_out and result.summary == -errno.ETIMEDOUT
    hung = result.scripts[0]
    assert hung.status is ScriptStatus.TIMEDOUT and hung.output == "started\n"
    child = int(pidfile.read_text())
    assert wait_gone(child, 1.0), "the script's background child survived SIGTERM"


def test_timeout_escalates_to_sigkill(sdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # An ignored SIGTERM is inherited by the sleep too.
    script(sdir, "10.stubborn.script", f"trap '' TERM\necho $$ > {pidfile}\nsleep 30\n")
    runner = EventRunner(sdir, kill_grace=0.6)

    async def go():
        result = await runner.run("monitor", timeout=0.3)
        pid = int(pidfile.read_text())
        await asyncio.sleep(0.2)
        alive_after_term = not process_gone(pid)
        await asyncio.sleep(1.0)
        return result, pid, alive_after_term, process_gone(pid)
    result, pid, alive_after_term, gone_later = run(go())
    assert result.timed_out
    assert alive_after_term, "SIGTERM should have been ignored"
    assert gone_later, "SIGKILL after the grace did not come"


def test_timeout_covers_the_whole_event(sdir: Path) -> None:
    script(sdir, "10.slow.script", "sleep 0.4\n")
    script(sdir, "20.slow.script", "sleep 0.4\n")
    script(sdir, "30.never.script", "exit 0\n")
    result = run(EventRunner(sdir, kill_grace=0.2).run("recovered", timeout=0.6))
    assert [(s.name, s.status) for s in result.scripts] == [
        ("10.slow", ScriptStatus.OK), ("20.slow", ScriptStatus.TIMEDOUT)]
    assert result.timed_out


def test_timeout_zero_times_out_at_once(sdir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script(sdir, "10.x.script", f"touch {marker}\n")
    result = run(EventRunner(sdir).run("monitor", timeout=0))
    assert result.timed_out and result.scripts[0].status is ScriptStatus.TIMEDOUT
    assert not marker.exists()


def test_run_all_after_timeout_marks_the_rest_timed_out(sdir: Path) -> None:
    script(sdir, "10.slow.script", "sleep 5\n")
    script(sdir, "20.ok.script", "exit 0\n")
    result = run(EventRunner(sdir, kill_grace=0.2).run("monitor", timeout=0.3, run_all=True))
    assert [s.status for s in result.scripts] == [ScriptStatus.TIMEDOUT, ScriptStatus.TIMEDOUT]


def test_no_timeout(sdir: Path) -> None:
    script(sdir, "10.x.script", "sleep 0.2\n")
    assert run(EventRunner(sdir).run("monitor", timeout=None)).ok


# -- serialization ---------------------------------------------------------------------------
def test_new_event_cancels_a_running_monitor(sdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "monitor.pid"
    script(sdir, "10.x.script",
           f'if [ "$1" = monitor ] && [ -e {tmp_path}/slow ]; then echo $$ > {pidfile}; '
           f'sleep 30; fi\nexit 0\n')
    runner = EventRunner(sdir)

    async def go():
        first = await runner.run("monitor")                 # a completed monitor
        (tmp_path / "slow").touch()
        monitor = asyncio.ensure_future(runner.run("monitor"))
        pid = int(await wait_for_file(pidfile))
        t0 = time.monotonic()
        takeip = await runner.run("takeip", ["eth1", "198.19.8.1", "20"])
        return first, await monitor, takeip, time.monotonic() - t0, pid
    first, cancelled, takeip, elapsed, pid = run(go())
    assert cancelled.cancelled and cancelled.summary == -errno.ECANCELED
    assert takeip.ok and elapsed < 2.0
    assert runner.last_result("monitor") == first           # state unchanged
    assert runner.last_result("takeip") == takeip
    assert wait_gone(pid, 1.0), "the cancelled monitor's script was not killed"


def test_monitor_is_dropped_while_another_event_runs(sdir: Path) -> None:
    script(sdir, "10.x.script", '[ "$1" = takeip ] && sleep 0.5\nexit 0\n')
    runner = EventRunner(sdir)

    async def go():
        takeip = asyncio.ensure_future(runner.run("takeip", ["eth1", "198.19.8.1", "20"]))
        while runner.running_event != "takeip":
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        monitor = await runner.run("monitor")
        return monitor, time.monotonic() - t0, await takeip
    monitor, elapsed, takeip = run(go())
    assert monitor.cancelled and monitor.scripts == ()
    assert elapsed < 0.1
    assert takeip.ok
    assert runner.last_result("monitor") is None


def test_other_events_queue_in_order_and_never_overlap(sdir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    script(sdir, "10.x.script", f'echo "start $1" >> {log}\nsleep 0.15\necho "end $1" >> {log}\n')
    runner = EventRunner(sdir)

    async def go():
        tasks = [asyncio.ensure_future(runner.run(ev)) for ev in
                 ("startrecovery", "recovered", "ipreallocated")]
        await asyncio.sleep(0.05)
        assert runner.running_event == "startrecovery"
        assert runner.queued_events == ["recovered", "ipreallocated"]
        return await asyncio.gather(*tasks)
    results = run(go())
    assert all(r.ok for r in results)
    assert log.read_text().split("\n")[:-1] == [
        "start startrecovery", "end startrecovery", "start recovered", "end recovered",
        "start ipreallocated", "end ipreallocated"]


def test_monitor_during_the_event_that_cancelled_a_monitor_is_dropped(sdir: Path, tmp_path: Path) -> None:
    # monitor A runs; takeip cancels it and is queued; monitor B arrives while takeip runs:
    # B is dropped (CTDB: "monitor requested while another event runs").
    script(sdir, "10.x.script", '[ "$1" = monitor ] && sleep 0.3\n[ "$1" = takeip ] && sleep 0.3\n'
                                'exit 0\n')
    runner = EventRunner(sdir)

    async def go():
        a = asyncio.ensure_future(runner.run("monitor"))
        await asyncio.sleep(0.1)
        t = asyncio.ensure_future(runner.run("takeip", ["e", "198.19.8.1", "20"]))
        while runner.running_event != "takeip":
            await asyncio.sleep(0.01)
        b = await runner.run("monitor")
        return await a, await t, b, await runner.run("monitor")
    a, t, b, c = run(go())
    assert a.cancelled and t.ok and b.cancelled and c.ok


def test_the_loop_keeps_running_while_scripts_run(sdir: Path) -> None:
    script(sdir, "10.x.script", "sleep 0.5\n")
    runner = EventRunner(sdir)

    async def go():
        ticks = 0
        task = asyncio.ensure_future(runner.run("monitor"))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.02)
        return ticks
    assert run(go()) >= 10


def test_close_kills_the_running_event_and_fails_the_queue(sdir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script(sdir, "10.x.script", f'[ "$1" = startup ] && echo $$ > {pidfile}\nsleep 30\n')
    runner = EventRunner(sdir)

    async def go():
        first = asyncio.ensure_future(runner.run("startup"))
        second = asyncio.ensure_future(runner.run("recovered"))
        pid = int(await wait_for_file(pidfile))
        await runner.close()
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        return pid, outcomes
    pid, outcomes = run(go())
    assert all(isinstance(o, EventScriptError) and o.errno == errno.ESHUTDOWN for o in outcomes)
    assert wait_gone(pid, 1.0)


# -- environment and descriptors -------------------------------------------------------------
def test_environment(sdir: Path, tmp_path: Path) -> None:
    vardir = tmp_path / "var" / "scripts"
    script(sdir, "10.env.script",
           'echo "$CTDB_BASE|$CTDB_SCRIPT_VARDIR|$CTDB_DEBUGLEVEL|$CTDB_LOGGING|$EXTRA|$(pwd)"\n'
           'exit 1\n')
    runner = EventRunner(sdir, vardir=vardir,
                         env={"CTDB_LOGGING": "file:/tmp/x.log", "EXTRA": "yes"})
    out = run(runner.run("monitor")).scripts[0].output.strip()
    assert out == f"{tmp_path / 'etc'}|{vardir}|NOTICE|file:/tmp/x.log|yes|/"
    assert vardir.is_dir()
    explicit = EventRunner(sdir, env={"CTDB_BASE": "/elsewhere", "CTDB_DEBUGLEVEL": "DEBUG"})
    out = run(explicit.run("monitor")).scripts[0].output.strip()
    assert out.startswith("/elsewhere||DEBUG|")


def test_scripts_inherit_no_descriptors_and_stdin_is_devnull(sdir: Path) -> None:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(read_fd, True)
    os.set_inheritable(write_fd, True)
    try:
        script(sdir, "10.fds.script",
               f'[ -e /proc/$$/fd/{read_fd} ] && echo LEAK-r\n'
               f'[ -e /proc/$$/fd/{write_fd} ] && echo LEAK-w\n'
               'readlink /proc/$$/fd/0\nexit 1\n')
        out = run(EventRunner(sdir).run("monitor")).scripts[0].output
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert "LEAK" not in out
    assert out.strip() == "/dev/null"


def test_scripts_run_in_their_own_process_group(sdir: Path) -> None:
    script(sdir, "10.pg.script", 'ps -o pgid= -p $$ | tr -d " "; echo $$\nexit 1\n')
    pgid, pid = run(EventRunner(sdir).run("monitor")).scripts[0].output.split()
    assert pgid == pid and int(pgid) != os.getpgrp()


# -- enable / disable ------------------------------------------------------------------------
def test_enable_disable_by_chmod(sdir: Path, tmp_path: Path) -> None:
    script(sdir, "10.a.script", "exit 0\n")
    script(sdir, "20.b.script", "exit 0\n", executable=False)
    (tmp_path / "target.script").write_text("#!/bin/sh\n")
    (sdir / "30.link.script").symlink_to(tmp_path / "target.script")
    runner = EventRunner(sdir)
    assert [(s.name, s.enabled) for s in runner.script_list()] == [
        ("10.a", True), ("20.b", False), ("30.link", False)]

    runner.disable_script("10.a")
    runner.enable_script("20.b.script")                      # the suffix is optional
    assert (sdir / "10.a.script").stat().st_mode & 0o777 == 0o644
    assert (sdir / "20.b.script").stat().st_mode & 0o777 == 0o755
    result = run(runner.run("monitor"))
    assert [s.status for s in result.scripts] == [ScriptStatus.DISABLED, ScriptStatus.OK,
                                                   ScriptStatus.DISABLED]

    for name, err in (("99.none", errno.ENOENT), ("30.link", errno.EINVAL),
                      ("../etc", errno.EINVAL)):
        with pytest.raises(EventScriptError) as info:
            runner.enable_script(name)
        assert info.value.errno == err, name
    (sdir / "README.script").write_text("")
    with pytest.raises(EventScriptError) as info:
        runner.enable_script("README")
    assert info.value.errno == errno.EINVAL


def test_list_scripts_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(EventScriptError) as info:
        list_scripts(tmp_path / "missing")
    assert info.value.errno == errno.ENOENT


# -- status text -----------------------------------------------------------------------------
def test_format_status_matches_ctdb_event_layout(sdir: Path) -> None:
    script(sdir, "01.ok.script", "exit 0\n")
    script(sdir, "02.off.script", "exit 0\n", executable=False)
    script(sdir, "03.fail.script", "echo fail\nexit 2\n")
    result = run(EventRunner(sdir).run("monitor"))
    lines = format_status(result, "monitor").splitlines()
    assert lines[0].startswith("01.ok                OK         0.0")
    assert lines[1] == "02.off               DISABLED  "
    assert lines[2].startswith("03.fail              ERROR      0.0")
    assert lines[3] == "  OUTPUT: fail"
    assert format_status(None, "takeip") == "Event takeip has never run in legacy\n"
    canned = EventResult("monitor", (), -1, (), 0.0, 0.0)
    assert format_status(canned, "monitor") == ""


def test_a_timed_out_script_gets_its_debug_script_then_a_sigterm_it_can_trap(sdir: Path, tmp_path: Path) -> None:
    """As ctdb-eventd 4.17 (docs/ctdbd-gaps-spec.md §3.2): the debug script gets (path, pid,
    event) while the hung script still runs, and the hung script's SIGTERM comes after it; the
    output pipe stays open, so the hung shell's report of its killed child on stderr does not
    kill it with SIGPIPE before its trap runs."""
    marks = tmp_path / "marks"
    script(sdir, "10.hang.script",
           f'echo "start $$" >> {marks}\n'
           f"trap 'echo TERM >> {marks}; exit 0' TERM\n"
           "echo hanging\nwhile :; do sleep 0.05; done\n")
    debug = tmp_path / "debug.sh"
    debug.write_text(f'#!/bin/sh\necho "debug $# $1 $2" >> {marks}\nsleep 0.3\necho "debug done" >> {marks}\n'
                     "echo from the debug script\n")
    debug.chmod(0o755)

    async def scenario() -> str:
        runner = EventRunner(sdir, debug_script=debug)
        result = await runner.run("monitor", timeout=0.5)
        assert result.timed_out
        text = ""
        for _ in range(200):
            text = marks.read_text()
            if "TERM" in text:
                break
            await asyncio.sleep(0.02)
        await runner.close()
        return text

    lines = run(scenario()).splitlines()
    pid = lines[0].split()[1]
    assert lines == [f"start {pid}", f"debug 2 {pid} monitor", "debug done", "TERM"]
