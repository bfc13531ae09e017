"""The nodes file: PNN slots, deleted nodes, errors, finding this node; `ctdb listnodes` as referee."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctdblab.daemon.config import (
    ConfigError,
    ConfigErrors,
    NodeEntry,
    find_my_node,
    find_my_pnn,
    load_nodes_file,
    parse_nodes,
)


def test_simple_file():
    nodes = parse_nodes("198.18.0.1\n198.18.0.2\n198.18.0.3\n")
    assert [(n.pnn, n.address, n.deleted, n.line) for n in nodes] == [
        (0, IPv4Address("198.18.0.1"), False, 1),
        (1, IPv4Address("198.18.0.2"), False, 2),
        (2, IPv4Address("198.18.0.3"), False, 3),
    ]


def test_deleted_nodes_keep_their_slot():
    nodes = parse_nodes("198.18.0.1\n#198.18.0.2\n# any comment is a deleted node too\n198.18.0.4\n")
    assert [(n.pnn, n.deleted, n.address) for n in nodes] == [
        (0, False, IPv4Address("198.18.0.1")), (1, True, None), (2, True, None),
        (3, False, IPv4Address("198.18.0.4"))]


def test_blank_lines_take_no_slot_and_blanks_are_stripped():
    # CTDB skips blank lines entirely, so PNN = line - 1 only without them.
    nodes = parse_nodes("\n  \t\n  198.18.0.1\t \n\n198.18.0.2\n\n\n")
    assert [(n.pnn, str(n.address), n.line) for n in nodes] == [(0, "198.18.0.1", 3), (1, "198.18.0.2", 5)]


def test_ipv6_brackets_mapped_and_crlf():
    nodes = parse_nodes("fe80::1\r\n[fe80::2]\r\n::ffff:198.18.0.3\r\n")
    assert [n.address for n in nodes] == [IPv6Address("fe80::1"), IPv6Address("fe80::2"),
                                          IPv4Address("198.18.0.3")]


def test_empty_file_has_no_nodes():
    assert parse_nodes("") == []
    assert parse_nodes("\n\n") == []


@pytest.mark.parametrize("line, message", [
    ("198.18.0.300", "'198.18.0.300' is not an IP address"),
    ("198.18.0.1 # primary", "'198.18.0.1 # primary' is not an IP address"),
    ("node1.example", "'node1.example' is not an IP address"),
    ("198.18.0.1:4379", "'198.18.0.1:4379' is not an IP address"),
    ("fe80::1%eth0", "'fe80::1%eth0' is not an IP address"),
])
def test_bad_lines_name_file_and_line(line, message):
    with pytest.raises(ConfigError) as info:
        parse_nodes(f"198.18.0.1\n\n{line}\n", "/etc/ctdb/nodes")
    assert str(info.value) == f"/etc/ctdb/nodes:3: {message}"
    assert (info.value.path, info.value.line) == ("/etc/ctdb/nodes", 3)


def test_duplicates_are_errors():
    with pytest.raises(ConfigError) as info:
        parse_nodes("198.18.0.1\n198.18.0.2\n::ffff:198.18.0.1\n", "nodes")
    assert str(info.value) == "nodes:3: 198.18.0.1 is listed twice (first on line 1)"


def test_all_bad_lines_are_reported():
    with pytest.raises(ConfigErrors) as info:
        parse_nodes("x\n198.18.0.1\ny\n198.18.0.1\n", "nodes")
    assert [e.line for e in info.value.errors] == [1, 3, 4]


def test_load_nodes_file(tmp_path):
    path = tmp_path / "nodes"
    path.write_text("198.18.0.1\n")
    assert load_nodes_file(str(path))[0].address == IPv4Address("198.18.0.1")
    with pytest.raises(ConfigError) as info:
        load_nodes_file(str(tmp_path / "missing"))
    assert "cannot read nodes file" in str(info.value)


NODES = parse_nodes("198.18.0.1\n#198.18.0.2\n198.18.0.3\nfe80::4\n198.18.0.5\n")


def test_find_my_node_by_local_addresses():
    assert find_my_pnn(NODES, ["127.0.0.1", "198.18.0.3"]) == 2
    assert find_my_pnn(NODES, [ip_address("fe80::4")]) == 3
    assert find_my_pnn(NODES, ["fe80::4%eth0"]) == 3
    assert find_my_pnn(NODES, ["::ffff:198.18.0.5"]) == 4
    # Several matches: the first in PNN order (ctdbd binds to the first address that works).
    assert find_my_pnn(NODES, ["198.18.0.5", "198.18.0.1"]) == 0
    # A deleted node is never "me".
    with pytest.raises(ConfigError):
        find_my_pnn(NODES, ["198.18.0.2"])
    with pytest.raises(ConfigError) as info:
        find_my_pnn(NODES, ["198.18.9.9", "not an address"], path="/etc/ctdb/nodes")
    assert "none of this host's addresses" in str(info.value)


def test_find_my_node_by_node_address():
    assert find_my_node(NODES, node_address="198.18.0.3") == NodeEntry(2, IPv4Address("198.18.0.3"), False, 3)
    assert find_my_pnn(NODES, ["198.18.0.1"], node_address="198.18.0.5") == 4
    with pytest.raises(ConfigError) as info:
        find_my_pnn(NODES, ["198.18.0.1"], node_address="198.18.0.9")
    assert "node address 198.18.0.9 is not in the nodes file" in str(info.value)


def test_find_my_node_without_nodes():
    with pytest.raises(ConfigError) as info:
        find_my_pnn(parse_nodes("#198.18.0.1\n"), ["198.18.0.1"])
    assert "lists no nodes" in str(info.value)


# --- `ctdb listnodes` as the referee ------------------------------------------------------------

CTDB = shutil.which("ctdb")


def ctdb_listnodes(base, text: str) -> list[tuple[int, str]] | None:
    """What Debian's ctdb tool reads from a nodes file: [(pnn, address)] of undeleted nodes, or
    None when it refuses the file. `ctdb listnodes` reads the file locally (no daemon needed)."""
    (base / "nodes").write_bytes(text.encode("utf-8", "surrogateescape"))
    result = subprocess.run([CTDB, "listnodes", "-Y"], env=dict(os.environ, CTDB_BASE=str(base)),
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        return None
    rows = []
    for row in result.stdout.splitlines():
        _, pnn, address, _ = row.split("|")
        rows.append((int(pnn), address))
    return rows


def ours(text: str) -> list[tuple[int, str]] | None:
    try:
        nodes = parse_nodes(text)
    except ConfigError:
        return None
    return [(n.pnn, str(n.address)) for n in nodes if not n.deleted]


needs_ctdb = pytest.mark.skipif(CTDB is None, reason="the ctdb tool (Debian package ctdb) is not installed")

_LINE_KINDS = [
    lambda i: f"198.18.0.{i + 1}", lambda i: f"  198.18.1.{i + 1}\t", lambda i: f"fe80::{i + 1:x}",
    lambda i: f"[fe80::1:{i + 1:x}]", lambda i: f"::ffff:198.18.2.{i + 1}", lambda i: f"#198.18.3.{i + 1}",
    lambda i: "# a comment", lambda i: "", lambda i: " \t ", lambda i: f"198.18.4.{i + 1} # note",
    lambda i: "198.18.0.256", lambda i: f"198.18.5.{i + 1}\r", lambda i: "garbage",
    lambda i: f"::ffff:{i + 1:x}:1", lambda i: f"198.18.6.{i + 1}:4379",
]


@st.composite
def nodes_files(draw):
    kinds = draw(st.lists(st.integers(0, len(_LINE_KINDS) - 1), max_size=8))
    # Distinct addresses per line: duplicates are a deliberate difference (we reject them).
    return "\n".join(_LINE_KINDS[kind](index) for index, kind in enumerate(kinds)) + "\n"


@needs_ctdb
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=nodes_files())
def test_generated_nodes_files_read_like_ctdb_listnodes(tmp_path, text):
    assert ours(text) == ctdb_listnodes(tmp_path, text), text


@needs_ctdb
def test_duplicates_are_a_deliberate_difference(tmp_path):
    text = "198.18.0.1\n198.18.0.1\n"
    assert ctdb_listnodes(tmp_path, text) == [(0, "198.18.0.1"), (1, "198.18.0.1")]
    assert ours(text) is None


def test_nul_bytes_are_refused_with_their_line():
    with pytest.raises(ConfigError) as info:
        parse_nodes("198.18.0.1\n198.18.0.2\0\n", "/etc/ctdb/nodes")
    assert info.value.line == 2 and "NUL" in str(info.value)
