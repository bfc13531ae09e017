"""A Python stand-in for CTDB's ``ctdb_takeover_tests`` (ctdb/tests/src), for the vectors.

``run(argv, env, stdin)`` takes what the C program takes (``argv`` after the program
name, e.g. ``["ipalloc", "0,2,0"]`` or ``["ipalloc", "0,0,0,0", "multi"]``) and returns
``(exit_code, lines)``: the log lines CTDB would write to stderr at ``CTDB_TEST_LOGLEVEL``
followed by the ``IP PNN`` lines, which is what CTDB's test scripts compare (2>&1).

Environment, as in the C harness: ``CTDB_IP_ALGORITHM`` (lcp2 | nondet | det, default
lcp2), ``CTDB_SET_NoIPTakeover``, ``CTDB_TEST_RUNSTATE`` (one runstate per node, or "1"
for all), ``CTDB_TEST_LOGLEVEL`` (default DEBUG). stdin: ``IP CURRENT_PNN [ALLOWED,...]``
lines up to a blank line; with ``multi`` one such block (without ALLOWED) per node.

Two knobs CTDB's harness does not have (it always passes NoIPFailback=0 and no forced
nodes), added so both can be tested the same way: ``CTDB_SET_NoIPFailback`` and
``CTDB_TEST_FORCE_REBALANCE`` (comma-separated PNNs).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from ctdblab.daemon.core.ipalloc import (
    IPAddress,
    ALGORITHM_BY_NAME,
    LogFunction,
    LogLevel,
    build_public_ips,
    eligible_nodes,
    format_addr,
    ipalloc,
)

_LEVEL_NAMES = [  # ctdb/common/logging.c log_string_map, index = level
    "ERROR", "WARNING", "WARNING", "NOTICE", "NOTICE", "INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG",
]


class HarnessExit(Exception):
    """The C program would exit with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def strtol(text: str, base: int) -> int:
    """C's strtol: leading blanks, sign, longest valid prefix; 0 if there is none."""
    pattern = {10: r"\s*([+-]?)(\d*)", 0: r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)?"}[base]
    match = re.match(pattern, text)
    sign, digits = match.group(1), match.group(2) or ""
    if not digits:
        return 0
    if base == 0:
        if digits[:2].lower() == "0x":
            value = int(digits, 16)
        elif digits.startswith("0"):
            value = int(digits, 8)
        else:
            value = int(digits)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def parse_log_level(text: str | None) -> int:
    """ctdb's debug_level_parse: a number 0..10 or a case-insensitive prefix of a name;
    anything else (or unset) means DEBUG in ctdb_takeover_tests. An empty string is a
    prefix of every name, so it means ERROR, the first."""
    if text is None:
        return LogLevel.DEBUG
    if text == "":
        return LogLevel.ERR
    if text[0].isdigit():
        level = int(re.match(r"\d+", text).group())
        return level if level < len(_LEVEL_NAMES) else LogLevel.DEBUG
    for level, name in enumerate(_LEVEL_NAMES):
        if name.lower().startswith(text.lower()):
            return level
    return LogLevel.DEBUG


def _csv_values(text: str) -> list[int]:
    return [strtol(token, 0) for token in text.split(",") if token]


def _per_node_values(env: Mapping[str, str], name: str, num_nodes: int) -> list[int] | None:
    text = env.get(name)
    if text is None:
        return None
    if text == "1":
        return [1] * num_nodes
    values = _csv_values(text)
    if len(values) != num_nodes:
        raise HarnessExit(1, f"ERROR: Wrong number of values in {name}")
    return values


def _strtok(text: str, pos: int, delims: str) -> tuple[str | None, int]:
    """C's strtok from ``pos``: skip delimiters, take the run up to the next one."""
    while pos < len(text) and text[pos] in delims:
        pos += 1
    if pos == len(text):
        return None, pos
    end = pos
    while end < len(text) and text[end] not in delims:
        end += 1
    return text[pos:end], min(end + 1, len(text))


