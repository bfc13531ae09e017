"""Build the native heartbeat pacer: `python3 -m pyctdbd.native [--out DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import NativeBuildError, build


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pyctdbd.native",
                                     description="build pyctdbd's native heartbeat pacer from its shipped source")
    parser.add_argument("--out", type=Path, help="directory for the library (default: beside the source)")
    args = parser.parse_args()
    try:
        print(build(args.out))
    except (NativeBuildError, OSError) as exc:
        print(f"pyctdbd: native heartbeat pacer not built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
