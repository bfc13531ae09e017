"""smb_writer probe: numbered, checksummed blocks written and FLUSHed through one public IP.

    python -m ctdblab.scenarios.probes.smb_writer IP --password X --file NAME --writer ID
        [--user root] [--share share] [--period 0.1] [--op-deadline 10] [--setup-deadline 5]
        [--connect-timeout 1] [--retry-interval 0.2] [--role victim|survivor] [--process NAME]

It opens its own file (created if missing, every share mode allowed), takes an exclusive
byte-range lock over it, then writes block 1, 2, 3, ... (``blocks.py``: writer id, number,
random payload, CRC32) at ``number * 4096``, each WRITE followed by FLUSH.  A block is
acknowledged (``ok``) only once the FLUSH returned.  When anything fails the connection is
dropped, and the probe reconnects to the same IP (the address moves to a survivor), re-opens
its file, re-takes the lock and goes on with the next number; the failed block stays
unacknowledged ("indeterminate" to the checker, never "lost").

Events: ``op`` ``f: smb_write_block`` (``block``, ``crc``, ``file``, ``writer``; ``ok`` after
the FLUSH, ``fail`` with ``error``); ``op`` ``f: smb_lock`` for every open+lock (``fail`` with
``phase`` and ``conflict`` = sharing_violation|lock_not_granted|file_lock_conflict when another
open, live or stale, holds the file); ``capture`` ``stop`` (``blocks_acked``, ``last_block``).
SIGTERM/SIGINT stop it; an operation in flight is then aborted and reported failed.
"""

from __future__ import annotations

import argparse
import threading
import time

from .blocks import BLOCK_SIZE, make_block
from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, positive_float,
                     run_main)
from .smbfiles import conflict_of, lock_exclusive, open_rw, write_flushed
from .smbops import SmbClient, Watchdog, add_smb_options, failure_text, smb_target_from_args

WRITE_OP = "smb_write_block"
LOCK_OP = "smb_lock"


class Writer(threading.Thread):
    def __init__(self, args: argparse.Namespace, out: Emitter, waker: Waker):
        super().__init__(name="smb_writer", daemon=True)
        self.args = args
        self.out = out
        self.waker = waker
        self.target = smb_target_from_args(args)
        self.watchdog = Watchdog()
        self.writes = OpRecorder(out, WRITE_OP, args.target, args.role)
        self.locks = OpRecorder(out, LOCK_OP, args.target, args.role)
        self.stopping = threading.Event()
        self.client: SmbClient | None = None
        self.handle = None
        self.number = 0
        self.acked = 0

    def stop(self) -> None:
        self.stopping.set()
        self.watchdog.abort_all()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                if self.handle is None and not self._open_and_lock():
                    self.stopping.wait(self.args.retry_interval)
                    continue
                self._write_next()
                self.stopping.wait(self.args.period)
        finally:
            self._drop()
            self.waker.post("ended")

    def _fields(self) -> dict:
        return {"file": self.args.file, "writer": self.args.writer}

    def _open_and_lock(self) -> bool:
        args = self.args
        op_id = self.locks.invoke(**self._fields())
        began = time.monotonic()
        client = self.client = SmbClient(self.target, self.watchdog)
        deadline = self.watchdog.guard(client.conn, args.setup_deadline)
        phase = "connect"
        try:
            with deadline:
                client.connect(deadline, args.connect_timeout)
                phase = "open"
                handle = open_rw(client, args.file, deadline)
                phase = "lock"
                lock_exclusive(handle, deadline)
        except Exception as e:
            extra = {"conflict": conflict_of(e)} if conflict_of(e) else {}
            if deadline.aborted:
                extra["aborted"] = True
            self.locks.fail(op_id, time.monotonic() - began, failure_text(e, deadline),
                            phase=phase, **self._fields(), **extra)
            self._drop()
            return False
        self.handle = handle
        self.locks.ok(op_id, time.monotonic() - began, **self._fields())
        return True

    def _write_next(self) -> None:
        self.number += 1
        number = self.number
        data, crc = make_block(self.args.writer, number)
        fields = {**self._fields(), "block": number, "crc": crc}
        op_id = self.writes.invoke(**fields)
        began = time.monotonic()
        deadline = self.watchdog.guard(self.client.conn, self.args.op_deadline)
        try:
            with deadline:
                write_flushed(self.handle, number * BLOCK_SIZE, data, deadline)
        except Exception as e:
            extra = {"aborted": True} if deadline.aborted else {}
            self.writes.fail(op_id, time.monotonic() - began, failure_text(e, deadline),
                             **fields, **extra)
            self._drop()
            return
        self.acked += 1
        self.writes.ok(op_id, time.monotonic() - began, **fields)

    def _drop(self) -> None:
        if self.client is not None:
            self.client.drop()
        self.client = None
        self.handle = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctdblab.scenarios.probes.smb_writer",
        description="numbered, checksummed, flushed block writes through one public IP")
    add_smb_options(parser, process="smb-writer", role="survivor")
    parser.add_argument("--writer", required=True, help="writer id written into every block")
    parser.add_argument("--period", type=positive_float, default=0.1,
                        help="pause between acknowledged writes (default 0.1)")
    parser.add_argument("--op-deadline", type=positive_float, default=10.0,
                        help="deadline of one WRITE+FLUSH (default 10)")
    parser.add_argument("--setup-deadline", type=positive_float, default=5.0,
                        help="deadline of connect+open+lock (default 5)")
    parser.add_argument("--connect-timeout", type=positive_float, default=1.0)
    parser.add_argument("--retry-interval", type=positive_float, default=0.2,
                        help="pause after a failed open or lock (default 0.2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("smb_writer", args.process, on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    writer = Writer(args, out, waker)
    writer.start()
    reason = None
    while reason is None:
        for r in waker.wait():
            if r == STOP:
                reason = "signal"
            elif r == "ended":
                reason = "ended"
    writer.stop()
    writer.join(args.connect_timeout + 3)
    out.capture("stop", target=args.target, file=args.file, writer=args.writer, reason=reason,
                blocks_acked=writer.acked, last_block=writer.number)
    return 0


if __name__ == "__main__":
    run_main(main)
