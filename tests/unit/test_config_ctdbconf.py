"""ctdb.conf: defaults, every option, every error path, and ctdb-config as the referee."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctdblab.daemon.config import (
    ClusterLock,
    ConfigError,
    ConfigErrors,
    CtdbConf,
    LogLocation,
    check_ctdb_conf_paths,
    load_ctdb_conf,
    parse_cluster_lock,
    parse_ctdb_conf,
    parse_debug_level,
    parse_log_location,
    validate_ctdb_conf,
)
from ctdblab.daemon.config.ctdbconf import OPTIONS, c_dirname

CTDB_CONFIG = "/usr/libexec/ctdb/ctdb-config"
DEBIAN_CONF = "/etc/ctdb/ctdb.conf"


def error_of(text: str, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_ctdb_conf(text, "/etc/ctdb/ctdb.conf", **kwargs)
    return info.value


# --- good files ---------------------------------------------------------------------------------

def test_defaults_are_ctdbds():
    conf = parse_ctdb_conf("")
    assert conf == CtdbConf()
    assert conf.log_location == "file:/var/log/ctdb/log.ctdb"
    assert conf.log_level_name == "NOTICE" and conf.script_log_level_name == "ERROR"
    assert (conf.transport, conf.node_address, conf.cluster_lock, conf.leader_timeout) == ("tcp", None, None, 5)
    assert conf.leader_capability and conf.tdb_mutexes and conf.realtime_scheduling
    assert conf.lmaster_capability and not conf.failover_disabled
    assert not conf.start_as_stopped and not conf.start_as_disabled
    assert conf.volatile_db_dir == "/var/lib/ctdb/volatile"
    assert conf.persistent_db_dir == "/var/lib/ctdb/persistent"
    assert conf.state_db_dir == "/var/lib/ctdb/state"
    assert (conf.shutdown_failover_timeout, conf.shutdown_extra_timeout) == (10, 0)
    assert conf.cluster_lock_spec() is None


@pytest.mark.skipif(not os.path.exists(DEBIAN_CONF), reason="Debian's ctdb.conf is not installed")
def test_debians_shipped_ctdb_conf_loads():
    conf = load_ctdb_conf(DEBIAN_CONF)
    assert conf.location() == LogLocation("syslog")
    assert conf.log_level_name == "NOTICE"
    assert conf.cluster_lock is None  # the example lock is commented out
    assert conf.line_of("logging", "location") is not None


def test_every_option_is_read_into_its_field():
    text = """
[logging]
    location = file:/tmp/ctdb.log
    log level = DEBUG
[Cluster]
    transport = tcp
    node address = 198.18.0.2
    cluster lock = /clusterfs/.ctdb/reclock
    leader timeout = 2
    leader capability = no
    nodes list = /etc/ctdb/nodes.alt
[DATABASE]
    volatile database directory = /tmp/v
    persistent database directory = /tmp/p
    state database directory = /tmp/s
    lock debug script = debug_locks.sh
    tdb mutexes = false
[event]
    debug script = debug-hung-script.sh
[failover]
    disabled = YES
    shutdown failover timeout = 3
    shutdown extra timeout = 1
[legacy]
    realtime scheduling = False
    lmaster capability = no
    start as stopped = true
    start as disabled = Yes
    script log level = info
