"""``python -m ctdblab.reports DIR``: write the report for DIR and print a short summary."""

from __future__ import annotations

import argparse
import sys

from ctdblab.errors import UserError

from . import load_datasets, make_report
from .summary import brief_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctdblab.reports", description=__doc__)
    parser.add_argument("dir", help="a run directory (results.json + history.jsonl) or a parent of several")
    args = parser.parse_args(argv)
    try:
        written = make_report(args.dir)
        for line in brief_lines(load_datasets(args.dir)):
            print(line)
    except UserError as e:
        print(f"ctdblab: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
