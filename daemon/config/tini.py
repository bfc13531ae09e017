"""A reader for Samba's "tini" INI dialect, as used by ctdb.conf and ctdb.tunables.

Rules (lib/util/tini.c in Samba 4.17; re-stated, not copied):
- leading blanks are skipped; a line whose first non-blank is '#' or ';' is a comment;
- a line ending in '\\' (or '\\' plus one blank) continues on the next line;
- runs of blanks inside a line shrink to their first blank;
- ``[name]``: the section name is everything between '[' and the first ']' (no trimming, rest of
  the line ignored); a '[' line without ']' is a syntax error that stops the parse;
- ``name = value``: split at the first '='; one blank is trimmed from each end of both sides (after
  shrinking, that is all of them); an empty name is a syntax error;
- a line without '=' is ignored for ctdb.conf, and is a name with an empty value for ctdb.tunables
  (``allow_empty_value``);
- no inline comments: ``a = b # c`` has the value ``b # c``.
Each item carries the physical line number where its logical line began.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .clib import C_SPACE


@dataclass(frozen=True)
class Section:
    name: str
    line: int


@dataclass(frozen=True)
class Param:
    name: str
    value: str | None  # None: the line had no '=' (only with allow_empty_value)
    line: int


@dataclass(frozen=True)
class SyntaxProblem:
    """tini gives up here; nothing after this line is read."""

    reason: str
    text: str
    line: int


Item = Section | Param | SyntaxProblem


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first physical line, logical line) after comments, continuations and blank runs."""
    i, n, line = 0, len(text), 1
    while True:
        # Skip leading blanks, stopping at a newline.
        while i < n and text[i] in C_SPACE and text[i] != "\n":
            i += 1
        if i >= n:
            return
        char = text[i]
        if char in "#;":
            newline = text.find("\n", i)
            if newline < 0:
                return
            i, line = newline + 1, line + 1
            continue
        if char == "\n":
            i, line = i + 1, line + 1
            continue
        start_line = line
        buf: list[str] = []
        while i < n:
            char = text[i]
            i += 1
            if char == "\n":
                line += 1
                if buf and buf[-1] == "\\":
                    buf.pop()
                    continue
                if len(buf) > 1 and buf[-2] == "\\" and buf[-1] in C_SPACE:
                    del buf[-2:]
                    continue
                break
            if buf and buf[-1] in C_SPACE and char in C_SPACE:
                continue
            buf.append(char)
        logical = "".join(buf)
        nul = logical.find("\0")  # C strings end at NUL
        if nul >= 0:
            logical = logical[:nul]
        yield start_line, logical


def _trim_one_space(text: str) -> str:
    if text[:1] in C_SPACE and text:
        text = text[1:]
    if text and text[-1] in C_SPACE:
        text = text[:-1]
    return text


def parse_ini(text: str, allow_empty_value: bool = False) -> Iterator[Item]:
    """Yield sections and params in file order; a SyntaxProblem, if any, comes last."""
    for line, logical in _logical_lines(text):
        if logical == "":
            continue
        if logical[0] == "[":
            close = logical.find("]")
            if close < 0:
                yield SyntaxProblem("section header without ']'", logical, line)
                return
            yield Section(logical[1:close], line)
            continue
        equals = logical.find("=")
        if equals < 0:
            if allow_empty_value:
                yield Param(_trim_one_space(logical), None, line)
            continue
        if equals == 0:
            yield SyntaxProblem("line starts with '=' (no name)", logical, line)
            return
        yield Param(_trim_one_space(logical[:equals]), _trim_one_space(logical[equals + 1:]), line)