"""
    conf = parse_ctdb_conf(text, "c")
    assert conf.location() == LogLocation("file", path="/tmp/ctdb.log")
    assert conf.log_level == 10 and conf.log_level_name == "DEBUG"
    assert conf.node_address == "198.18.0.2"
    assert conf.cluster_lock_spec() == ClusterLock("/clusterfs/.ctdb/reclock", lock_file="/clusterfs/.ctdb/reclock")
    assert conf.leader_timeout == 2 and conf.leader_capability is False
    assert conf.nodes_list == "/etc/ctdb/nodes.alt"
    assert (conf.volatile_db_dir, conf.persistent_db_dir, conf.state_db_dir) == ("/tmp/v", "/tmp/p", "/tmp/s")
    assert conf.lock_debug_script == "debug_locks.sh" and conf.tdb_mutexes is False
    assert conf.event_debug_script == "debug-hung-script.sh"
    assert conf.failover_disabled is True
    assert (conf.shutdown_failover_timeout, conf.shutdown_extra_timeout) == (3, 1)
    assert conf.realtime_scheduling is False and conf.lmaster_capability is False
    assert conf.start_as_stopped is True and conf.start_as_disabled is True
    assert conf.script_log_level_name == "INFO"
    assert conf.line_of("cluster", "leader timeout") == 9
    assert len(conf.lines) == len(OPTIONS) - 1  # all but the deprecated recovery lock


def test_recovery_lock_is_a_deprecated_alias_and_cluster_lock_wins():
    conf = parse_ctdb_conf("[cluster]\nrecovery lock = /a\n")
    assert conf.cluster_lock_setting == "/a"
    assert any("deprecated" in warning for warning in conf.warnings)
    conf = parse_ctdb_conf("[cluster]\nrecovery lock = /a\ncluster lock = /b\n")
    assert conf.cluster_lock_spec().lock_file == "/b"


def test_section_names_ignore_case_but_option_names_do_not():
    assert parse_ctdb_conf("[LoGgInG]\nlog level = ERROR").log_level == 0
    error = error_of("[logging]\nLog Level = ERROR")
    assert str(error) == "/etc/ctdb/ctdb.conf:2: unknown option [logging] 'Log Level'"


def test_blank_runs_in_option_names_shrink():
    assert parse_ctdb_conf("[logging]\nlog    level=INFO").log_level_name == "INFO"


def test_later_setting_wins():
    conf = parse_ctdb_conf("[cluster]\nleader timeout = 3\n[cluster]\nleader timeout = 7\n")
    assert conf.leader_timeout == 7 and conf.line_of("cluster", "leader timeout") == 4


@pytest.mark.parametrize("text, value", [
    ("true", True), ("YES", True), ("False", False), ("no", False),
])
def test_booleans(text, value):
    assert parse_ctdb_conf(f"[failover]\ndisabled = {text}").failover_disabled is value


@pytest.mark.parametrize("text", ["1", "0", "on", "off", "y", "truex"])
def test_booleans_ctdb_rejects(text):
    # CTDB's conf.c knows only true/yes/false/no (not 1/0).
    error = error_of(f"[failover]\ndisabled = {text}")
    assert error.line == 2 and "not a boolean" in str(error)


def test_integers_read_like_ctdb_including_its_trailing_garbage_quirk():
    assert parse_ctdb_conf("[cluster]\nleader timeout = 0x10").leader_timeout == 16
    assert parse_ctdb_conf("[cluster]\nleader timeout = 010").leader_timeout == 8
    conf = parse_ctdb_conf("[cluster]\nleader timeout = 5abc")
    assert conf.leader_timeout == 5
    assert any("read as 5" in warning for warning in conf.warnings)
    assert parse_ctdb_conf("[cluster]\nleader timeout = 2147483647").leader_timeout == 2**31 - 1


@pytest.mark.parametrize("value, reason", [
    ("0", "greater than 0"), ("abc", "greater than 0"), ("-3", "0 to 2147483647"),
    ("2147483648", "0 to 2147483647"), ("99999999999999999999", "0 to 2147483647"),
])
def test_bad_leader_timeouts(value, reason):
    error = error_of(f"[cluster]\n\nleader timeout = {value}")
    assert error.line == 3 and reason in str(error)
    assert str(error).startswith("/etc/ctdb/ctdb.conf:3: [cluster] leader timeout = ")


@pytest.mark.parametrize("text, level", [
    ("ERROR", 0), ("warning", 1), ("NOTICE", 3), ("Info", 5), ("DEBUG", 10), ("e", 0), ("w", 1),
    ("n", 3), ("deb", 10), ("0", 0), ("2", 2), ("10", 10), ("3x", 3), ("err", 0),
])
def test_debug_levels(text, level):
    assert parse_debug_level(text) == level


@pytest.mark.parametrize("text", ["11", "-1", "errorx", "verbose", " 3", "ERR OR"])
def test_bad_debug_levels(text):
    assert parse_debug_level(text) is None


def test_bad_log_level_names_the_line():
    error = error_of("[logging]\n  log level = LOUD\n")
    assert str(error) == ("/etc/ctdb/ctdb.conf:2: [logging] log level = 'LOUD': not a log level "
                          "(ERROR, WARNING, NOTICE, INFO, DEBUG or 0..10)")
    error = error_of("[legacy]\nscript log level = LOUD\n")
    assert error.line == 2 and "script log level" in str(error)


@pytest.mark.parametrize("text, location", [
    ("syslog", LogLocation("syslog")),
    ("syslog:nonblocking", LogLocation("syslog", syslog_method="nonblocking")),
    ("syslog:udp", LogLocation("syslog", syslog_method="udp")),
    ("syslog:udp-rfc5424", LogLocation("syslog", syslog_method="udp-rfc5424")),
    ("file:/var/log/ctdb/log.ctdb", LogLocation("file", path="/var/log/ctdb/log.ctdb")),
    ("file:relative.log", LogLocation("file", path="relative.log")),
    ("file:", LogLocation("stderr")), ("file:-", LogLocation("stderr")), ("file", LogLocation("stderr")),
    ("::syslog", LogLocation("syslog")),  # strtok skips empty fields
    ("file:/tmp/a:b", LogLocation("file", path="/tmp/a")),  # ...and CTDB keeps only one field
])
def test_log_locations(text, location):
    assert parse_log_location(text) == location


@pytest.mark.parametrize("text", ["stderr", "Syslog", "syslog:foo", ":", "journal", "FILE:/x"])
def test_bad_log_locations(text):
    with pytest.raises(ValueError):
        parse_log_location(text)
    error = error_of(f"[logging]\nlocation = {text}")
    assert error.line == 2 and "[logging] location" in str(error)


def test_stderr_gets_a_hint():
    assert "file:-" in str(error_of("[logging]\nlocation = stderr"))


def test_transport_must_be_tcp():
    for value in ("ib", "TCP", "udp"):
        assert "only 'tcp'" in str(error_of(f"[cluster]\ntransport = {value}"))


def test_node_address():
    assert parse_ctdb_conf("[cluster]\nnode address = fe80::1").node_address == "fe80::1"
    for bad in ("198.18.0.300", "[::1]", "host.example", "fe80::1%eth0"):
        error = error_of(f"[cluster]\nnode address = {bad}")
        assert "not an IPv4 or IPv6 address" in str(error) and error.line == 2


def test_empty_value():
    assert str(error_of("[logging]\nlog level =\n")) == "/etc/ctdb/ctdb.conf:2: [logging] log level: empty value"


def test_unknown_section_and_options_outside_sections():
    assert str(error_of("[foo]\nbar = 1\n")) == "/etc/ctdb/ctdb.conf:1: unknown section [foo]"
    assert str(error_of("[ logging ]\n")) == "/etc/ctdb/ctdb.conf:1: unknown section [ logging ]"
    assert "not inside any [section]" in str(error_of("log level = NOTICE\n[logging]\n"))


def test_not_strict_ignores_unknowns_like_ctdbd():
    conf = parse_ctdb_conf("x = 1\n[foo]\nbar = 1\n[logging]\nbogus = 1\nlog level = INFO\n",
                           "c", strict=False)
    assert conf.log_level_name == "INFO"
    assert len(conf.warnings) == 3 and all("(ignored)" in warning for warning in conf.warnings)
    # Bad values are errors even for ctdbd.
    with pytest.raises(ConfigError):
        parse_ctdb_conf("[logging]\nlog level = LOUD", strict=False)


def test_every_problem_is_reported():
    error = error_of("[logging]\nlog level = LOUD\n[cluster]\nleader timeout = 0\nfoo = 1\n")
    assert isinstance(error, ConfigErrors)
    assert [e.line for e in error.errors] == [2, 4, 5]
    assert str(error).count("\n") == 2


def test_syntax_errors_are_errors_here():
    error = error_of("[logging\nlog level = NOTICE\n")
    assert error.line == 1 and "syntax error" in str(error)
    assert error_of("= x\n").line == 1


def test_cluster_lock_forms():
    assert parse_cluster_lock(None) is None
    lock = parse_cluster_lock("/clusterfs/.ctdb/reclock")
    assert not lock.is_command
    assert lock.helper_argv("/usr/libexec/ctdb/ctdb_mutex_fcntl_helper") == (
        "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper", "/clusterfs/.ctdb/reclock")
    lock = parse_cluster_lock("!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /cfs/lock 1\t 2")
    assert lock.is_command
    assert lock.helper_argv("unused") == ("/usr/libexec/ctdb/ctdb_mutex_fcntl_helper", "/cfs/lock", "1", "2")
    assert parse_cluster_lock("/path with space").lock_file == "/path with space"
    with pytest.raises(ValueError):
        parse_cluster_lock("!  ")


def test_empty_lock_command_is_reported_with_its_line():
    conf = parse_ctdb_conf("[cluster]\n\ncluster lock = !\n", "/etc/ctdb/ctdb.conf")
    with pytest.raises(ConfigError) as info:
        conf.cluster_lock_spec()
    assert str(info.value).startswith("/etc/ctdb/ctdb.conf:3: [cluster] cluster lock: ")


def test_load_missing_file_gives_defaults(tmp_path):
    assert load_ctdb_conf(str(tmp_path / "nope.conf")) == CtdbConf()


def test_load_unreadable_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_ctdb_conf(str(tmp_path))  # a directory
    assert info.value.path == str(tmp_path)


def test_load_reads_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "ctdb.conf"
    path.write_bytes(b"[logging]\nlocation = file:/tmp/\xff.log\n")
    assert load_ctdb_conf(str(path)).location().path.encode("utf-8", "surrogateescape") == b"/tmp/\xff.log"


@pytest.mark.parametrize("path, parent", [
    ("/a/b", "/a"), ("/a", "/"), ("a", "."), ("a/", "."), ("/", "/"), ("//a//b//", "//a"), ("", "."),
])
def test_c_dirname(path, parent):
    assert c_dirname(path) == parent


# --- filesystem checks --------------------------------------------------------------------------

def make_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    script = etc / "debug_locks.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    plain = etc / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    (etc / "adir.sh").mkdir()
    return etc


def test_filesystem_checks(tmp_path):
    etc = make_etc(tmp_path)
    good = f"[database]\nlock debug script = /elsewhere/debug_locks.sh\nvolatile database directory = {tmp_path}\n"
    assert check_ctdb_conf_paths(parse_ctdb_conf(good, "c"), str(etc)) == []
    cases = {
        "[database]\nlock debug script = missing.sh": "does not exist",
        "[database]\nlock debug script = plain.sh": "is not executable",
        "[event]\ndebug script = adir.sh": "is not a file",
        "[database]\nstate database directory = /nonexistent/dir": "does not exist",
        "[logging]\nlocation = file:/nonexistent/dir/log": "'/nonexistent/dir' does not exist",
    }
    for text, reason in cases.items():
        errors = check_ctdb_conf_paths(parse_ctdb_conf(text, "c"), str(etc))
        assert len(errors) == 1 and reason in str(errors[0]) and errors[0].line == 2, text
    with pytest.raises(ConfigError):
        validate_ctdb_conf("[database]\nlock debug script = plain.sh", "c", str(etc))


def test_startup_checks_default_database_dirs(tmp_path):
    conf = CtdbConf(volatile_db_dir=str(tmp_path / "missing"), path="c")
    assert check_ctdb_conf_paths(conf, str(tmp_path)) == []  # not set in a file: ctdb-config is quiet
    errors = check_ctdb_conf_paths(conf, str(tmp_path), startup=True)
    assert any("missing" in str(error) for error in errors)


# --- ctdb-config as the referee -----------------------------------------------------------------

needs_ctdb_config = pytest.mark.skipif(not os.access(CTDB_CONFIG, os.X_OK),
                                       reason=f"{CTDB_CONFIG} (Debian package ctdb) is not installed")


class CtdbConfigReferee:
    """Runs Debian's `ctdb-config validate` on a ctdb.conf in a private CTDB_BASE (test mode)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = dict(os.environ, CTDB_TEST_MODE="1", CTDB_BASE=str(base))

    def accepts(self, text: str) -> bool:
        (self.base / "ctdb.conf").write_bytes(text.encode("utf-8", "surrogateescape"))
        result = subprocess.run([CTDB_CONFIG, "validate"], env=self.env, capture_output=True, timeout=10)
        assert result.returncode in (0, 22), result  # 22 = EINVAL; anything else is a crash
        return result.returncode == 0

    def we_accept(self, text: str) -> bool:
        try:
            validate_ctdb_conf(text, "ctdb.conf", str(self.base))
        except ConfigError:
            return False
        return True


