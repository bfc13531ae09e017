"""Throughput reader (runs inside a client): read one file over SMB3 for a fixed time.

    python -m ctdblab.scenarios.smbread --server IP --file NAME --duration 10 --start-at EPOCH

Waits until ``--start-at`` so all readers of a scaling point start together, then reads the file
in 1 MiB requests, one outstanding (from the start again at EOF), until the duration is over.
Prints one JSON line: ``{"bytes": n, "t_start": t0, "t_end": t1, "server": ip}``.
Signing stays on (smbd refuses unsigned SMB 3.1.1 tree connects).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

CHUNK = 1 << 20


def read_for(server: str, share: str, name: str, user: str, password: str, duration: float,
             start_at: float | None) -> dict:
    from smbprotocol.connection import Connection
    from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes,
                                  ImpersonationLevel, Open, ShareAccess)
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    conn = Connection(uuid.uuid4(), server, 445)
    conn.connect(timeout=10)
    try:
        session = Session(conn, user, password, require_encryption=False)
        session.connect()
        tree = TreeConnect(session, rf"\\{server}\{share}")
        tree.connect()
        handle = Open(tree, name)
        handle.create(ImpersonationLevel.Impersonation, 0x80000000,     # GENERIC_READ
                      FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ,
                      CreateDisposition.FILE_OPEN, CreateOptions.FILE_NON_DIRECTORY_FILE)
        size = handle.end_of_file
        if start_at:
            time.sleep(max(0.0, start_at - time.time()))
        total, offset = 0, 0
        t0 = time.time()
        deadline = t0 + duration
        while time.time() < deadline:
            data = handle.read(offset, min(CHUNK, size - offset))
            total += len(data)
            offset = offset + len(data)
            if offset >= size:
                offset = 0
        t1 = time.time()
        handle.close()
        return {"bytes": total, "t_start": t0, "t_end": t1, "server": server}
    finally:
        conn.disconnect()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--share", default="share")
    p.add_argument("--file", required=True)
    p.add_argument("--user", default="root")
    p.add_argument("--password", required=True)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--start-at", type=float, default=None)
    args = p.parse_args(argv)
    try:
        result = read_for(args.server, args.share, args.file, args.user, args.password,
                          args.duration, args.start_at)
    except Exception as e:      # one line for the orchestrator, not a traceback
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "server": args.server}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
