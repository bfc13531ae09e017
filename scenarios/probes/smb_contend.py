"""smb_contend probe: do a dead node's clients' share modes and byte-range locks block a survivor's?

    python -m ctdblab.scenarios.probes.smb_contend VIP --survivor IP --password X --file NAME
        [--user root] [--share share] [--interval 0.2] [--attempt-deadline 10]
        [--process NAME]

1. **Hold** (before the fault): through VIP (the victim's IP) open NAME for reading and writing
   (every share mode allowed) and take an exclusive byte-range lock over it; ``capture held``.
2. **Baseline**: through the survivor's IP, one contending attempt while the holder is alive:
   open NAME with a deny-write share mode, then take the same lock.  It must be refused
   (``conflict``); if it is not, the probe cannot tell a blocked client from a free one, and
   the checker says so.  Then ``capture ready``.
3. On the **trigger** (SIGUSR1, sent at the cut) it repeats the contending attempt through the
   survivor's IP every ``--interval`` s (a refused attempt is retried at once after the
   interval) until one gets both the open and the lock; it then closes its handle and reports
   ``capture done``.  The holder's connection is simply abandoned: its server is dead.

Events: ``op`` ``f: contend_open_lock`` per attempt (``baseline: true`` for step 2; ``fail`` with
``phase`` connect|open|lock and ``conflict`` = sharing_violation|lock_not_granted|
file_lock_conflict when the file was held); captures ``held`` / ``hold_failed``, ``ready``,
``trigger``, ``done``, ``stop``.  SIGTERM/SIGINT stop it at any step.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time

from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, ipv4_address,
                     positive_float, run_main)
from .smbfiles import DENY_WRITE, conflict_of, lock_exclusive, open_rw
from .smbops import (SmbClient, SmbTarget, Watchdog, add_smb_options, failure_text,
                     smb_target_from_args)

OP_NAME = "contend_open_lock"


class Contender:
    def __init__(self, args: argparse.Namespace, out: Emitter, waker: Waker):
        self.args = args
        self.out = out
        self.waker = waker
        self.watchdog = Watchdog()
        self.vip_target = smb_target_from_args(args)
        self.survivor_target = SmbTarget(server=args.survivor, share=args.share, user=args.user,
                                         password=args.password, port=args.port)
        self.ops = OpRecorder(out, OP_NAME, args.survivor, "survivor")
        self.stopping = threading.Event()
        self.holder: SmbClient | None = None
        self.client: SmbClient | None = None     # the survivor-side connection, reused

    def hold(self) -> bool:
        client = self.holder = SmbClient(self.vip_target, self.watchdog)
        deadline = self.watchdog.guard(client.conn, self.args.attempt_deadline)
        phase = "connect"
        try:
            with deadline:
                client.connect(deadline, 2.0)
                phase = "open"
                handle = open_rw(client, self.args.file, deadline)
                phase = "lock"
                lock_exclusive(handle, deadline)
        except Exception as e:
            self.out.capture("hold_failed", target=self.args.target, file=self.args.file,
                             phase=phase, error=failure_text(e, deadline))
            return False
        self.out.capture("held", target=self.args.target, file=self.args.file)
        return True

    def attempt(self, baseline: bool = False) -> bool:
        """One deny-write open + exclusive lock through the survivor's IP."""
        fields = {"file": self.args.file, **({"baseline": True} if baseline else {})}
        op_id = self.ops.invoke(**fields)
        began = time.monotonic()
        if self.client is None:
            self.client = SmbClient(self.survivor_target, self.watchdog)
        client = self.client
        deadline = self.watchdog.guard(client.conn, self.args.attempt_deadline)
        phase = "connect" if client.tree is None else "open"
        try:
            with deadline:
                if client.tree is None:
                    client.connect(deadline, 2.0)
                phase = "open"
                handle = open_rw(client, self.args.file, deadline, share_access=DENY_WRITE,
                                 create=False)
                phase = "lock"
                try:
                    lock_exclusive(handle, deadline)
                finally:
                    if phase == "lock":
                        handle.close()
        except Exception as e:
            extra = {"conflict": conflict_of(e)} if conflict_of(e) else {}
            if deadline.aborted:
                extra["aborted"] = True
            self.ops.fail(op_id, time.monotonic() - began, failure_text(e, deadline),
                          phase=phase, **fields, **extra)
            if not conflict_of(e):           # the connection itself is suspect: start afresh
                client.drop()
                self.client = None
            return False
        self.ops.ok(op_id, time.monotonic() - began, **fields)
        return True

    def contend(self) -> None:
        while not self.stopping.is_set():
            if self.attempt():
                self.out.capture("done", target=self.args.survivor, file=self.args.file)
                return
            self.stopping.wait(self.args.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.watchdog.abort_all()
        for client in (self.holder, self.client):
            if client is not None:
                client.drop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctdblab.scenarios.probes.smb_contend",
        description="a survivor's client contending for a file a dead node's client held")
    add_smb_options(parser, process="smb-contend", role="victim")
    parser.add_argument("--survivor", type=ipv4_address, required=True,
                        help="a surviving node's public IP, for the contending client")
    parser.add_argument("--interval", type=positive_float, default=0.2)
    parser.add_argument("--attempt-deadline", type=positive_float, default=10.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("smb_contend", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    signal.signal(signal.SIGUSR1, lambda _s, _f: waker.post("go"))
    probe = Contender(args, out, waker)

    def prepare() -> None:
        if probe.hold():
            probe.attempt(baseline=True)
            out.capture("ready", target=args.target, survivor=args.survivor, file=args.file)
        waker.post("prepared")

    def contend() -> None:
        probe.contend()
        waker.post("ended")

    threading.Thread(target=prepare, name="contend-prepare", daemon=True).start()
    prepared = triggered = False
    reason = None
    while reason is None:
        for r in waker.wait():
            if r == STOP:
                reason = "signal"
            elif r == "prepared":
                prepared = True
            elif r == "go":
                triggered = True
            elif r == "ended":
                reason = "done"
        if prepared and triggered and reason is None and not probe.stopping.is_set():
            prepared = False      # start the contending loop once
            out.capture("trigger", target=args.target)
            threading.Thread(target=contend, name="contend", daemon=True).start()
    probe.stop()
    out.capture("stop", target=args.target, reason=reason)
    return 0


if __name__ == "__main__":
    run_main(main)
