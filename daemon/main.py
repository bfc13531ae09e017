"""The ``pyctdbd`` command (being built; see issue 3)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("pyctdbd: not built yet", file=sys.stderr)
    return 1
