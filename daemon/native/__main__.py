"""Build pyctdbd's native parts (the heartbeat pacer, the node plane): `python3 -m pyctdbd.native [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import SOURCES, NativeBuildError, build


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pyctdbd.native",
                                     description="build pyctdbd's native parts from their shipped sources")
    parser.add_argument("--out", type=Path, help="directory for the library (default: beside the source)")
    args = parser.parse_args()
    for source in SOURCES:
        try:
            print(build(args.out, source))
        except (NativeBuildError, OSError) as exc:
            print(f"pyctdbd: native {source.stem.replace('_', ' ')} not built: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