@pytest.fixture(scope="module")
def referee(tmp_path_factory):
    base = tmp_path_factory.mktemp("ctdbbase")
    make_etc_in = base
    for name, mode in (("debug_locks.sh", 0o755), ("debug-hung-script.sh", 0o755), ("plain.sh", 0o644)):
        (make_etc_in / name).write_text("#!/bin/sh\n")
        (make_etc_in / name).chmod(mode)
    (make_etc_in / "adir.sh").mkdir()
    return CtdbConfigReferee(base)


# Files both must judge alike. Each is (text, does CTDB accept it) so that a wrong expectation
# shows up as well as a disagreement.
CASES = [
    ("", True),
    ("# only a comment\n; and another\n", True),
    ("[logging]\n\tlocation = syslog\n\tlog level = NOTICE\n", True),
    ("[logging]\nlocation = syslog:udp-rfc5424\n", True),
    ("[logging]\nlocation = syslog:udp:extra\n", True),
    ("[logging]\nlocation = syslog:bogus\n", False),
    ("[logging]\nlocation = stderr\n", False),
    ("[logging]\nlocation = file:\n", True),
    ("[logging]\nlocation = file:-\n", True),
    ("[logging]\nlocation = file\n", True),
    ("[logging]\nlocation = file:/tmp/x.log\n", True),
    ("[logging]\nlocation = file:/nonexistent/x.log\n", False),
    ("[logging]\nlocation = file:/tmp/a:b\n", True),
    ("[logging]\nlocation = file:/nonexistent/a:b\n", False),
    ("[logging]\nlocation = Syslog\n", False),
    ("[logging]\nlocation = :\n", False),
    ("[logging]\nlog level = 3x\n", True),
    ("[logging]\nlog level = 11\n", False),
    ("[logging]\nlog level = e\n", True),
    ("[logging]\nlog level = errorx\n", False),
    ("[logging]\nlog level = NOTICE # trailing comment\n", False),
    ("[logging]\nlog level =\n", False),
    ("[logging]\nLog Level = NOTICE\n", False),
    ("[logging]\nlog\tlevel = NOTICE\n", False),
    ("[logging]\nlog    level\t=\tNOTICE   \n", True),
    ("[logging]\nlog \\\n level = IN\\\nFO\n", True),
    ("[LOGGING]\nlog level = info\n", True),
    ("[ logging ]\n", False),
    ("[logging]x]\nlog level = INFO\n", True),
    ("[]\n", False),
    ("[foo]\n", False),
    ("log level = NOTICE\n", False),
    ("[logging]\r\nlog level = INFO\r\n", True),
    ("[cluster]\ntransport = tcp\n", True),
    ("[cluster]\ntransport = ib\n", False),
    ("[cluster]\nnode address = 198.18.0.1\n", True),
    ("[cluster]\nnode address = ::1\n", True),
    ("[cluster]\nnode address = [::1]\n", False),
    ("[cluster]\nnode address = 198.18.0.256\n", False),
    ("[cluster]\ncluster lock = /clusterfs/.ctdb/reclock\n", True),
    ("[cluster]\ncluster lock = !/bin/false CLUSTER LOCK NOT CONFIGURED\n", True),
    ("[cluster]\ncluster lock = !\n", True),  # accepted; the empty command fails only when used
    ("[cluster]\nrecovery lock = /x\n", True),
    ("[cluster]\nleader timeout = 0\n", False),
    ("[cluster]\nleader timeout = 5abc\n", True),
    ("[cluster]\nleader timeout = 0x10\n", True),
    ("[cluster]\nleader timeout = abc\n", False),
    ("[cluster]\nleader timeout = -3\n", False),
    ("[cluster]\nleader timeout = 2147483647\n", True),
    ("[cluster]\nleader timeout = 2147483648\n", False),
    ("[cluster]\nleader capability = YES\n", True),
    ("[cluster]\nleader capability = 1\n", False),
    ("[cluster]\nleader capability = on\n", False),
    ("[database]\nvolatile database directory = /tmp\n", True),
    ("[database]\nvolatile database directory = /nonexistent\n", False),
    ("[database]\nlock debug script = debug_locks.sh\n", True),
    ("[database]\nlock debug script = /some/where/debug_locks.sh\n", True),
    ("[database]\nlock debug script = missing.sh\n", False),
    ("[database]\nlock debug script = plain.sh\n", False),
    ("[database]\ntdb mutexes = false\n", True),
    ("[event]\ndebug script = debug-hung-script.sh\n", True),
    ("[event]\ndebug script = adir.sh\n", False),
    ("[failover]\ndisabled = true\n", True),
    ("[failover]\ndisabled = maybe\n", False),
    ("[legacy]\nrealtime scheduling = false\nlmaster capability = no\nstart as stopped = yes\n"
     "start as disabled = no\nscript log level = debug\n", True),
    ("[legacy]\nscript log level = foo\n", False),
    ("[logging]\nlog level = INFO\nlog level = bogus\n", False),
]


