"""The tunables table (wire order, listing order, defaults) and ctdb.tunables loading."""

from __future__ import annotations

import os

import pytest

from ctdblab.daemon.config import (
    ALL_TUNABLES,
    CTDB_TUNABLES,
    LISTING_ORDER,
    PYCTDBD_TUNABLES,
    WIRE_COUNT,
    WIRE_ORDER,
    ConfigError,
    ConfigErrors,
    Tunables,
    TunableValueError,
    UnknownTunableError,
    load_tunables_file,
    load_tunables_text,
    tunable_spec,
)
from ctdblab.daemon.protocol import TUNABLE_LISTVARS_ORDER

DEBIAN_TUNABLES = "/etc/ctdb/ctdb.tunables"


def test_wire_list_has_62_u32_slots():
    assert WIRE_COUNT == 62 == len(CTDB_TUNABLES)
    assert len(Tunables().wire_values()) == 62
    assert 62 * 4 == 248  # GET_ALL_TUNABLES payload size


@pytest.mark.parametrize("index, name, default", [
    (0, "MaxRedirectCount", 3), (1, "SeqnumInterval", 1000), (4, "KeepaliveInterval", 5),
    (5, "KeepaliveLimit", 5), (6, "RecoverTimeout", 30), (8, "ElectionTimeout", 3),
    (9, "TakeoverTimeout", 9), (17, "DatabaseHashSize", 100001), (21, "DeterministicIPs", 0),
    (22, "ReclockPingPeriod", 60), (23, "NoIPFailback", 0), (40, "VacuumFastPathCount", 60),
    (41, "LCP2PublicIPs", 1), (49, "NoIPTakeover", 0), (52, "DBSizeWarn", 100000000),
    (53, "PullDBPreallocation", 10485760), (58, "RecBufferSizeLimit", 1000000),
    (59, "QueueBufferSize", 1024), (60, "IPAllocAlgorithm", 2), (61, "AllowMixedVersions", 0),
])
def test_wire_positions_and_defaults(index, name, default):
    assert WIRE_ORDER[index] == name
    assert CTDB_TUNABLES[index].wire_index == index
    assert Tunables().wire_values()[index] == default


def test_obsolete_tunables():
    obsolete = {spec.name for spec in CTDB_TUNABLES if spec.obsolete}
    assert obsolete == {
        "MaxRedirectCount", "EventScriptUnhealthyOnTimeout", "DeterministicIPs", "ReclockPingPeriod",
        "DisableIPFailover", "VerifyRecoveryLock", "VacuumLimit", "LCP2PublicIPs",
        "RecoverPDBBySeqNum", "DeferredRebalanceOnNodeAdd", "NoIPHostOnAllDisabled",
        "Samba3AvoidDeadlocks", "TDBMutexEnabled"}
    assert Tunables.is_obsolete("vacuumlimit") and not Tunables.is_obsolete("KeepaliveLimit")
    assert not any(spec.obsolete for spec in PYCTDBD_TUNABLES)


def test_listing_order_is_ctdbs_map_order_without_obsolete_then_ours():
    names = Tunables.names()
    assert len(names) == 49 + len(PYCTDBD_TUNABLES)
    assert names[:3] == ["SeqnumInterval", "ControlTimeout", "TraverseTimeout"]
    # tunable_map lists VacuumFastPathCount right after the (obsolete) VacuumLimit.
    assert names.index("VacuumFastPathCount") == names.index("RepackLimit") + 1
    assert names.index("MaxQueueDropMsg") == names.index("VacuumFastPathCount") + 1
    assert names[48] == "AllowMixedVersions"
    assert names[49:] == [spec.name for spec in PYCTDBD_TUNABLES]
    assert list(LISTING_ORDER) == names
    assert sorted(TUNABLE_LISTVARS_ORDER) == sorted(WIRE_ORDER)


def test_pyctdbd_tunables():
    tunables = Tunables()
    assert [(spec.name, spec.default) for spec in PYCTDBD_TUNABLES] == [
        ("HeartbeatIntervalMs", 100), ("DeadTimeoutMs", 400), ("ElectionTimeoutMs", 300),
        ("GratuitousArpRepeatMs", 250), ("GratuitousArpBursts", 3), ("TakeoverRunDelayMs", 0),
        ("SweepDelayMs", 1000)]
    assert all(spec.wire_index is None and spec.description for spec in PYCTDBD_TUNABLES)
    tunables.set("deadtimeoutms", 250)
    assert tunables.get("DeadTimeoutMs") == 250
    assert len(tunables.wire_values()) == 62  # not on the wire


def test_every_name_is_unique_case_insensitively():
    folded = [spec.name.lower() for spec in ALL_TUNABLES]
    assert len(folded) == len(set(folded))


def test_get_set_case_insensitive():
    tunables = Tunables()
    tunables.set("keepaliveINTERVAL", 1)
    assert tunables.get("KeepaliveInterval") == 1 == tunables["KEEPALIVEINTERVAL"]
    assert tunables.wire_values()[4] == 1
    tunables["ElectionTimeout"] = 2**32 - 1
    assert tunables.get("electiontimeout") == 2**32 - 1
    assert Tunables.canonical_name("ipallocalgorithm") == "IPAllocAlgorithm"
    assert "noiptakeover" in tunables and "nosuch" not in tunables and 5 not in tunables
    assert tunables.changed() == {"KeepaliveInterval": 1, "ElectionTimeout": 2**32 - 1}


def test_obsolete_ones_can_still_be_set_and_read():
    tunables = Tunables()
    tunables.set("VerifyRecoveryLock", 0)
    assert tunables.get("VerifyRecoveryLock") == 0 and tunables.wire_values()[31] == 0


