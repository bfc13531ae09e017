"""Counting what a node's volatile databases hold, while the daemon and smbd use them.

``CENSUS`` runs inside a node with the project's Python (``python -c CENSUS DIR PNN EVERY``): every
EVERY seconds it opens each of the node's files in DIR (``<name>.<pnn>``, as both daemons name
them) read-only -- libtdb then takes no locks and never clears or writes the file -- walks it
with ``TdbFile.traverse_read`` and prints one JSON line:

    {"t": <wall clock when the census ended>, "pnn": 0, "took": 0.12,
     "dbs": {"locking.tdb": [records, tombstones, file bytes], ...}, "errors": {"x.tdb": "..."}}

A *tombstone* is a record whose value is the 24-byte ltdb header alone (smbd's delete, waiting
for the vacuum). Without locks a traverse may meet a chain the daemon is rewriting; such a
database is reported under "errors" for that census, never as a count.

:func:`parse_census` reads those lines back (the orchestrator's side, and the unit tests').
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

CENSUS = r"""
import json, os, sys, time
from ctdblab.daemon.protocol import LTDB_HEADER_SIZE
from ctdblab.daemon.store import TdbFile
from ctdblab.daemon.store.tdbfile import TdbError
directory, pnn, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
suffix = "." + str(pnn)

def count(path):
    seen = [0, 0]
    def visit(key, value):
        seen[0] += 1
        if len(value) == LTDB_HEADER_SIZE:
            seen[1] += 1
    tdb = TdbFile(path, 0, 0, open_flags=os.O_RDONLY)
    try:
        tdb.traverse_read(visit)
    finally:
        tdb.close()
    return [seen[0], seen[1], os.stat(path).st_size]

while True:
    started = time.time()
    dbs, errors = {}, {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(suffix):
            continue
        try:
            dbs[name[:-len(suffix)]] = count(os.path.join(directory, name))
        except (TdbError, OSError) as exc:
            errors[name[:-len(suffix)]] = str(exc)[:200]
    ended = time.time()
    print(json.dumps({"t": round(ended, 3), "pnn": pnn, "took": round(ended - started, 3),
                      "dbs": dbs, "errors": errors}), flush=True)
    time.sleep(max(0.0, every - (time.time() - started)))
"""


@dataclass(frozen=True)
class DbCount:
    records: int
    tombstones: int
    bytes: int


@dataclass(frozen=True)
class Census:
    t: float
    pnn: int
    took: float
    dbs: dict[str, DbCount]
    errors: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"t": self.t, "pnn": self.pnn, "took": self.took,
                "dbs": {name: [c.records, c.tombstones, c.bytes] for name, c in self.dbs.items()},
                "errors": self.errors}


class CensusError(ValueError):
    pass


def parse_census(line: str) -> Census:
    """One line of CENSUS output (or one entry of results.json) as a Census."""
    try:
        raw = json.loads(line) if isinstance(line, str) else line
        dbs = {}
        for name, counts in raw["dbs"].items():
            records, tombstones, size = (int(x) for x in counts)
            if not 0 <= tombstones <= records or size < 0:
                raise CensusError(f"impossible counts for {name}: {counts}")
            dbs[name] = DbCount(records, tombstones, size)
        return Census(float(raw["t"]), int(raw["pnn"]), float(raw.get("took", 0.0)), dbs,
                      {str(k): str(v) for k, v in raw.get("errors", {}).items()})
    except CensusError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CensusError(f"not a census line: {str(line)[:200]!r} ({exc})") from None