@needs_ctdb_config
@pytest.mark.parametrize("text, expected", CASES)
def test_same_verdict_as_ctdb_config(referee, text, expected):
    assert referee.accepts(text) == expected, "our expectation of ctdb-config is wrong"
    assert referee.we_accept(text) == expected


# Where we knowingly differ from ctdb-config 4.17. Each case checks both sides, so the list stays
# true: if a future ctdb-config changes, this test says so.
DELIBERATE_DIFFERENCES = [
    # tini syntax errors: ctdb-config stops reading and reports success (with defaults).
    ("[logging\nlog level = foo\n", True, False),
    ("= x\n[logging]\nlog level = foo\n", True, False),
    # Lines CTDB skips silently, refused here with their line: a NUL byte (CTDB cuts the line
    # there, so a UTF-16 file reads as empty) and a line without '='.
    ("[logging]\nlog level = IN\0FO\n", True, False),
    ("[logging]\nlog level INFO\n", True, False),
    ("[logging]\ngarbage line without equals\n", True, False),
    # Newer CTDB options that 4.17 calls unknown.
    ("[cluster]\nnodes list = /etc/ctdb/nodes\n", False, True),
    ("[failover]\nshutdown failover timeout = 3\n", False, True),
    ("[failover]\nshutdown extra timeout = 1\n", False, True),
]


