"""Hostile input: every parser either parses or raises ConfigError, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ctdblab.daemon.config import (
    ConfigError,
    Paths,
    PathsError,
    Tunables,
    TunableValueError,
    UnknownTunableError,
    find_my_node,
    load_tunables_text,
    parse_cluster_lock,
    parse_ctdb_conf,
    parse_home_nodes,
    parse_log_location,
    parse_nodes,
    parse_public_addresses,
)

# Text biased towards the characters the parsers care about, plus anything at all.
_SPECIAL = "[]=#;:/,!\\\r\n\t \0\x0b\x0c-+x0123456789.abcdefABCDEF"
texts = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list(_SPECIAL)), max_size=200),
    st.lists(st.sampled_from([
        "[logging]", "[cluster]", "[legacy]", "location = syslog", "log level = 3", "leader timeout = 0x",
        "cluster lock = !", "node address = ::1", "198.18.0.1", "#", "fe80::1", "[::1]", "198.19.0.1/16 eth1",
        "198.19.0.1/99 a,b", "KeepaliveInterval=1", "=", "\\", "a = b \\", "VacuumLimit = 1",
        "KeepaliveLimit = 99999999999999999999999",
    ]), max_size=12).map("\n".join),
    st.binary(max_size=200).map(lambda data: data.decode("utf-8", "surrogateescape")),
)

FUZZ = settings(max_examples=300, deadline=None)


def parses_or_config_error(parse, text):
    try:
        parse(text)
    except ConfigError as error:
        assert str(error)  # the message renders
        for one in error.errors:
            assert one.line is None or one.line >= 1


@FUZZ
@given(texts, st.booleans())
def test_ctdb_conf(text, strict):
    parses_or_config_error(lambda t: parse_ctdb_conf(t, "ctdb.conf", strict), text)


@FUZZ
@given(texts)
def test_conf_derived_values(text):
    try:
        conf = parse_ctdb_conf(text, "ctdb.conf", strict=False)
    except ConfigError:
        return
    conf.location()  # a parsed conf always has a valid location
    try:
        conf.cluster_lock_spec()
    except ConfigError:
        pass


@FUZZ
@given(texts)
def test_nodes(text):
    parses_or_config_error(lambda t: parse_nodes(t, "nodes"), text)


@FUZZ
@given(texts, st.lists(st.text(max_size=40), max_size=4))
def test_find_my_node(text, local):
    try:
        nodes = parse_nodes(text)
        find_my_node(nodes, local)
    except ConfigError:
        pass


@FUZZ
@given(texts)
def test_public_addresses(text):
    parses_or_config_error(lambda t: parse_public_addresses(t, "public_addresses", []), text)


@FUZZ
@given(texts)
def test_home_nodes(text):
    parses_or_config_error(lambda t: parse_home_nodes(t, "home_nodes"), text)


@FUZZ
@given(texts)
def test_tunables(text):
    parses_or_config_error(lambda t: load_tunables_text(t, "ctdb.tunables"), text)


@FUZZ
@given(st.text(max_size=60))
def test_log_location_and_cluster_lock(text):
    for parse in (parse_log_location, parse_cluster_lock):
        try:
            parse(text)
        except ValueError:
            pass


@FUZZ
@given(st.text(max_size=40), st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none()))
def test_tunables_set(name, value):
    tunables = Tunables()
    try:
        tunables.set(name, value)
    except (UnknownTunableError, TunableValueError):
        return
    assert tunables.get(name) == value


@FUZZ
@given(st.dictionaries(st.sampled_from(["CTDB_BASE", "CTDB_TEST_MODE", "CTDB_SOCKET", "CTDB_PIDFILE",
                                        "CTDB_CLUSTER_MUTEX_HELPER", "OTHER"]), st.text(max_size=20)))
def test_paths(env):
    try:
        Paths.from_env(env)
    except PathsError:
        assert "CTDB_TEST_MODE" in env and "CTDB_BASE" not in env
