"""The ``ctdblab`` command: bring clusters up, run scenarios, draw reports."""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctdblab", description=__doc__)
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return 0
        raise UserError(f"unknown command {args.command!r}")
    except UserError as e:
        print(f"ctdblab: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
