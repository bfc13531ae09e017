"""Debian's stock event scripts that pyctdbd runs its own version of, in their place.

A host switched between ctdbd and pyctdbd (`systemctl`, see packaging/) keeps one
/etc/ctdb/events/legacy for both daemons. Where a stock script cannot work under pyctdbd, pyctdbd
runs the script of the same name it ships (``scripts/``) instead, and ctdbd still finds Debian's:

* ``10.interface``: pyctdbd adds a public address itself before the ``takeip`` event (and deletes
  it itself at ``releaseip``); the stock script's ``ip addr add`` then fails with "File exists",
  which fails every takeover. pyctdbd's script only checks the end state.

Only Debian's own file is replaced: the enabled entry must resolve to ``<data dir>/events/legacy/
NAME.script`` (what the ctdb package and ``ctdb event script enable`` link there). A site's own
script of that name, or a disabled one, stays as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .scriptdir import SCRIPT_SUFFIX, ScriptInfo

REPLACED_STOCK_SCRIPTS = frozenset({"10.interface"})


@dataclass(frozen=True)
class StockReplacements:
    stock_dir: Path              # Debian's scripts: /usr/share/ctdb/events/legacy
    own_dir: Path                # pyctdbd's shipped scripts
    names: frozenset[str] = REPLACED_STOCK_SCRIPTS

    def replacement(self, info: ScriptInfo) -> Path | None:
        """pyctdbd's script to run for ``info``, or None to run ``info.path`` itself."""
        if info.name not in self.names or not info.enabled:
            return None
        file_name = info.name + SCRIPT_SUFFIX
        own = self.own_dir / file_name
        try:
            if not os.path.samefile(info.path, self.stock_dir / file_name) or not own.is_file():
                return None
        except OSError:                       # no stock copy here (or it vanished)
            return None
        return own

    def apply(self, info: ScriptInfo) -> ScriptInfo:
        own = self.replacement(info)
        return info if own is None else ScriptInfo(info.name, own, info.enabled)
