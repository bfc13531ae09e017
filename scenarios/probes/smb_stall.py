"""smb_stall probe: open+read+close every 0.1 s through a *survivor's* IP.

    python -m ctdblab.scenarios.probes.smb_stall IP --password X --file NAME [--user root]
        [--share share] [--period 0.1] [--read-size 1048576] [--op-deadline 60]
        [--connect-timeout 2] [--role survivor] [--process NAME]

While CTDB detects and recovers a dead node, opens on the *surviving* nodes that need a record
whose master was the dead node block too (lab.md §18.5).  This probe shows that stall: its
operations' ``latency_s`` jump from milliseconds to the length of the freeze.  The per-op
deadline is long by default (60 s) so a stall is measured rather than cut off; an op that fails
(deadline, lost connection) drops the connection and the next op reconnects first.

One session (connection + tree) is kept; each op is open + read ``--read-size`` bytes + close of
``--file``, started every ``--period`` seconds (the next one right away when one took longer).

Events: ``op`` (``f: smb_open_read_close``, ``type`` invoke|ok|fail, ``id``, ``target``,
``role``: survivor by default, ``latency_s``; ``value`` = bytes on ok; ``error`` and ``phase``
on fail; ``reconnect: true`` on the op that had to connect first; ``aborted: true`` when the
probe cut it short while stopping).  ``capture`` ``stop`` at the end.  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import threading
import time

from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, positive_float,
                     positive_int, run_main)
from .smbops import SmbClient, Watchdog, add_smb_options, failure_text, smb_target_from_args

OP_NAME = "smb_open_read_close"


class Staller(threading.Thread):
    def __init__(self, args: argparse.Namespace, out: Emitter, watchdog: Watchdog):
        super().__init__(name="smb_stall", daemon=True)
        self.args = args
        self.out = out
        self.watchdog = watchdog
        self.target = smb_target_from_args(args)
        self.ops = OpRecorder(out, OP_NAME, args.target, args.role)
        self.stopping = threading.Event()
        self.client: SmbClient | None = None
        self.counts = {"ok": 0, "fail": 0}

    def run(self) -> None:
        args = self.args
        next_op = time.monotonic()
        while not self.stopping.wait(max(0.0, next_op - time.monotonic())):
            next_op = max(next_op + args.period, time.monotonic())
            self.one_op()
        if self.client is not None:
            self.client.drop()

    def one_op(self) -> None:
        args = self.args
        reconnect = self.client is None
        client = self.client if self.client is not None else SmbClient(self.target, self.watchdog)
        extra = {"reconnect": True} if reconnect else {}
        op_id = self.ops.invoke(**extra)
        began = time.monotonic()
        deadline = self.watchdog.guard(client.conn, args.op_deadline)
        try:
            with deadline:
                if reconnect:
                    client.connect(deadline, args.connect_timeout)
                    self.client = client
                handle = client.open(args.file, deadline)
                size = client.read(handle, 0, args.read_size, deadline)
                client.close_file(handle, deadline)
            self.ops.ok(op_id, time.monotonic() - began, value=size, **extra)
            self.counts["ok"] += 1
        except Exception as e:
            fields: dict[str, object] = {"phase": client.phase, **extra}
            if deadline.aborted:
                fields["aborted"] = True
            self.ops.fail(op_id, time.monotonic() - began, failure_text(e, deadline), **fields)
            self.counts["fail"] += 1
            # The connection may be half-broken (a deadline fired, the server vanished): start
            # the next op on a fresh one rather than guess.
            client.drop()
            self.client = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.smb_stall",
                                     description="open+read+close every 0.1 s through a survivor")
    add_smb_options(parser, process="smb_stall", role="survivor")
    parser.add_argument("--period", type=positive_float, default=0.1,
                        help="seconds between op starts (default 0.1)")
    parser.add_argument("--read-size", type=positive_int, default=1 << 20,
                        help="bytes read per op (default 1 MiB)")
    parser.add_argument("--op-deadline", type=positive_float, default=60.0,
                        help="give up on one op after this many seconds (default 60)")
    parser.add_argument("--connect-timeout", type=positive_float, default=2.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("smb_stall", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    watchdog = Watchdog()
    staller = Staller(args, out, watchdog)
    staller.start()
    while STOP not in waker.wait():
        pass
    staller.stopping.set()
    watchdog.abort_all()
    staller.join(5.0)
    watchdog.close()
    out.capture("stop", target=args.target, reason="signal", **staller.counts)
    return 0


if __name__ == "__main__":
    run_main(main)