@needs_ctdb_config
@pytest.mark.parametrize("text, ctdb_accepts, we_accept", DELIBERATE_DIFFERENCES)
def test_documented_differences_from_ctdb_config(referee, text, ctdb_accepts, we_accept):
    assert referee.accepts(text) == ctdb_accepts
    assert referee.we_accept(text) == we_accept


# Generated files: lines built from fragments that exercise the rules above.
_SECTION_LINES = ["[logging]", "[LOGGING]", "[cluster]", "[Database]", "[event]", "[failover]",
                  "[legacy]", "[bogus]", " [cluster] trailing", "[ cluster ]"]
_OPTION_LINES = [
    "location = syslog", "location = file:/tmp/l.log", "location = file:/nope/l.log",
    "location = syslog:udp", "location = syslog:x", "log level = NOTICE", "log level = 7",
    "log level = dEb", "log level = 12", "log level = x", "Log level = INFO",
    "transport = tcp", "transport = ib", "node address = 198.18.0.9", "node address = 198.18.0.999",
    "node address = fe80::9", "cluster lock = /cfs/lock", "recovery lock = !/bin/true",
    "leader timeout = 1", "leader timeout = 0", "leader timeout = 09", "leader timeout = 0x7fffffff",
    "leader timeout = 4294967296", "leader capability = no", "leader capability = 0",
    "volatile database directory = /tmp", "state database directory = /nope",
    "lock debug script = debug_locks.sh", "lock debug script = plain.sh", "tdb mutexes = Yes",
    "debug script = debug-hung-script.sh", "debug script = missing.sh", "disabled = TRUE",
    "disabled = 2", "realtime scheduling = no", "lmaster capability = yes",
    "start as stopped = false", "start as disabled = nO", "script log level = warning",
    "script log level = loud", "just words", "empty =", "  log  level  =  INFO  ",
]
_NOISE_LINES = ["", "   ", "# comment", "; comment", "\t# comment = x"]


