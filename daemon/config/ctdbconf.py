"""ctdb.conf: CTDB's Samba-style INI configuration file.

What CTDB 4.17 accepts (ctdb/common/conf.c and the *_conf.c option tables, checked against Debian's
``ctdb-config validate``):
- section names match case-insensitively (ASCII); option names match exactly, case and all
  (``Log Level`` is unknown), after tini has shrunk runs of blanks (``log  level`` is fine,
  ``log<TAB>level`` is not);
- an empty value is an error; booleans are ``true``/``yes``/``false``/``no`` in any case (not 1/0);
- integers are read by strtol with base 0 and trailing characters are *ignored* (``5abc`` is 5,
  ``0x10`` is 16); negatives and values above INT_MAX are errors;
- a value equal to the option's current value is not re-validated;
- unknown sections and options are errors for ``ctdb-config validate`` (``strict=True``, our default)
  and are silently skipped by ctdbd itself (``strict=False``: they become warnings).

Deliberate differences from ctdb-config 4.17 (all documented in tests/unit/test_config_ctdbconf.py):
- a tini syntax error (a ``[section`` line without ``]``, a line starting with ``=``) is an error
  here; ctdb-config stops reading there and reports success, keeping defaults;
- ``[cluster] nodes list`` (CTDB 4.22) and ``[failover] shutdown failover timeout`` / ``shutdown
  extra timeout`` (4.23) are understood; 4.17 calls them unknown options.

Checks that need the filesystem (database directories exist, debug scripts are executable files
in the etc dir, the log file's directory exists) are in ``check_ctdb_conf_paths``, kept apart from
the pure parser.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal

from .clib import INT_MAX, ascii_lower, c_strtol, is_whole_c_integer
from .errors import ConfigError, nul_byte_error, raise_collected, shown
from .tini import Param, Section, SyntaxProblem, parse_ini

# CTDB's debug levels (lib/util/debug.h) and the names CTDB prints for levels 0..10.
DEBUG_ERR, DEBUG_WARNING, DEBUG_NOTICE, DEBUG_INFO, DEBUG_DEBUG = 0, 1, 3, 5, 10
_LEVEL_NAMES = ("ERROR", "WARNING", "WARNING", "NOTICE", "NOTICE",
                "INFO", "INFO", "INFO", "INFO", "INFO", "DEBUG")
_NAME_LEVELS = (("ERROR", DEBUG_ERR), ("WARNING", DEBUG_WARNING), ("WARNING", 2),
                ("NOTICE", DEBUG_NOTICE), ("NOTICE", 4), ("INFO", DEBUG_INFO), ("INFO", 6),
                ("INFO", 7), ("INFO", 8), ("INFO", 9), ("DEBUG", DEBUG_DEBUG))

DEFAULT_LOG_LOCATION = "file:/var/log/ctdb/log.ctdb"
PATH_MAX = 4096


def parse_debug_level(text: str) -> int | None:
    """CTDB's debug_level_parse: a number 0..10 (atoi of a leading digit run), or any
    case-insensitive *prefix* of ERROR/WARNING/NOTICE/INFO/DEBUG (``e`` is ERROR). None if bad."""
    if text[:1].isascii() and text[:1].isdigit():
        digits = len(text) - len(text.lstrip("0123456789"))
        level = int(text[:digits])
        return level if level < len(_LEVEL_NAMES) else None
    folded = ascii_lower(text)
    for name, level in _NAME_LEVELS:
        if ascii_lower(name).startswith(folded):
            return level
    return None


def debug_level_name(level: int) -> str:
    """The name CTDB shows for a debug level (2 is WARNING, 4 NOTICE, 6..9 INFO)."""
    return _LEVEL_NAMES[level] if 0 <= level < len(_LEVEL_NAMES) else "UNKNOWN"


# --- [logging] location -------------------------------------------------------------------------

SYSLOG_METHODS = ("nonblocking", "udp", "udp-rfc5424")


@dataclass(frozen=True)
class LogLocation:
    """Where CTDB logs. ``file:PATH`` (kind "file"); ``file``, ``file:`` or ``file:-`` mean standard
    error (kind "stderr"; CTDB has no literal ``stderr`` location); ``syslog[:METHOD]`` (kind
    "syslog"; method None is plain syslog(3), else nonblocking, udp or udp-rfc5424)."""

    kind: Literal["file", "stderr", "syslog"]
    path: str | None = None
    syslog_method: str | None = None


def parse_log_location(text: str) -> LogLocation:
    """Parse like CTDB's log_backend_parse: strtok on ':' (so empty fields vanish and only the
    first field after the backend counts: ``file:/a:b`` logs to ``/a``). Raises ValueError."""
    fields = [part for part in text.split(":") if part]
    if not fields:
        raise ValueError("no logging backend given")
    backend, option = fields[0], (fields[1] if len(fields) > 1 else None)
    if backend == "file":
        if option is None or option == "-":
            return LogLocation("stderr")
        return LogLocation("file", path=option)
    if backend == "syslog":
        if option is not None and option not in SYSLOG_METHODS:
            raise ValueError(f"unknown syslog method {shown(option)} (use one of {', '.join(SYSLOG_METHODS)})")
        return LogLocation("syslog", syslog_method=option)
    hint = " (use file: or file:- for standard error)" if backend == "stderr" else ""
    raise ValueError(f"unknown logging backend {shown(backend)}, expected file or syslog{hint}")


# --- [cluster] cluster lock ---------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterLock:
    """The cluster lock CTDB takes through a mutex helper (ctdb/doc/cluster_mutex_helper.txt).

    A plain value is a lock file held with fcntl by ``ctdb_mutex_fcntl_helper <file>`` (the whole
    value is one argument, spaces and all). ``!command args`` runs that command, split on blanks,
    which speaks the helper protocol: it writes one ASCII character, '0' held, '1' contention,
    '2' timeout, '3' error, and holds the lock until SIGTERM.
    """

    setting: str
    lock_file: str | None = None
    command: tuple[str, ...] | None = None

    @property
    def is_command(self) -> bool:
        return self.command is not None

    def helper_argv(self, fcntl_helper: str) -> tuple[str, ...]:
        """The argv CTDB runs: the command, or ``(fcntl_helper, lock_file)``."""
        if self.command is not None:
            return self.command
        assert self.lock_file is not None
        return (fcntl_helper, self.lock_file)


def parse_cluster_lock(setting: str | None) -> ClusterLock | None:
    """Interpret a ``cluster lock`` value; None means no lock. Raises ValueError for ``!`` alone."""
    if setting is None:
        return None
    if setting.startswith("!"):
        argv = tuple(setting[1:].replace("\t", " ").split(" "))
        argv = tuple(arg for arg in argv if arg)
        if not argv:
            raise ValueError("the mutex helper command after '!' is empty")
        return ClusterLock(setting, command=argv)
    return ClusterLock(setting, lock_file=setting)


# --- the option table ---------------------------------------------------------------------------

OptionKind = Literal["string", "integer", "boolean"]


def _check_log_level(value: str) -> str | None:
    if parse_debug_level(value) is None:
        return "not a log level (ERROR, WARNING, NOTICE, INFO, DEBUG or 0..10)"
    return None


def _check_location(value: str) -> str | None:
    try:
        parse_log_location(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_transport(value: str) -> str | None:
    # CTDB 4.17 refuses everything but "tcp" ("ib" is broken and disabled).
    return None if value == "tcp" else "only 'tcp' is supported"


def _check_node_address(value: str) -> str | None:
    try:
        if ":" in value:
            if "%" in value:
                raise ValueError
            IPv6Address(value)
        else:
            IPv4Address(value)
    except ValueError:
        return "not an IPv4 or IPv6 address"
    return None


def _check_leader_timeout(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _check_script_name(value: str) -> str | None:
    return "name too long" if len(value) >= PATH_MAX else None


@dataclass(frozen=True)
class OptionSpec:
    section: str
    name: str
    kind: OptionKind
    field: str
    default: Any
    check: Callable[[Any], str | None] | None = None
    since: str = "4.17"  # first Samba release with the option


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("logging", "location", "string", "log_location", DEFAULT_LOG_LOCATION, _check_location),
    # ctdbd's default; `ctdb-config` itself defaults to ERROR.
    OptionSpec("logging", "log level", "string", "log_level", "NOTICE", _check_log_level),
    OptionSpec("cluster", "transport", "string", "transport", "tcp", _check_transport),
    OptionSpec("cluster", "node address", "string", "node_address", None, _check_node_address),
    OptionSpec("cluster", "cluster lock", "string", "cluster_lock", None),
    OptionSpec("cluster", "recovery lock", "string", "recovery_lock", None),
    OptionSpec("cluster", "leader timeout", "integer", "leader_timeout", 5, _check_leader_timeout),
    OptionSpec("cluster", "leader capability", "boolean", "leader_capability", True),
    OptionSpec("cluster", "nodes list", "string", "nodes_list", None, since="4.22"),
    OptionSpec("database", "volatile database directory", "string", "volatile_db_dir",
               "/var/lib/ctdb/volatile"),
    OptionSpec("database", "persistent database directory", "string", "persistent_db_dir",
               "/var/lib/ctdb/persistent"),
    OptionSpec("database", "state database directory", "string", "state_db_dir", "/var/lib/ctdb/state"),
    OptionSpec("database", "lock debug script", "string", "lock_debug_script", None, _check_script_name),
    OptionSpec("database", "tdb mutexes", "boolean", "tdb_mutexes", True),
    OptionSpec("event", "debug script", "string", "event_debug_script", None, _check_script_name),
    OptionSpec("failover", "disabled", "boolean", "failover_disabled", False),
    OptionSpec("failover", "shutdown failover timeout", "integer", "shutdown_failover_timeout", 10,
               since="4.23"),
    OptionSpec("failover", "shutdown extra timeout", "integer", "shutdown_extra_timeout", 0, since="4.23"),
    OptionSpec("legacy", "realtime scheduling", "boolean", "realtime_scheduling", True),
    OptionSpec("legacy", "lmaster capability", "boolean", "lmaster_capability", True),
    OptionSpec("legacy", "start as stopped", "boolean", "start_as_stopped", False),
    OptionSpec("legacy", "start as disabled", "boolean", "start_as_disabled", False),
    OptionSpec("legacy", "script log level", "string", "script_log_level", "ERROR", _check_log_level),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(spec.section for spec in OPTIONS))
_BY_KEY = {(spec.section, spec.name): spec for spec in OPTIONS}
_BY_FIELD = {spec.field: spec for spec in OPTIONS}


@dataclass(frozen=True)
class CtdbConf:
    """ctdb.conf's settings with CTDB's defaults (ctdbd's, where ctdbd and ctdb-config differ)."""

    # [logging]
    log_location: str = DEFAULT_LOG_LOCATION
    log_level: int = DEBUG_NOTICE
    # [cluster]
    transport: str = "tcp"
    node_address: str | None = None
    cluster_lock: str | None = None
    recovery_lock: str | None = None  # deprecated alias; `cluster lock` wins when both are set
    leader_timeout: int = 5  # seconds without a leader broadcast before an election
    leader_capability: bool = True
    nodes_list: str | None = None  # 4.22: a file, or "!command"; None = <etc>/nodes
    # [database]
    volatile_db_dir: str = "/var/lib/ctdb/volatile"
    persistent_db_dir: str = "/var/lib/ctdb/persistent"
    state_db_dir: str = "/var/lib/ctdb/state"
    lock_debug_script: str | None = None
    tdb_mutexes: bool = True
    # [event]
    event_debug_script: str | None = None
    # [failover]
    failover_disabled: bool = False
    shutdown_failover_timeout: int = 10  # 4.23
    shutdown_extra_timeout: int = 0  # 4.23
    # [legacy]
    realtime_scheduling: bool = True
    lmaster_capability: bool = True
    start_as_stopped: bool = False
    start_as_disabled: bool = False
    script_log_level: int = DEBUG_ERR
    # Where the values came from.
    path: str | None = field(default=None, compare=False)
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def log_level_name(self) -> str:
        return debug_level_name(self.log_level)

    @property
    def script_log_level_name(self) -> str:
        return debug_level_name(self.script_log_level)

    def location(self) -> LogLocation:
        return parse_log_location(self.log_location)

    @property
    def cluster_lock_setting(self) -> str | None:
        """What ctdbd uses: ``cluster lock``, else the deprecated ``recovery lock``."""
        return self.cluster_lock if self.cluster_lock is not None else self.recovery_lock

    def cluster_lock_spec(self) -> ClusterLock | None:
        """The interpreted cluster lock; ConfigError (with the line) for an empty ``!`` command."""
        option = "cluster lock" if self.cluster_lock is not None else "recovery lock"
        try:
            return parse_cluster_lock(self.cluster_lock_setting)
        except ValueError as exc:
            raise ConfigError(f"[cluster] {option}: {exc}", self.path,
                              self.line_of("cluster", option)) from None

    def line_of(self, section: str, option: str) -> int | None:
        """The line that last set ``[section] option``, or None if it has its default."""
        return self.lines.get((section, option))


def _convert(spec: OptionSpec, text: str) -> tuple[Any, str | None]:
    """Value of ``text`` for the option's type (conf.c rules), or (None, error message)."""
    if spec.kind == "string":
        return text, None
    if spec.kind == "boolean":
        folded = ascii_lower(text)
        if folded in ("true", "yes"):
            return True, None
        if folded in ("false", "no"):
            return False, None
        return None, "not a boolean (true, yes, false or no)"
    value = c_strtol(text)
    if value < 0 or value > INT_MAX:
        return None, f"not an integer from 0 to {INT_MAX}"
    return value, None


def parse_ctdb_conf(text: str, path: str = "ctdb.conf", strict: bool = True) -> CtdbConf:
    """Parse ctdb.conf text. ``strict`` (default) rejects unknown sections and options like
    ``ctdb-config validate``; ``strict=False`` skips them like ctdbd and records a warning.
    Every problem is reported (ConfigErrors when there are several)."""
    raw: dict[str, Any] = {spec.field: spec.default for spec in OPTIONS}
    lines: dict[tuple[str, str], int] = {}
    errors: list[ConfigError] = []
    warnings: list[str] = []

    def problem(message: str, line: int) -> None:
        if strict:
            errors.append(ConfigError(message, path, line))
        else:
            warnings.append(f"{path}:{line}: {message} (ignored)")

    nul = nul_byte_error(text, path)
    if nul is not None:
        errors.append(nul)
    section: str | None = None
    section_known = False
    seen_section = False
    for item in parse_ini(text, allow_empty_value=True):
        if isinstance(item, SyntaxProblem):
            errors.append(ConfigError(f"syntax error, {item.reason}: {shown(item.text)}", path, item.line))
            break
        if isinstance(item, Section):
            seen_section = True
            section = ascii_lower(item.name)
            section_known = section in SECTIONS
            if not section_known:
                problem(f"unknown section [{item.name}]", item.line)
            continue
        assert isinstance(item, Param)
        if item.value is None:
            # ctdbd skips such a line; a typo there (``log level INFO``) would go unnoticed.
            errors.append(ConfigError(f"line without '=': {shown(item.name)} (expected 'option = value')",
                                      path, item.line))
            continue
        if not seen_section:
            problem(f"option {shown(item.name)} is not inside any [section]", item.line)
            continue
        if not section_known:
            continue  # already reported with the section
        assert section is not None
        spec = _BY_KEY.get((section, item.name))
        if spec is None:
            problem(f"unknown option [{section}] {shown(item.name)}", item.line)
            continue
        if item.value == "":
            errors.append(ConfigError(f"[{section}] {spec.name}: empty value", path, item.line))
            continue
        label = f"[{section}] {spec.name} = {shown(item.value)}"
        value, error = _convert(spec, item.value)
        if error is not None:
            errors.append(ConfigError(f"{label}: {error}", path, item.line))
            continue
        if spec.kind == "integer" and not is_whole_c_integer(item.value):
            warnings.append(f"{path}:{item.line}: {label} read as {value} "
                            "(CTDB ignores the characters after the number)")
        if value != raw[spec.field] and spec.check is not None:
            error = spec.check(value)
            if error is not None:
                errors.append(ConfigError(f"{label}: {error}", path, item.line))
                continue
        if spec.name == "recovery lock":
            warnings.append(f"{path}:{item.line}: [cluster] recovery lock is deprecated, "
                            "use cluster lock")
        raw[spec.field] = value
        lines[(section, spec.name)] = item.line
    raise_collected(errors)

    typed = dict(raw)
    for name in ("log_level", "script_log_level"):
        level = parse_debug_level(raw[name])
        assert level is not None  # defaults are valid, set values were checked
        typed[name] = level
    return CtdbConf(**typed, path=path, lines=lines, warnings=tuple(warnings))


def load_ctdb_conf(path: str, strict: bool = True) -> CtdbConf:
    """Read and parse a ctdb.conf; a missing file means all defaults (as in CTDB)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return CtdbConf(path=path)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return parse_ctdb_conf(data.decode("utf-8", "surrogateescape"), path, strict)


# --- checks that look at the filesystem ---------------------------------------------------------

def check_ctdb_conf_paths(conf: CtdbConf, etc_dir: str, startup: bool = False) -> list[ConfigError]:
    """The checks of ``ctdb-config validate`` that need the filesystem, for options the file sets
    to a non-default value: the log file's directory exists; each database directory exists;
    a debug script named (by its basename) exists in ``etc_dir`` as an executable regular file.
    ``startup=True`` adds what ctdbd checks when it starts: all three database directories exist,
    defaults included."""
    errors: list[ConfigError] = []

    def set_in_file(field_name: str) -> int | None:
        spec = _BY_FIELD[field_name]
        line = conf.line_of(spec.section, spec.name)
        if line is None or getattr(conf, field_name) == spec.default:
            return None
        return line

    def fail(field_name: str, message: str) -> None:
        spec = _BY_FIELD[field_name]
        errors.append(ConfigError(f"[{spec.section}] {spec.name}: {message}", conf.path,
                                  conf.line_of(spec.section, spec.name)))

    if set_in_file("log_location") is not None:
        location = conf.location()
        if location.kind == "file" and location.path is not None:
            directory = c_dirname(location.path)
            if not os.path.isdir(directory):
                fail("log_location", f"log directory {shown(directory)} does not exist")

    for field_name in ("volatile_db_dir", "persistent_db_dir", "state_db_dir"):
        if startup or set_in_file(field_name) is not None:
            directory = getattr(conf, field_name)
            if not os.path.isdir(directory):
                fail(field_name, f"directory {shown(directory)} does not exist")

    for field_name in ("lock_debug_script", "event_debug_script"):
        value = getattr(conf, field_name)
        if value is None or set_in_file(field_name) is None:
            continue
        # CTDB looks only at <etc dir>/<basename of the value>.
        script = os.path.join(etc_dir, os.path.basename(value))
        try:
            info = os.stat(script)
        except OSError:
            fail(field_name, f"script {shown(script)} does not exist")
            continue
        if not stat.S_ISREG(info.st_mode):
            fail(field_name, f"script {shown(script)} is not a file")
        elif not info.st_mode & stat.S_IXUSR:
            fail(field_name, f"script {shown(script)} is not executable")
    return errors


def c_dirname(path: str) -> str:
    """POSIX dirname(3), which CTDB uses (``os.path.dirname`` differs for "a/" and "name")."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    slash = stripped.rfind("/")
    if slash < 0:
        return "."
    return stripped[:slash].rstrip("/") or "/"


def validate_ctdb_conf(text: str, path: str, etc_dir: str) -> CtdbConf:
    """What ``ctdb-config validate`` does: strict parse plus the filesystem checks."""
    conf = parse_ctdb_conf(text, path, strict=True)
    raise_collected(check_ctdb_conf_paths(conf, etc_dir))
    return conf
