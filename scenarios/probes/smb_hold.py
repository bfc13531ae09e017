"""smb_hold probe: an open SMB file read every 0.2 s until the session breaks.

    python -m ctdblab.scenarios.probes.smb_hold IP --password X --file NAME [--user root]
        [--share share] [--period 0.2] [--read-size 4096] [--op-deadline 120]
        [--setup-deadline 10] [--connect-timeout 2] [--role victim] [--process NAME]

It measures the moment the old session broke (for CTDB: the tickle ACK's RST; without one, the
client's own retransmission reaching the new owner).  So the per-read deadline is long by
default (120 s, longer than real CTDB's default failover): a short one would end the hold at
"deadline" before the server side ever acted.  After the session died the probe stops; it never
reconnects.

Events: ``capture`` ``opened`` (``local_ip``, ``local_port``: the TCP connection that smbd
registers with ctdb; ``setup_s``) or ``setup_failed`` (``error``, ``phase``); ``op`` per read
(``f: smb_read``, ``type`` invoke|ok|fail, ``id``, ``target``, ``role``, ``latency_s``, ``value``
= bytes or ``error``); ``capture`` ``closed`` once when the connection died: ``cause`` =
connection_closed (``SMBConnectionClosed``, e.g. an RST), deadline, or error; ``error`` = the
exception text; ``how`` = reset|eof|error as smbprotocol's receive thread saw it; ``t`` = the
moment the receive thread saw the socket die (or the read failed, whichever came first; the
probe wakes at once, it does not wait for the next 0.2 s tick); ``read_failed_t``;
``invoked_t`` = when the failing read was sent.  Finally ``stop`` (``reason``:
closed|setup_failed|signal).  SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import threading
import time

from smbprotocol.exceptions import SMBConnectionClosed

from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, positive_float,
                     positive_int, run_main)
from .smbops import (DeadlineExceeded, SmbClient, Watchdog, add_smb_options, connection_info,
                     failure_text, smb_target_from_args, watch_receiver)

ENDED = "ended"


def close_cause(exc: BaseException, deadline_fired: bool) -> str:
    if deadline_fired or isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, SMBConnectionClosed):
        return "connection_closed"
    return "error"


class Holder(threading.Thread):
    def __init__(self, args: argparse.Namespace, out: Emitter, waker: Waker, watchdog: Watchdog):
        super().__init__(name="smb_hold", daemon=True)
        self.args = args
        self.out = out
        self.waker = waker
        self.watchdog = watchdog
        self.ops = OpRecorder(out, "smb_read", args.target, args.role)
        self.stopping = threading.Event()
        self.wake = threading.Event()       # set on stop, and when the receive thread ends
        self.broken: tuple[float, str, str | None] | None = None
        self.end_reason = "signal"
        self.client: SmbClient | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.waker.post(ENDED)

    def _receiver_ended(self, t: float, how: str, detail: str | None) -> None:
        self.broken = (t, how, detail)
        self.wake.set()

    def _run(self) -> None:
        args = self.args
        client = self.client = SmbClient(smb_target_from_args(args), self.watchdog)
        began = time.monotonic()
        setup = self.watchdog.guard(client.conn, args.setup_deadline)
        try:
            with setup:
                client.connect(setup, args.connect_timeout)
                handle = client.open(args.file, setup)
        except Exception as e:
            if not self.stopping.is_set():
                self.out.capture("setup_failed", target=args.target, phase=client.phase,
                                 error=failure_text(e, setup))
                self.end_reason = "setup_failed"
            client.drop()
            return
        watch_receiver(client, self._receiver_ended)
        self.out.capture("opened", target=args.target, setup_s=round(time.monotonic() - began, 6),
                         **connection_info(client))
        next_read = time.monotonic()
        while True:
            # Sleep until the next read, but wake at once if the connection dies meanwhile:
            # then the read below fails straight away and reports it.
            self.wake.wait(max(0.0, next_read - time.monotonic()))
            if self.stopping.is_set():
                break
            next_read = max(next_read + args.period, time.monotonic())
            invoked_t = time.time()
            op_id = self.ops.invoke(t=invoked_t)
            began = time.monotonic()
            deadline = self.watchdog.guard(client.conn, args.op_deadline)
            try:
                with deadline:
                    size = client.read(handle, 0, args.read_size, deadline)
                self.ops.ok(op_id, time.monotonic() - began, value=size)
            except Exception as e:
                t = time.time()
                latency = time.monotonic() - began
                if deadline.aborted:   # we are stopping; the session did not break
                    self.ops.fail(op_id, latency, failure_text(e, deadline), t=t, aborted=True)
                    break
                error = failure_text(e, deadline)
                self.ops.fail(op_id, latency, error, t=t)
                self._report_closed(e, t, error, invoked_t, deadline.fired)
                self.end_reason = "closed"
                break
        client.drop()

    def _report_closed(self, exc: BaseException, t_fail: float, error: str, invoked_t: float,
                       deadline_fired: bool) -> None:
        # The receive thread notices an RST/FIN the moment it arrives; the failing read may
        # come later (when the connection died between two reads).  Report the earlier one.
        fields: dict[str, object] = {"read_failed_t": t_fail, "invoked_t": invoked_t}
        t = t_fail
        deadline = deadline_fired or isinstance(exc, DeadlineExceeded)
        for _ in range(100):   # the watcher thread runs right after the receive thread ends
            if self.broken is not None or deadline:
                break
            time.sleep(0.001)
        if self.broken is not None and not deadline:
            t_broken, how, detail = self.broken
            t = min(t, t_broken)
            fields["how"] = how
            if detail:
                fields["detail"] = detail
        self.out.capture("closed", t=t, target=self.args.target,
                         cause=close_cause(exc, deadline_fired), error=error, **fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.smb_hold",
                                     description="hold an SMB session reading until it breaks")
    add_smb_options(parser, process="smb_hold", role="victim")
    parser.add_argument("--period", type=positive_float, default=0.2,
                        help="seconds between read starts (default 0.2)")
    parser.add_argument("--read-size", type=positive_int, default=4096)
    parser.add_argument("--op-deadline", type=positive_float, default=120.0,
                        help="give up on one read after this many seconds (default 120)")
    parser.add_argument("--setup-deadline", type=positive_float, default=10.0,
                        help="deadline of connect+session+tree+open (default 10)")
    parser.add_argument("--connect-timeout", type=positive_float, default=2.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("smb_hold", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    watchdog = Watchdog()
    holder = Holder(args, out, waker, watchdog)
    holder.start()
    while True:
        reasons = waker.wait()
        if ENDED in reasons:
            break
        if STOP in reasons:
            holder.stop()
            watchdog.abort_all()
            holder.join(5.0)
            break
    watchdog.close()
    out.capture("stop", target=args.target, reason=holder.end_reason)
    return 0 if holder.end_reason != "setup_failed" else 1


if __name__ == "__main__":
    run_main(main)
