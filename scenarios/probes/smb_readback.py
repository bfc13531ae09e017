"""smb_readback probe: the final read of the data writers' files, after the cluster settled.

    python -m ctdblab.scenarios.probes.smb_readback IP --password X --file NAME:WRITER
        [--file NAME:WRITER ...] [--user root] [--share share] [--deadline 30] [--process NAME]

For each file it opens the file read-only (every share mode allowed), reads it whole and
scans its 4 KiB slots (``blocks.scan_file``).  Events: ``capture`` ``file_blocks`` per file
(``file``, ``writer``, ``size``, ``blocks`` = {number: crc} of the valid blocks, ``bad_slots``
= numbers of slots holding something that is not a valid block of that writer), or
``file_read_failed`` (``file``, ``writer``, ``phase``, ``error``); finally ``stop``.
"""

from __future__ import annotations

import argparse

from .blocks import scan_file
from .common import Emitter, add_process_option, ipv4_address, positive_float, run_main
from .smbfiles import read_all
from .smbops import SmbClient, SmbTarget, Watchdog, failure_text


def file_and_writer(text: str) -> tuple[str, str]:
    name, sep, writer = text.rpartition(":")
    if not sep or not name or not writer:
        raise argparse.ArgumentTypeError(f"expected NAME:WRITER, got {text!r}")
    return name, writer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.smb_readback",
                                     description="read the data writers' files back")
    parser.add_argument("target", type=ipv4_address)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", required=True)
    parser.add_argument("--share", default="share")
    parser.add_argument("--file", type=file_and_writer, action="append", required=True,
                        help="NAME:WRITER (repeat for every file)")
    parser.add_argument("--deadline", type=positive_float, default=30.0,
                        help="deadline of connecting and of reading one file (default 30)")
    add_process_option(parser, "smb-readback")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Emitter("smb_readback", args.process)
    watchdog = Watchdog()
    target = SmbTarget(server=args.target, share=args.share, user=args.user,
                       password=args.password)
    client = SmbClient(target, watchdog)
    ok = 0
    try:
        deadline = watchdog.guard(client.conn, args.deadline)
        try:
            with deadline:
                client.connect(deadline, 5.0)
        except Exception as e:
            for name, writer in args.file:
                out.capture("file_read_failed", file=name, writer=writer, target=args.target,
                            phase="connect", error=failure_text(e, deadline))
            return 1
        for name, writer in args.file:
            deadline = watchdog.guard(client.conn, args.deadline)
            try:
                with deadline:
                    handle = client.open(name, deadline)
                    content = read_all(handle, deadline)
                    handle.close()
            except Exception as e:
                out.capture("file_read_failed", file=name, writer=writer, target=args.target,
                            phase=client.phase, error=failure_text(e, deadline))
                continue
            blocks, bad = scan_file(content, writer)
            out.capture("file_blocks", file=name, writer=writer, target=args.target,
                        size=len(content), blocks={str(n): crc for n, crc in blocks.items()},
                        bad_slots=bad)
            ok += 1
    finally:
        client.drop()
        watchdog.close()
        out.capture("stop", target=args.target, files_read=ok, files=len(args.file))
    return 0


if __name__ == "__main__":
    run_main(main)