Known = dict[int, list[tuple[IPAddress, int]]]


def _read_block(lines: list[str], multi: bool, num_nodes: int, known: Known,
                emit: LogFunction) -> list[tuple[IPAddress, int]]:
    """Consume one block of ``IP PNN [ALLOWED,...]`` lines from ``lines`` (up to a blank
    line). Without ``multi`` each IP is added to ``known`` of every (allowed) node; the
    block itself is returned for ``multi``."""
    block: list[tuple[IPAddress, int]] = []
    while lines:
        line = lines.pop(0)
        if line == "":
            break
        token, pos = _strtok(line, 0, " \t")
        if token is None:
            emit(LogLevel.WARNING, f"WARNING, bad line ignored :{line}")
            continue
        try:
            addr = ipaddress.ip_address(token)
        except ValueError:
            emit(LogLevel.ERR, f"ERROR, bad address :{token}")
            continue
        token, pos = _strtok(line, pos, " \t")
        pnn = strtol(token, 10) if token is not None else -1
        block.append((addr, pnn))
        allowed, _ = _strtok(line, pos, " \t#")
        if allowed is None:
            if not multi:
                for node in range(num_nodes):
                    known[node].append((addr, pnn))
            continue
        if multi:
            raise HarnessExit(134, "ERROR, bad token")  # C: the read fails and assert() aborts
        for item in allowed.split(","):
            if not item:
                continue
            node = strtol(item, 10)
            if not 0 <= node < num_nodes:
                raise HarnessExit(134, f"allowed node {node} out of range")  # C: out of bounds
            known[node].append((addr, pnn))
    return block


def run(argv: Sequence[str], env: Mapping[str, str], stdin: str) -> tuple[int, list[str]]:
    output: list[str] = []
    level = parse_log_level(env.get("CTDB_TEST_LOGLEVEL"))

    def emit(line_level: LogLevel, text: str) -> None:
        if line_level <= level:
            output.append(text)

    try:
        if len(argv) == 2 and argv[0] == "ipalloc":
            multi = False
        elif len(argv) == 3 and argv[0] == "ipalloc" and argv[2] == "multi":
            multi = True
        else:
            raise HarnessExit(1, "usage: ctdb_takeover_tests <op>")

        flags = _csv_values(argv[1])
        num_nodes = len(flags)
        algorithm_name = env.get("CTDB_IP_ALGORITHM", "lcp2")
        if algorithm_name not in ALGORITHM_BY_NAME:
            raise HarnessExit(1, f"ERROR: unknown IP algorithm {algorithm_name}")
        no_ip_takeover = strtol(env.get("CTDB_SET_NoIPTakeover", "0"), 0) != 0
        no_ip_failback = strtol(env.get("CTDB_SET_NoIPFailback", "0"), 0) != 0
        force_rebalance = _csv_values(env.get("CTDB_TEST_FORCE_REBALANCE", ""))

        lines = stdin.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the final newline does not start an empty line
        known: Known = {node: [] for node in range(num_nodes)}
        if multi:
            for node in range(num_nodes):
                known[node] = _read_block(lines, True, num_nodes, known, emit)
        else:
            _read_block(lines, False, num_nodes, known, emit)

        runstates = _per_node_values(env, "CTDB_TEST_RUNSTATE", num_nodes)
        hosts = eligible_nodes(flags, runstates)
        available = {node: [addr for addr, _ in known[node]] for node in hosts}
        ips = build_public_ips(known, available)

        result = ipalloc(
            ips,
            num_nodes,
            algorithm=ALGORITHM_BY_NAME[algorithm_name],
            no_ip_takeover=no_ip_takeover,
            no_ip_failback=no_ip_failback,
            force_rebalance_nodes=force_rebalance,
            log=emit,
            log_level=level,
        )
    except HarnessExit as exc:
        output.append(str(exc))
        return exc.code, output
    output.extend(f"{format_addr(addr)} {pnn}" for addr, pnn in result.items())
    return 0, output
