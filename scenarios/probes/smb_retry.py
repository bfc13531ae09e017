"""smb_retry probe: the first successful SMB operation through a moved IP, at ≤ 50 ms resolution.

    python -m ctdblab.scenarios.probes.smb_retry IP --password X [--user root] [--share share]
        --file NAME [--loops 10] [--interval 0.5] [--connect-timeout 0.5] [--deadline 2]
        [--read-size 65536] [--stop-after-success 3] [--max-duration S] [--start-now]
        [--no-warmup] [--role victim] [--process NAME]

Start it before the fault; it imports everything, does one warm-up attempt (so the first
measured attempt pays no lazy imports or first-use costs) and reports ``ready``.  Then it idles
until the **trigger**: a line ``go`` on stdin, or SIGUSR1 (both work; use whichever the
orchestrator finds easier).  ``--start-now`` triggers at once.

On the trigger it starts K loops (``--loops``); loop k owns the slots ``trigger + k·interval/K
+ n·interval``.  Each attempt: fresh TCP connect (own timeout) + negotiate + session setup + tree
connect + open + read + close, everything under one deadline per attempt (``--deadline``); the
connection is then dropped (no logoff), so nothing is shared or cached between attempts.  A
loop starts its next attempt on its next slot, or at once when the previous attempt ran past
it (so a server that refuses at once does not make us spin, and a slow one is retried at
once).  The connect timeout is trimmed by a few ms to end on a slot (see
:func:`aligned_connect_timeout`), so while the IP is dead the K loops together start an
attempt every ``interval/K`` = 50 ms, and keep doing so over a long outage.

An attempt that hits its deadline has its socket shut down by the watchdog, which unblocks the
loop thread at once; no thread stays blocked.

Events: ``op`` per attempt (``f: smb_connect_read``, ``type`` invoke|ok|fail, ``id``, ``loop``,
``target``, ``role``; ``latency_s`` and, on ok, ``value`` = bytes read and ``steps`` = seconds per
phase; on fail ``error`` and ``phase`` = connect|session|tree|open|read|close, and ``aborted:
true`` when the probe itself cut the attempt short while stopping).  ``capture`` events:
``warmup`` (ok or error), ``ready``, ``trigger`` (``source``: stdin|sigusr1|start-now), ``stop``
(``reason``, ``attempts``, ``successes``).

Stops after ``--stop-after-success`` successful attempts in total, after ``--max-duration``
seconds from the trigger, on a line ``stop`` on stdin, or on SIGTERM/SIGINT.  In-flight attempts
are then aborted and reported as failed with ``aborted: true``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from typing import Any

from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, positive_float,
                     positive_int, run_main)
from .smbops import SmbClient, SmbTarget, Watchdog, add_smb_options, failure_text, smb_target_from_args

GO = "go"
DONE = "done"
OP_NAME = "smb_connect_read"


def stagger_offsets(loops: int, interval: float) -> list[float]:
    """Start offset of each loop after the trigger: loop k at k·interval/loops."""
    if loops < 1 or interval <= 0:
        raise ValueError("need loops >= 1 and interval > 0")
    return [k * interval / loops for k in range(loops)]


def _slot_index(t: float, origin: float, interval: float) -> int:
    # A loop never starts before its slot, so t is at or (by float noise) just below it.
    return math.floor((t - origin) / interval + 1e-6)


def next_start(prev_start: float, prev_end: float, interval: float, origin: float) -> float:
    """When a loop starts its next attempt: on its next slot (origin + n·interval) after the
    previous start, or at once if the previous attempt ran past that slot."""
    return max(prev_end, origin + (_slot_index(prev_start, origin, interval) + 1) * interval)


def aligned_connect_timeout(now: float, origin: float, interval: float,
                            connect_timeout: float) -> float:
    """The TCP connect timeout of an attempt starting at ``now``: ``connect_timeout`` moved to
    end exactly on one of the loop's slots when that is within a factor 1.5 of it.

    Against a dead server every attempt ends by this timeout.  Ending on a slot keeps the next
    attempt on the loop's grid; a plain 0.5 s timeout plus a few ms of overhead would make
    every loop drift by those ms per attempt, and the loops would drift apart over a long
    outage, widening the gaps between attempt starts.
    """
    target = now + connect_timeout
    slot = origin + round((target - origin) / interval) * interval
    aligned = slot - now
    if connect_timeout / 2 <= aligned <= connect_timeout * 1.5:
        return aligned
    return connect_timeout


class Attempt:
    """One connect+read attempt; the loop keeps it so a stop can abort it."""

    def __init__(self, probe: "RetryProbe", loop: int):
        self.probe = probe
        self.loop = loop
        self.client = SmbClient(probe.target, probe.watchdog)
        self.deadline = probe.watchdog.guard(self.client.conn, probe.args.deadline)

    def run(self, record: bool = True, connect_timeout: float | None = None
            ) -> tuple[bool, dict[str, Any]]:
        args = self.probe.args
        ops = self.probe.ops
        op_id = ops.invoke(loop=self.loop) if record else 0
        began = time.monotonic()
        try:
            with self.deadline:
                self.client.connect(self.deadline, connect_timeout or args.connect_timeout)
                handle = self.client.open(args.file, self.deadline)
                size = self.client.read(handle, 0, args.read_size, self.deadline)
                self.client.close_file(handle, self.deadline)
                self.client.end_phase()
            t_end = time.time()
            latency = time.monotonic() - began
            result = {"value": size, "steps": self.client.timings}
            if record:
                ops.ok(op_id, latency, t=t_end, loop=self.loop, **result)
            return True, {"latency_s": round(latency, 6), **result}
        except Exception as e:
            t_end = time.time()
            latency = time.monotonic() - began
            result = {"phase": self.client.phase, "error": failure_text(e, self.deadline)}
            if self.deadline.aborted:
                result["aborted"] = True
            if record:
                error = result.pop("error")
                ops.fail(op_id, latency, error, t=t_end, loop=self.loop, **result)
                result["error"] = error
            return False, {"latency_s": round(latency, 6), **result}
        finally:
            self.client.drop()


class RetryLoop(threading.Thread):
    def __init__(self, probe: "RetryProbe", index: int, first_start: float):
        super().__init__(name=f"smb_retry-loop{index}", daemon=True)
        self.probe = probe
        self.index = index
        self.first_start = first_start   # monotonic
        self.current: Attempt | None = None

    def run(self) -> None:
        probe = self.probe
        interval = probe.args.interval
        origin = start_at = self.first_start
        while not probe.stopping.wait(max(0.0, start_at - time.monotonic())):
            began = time.monotonic()
            self.current = Attempt(probe, self.index)
            ok, _ = self.current.run(connect_timeout=aligned_connect_timeout(
                began, origin, interval, probe.args.connect_timeout))
            self.current = None
            probe.attempt_done(ok)
            start_at = next_start(began, time.monotonic(), interval, origin)


class RetryProbe:
    def __init__(self, args: argparse.Namespace, out: Emitter, waker: Waker):
        self.args = args
        self.out = out
        self.waker = waker
        self.target: SmbTarget = smb_target_from_args(args)
        self.watchdog = Watchdog()
        self.ops = OpRecorder(out, OP_NAME, args.target, args.role)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.attempts = 0
        self.successes = 0
        self.loops: list[RetryLoop] = []

    def attempt_done(self, ok: bool) -> None:
        with self._lock:
            self.attempts += 1
            if ok:
                self.successes += 1
                if self.successes >= self.args.stop_after_success:
                    self.waker.post(DONE)

    def start_loops(self) -> None:
        now = time.monotonic()
        for k, offset in enumerate(stagger_offsets(self.args.loops, self.args.interval)):
            loop = RetryLoop(self, k, now + offset)
            self.loops.append(loop)
            loop.start()

    def stop(self) -> None:
        self.stopping.set()
        self.watchdog.abort_all()
        # Each loop thread returns within milliseconds once its socket is shut down; the
        # join timeout covers a TCP connect() still in progress (≤ --connect-timeout).
        limit = time.monotonic() + self.args.connect_timeout + 2.5
        for loop in self.loops:
            loop.join(max(0.0, limit - time.monotonic()))
        self.watchdog.close()


def start_stdin_reader(waker: Waker) -> None:
    """``go`` / ``stop`` lines on stdin; EOF or a closed stdin is not an error."""

    def read() -> None:
        try:
            for line in sys.stdin:
                word = line.strip().lower()
                if word == GO:
                    waker.post("go:stdin")
                elif word == STOP:
                    waker.post(STOP)
        except (OSError, ValueError):
            pass

    if sys.stdin is not None:
        threading.Thread(target=read, name="stdin-trigger", daemon=True).start()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctdblab.scenarios.probes.smb_retry",
        description="staggered SMB connect+read loops: first good operation through an IP")
    add_smb_options(parser, process="smb_retry", role="victim")
    parser.add_argument("--loops", type=positive_int, default=10, help="K staggered loops")
    parser.add_argument("--interval", type=positive_float, default=0.5,
                        help="loop k starts at k*interval/K; a loop never starts attempts "
                             "closer than this (default 0.5)")
    parser.add_argument("--connect-timeout", type=positive_float, default=0.5,
                        help="TCP connect timeout of each attempt (default 0.5)")
    parser.add_argument("--deadline", type=positive_float, default=2.0,
                        help="overall deadline of one attempt (default 2)")
    parser.add_argument("--read-size", type=positive_int, default=65536)
    parser.add_argument("--stop-after-success", type=positive_int, default=3,
                        help="stop after this many successful attempts in total (default 3)")
    parser.add_argument("--max-duration", type=positive_float, default=None,
                        help="stop this many seconds after the trigger (default: never)")
    parser.add_argument("--start-now", action="store_true",
                        help="do not wait for a trigger (and skip the warm-up)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the warm-up attempt before 'ready'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("smb_retry", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    signal.signal(signal.SIGUSR1, lambda _s, _f: waker.post("go:sigusr1"))
    start_stdin_reader(waker)
    probe = RetryProbe(args, out, waker)

    warmup: Attempt | None = None
    if not (args.no_warmup or args.start_now):
        warmup = Attempt(probe, -1)

        def warm() -> None:
            assert warmup is not None
            ok, result = warmup.run(record=False)
            out.capture("warmup", target=args.target, ok=ok, **result)
            waker.post("warm")

        threading.Thread(target=warm, name="smb_retry-warmup", daemon=True).start()
    else:
        waker.post("warm")

    triggered_by: str | None = "start-now" if args.start_now else None
    stop_reason: str | None = None
    while triggered_by is None and stop_reason is None:
        for reason in waker.wait():
            if reason == "warm":
                out.capture("ready", target=args.target, loops=args.loops,
                            interval_s=args.interval, connect_timeout_s=args.connect_timeout,
                            deadline_s=args.deadline)
            elif reason.startswith("go:") and triggered_by is None:
                triggered_by = reason[3:]
            elif reason == STOP:
                stop_reason = "signal"
    if stop_reason is None:
        if warmup is not None:
            probe.watchdog.abort(warmup.deadline)   # a slow warm-up must not delay the loops
        out.capture("trigger", target=args.target, source=triggered_by)
        probe.start_loops()
        ends_at = time.monotonic() + args.max_duration if args.max_duration else None
        while stop_reason is None:
            timeout = None if ends_at is None else max(0.0, ends_at - time.monotonic())
            reasons = waker.wait(timeout)
            if STOP in reasons:
                stop_reason = "signal"
            elif DONE in reasons:
                stop_reason = "successes"
            elif ends_at is not None and time.monotonic() >= ends_at:
                stop_reason = "max-duration"
    probe.stop()
    out.capture("stop", target=args.target, reason=stop_reason, attempts=probe.attempts,
                successes=probe.successes)
    return 0


if __name__ == "__main__":
    run_main(main)
