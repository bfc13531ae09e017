"""How the C calls behind CTDB's config parsers read text, so that our parsers accept what CTDB does.

CTDB reads its files with Samba's ``file_lines_load`` and ``tini``, numbers with ``strtol``/
``strtoul`` (through ``smb_strtoul``) and addresses with ``inet_pton``. Their quirks decide which
files CTDB accepts; this module states them once. Facts from Samba 4.17 (lib/util/util_file.c,
lib/util/smb_strtox.c, ctdb/protocol/protocol_util.c), written anew here.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

# isspace() in the C locale. Bytes >= 0x80 are never spaces (tini compares signed chars).
C_SPACE = frozenset(" \t\n\v\f\r")

LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)
ULONG_MAX = 2**64 - 1
INT_MAX = 2**31 - 1
U32_MAX = 2**32 - 1

IPAddress = IPv4Address | IPv6Address


def is_c_space(char: str) -> bool:
    return char in C_SPACE


def ascii_lower(text: str) -> str:
    """strcasecmp() folds ASCII letters only."""
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def file_lines(text: str) -> list[str]:
    """Split like Samba's file_lines_load: lines end at '\\n'; a '\\r' or NUL ends the line's text
    (CTDB turns '\\r' into NUL); empty lines at the end of the file are dropped.
    Index i holds physical line i + 1."""
    lines = []
    for raw in text.split("\n"):
        for stop in ("\r", "\0"):
            cut = raw.find(stop)
            if cut >= 0:
                raw = raw[:cut]
        lines.append(raw)
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def _digit_value(char: str) -> int:
    if "0" <= char <= "9":
        return ord(char) - ord("0")
    if "a" <= char <= "z":
        return ord(char) - ord("a") + 10
    if "A" <= char <= "Z":
        return ord(char) - ord("A") + 10
    return 99


def _scan_integer(text: str, base: int) -> tuple[bool, int, int] | None:
    """Scan like strto(u)l: (negative, magnitude, end index), or None when nothing converts."""
    i, n = 0, len(text)
    while i < n and text[i] in C_SPACE:
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    if base == 0:
        if text[i:i + 1] == "0" and text[i + 1:i + 2] in ("x", "X") and _digit_value(text[i + 2:i + 3] or "!") < 16:
            base, i = 16, i + 2
        elif text[i:i + 1] == "0":
            base = 8
        else:
            base = 10
    start = i
    magnitude = 0
    while i < n and _digit_value(text[i]) < base:
        # Saturate just above unsigned long: enough for every range check, and a hostile run of
        # digits cannot make the arithmetic slow.
        magnitude = min(magnitude * base + _digit_value(text[i]), ULONG_MAX + 1)
        i += 1
    if i == start:
        return None
    return negative, magnitude, i


def c_strtol(text: str) -> int:
    """strtol(text, &end, 0): the value of the longest numeric prefix (0 if none), clamped to long.
    Trailing garbage is not an error here; CTDB's ctdb.conf integer parser does not check it."""
    scanned = _scan_integer(text, 0)
    if scanned is None:
        return 0
    negative, magnitude, _ = scanned
    value = -magnitude if negative else magnitude
    return max(LONG_MIN, min(LONG_MAX, value))


def is_whole_c_integer(text: str) -> bool:
    """True if strtol(text, &end, 0) would consume all of ``text``."""
    scanned = _scan_integer(text, 0)
    return scanned is not None and scanned[2] == len(text)


def smb_strtoul_full(text: str, base: int) -> int:
    """smb_strtoul(text, NULL, base, &err, SMB_STR_FULL_STR_CONV): the whole string must be one
    non-negative number no larger than unsigned long. Raises ValueError otherwise."""
    scanned = _scan_integer(text, base)
    if scanned is None:
        raise ValueError("not a number")
    negative, magnitude, end = scanned
    if magnitude > ULONG_MAX:
        raise ValueError("number out of range")
    if negative:
        raise ValueError("negative number")
    if end != len(text):
        raise ValueError("trailing characters after the number")
    return magnitude


def parse_ip(text: str) -> IPAddress:
    """Parse an address the way CTDB's ip_from_string does (inet_pton; IPv6 may be written in
    [brackets]; an IPv4-mapped IPv6 address becomes the IPv4 address written after its last ':').
    Raises ValueError."""
    if ":" not in text:
        return IPv4Address(text)
    if len(text) >= 64:
        raise ValueError("address too long")
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        text = text[1:-1]
    if "%" in text:  # inet_pton has no scope ids; Python's ipaddress would take one
        raise ValueError("scope ids are not accepted")
    address = IPv6Address(text)
    if address.ipv4_mapped is not None:
        return IPv4Address(text[text.rfind(":") + 1:])
    return address
