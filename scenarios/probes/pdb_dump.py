"""pdb_dump probe: one node's own copy of a persistent database, read from its TDB file.

    python -m ctdblab.scenarios.probes.pdb_dump --db NAME --node PNN [--prefix P ...]
        [--process NAME]

Runs inside a node.  It asks the local daemon where the database lives (``ctdb -X getdbmap``)
and dumps that file with ``tdbdump``: the bytes this node's smbd would read, not a cluster-wide
traverse (which could mask a copy that is behind).  Each record's data starts with the 24-byte
ctdb_ltdb_header, which is stripped; records with no data (deleted) are skipped.

``tdbdump`` of a file in the middle of a transaction commit (a ``ctdb pstore`` just stopped,
a recovery pushing records) can fail; the read is then tried again, up to ``--attempts`` times
one second apart.

Events: ``capture`` ``pdb_copy`` (``node``, ``db``, ``path``, ``records`` = {key: value} of the
keys starting with one of the ``--prefix`` (all when none given), ``total`` = records in the
file, ``attempt``) or ``pdb_copy_failed`` (``node``, ``db``, ``error``, ``attempts``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time

from .common import Emitter, run_main

LTDB_HEADER_SIZE = 24
_ESCAPE = re.compile(rb"\\([0-9A-Fa-f]{2})")
_FIELD = re.compile(r'^(key|data)\((\d+)\) = "(.*)"$')


def unescape(text: str) -> bytes:
    """tdbdump's escaping undone: printable bytes as is, others (and ``"`` ``\\``) as ``\\XX``."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("latin-1"))


def parse_tdbdump(text: str) -> dict[bytes, bytes]:
    """``tdbdump`` output → {key: data} (data as stored, header included)."""
    records: dict[bytes, bytes] = {}
    key: bytes | None = None
    for line in text.splitlines():
        m = _FIELD.match(line.strip())
        if not m:
            continue
        value = unescape(m.group(3))
        if len(value) != int(m.group(2)):
            raise ValueError(f"tdbdump line does not match its length: {line[:80]!r}")
        if m.group(1) == "key":
            key = value
        elif key is not None:
            records[key] = value
            key = None
    return records


def db_path(getdbmap_x: str, db: str) -> str | None:
    """The path of ``db`` in ``ctdb -X getdbmap`` output (|ID|Name|Path|Persistent|...|)."""
    for line in getdbmap_x.splitlines():
        cols = line.strip().strip("|").split("|")
        if len(cols) >= 3 and cols[1] == db:
            return cols[2]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.scenarios.probes.pdb_dump")
    parser.add_argument("--db", required=True)
    parser.add_argument("--node", type=int, required=True)
    parser.add_argument("--prefix", action="append", default=[])
    parser.add_argument("--attempts", type=int, default=5)
    parser.add_argument("--process", default=None)
    args = parser.parse_args(argv)
    out = Emitter("pdb_dump", args.process or f"pdb-dump-{args.node}")
    for attempt in range(1, args.attempts + 1):
        try:
            path, stored = read_copy(args.db)
            break
        except (OSError, subprocess.SubprocessError, LookupError, ValueError) as e:
            # tdbdump says why on stdout ("Failed to open ..."), the ctdb tool on stderr.
            said = " ".join(filter(None, ((getattr(e, "stdout", None) or "").strip()[-200:],
                                          (getattr(e, "stderr", None) or "").strip()[-200:])))
            error = f"{type(e).__name__}: {e}" + (f" ({said})" if said else "")
            if attempt == args.attempts:
                out.capture("pdb_copy_failed", node=args.node, db=args.db, error=error,
                            attempts=attempt)
                return 1
            time.sleep(1.0)
    records = {}
    for key, data in stored.items():
        name = key.decode("latin-1")
        value = data[LTDB_HEADER_SIZE:]
        if value and (not args.prefix or any(name.startswith(p) for p in args.prefix)):
            records[name] = value.decode("latin-1")
    out.capture("pdb_copy", node=args.node, db=args.db, path=path, records=records,
                total=len(stored), attempt=attempt)
    return 0


def read_copy(db: str) -> tuple[str, dict[bytes, bytes]]:
    """(path, {key: data}) of this node's own file of ``db``."""
    dbmap = subprocess.run(["ctdb", "-X", "getdbmap"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    path = db_path(dbmap, db)
    if path is None:
        raise LookupError(f"{db} is not attached on this node")
    dump = subprocess.run(["tdbdump", path], capture_output=True, text=True, timeout=60,
                          check=True, encoding="latin-1").stdout
    return path, parse_tdbdump(dump)


if __name__ == "__main__":
    run_main(main)