def test_unknown_names_and_bad_values():
    tunables = Tunables()
    with pytest.raises(KeyError) as info:
        tunables.get("NoSuchTunable")
    assert isinstance(info.value, UnknownTunableError)
    assert str(info.value) == "unknown tunable 'NoSuchTunable'"
    with pytest.raises(UnknownTunableError):
        tunables.set("Keepalive Interval", 1)
    for bad in (-1, 2**32, 1.5, "5", True, None):
        with pytest.raises(TunableValueError):
            tunables.set("KeepaliveInterval", bad)
    assert tunables.get("KeepaliveInterval") == 5


def test_set_wire_values_and_copy():
    tunables = Tunables()
    values = list(range(62))
    tunables.set_wire_values(values)
    assert tunables.wire_values() == values
    clone = tunables.copy()
    clone.set("KeepaliveLimit", 99)
    assert tunables.get("KeepaliveLimit") == 5 and clone != tunables
    with pytest.raises(TunableValueError):
        tunables.set_wire_values(values[:-1])
    assert tunable_spec("keepalivelimit").wire_index == 5


# --- ctdb.tunables ------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(DEBIAN_TUNABLES), reason="Debian's ctdb.tunables is not installed")
def test_debians_shipped_tunables_file_loads():
    assert load_tunables_file(DEBIAN_TUNABLES) == Tunables()  # only comments


def test_relaxed_syntax():
    text = ("# aggressive profile\n"
            "KeepaliveInterval=1\n"
            "  keepalivelimit = 2\n"
            "ElectionTimeout\t=\t1\n"
            "; semicolon comment\n"
            "\n"
            "RerecoveryTimeout =  0x1\n"
            "MonitorInterval = 010\n"
            "TakeoverTimeout= +3\n"
            "HeartbeatIntervalMs = 50\n")
    tunables = load_tunables_text(text)
    assert tunables.changed() == {"KeepaliveInterval": 1, "KeepaliveLimit": 2, "ElectionTimeout": 1,
                                  "RerecoveryTimeout": 1, "MonitorInterval": 8, "TakeoverTimeout": 3,
                                  "HeartbeatIntervalMs": 50}


def test_loading_starts_from_defaults_or_a_given_base():
    base = Tunables()
    base.set("KeepaliveLimit", 9)
    assert load_tunables_text("KeepaliveInterval=2").get("KeepaliveLimit") == 5
    loaded = load_tunables_text("KeepaliveInterval=2", tunables=base)
    assert loaded.get("KeepaliveLimit") == 9 and loaded.get("KeepaliveInterval") == 2
    assert base.get("KeepaliveInterval") == 5  # the base is not modified


@pytest.mark.parametrize("line, message", [
    ("NoSuchTunable=1", "unknown tunable 'NoSuchTunable'"),
    ("VacuumLimit=1", "obsolete tunable 'VacuumLimit'"),
    ("KeepaliveInterval=-1", "invalid value '-1' for tunable 'KeepaliveInterval': negative number"),
    ("KeepaliveInterval=1 # fast", "invalid value '1 # fast'"),
    ("KeepaliveInterval=1s", "trailing characters"),
    ("KeepaliveInterval=08", "trailing characters"),
    ("KeepaliveInterval=", "'KeepaliveInterval' has no value"),
    ("KeepaliveInterval", "'KeepaliveInterval' has no value"),
    ("KeepaliveInterval=4294967296", "does not fit in 32 bits"),
    ("[tunables]", "sections are not supported here: [tunables]"),
    ("Keepalive Interval=1", "unknown tunable 'Keepalive Interval'"),
])
def test_bad_lines_name_file_and_line(line, message):
    with pytest.raises(ConfigError) as info:
        load_tunables_text(f"# header\n{line}\n", "/etc/ctdb/ctdb.tunables")
    assert str(info.value).startswith("/etc/ctdb/ctdb.tunables:2: ")
    assert message in str(info.value)


def test_syntax_error_stops_reading():
    with pytest.raises(ConfigError) as info:
        load_tunables_text("=1\nNoSuchTunable=1\n", "t")
    assert not isinstance(info.value, ConfigErrors) and info.value.line == 1
    assert "syntax error" in str(info.value)


def test_every_bad_line_is_reported():
    with pytest.raises(ConfigErrors) as info:
        load_tunables_text("a=1\nKeepaliveInterval=1\nb=2\nMaxRedirectCount=1\n", "t")
    assert [e.line for e in info.value.errors] == [1, 3, 4]


def test_load_file(tmp_path):
    assert load_tunables_file(str(tmp_path / "missing")) == Tunables()
    path = tmp_path / "ctdb.tunables"
    path.write_text("KeepaliveInterval=3\n")
    assert load_tunables_file(str(path)).get("KeepaliveInterval") == 3
    with pytest.raises(ConfigError):
        load_tunables_file(str(tmp_path))


def test_ctdbd_style_loading_keeps_good_lines():
    # What ctdbd 4.17 does with a partly bad file (seen by running it on this file): report each
    # bad line, keep the rest, start anyway.
    problems: list[ConfigError] = []
    tunables = load_tunables_text("KeepaliveInterval = 2\n VacuumLimit=7\nNoSuch=1\nkeepalivelimit=0x10\n"
                                  "ElectionTimeout=1 # x\n", "t", errors_out=problems)
    # ctdbd even stores the obsolete value (tunable.c sets it, then reports it obsolete).
    assert tunables.changed() == {"KeepaliveInterval": 2, "VacuumLimit": 7, "KeepaliveLimit": 16}
    assert [(e.line, e.message.split(" ")[0]) for e in problems] == [(2, "obsolete"), (3, "unknown"),
                                                                      (5, "invalid")]
