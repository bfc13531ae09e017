"""The tini INI reader and the C-semantics helpers behind every config parser."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest

from ctdblab.daemon.config.clib import (
    ascii_lower,
    c_strtol,
    file_lines,
    parse_ip,
    smb_strtoul_full,
)
from ctdblab.daemon.config.tini import Param, Section, SyntaxProblem, parse_ini


def items(text: str, allow_empty_value: bool = False) -> list:
    return list(parse_ini(text, allow_empty_value))


def test_sections_params_and_comments_with_line_numbers():
    text = "# c\n; c\n\n[logging]\n\tlocation = syslog\n   # indented comment\n[cluster]\n"
    assert items(text) == [Section("logging", 4), Param("location", "syslog", 5), Section("cluster", 7)]


def test_blank_runs_shrink_and_one_blank_is_trimmed_each_side():
    assert items("log   level   =   NOTICE   ") == [Param("log level", "NOTICE", 1)]
    assert items("a=b") == [Param("a", "b", 1)]
    # A tab run shrinks to its first character, so a tab stays inside a name.
    assert items("log\t\tlevel = x") == [Param("log\tlevel", "x", 1)]


def test_no_inline_comments():
    assert items("a = b # c") == [Param("a", "b # c", 1)]


def test_continuation_lines_join_and_keep_the_first_line_number():
    assert items("\n\nlog \\\n level = IN\\\nFO\nx = y") == [
        Param("log level", "INFO", 3), Param("x", "y", 6)]
    # "\ " (backslash + one blank) also continues.
    assert items("a = 1\\ \n2") == [Param("a", "12", 1)]


def test_section_name_is_raw_text_up_to_first_bracket():
    assert items("[ logging ]") == [Section(" logging ", 1)]
    assert items("[logging]x]") == [Section("logging", 1)]
    assert items("  [a] trailing words") == [Section("a", 1)]


def test_syntax_problems_stop_the_parse():
    parsed = items("[logging]\n[cluster\nafter = 1")
    assert parsed[0] == Section("logging", 1)
    assert isinstance(parsed[1], SyntaxProblem) and parsed[1].line == 2
    assert len(parsed) == 2
    parsed = items("a = 1\n= value\nb = 2")
    assert isinstance(parsed[-1], SyntaxProblem) and parsed[-1].line == 2 and len(parsed) == 2


def test_lines_without_equals():
    assert items("just words\na = 1") == [Param("a", "1", 2)]
    assert items("just words\na = 1", allow_empty_value=True) == [
        Param("just words", None, 1), Param("a", "1", 2)]


def test_crlf_and_nul():
    assert items("[logging]\r\nlog level = INFO\r\n") == [
        Section("logging", 1), Param("log level", "INFO", 2)]
    assert items("a = IN\0FO\n") == [Param("a", "IN", 1)]
    assert items("\0junk\nb = 2") == [Param("b", "2", 2)]


def test_file_lines():
    assert file_lines("a\r\nb\rjunk\n\n\n") == ["a", "b"]
    assert file_lines("a\n\nb\n \n") == ["a", "", "b", " "]
    assert file_lines("") == []
    assert file_lines("x\0y\nz") == ["x", "z"]


def test_ascii_lower_folds_only_ascii():
    assert ascii_lower("NOTICE") == "notice"
    assert ascii_lower("ÄB") == "Äb"


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("0x10", 16), ("010", 8), ("5abc", 5), ("abc", 0), ("", 0), ("08", 0),
    ("0x", 0), ("-3", -3), ("+7", 7), ("99999999999999999999999", 2**63 - 1),
])
def test_c_strtol(text, value):
    assert c_strtol(text) == value


@pytest.mark.parametrize("text, base, value", [
    ("5", 0, 5), ("0x1F", 0, 31), ("010", 0, 8), ("0", 0, 0), ("+5", 10, 5),
    ("4294967296", 0, 4294967296), ("010", 10, 10),
])
def test_smb_strtoul_full_accepts(text, base, value):
    assert smb_strtoul_full(text, base) == value


@pytest.mark.parametrize("text, base", [
    ("", 0), ("-1", 0), ("-0", 0), ("5x", 0), ("08", 0), ("0x", 0), ("abc", 10),
    (str(2**64), 0), ("1 2", 0), ("0x10", 10),
])
def test_smb_strtoul_full_rejects(text, base):
    with pytest.raises(ValueError):
        smb_strtoul_full(text, base)


def test_parse_ip_follows_ctdb():
    assert parse_ip("198.18.0.1") == IPv4Address("198.18.0.1")
    assert parse_ip("fe80::1") == IPv6Address("fe80::1")
    assert parse_ip("[fe80::1]") == IPv6Address("fe80::1")
    assert parse_ip("::ffff:198.18.0.4") == IPv4Address("198.18.0.4")
    for bad in ("198.18.0.300", "198.18.0", "01.2.3.4", "fe80::1%eth0", "", "[198.18.0.1]",
                "::ffff:102:304", " 198.18.0.1", "x" * 70 + ":"):
        with pytest.raises(ValueError):
            parse_ip(bad)
