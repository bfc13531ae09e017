"""The vacuum's triage, native against Python, on the same records, in one process (no lab).

    .venv/bin/python -m benchmarks.vacuum_triage [--records 20000] [--rounds 3]

A fast vacuum run looks at up to 20,000 queued records per database (server/vacuum.py
RUN_BATCH), each under its chain lock: still as it was queued? then delete it here, send it to
its lmaster or put it on the delete list (core/db/vacuum.py). server/vacuum_triage.py does that
either in Python (a ctypes round per libtdb call) or natively (a slice of 200 in one call of
native/node_plane.c's np_vacuum_triage). This fills two identical volatile TDB files (3-node
vnnmap, this node pnn 1) with `--records` tombstones queued for deletion -- a third of them this
node is lmaster of (deleted at once), the rest go to their lmaster -- and times one run's triage
over each file, both ways, alternating, `--rounds` times on fresh files. Printed: microseconds
per record (CPU of this process, user + system) and the ratio Python / native.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import tempfile
from pathlib import Path

from ctdblab.daemon.core.db.vacuum import DeleteQueue
from ctdblab.daemon.native import node_plane
from ctdblab.daemon.protocol.types import LtdbHeader
from ctdblab.daemon.server.vacuum import SLICE
from ctdblab.daemon.server.vacuum_triage import Counts, SliceTriage
from ctdblab.daemon.store import DbDirs, DbKind, Store, libtdb

PNN = 1
LMASTERS = (0, 1, 2)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def filled(base: Path, records: int, seed: int):
    for sub in ("v", "p", "s"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    store = Store(DbDirs(str(base / "v"), str(base / "p"), str(base / "s")), PNN)
    db = store.attach("smbXsrv_open_global.tdb", DbKind.VOLATILE)
    rng = random.Random(seed)
    batch = []
    for _ in range(records):
        key, header = rng.randbytes(16), LtdbHeader(rng.randrange(2, 9), PNN, 0, 0)
        db.tdb.store(key, header.pack())
        batch.append((key, header))
    return store, db, batch


def time_triage(triage: SliceTriage, db, batch) -> float:
    queue, counts = DeleteQueue(), Counts()
    started = cpu()
    for done in range(0, len(batch), SLICE):
        triage.run(db, queue, batch[done:done + SLICE], LMASTERS, counts)
    spent = cpu() - started
    assert counts.deleted > len(batch) // 5 and counts.busy == 0, counts
    return spent / len(batch) * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    native = (node_plane.library(build_if_missing=True),
              node_plane.tdb_functions(libtdb.lib, libtdb.log_function_address()))
    ways = {"python": SliceTriage(PNN, lambda db_id, key: None, None),
            "native": SliceTriage(PNN, lambda db_id, key: None, native)}
    took: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="vacuum-triage-") as tmp:
        for rnd in range(args.rounds):
            order = list(ways) if rnd % 2 == 0 else list(reversed(ways))
            for name in order:
                store, db, batch = filled(Path(tmp) / f"{name}{rnd}", args.records, seed=rnd)
                try:
                    took[name].append(time_triage(ways[name], db, batch))
                finally:
                    store.close()
                print(f"round {rnd + 1}/{args.rounds} {name}: {took[name][-1]:.2f} us per record", flush=True)
    py, nat = statistics.median(took["python"]), statistics.median(took["native"])
    print(f"\nvacuum triage of {args.records} queued tombstones (median of {args.rounds} rounds, "
          f"CPU per record): python {py:.2f} us, native {nat:.2f} us, python/native {py / nat:.1f}x; "
          f"a run of {args.records} records: {py * args.records / 1e3:.0f} ms against {nat * args.records / 1e3:.0f} ms")


if __name__ == "__main__":
    main()