@st.composite
def conf_files(draw):
    lines = draw(st.lists(st.sampled_from(_SECTION_LINES + _OPTION_LINES + _NOISE_LINES),
                          min_size=0, max_size=8))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    return ending.join(lines) + ending


@needs_ctdb_config
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=conf_files())
def test_generated_files_get_the_same_verdict_as_ctdb_config(referee, text):
    # "just words" is the generator's line without '=': ctdb-config skips it, we refuse it.
    expected = referee.accepts(text) and "just words" not in text
    assert referee.we_accept(text) == expected, text


def test_plain_file_permissions_helper_sanity(tmp_path):
    # The checks rely on the owner-execute bit, as CTDB does (S_IXUSR).
    etc = make_etc(tmp_path)
    assert os.stat(etc / "debug_locks.sh").st_mode & stat.S_IXUSR
    assert not os.stat(etc / "plain.sh").st_mode & stat.S_IXUSR


def test_line_without_equals_is_refused_with_its_line():
    # ctdbd skips it silently; a typo such as a missing '=' would go unnoticed.
    with pytest.raises(ConfigError) as info:
        parse_ctdb_conf("[logging]\nlocation = syslog\nlog level DEBUG\n", "/etc/ctdb/ctdb.conf")
    assert (info.value.path, info.value.line) == ("/etc/ctdb/ctdb.conf", 3)
    assert "without '='" in str(info.value) and "log level DEBUG" in str(info.value)
    with pytest.raises(ConfigError):
        parse_ctdb_conf("[bogus]\njust words\n", strict=False)


def test_nul_bytes_are_refused_with_the_first_line_that_has_one():
    with pytest.raises(ConfigError) as info:
        parse_ctdb_conf("[logging]\nlocation = syslog\nlog level = IN\0FO\n", "c.conf")
    assert info.value.line == 3 and "NUL" in str(info.value)
    utf16 = "[logging]\nlog level = INFO\n".encode("utf-16-le").decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as info:
        parse_ctdb_conf(utf16, "c.conf")
    assert "UTF-16" in str(info.value)
