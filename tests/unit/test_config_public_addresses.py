"""public_addresses and home_nodes."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_interface

import pytest

from ctdblab.daemon.config import (
    ConfigError,
    ConfigErrors,
    PublicAddress,
    load_home_nodes,
    load_public_addresses,
    parse_home_nodes,
    parse_public_addresses,
)


def test_good_file():
    text = ("# public addresses\n"
            "198.19.8.1/20 n1-eth1\n"
            "\t 198.19.8.2/20\tn1-eth1,n1-eth2\n"
            "\n"
            "fd00:198:19::1/64 eth1,,eth2,\n")
    addresses = parse_public_addresses(text)
    assert addresses == [
        PublicAddress(IPv4Address("198.19.8.1"), 20, ("n1-eth1",), 2),
        PublicAddress(IPv4Address("198.19.8.2"), 20, ("n1-eth1", "n1-eth2"), 3),
        PublicAddress(IPv6Address("fd00:198:19::1"), 64, ("eth1", "eth2"), 5),
    ]
    assert addresses[1].interface == ip_interface("198.19.8.2/20")
    assert str(addresses[1]) == "198.19.8.2/20 n1-eth1,n1-eth2"


def test_extra_fields_are_ignored_with_a_warning():
    warnings: list[str] = []
    addresses = parse_public_addresses("198.19.8.1/20 eth1 # home n1\n", "pa", warnings)
    assert addresses[0].ifaces == ("eth1",)
    assert warnings == ["pa:1: ignoring '# home n1' after the interfaces"]


def test_crlf_and_mapped_addresses():
    addresses = parse_public_addresses("::ffff:198.19.8.1/20 eth1\r\n")
    assert addresses[0].ip == IPv4Address("198.19.8.1") and addresses[0].prefixlen == 20


@pytest.mark.parametrize("line, message", [
    ("198.19.8.1/20", "no interface given for '198.19.8.1/20'"),
    ("198.19.8.1 eth1", "'198.19.8.1' is not IP/maskbits (no /maskbits)"),
    ("198.19.8.300/20 eth1", "'198.19.8.300/20' is not IP/maskbits"),
    ("198.19.8.1/33 eth1", "mask /33 is longer than 32 bits"),
    ("fd00::1/129 eth1", "mask /129 is longer than 128 bits"),
    ("198.19.8.1/-1 eth1", "negative number"),
    ("198.19.8.1/2x eth1", "trailing characters"),
    ("198.19.8.1/ eth1", "not a number"),
    ("198.19.8.1/20 ,", "no interface given"),
    ("198.19.8.1/20 averyveryverylongname", "longer than 15 characters"),
    ("198.19.8.1/20 eth0:1", "'eth0:1' is not a valid interface name"),
    ("198.19.8.1/20 a/b", "'a/b' is not a valid interface name"),
    ("eth1 198.19.8.1/20", "'eth1' is not IP/maskbits"),
])
def test_bad_lines(line, message):
    with pytest.raises(ConfigError) as info:
        parse_public_addresses(f"198.19.8.9/20 eth1\n{line}\n", "/etc/ctdb/public_addresses")
    assert str(info.value).startswith("/etc/ctdb/public_addresses:2: ")
    assert message in str(info.value)


def test_duplicates():
    with pytest.raises(ConfigError) as info:
        parse_public_addresses("198.19.8.1/20 eth1\n198.19.8.1/24 eth2\n", "pa")
    assert str(info.value) == "pa:2: duplicate public IP address 198.19.8.1 (first on line 1)"


def test_all_problems_reported():
    with pytest.raises(ConfigErrors) as info:
        parse_public_addresses("x\n198.19.8.1/20 eth1\ny eth1\n", "pa")
    assert [e.line for e in info.value.errors] == [1, 3]


def test_missing_file_means_no_addresses(tmp_path):
    assert load_public_addresses(str(tmp_path / "public_addresses")) == []
    path = tmp_path / "public_addresses"
    path.write_text("198.19.8.1/20 eth1\n")
    assert len(load_public_addresses(str(path))) == 1
    with pytest.raises(ConfigError):
        load_public_addresses(str(tmp_path))  # a directory cannot be read


def test_home_nodes():
    text = "# ip pnn\n198.19.8.1 0\n198.19.8.2\t 2 extra\nlonely\n\nfd00::1 1\r\n"
    assert parse_home_nodes(text) == {IPv4Address("198.19.8.1"): 0, IPv4Address("198.19.8.2"): 2,
                                      IPv6Address("fd00::1"): 1}
    for bad, message in (("198.19.8.300 1", "is not an IP address"), ("198.19.8.1 x", "is not a node number"),
                         ("198.19.8.1 -1", "is not a node number"),
                         ("198.19.8.1 4294967295", "is not a node number")):
        with pytest.raises(ConfigError) as info:
            parse_home_nodes(f"198.19.8.9 0\n{bad}\n", "home_nodes")
        assert str(info.value).startswith("home_nodes:2: ") and message in str(info.value)


def test_load_home_nodes(tmp_path):
    assert load_home_nodes(str(tmp_path / "home_nodes")) == {}
    (tmp_path / "home_nodes").write_text("198.19.8.1 3\n")
    assert load_home_nodes(str(tmp_path / "home_nodes")) == {IPv4Address("198.19.8.1"): 3}


def test_nul_bytes_are_refused_not_read_as_no_addresses():
    # CTDB cuts each line at the NUL: a UTF-16 file gives 0 public IPs without a word.
    utf16 = "198.19.0.10/16 eth1\n".encode("utf-16-le").decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as info:
        parse_public_addresses(utf16, "/etc/ctdb/public_addresses")
    assert info.value.path == "/etc/ctdb/public_addresses" and info.value.line == 1
    assert "UTF-16" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_public_addresses("198.19.0.10/16 eth1\n198.19.0.11/16 eth1\0x\n")
    assert info.value.line == 2
