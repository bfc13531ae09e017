"""pdb_writer probe: numbered commits to a persistent database with ``ctdb pstore``, in a loop.

    python -m ctdblab.scenarios.probes.pdb_writer --db NAME --prefix PREFIX --node PNN
        [--period 0.1] [--timeout 15] [--process NAME]

Runs inside a node.  Commit n stores key ``PREFIX.n`` with value ``PREFIX.n=<crc32 of the
key>`` through the stock ``ctdb pstore`` (one transaction, TRANS3_COMMIT on every node).  A
commit is acknowledged (``ok``) when ``ctdb pstore`` exited 0; a non-zero exit, a timeout or
a stop in flight is a ``fail`` (the commit may or may not have happened: "indeterminate").

Events: ``op`` ``f: pdb_store`` (``key``, ``value``, ``db``, ``node``; ``fail`` with ``error``);
``capture`` ``stop`` (``commits_acked``, ``last``).  SIGTERM/SIGINT stop it: a commit in
flight gets STOP_GRACE_S to finish (killing ``ctdb pstore`` mid-transaction would only make an
indeterminate commit of a good one) before it is terminated.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
import zlib

from .common import (STOP, Emitter, OpRecorder, Waker, install_stop_signals, positive_float,
                     run_main)

OP_NAME = "pdb_store"
STOP_GRACE_S = 3.0      # within the orchestrator's 5 s between SIGTERM and SIGKILL


def commit_value(key: str) -> str:
    """The value commit ``key`` stores: the key and its CRC, so a read-back can verify it."""
    return f"{key}={zlib.crc32(key.encode()):08x}"


class PstoreLoop(threading.Thread):
    def __init__(self, args: argparse.Namespace, out: Emitter, waker: Waker):
        super().__init__(name="pdb_writer", daemon=True)
        self.args = args
        self.ops = OpRecorder(out, OP_NAME, f"node{args.node}", None)
        self.waker = waker
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None
        self.number = 0
        self.acked = 0

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._commit_next()
                self.stopping.wait(self.args.period)
        finally:
            self.waker.post("ended")

    def _commit_next(self) -> None:
        args = self.args
        self.number += 1
        key = f"{args.prefix}.{self.number}"
        fields = {"key": key, "value": commit_value(key), "db": args.db, "node": args.node}
        op_id = self.ops.invoke(**fields)
        began = time.monotonic()
        try:
            # Its own session: the orchestrator stops a probe by signalling the probe's whole
            # process group, and the commit in flight should get its grace period (stop()).
            self.proc = subprocess.Popen(["ctdb", "pstore", args.db, key, fields["value"]],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, text=True,
                                         start_new_session=True)
            try:
                stdout, stderr = self.proc.communicate(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
                self.ops.fail(op_id, time.monotonic() - began,
                              f"TimeoutExpired: no answer within {args.timeout:g} s", **fields)
                return
        except OSError as e:
            self.ops.fail(op_id, time.monotonic() - began, f"{type(e).__name__}: {e}", **fields)
            return
        latency = time.monotonic() - began
        if self.proc.returncode == 0:
            self.acked += 1
            self.ops.ok(op_id, latency, **fields)
        else:
            killed = self.stopping.is_set() and self.proc.returncode < 0
            extra = {"aborted": True} if killed else {}
            error = (stderr or stdout).strip()[-300:] or f"exit status {self.proc.returncode}"
            self.ops.fail(op_id, latency, error, returncode=self.proc.returncode, **fields,
                          **extra)

    def stop(self) -> None:
        self.stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.pdb_writer",
                                     description="numbered ctdb pstore commits in a loop")
    parser.add_argument("--db", required=True, help="a persistent database (attached)")
    parser.add_argument("--prefix", required=True, help="key prefix, unique per writer and run")
    parser.add_argument("--node", type=int, required=True, help="PNN of the node it runs on")
    parser.add_argument("--period", type=positive_float, default=0.1,
                        help="pause between commits (default 0.1)")
    parser.add_argument("--timeout", type=positive_float, default=15.0,
                        help="give up on one `ctdb pstore` after this many seconds (default 15)")
    parser.add_argument("--process", default=None,
                        help="name of this client process in the history (default pdb-writer-PNN)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    waker = Waker()
    out = Emitter("pdb_writer", args.process or f"pdb-writer-{args.node}",
                  on_broken=lambda: waker.post(STOP))
    install_stop_signals(waker)
    loop = PstoreLoop(args, out, waker)
    loop.start()
    reason = None
    while reason is None:
        for r in waker.wait():
            reason = "signal" if r == STOP else "ended" if r == "ended" else reason
    loop.stopping.set()          # no new commit; the one in flight may finish
    loop.join(STOP_GRACE_S)
    loop.stop()
    loop.join(1.0)
    out.capture("stop", node=args.node, db=args.db, reason=reason, commits_acked=loop.acked,
                last=loop.number)
    return 0


if __name__ == "__main__":
    run_main(main)
