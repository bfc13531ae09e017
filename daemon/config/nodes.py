"""The nodes file: the cluster's private addresses, one node per line.

CTDB 4.17's reading (ctdb_read_nodes_file in ctdb/common/ctdb_util.c, checked with ``ctdb
listnodes``):
- lines end at '\\n'; a '\\r' ends a line's text; empty lines at the end are dropped;
- leading and trailing blanks (space, tab) are stripped; a line that is then empty is skipped and
  takes **no** PNN slot (so PNN = line number - 1 only while there are no blank lines);
- a line starting with '#' is a DELETED node: it keeps its PNN slot and has no address (CTDB stores
  0.0.0.0); so every '#' line counts, comment or not;
- anything else must be exactly one IPv4 or IPv6 address (``[v6]`` brackets allowed, IPv4-mapped
  IPv6 read as IPv4); ``198.18.0.1 # note`` is an error.
Stricter than CTDB: the same address twice is an error here (CTDB would accept it and misbehave).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_address

from .clib import IPAddress, file_lines, parse_ip
from .errors import ConfigError, nul_byte_error, raise_collected, shown


@dataclass(frozen=True)
class NodeEntry:
    pnn: int
    address: IPAddress | None  # None for a deleted node
    deleted: bool
    line: int = 0  # line in the nodes file (0 if not from a file)


def parse_nodes(text: str, path: str = "nodes") -> list[NodeEntry]:
    """Parse nodes-file text into entries in PNN order. Every bad line is reported."""
    entries: list[NodeEntry] = []
    errors: list[ConfigError] = []
    first_line_of: dict[IPAddress, int] = {}
    nul = nul_byte_error(text, path)
    if nul is not None:
        errors.append(nul)
    for index, raw in enumerate(file_lines(text)):
        line = index + 1
        node = raw.strip(" \t")
        if node == "":
            continue
        pnn = len(entries)
        if node.startswith("#"):
            entries.append(NodeEntry(pnn, None, True, line))
            continue
        try:
            address = parse_ip(node)
        except ValueError:
            errors.append(ConfigError(f"{shown(node)} is not an IP address", path, line))
            entries.append(NodeEntry(pnn, None, False, line))
            continue
        if address in first_line_of:
            errors.append(ConfigError(
                f"{address} is listed twice (first on line {first_line_of[address]})", path, line))
        else:
            first_line_of[address] = line
        entries.append(NodeEntry(pnn, address, False, line))
    raise_collected(errors)
    return entries


def load_nodes_file(path: str) -> list[NodeEntry]:
    """Read and parse a nodes file. Unlike public_addresses, the nodes file must exist."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read nodes file: {exc.strerror}", path) from None
    return parse_nodes(data.decode("utf-8", "surrogateescape"), path)


def _canonical(address: object) -> IPAddress:
    """An address from a string or ipaddress object, IPv4-mapped IPv6 turned into IPv4."""
    parsed = address if not isinstance(address, str) else ip_address(address.split("%", 1)[0])
    assert not isinstance(parsed, str)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return mapped if mapped is not None else parsed  # type: ignore[return-value]


def find_my_node(nodes: Iterable[NodeEntry], local_addresses: Iterable[object] = (),
                 node_address: str | IPAddress | None = None, path: str = "nodes") -> NodeEntry:
    """Which entry is this node.

    With ``node_address`` (ctdb.conf ``[cluster] node address``) it is the entry with that address.
    Otherwise it is the first non-deleted entry, in PNN order, whose address is one of
    ``local_addresses`` (ctdbd binds to each nodes-file address in turn and keeps the first that
    works). Raises ConfigError when there is no such entry.
    """
    live = [entry for entry in nodes if not entry.deleted and entry.address is not None]
    if not live:
        raise ConfigError("the nodes file lists no nodes", path)
    if node_address is not None:
        wanted = _canonical(node_address)
        for entry in live:
            if entry.address == wanted:
                return entry
        raise ConfigError(f"node address {wanted} is not in the nodes file", path)
    local = set()
    for address in local_addresses:
        try:
            local.add(_canonical(address))
        except ValueError:
            continue
    for entry in live:
        if entry.address in local:
            return entry
    raise ConfigError("none of this host's addresses is in the nodes file "
                      "(set [cluster] node address, or fix the nodes file)", path)


def find_my_pnn(nodes: Iterable[NodeEntry], local_addresses: Iterable[object] = (),
                node_address: str | IPAddress | None = None, path: str = "nodes") -> int:
    """The PNN of :func:`find_my_node`."""
    return find_my_node(nodes, local_addresses, node_address, path).pnn
