"""public_addresses (the IPs this node may host) and home_nodes (deterministic homes, CTDB >= 4.20).

public_addresses, as CTDB 4.17 reads it (ctdb_set_public_addresses in ctdb/server/ctdb_takeover.c):
- a missing file means the node hosts no public IPs (not an error);
- lines end at '\\n' ('\\r' ends a line's text); leading blanks are skipped; '#' lines and empty
  lines are skipped;
- ``IP/maskbits iface[,iface...]``, fields separated by blanks; a missing interface field is an
  error; CTDB ignores any further fields (we do too, with a warning);
- interfaces are split on ',' (empty names vanish); the same IP twice is an error.
Stricter than CTDB: the mask must fit the address family (0..32 or 0..128), there must be at
least one interface, and interface names must be valid Linux names (1..15 characters, no '/',
':' or blanks). CTDB also checks that each interface exists; that is I/O and left to the daemon.

home_nodes (ipalloc_deterministic.c): ``IP PNN`` per line; we also allow '#' comment lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, ip_interface

from .clib import IPAddress, file_lines, parse_ip, smb_strtoul_full
from .errors import ConfigError, nul_byte_error, raise_collected, shown

IFNAMSIZ = 16


@dataclass(frozen=True)
class PublicAddress:
    ip: IPAddress
    prefixlen: int
    ifaces: tuple[str, ...]
    line: int = 0

    @property
    def interface(self):  # an IPv4Interface / IPv6Interface, e.g. 198.19.8.1/20
        return ip_interface(f"{self.ip}/{self.prefixlen}")

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefixlen} {','.join(self.ifaces)}"


def _split_blanks(text: str) -> list[str]:
    return [field for field in text.replace("\t", " ").split(" ") if field]


def _bad_iface_reason(name: str) -> str | None:
    if len(name) >= IFNAMSIZ:
        return f"interface name {shown(name)} is longer than {IFNAMSIZ - 1} characters"
    if name in (".", "..") or any(char in "/:" or char.isspace() for char in name):
        return f"{shown(name)} is not a valid interface name"
    return None


def parse_ip_mask(text: str) -> tuple[IPAddress, int]:
    """``IP/maskbits`` as CTDB reads it (split at the last '/', decimal mask). Raises ValueError."""
    if len(text) >= 64:
        raise ValueError("too long")
    address_text, slash, mask_text = text.rpartition("/")
    if not slash:
        raise ValueError("no /maskbits")
    mask = smb_strtoul_full(mask_text, 10)
    address = parse_ip(address_text)
    limit = 32 if isinstance(address, IPv4Address) else 128
    if mask > limit:
        raise ValueError(f"mask /{mask} is longer than {limit} bits")
    return address, mask


def parse_public_addresses(text: str, path: str = "public_addresses",
                           warnings: list[str] | None = None) -> list[PublicAddress]:
    """Parse public_addresses text; every bad line is reported. Warnings (ignored extra fields)
    are appended to ``warnings`` when a list is given."""
    result: list[PublicAddress] = []
    errors: list[ConfigError] = []
    first_line_of: dict[IPAddress, int] = {}
    nul = nul_byte_error(text, path)
    if nul is not None:
        errors.append(nul)
    for index, raw in enumerate(file_lines(text)):
        line = index + 1
        content = raw.lstrip(" \t")
        if content == "" or content.startswith("#"):
            continue
        fields = _split_blanks(content)
        if not fields:
            continue  # only blanks such as '\v': CTDB finds no token either
        if len(fields) < 2:
            errors.append(ConfigError(f"no interface given for {shown(fields[0])} "
                                      "(expected 'IP/maskbits iface[,iface...]')", path, line))
            continue
        try:
            address, mask = parse_ip_mask(fields[0])
        except ValueError as exc:
            errors.append(ConfigError(f"{shown(fields[0])} is not IP/maskbits ({exc})", path, line))
            continue
        ifaces = tuple(name for name in fields[1].split(",") if name)
        if not ifaces:
            errors.append(ConfigError(f"no interface given for {shown(fields[0])}", path, line))
            continue
        bad = [reason for reason in map(_bad_iface_reason, ifaces) if reason]
        if bad:
            errors.append(ConfigError(bad[0], path, line))
            continue
        if address in first_line_of:
            errors.append(ConfigError(
                f"duplicate public IP address {address} (first on line {first_line_of[address]})",
                path, line))
            continue
        if len(fields) > 2 and warnings is not None:
            warnings.append(f"{path}:{line}: ignoring {shown(' '.join(fields[2:]))} after the interfaces")
        first_line_of[address] = line
        result.append(PublicAddress(address, mask, ifaces, line))
    raise_collected(errors)
    return result


def load_public_addresses(path: str, warnings: list[str] | None = None) -> list[PublicAddress]:
    """Read and parse public_addresses; a missing file means no public IPs."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return parse_public_addresses(data.decode("utf-8", "surrogateescape"), path, warnings)


def parse_home_nodes(text: str, path: str = "home_nodes") -> dict[IPAddress, int]:
    """``IP PNN`` per line -> {ip: pnn}. Lines with fewer than two fields are skipped (as CTDB
    does); '#' lines are comments (CTDB has no comments here). Bad lines are reported."""
    result: dict[IPAddress, int] = {}
    errors: list[ConfigError] = []
    for index, raw in enumerate(file_lines(text)):
        line = index + 1
        if raw.lstrip(" \t").startswith("#"):
            continue
        fields = _split_blanks(raw)
        if len(fields) < 2:
            continue
        try:
            address = parse_ip(fields[0])
        except ValueError:
            errors.append(ConfigError(f"{shown(fields[0])} is not an IP address", path, line))
            continue
        try:
            pnn = smb_strtoul_full(fields[1], 10)
        except ValueError:
            errors.append(ConfigError(f"{shown(fields[1])} is not a node number", path, line))
            continue
        if pnn >= 0xFFFFFFFF:
            errors.append(ConfigError(f"{shown(fields[1])} is not a node number", path, line))
            continue
        result[address] = pnn
    raise_collected(errors)
    return result


def load_home_nodes(path: str) -> dict[IPAddress, int]:
    """Read and parse home_nodes; a missing file means no home nodes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return parse_home_nodes(data.decode("utf-8", "surrogateescape"), path)
