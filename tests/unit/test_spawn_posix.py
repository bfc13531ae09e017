"""daemon/spawn/posix.py: posix_spawn through ctypes -- descriptors, environment, signals,
sessions, errors, and the GIL let go while the child has not exec'd yet."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from ctdblab.daemon.spawn import posix


def run(argv, **kwargs):
    pid = posix.spawn(argv, **kwargs)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def output_of(script: str, **kwargs) -> str:
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        code = run([sys.executable, "-c", script], stdout=wfd, **kwargs)
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        out = pipe.read().decode()
    assert code == 0, out
    return out


def test_kept_descriptors_arrive_as_3_4_and_so_on_in_order_even_when_their_numbers_overlap():
    # Thirty pipes: their write ends have numbers inside 3..32, the range they are moved onto,
    # so a naive dup2 order would overwrite a source before copying it.
    pipes = [os.pipe2(os.O_CLOEXEC) for _ in range(30)]
    script = "import os\nfor i in range(30): os.write(3 + i, str(i).encode())"
    try:
        code = run([sys.executable, "-c", script], keep=[w for _, w in pipes])
    finally:
        for _, w in pipes:
            os.close(w)
    got = []
    for r, _ in pipes:
        with os.fdopen(r, "rb") as pipe:
            got.append(pipe.read().decode())
    assert code == 0
    assert got == [str(i) for i in range(30)]


def test_every_other_descriptor_is_closed_even_an_inheritable_one():
    rfd, wfd = os.pipe()
    os.set_inheritable(wfd, True)
    try:
        out = output_of("import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))")
    finally:
        os.close(rfd)
        os.close(wfd)
    # 0, 1, 2 and the descriptor listdir itself opens
    assert eval(out)[:3] == [0, 1, 2] and len(eval(out)) == 4


def test_devnull_streams_environment_and_directory():
    script = ("import os, sys; print(sys.stdin.read() == '', os.getcwd(), os.environ.get('X'), "
              "sorted(os.environ))")
    out = output_of(script, env={"X": "y", "PATH": "/usr/bin:/bin"}, cwd="/")
    assert out.split(" ", 3)[:3] == ["True", "/", "y"]
    assert "HOME" not in out                    # only the given environment


def test_argv0_and_the_program_can_differ_and_a_bare_name_is_searched_in_path():
    assert output_of("import sys; print(sys.argv[0])").strip() == "-c"
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    try:
        code = run(["sh", "-c", 'echo "$0"'], stdout=wfd)
        code2 = run(["custom-name", "-c", 'echo "$0"'], executable="/bin/sh", stdout=wfd)
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        assert pipe.read().decode().split() == ["sh", "custom-name"]
    assert code == code2 == 0


def test_signals_python_ignores_are_back_to_default_and_none_is_blocked():
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN      # Python's own setting
    rfd, wfd = os.pipe2(os.O_CLOEXEC)     # cat, not Python: Python ignores SIGPIPE itself
    try:
        assert run(["/bin/cat", "/proc/self/status"], stdout=wfd) == 0
    finally:
        os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        out = pipe.read().decode()
    fields = dict(line.split(":\t") for line in out.splitlines() if ":\t" in line)
    ignored = int(fields["SigIgn"], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))
    assert int(fields["SigBlk"], 16) == 0


def test_new_session_and_new_process_group():
    script = "import os; print(os.getpid(), os.getsid(0), os.getpgid(0))"
    pid, sid, pgid = map(int, output_of(script, new_session=True).split())
    assert pid == sid == pgid
    pid, sid, pgid = map(int, output_of(script, new_process_group=True).split())
    assert pgid == pid and sid != pid


def test_the_child_sets_the_scheduler_it_is_given_also_with_reset_on_fork():
    # (Unprivileged, a child may not make itself real-time; it may set the flag.)
    assert posix.REALTIME_UNTIL_EXEC         # glibc's policy field was found (Debian 12)
    script = "import os; print(os.sched_getscheduler(0))"
    if os.geteuid() == 0:
        wanted = os.SCHED_RR | posix.RESET_ON_FORK
        assert int(output_of(script, scheduler=(wanted, 1))) == wanted
    flagged = os.SCHED_OTHER | posix.RESET_ON_FORK
    assert int(output_of(script, scheduler=(flagged, 0))) == flagged


def test_a_missing_program_or_directory_is_an_oserror_with_errno():
    with pytest.raises(FileNotFoundError):
        posix.spawn(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError):
        posix.spawn(["no-such-program-ctdblab"])
    with pytest.raises(OSError):
        posix.spawn(["/bin/true"], cwd="/nonexistent/directory")
    with pytest.raises(ValueError):
        posix.spawn([])
    with pytest.raises(ValueError):
        posix.spawn(["/bin/true", "a\0b"])
    with pytest.raises(ValueError):
        posix.spawn(["/bin/true"], env={"X": "a\0b"})


def test_the_gil_is_free_while_the_child_has_not_execd(tmp_path, monkeypatch):
    # The child opens its /dev/null stand-in, a FIFO, for reading before it execs: that blocks
    # until a writer comes. Meanwhile this thread must keep running Python code (Popen on
    # Python 3.11 would hold the GIL through it).
    fifo = tmp_path / "null"
    os.mkfifo(fifo)
    monkeypatch.setattr(posix, "NULL_DEVICE", os.fsencode(fifo))
    result = {}

    def spawner():
        result["pid"] = posix.spawn(["/bin/true"])
    thread = threading.Thread(target=spawner)
    thread.start()
    counted, end = 0, time.monotonic() + 0.3
    while time.monotonic() < end:
        counted += 1
    still_starting = thread.is_alive()
    writer = os.open(fifo, os.O_WRONLY)            # lets the child's open, then exec, go on
    thread.join(10)
    os.close(writer)
    _, status = os.waitpid(result["pid"], 0)
    assert still_starting and os.waitstatus_to_exitcode(status) == 0
    assert counted > 10_000
