"""Tunables: CTDB's 62 (in wire order, with defaults) plus pyctdbd's own millisecond ones.

Facts from Samba 4.17.12, checked against the source:
- ``struct ctdb_tunable_list`` (ctdb/protocol/protocol.h) has 62 u32 fields; GET_ALL_TUNABLES
  sends them in that order (248 bytes). Obsolete tunables keep their slots.
- ``tunable_map`` (ctdb/common/tunable.c) holds names, defaults and the obsolete flag in a
  slightly different order (LCP2PublicIPs and VacuumFastPathCount sit elsewhere). LIST_TUNABLES,
  and so ``ctdb listvars``, walks that map and **skips obsolete tunables**: 49 names.
- Names match case-insensitively. GET_TUNABLE works for obsolete ones; SET_TUNABLE stores the
  value of an obsolete one but answers status 1 ("Setting obsolete tunable").
- ctdb.tunables (ctdb_tunable_load_file): tini syntax with empty values allowed, ``Name=value``
  with blanks allowed around '=', '#'/';' comment lines, no trailing comments; the value is
  read by smb_strtoul base 0 (``0x10``, octal ``010``) and must be the whole value; a [section],
  a line without a value, an unknown **or obsolete** tunable, or a bad number is an error, and
  every bad line is reported. ctdbd 4.17 logs these, keeps the good lines and starts anyway (its
  caller ignores the failure; checked by running ctdbd). Here loading raises ConfigError, or,
  with ``errors_out``, does what ctdbd does.
Stricter than CTDB: a value above 2**32-1 is an error (CTDB silently truncates it to 32 bits).

pyctdbd's tunables come after CTDB's in listings, are settable with ``ctdb setvar`` and are not
part of the 248-byte wire list. They may also be set in ctdb.tunables (real ctdbd would reject
such a file).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.types import TUNABLE_LISTVARS_ORDER, TUNABLE_NAMES
from .clib import U32_MAX, ascii_lower, smb_strtoul_full
from .errors import ConfigError, nul_byte_error, raise_collected, shown
from .tini import Param, Section, SyntaxProblem, parse_ini


@dataclass(frozen=True)
class TunableSpec:
    name: str
    default: int
    obsolete: bool
    wire_index: int | None  # slot in ctdb_tunable_list; None for pyctdbd's own
    description: str


def _ctdb(name: str, default: int, description: str, obsolete: bool = False) -> tuple:
    return (name, default, obsolete, description)


# CTDB's tunables in wire order (struct ctdb_tunable_list).
_CTDB_WIRE = (
    _ctdb("MaxRedirectCount", 3, "unused", obsolete=True),
    _ctdb("SeqnumInterval", 1000, "ms between database sequence-number propagation"),
    _ctdb("ControlTimeout", 60, "s, default control timeout"),
    _ctdb("TraverseTimeout", 20, "s, database traverse timeout"),
    _ctdb("KeepaliveInterval", 5, "s between keepalive checks of each peer"),
    _ctdb("KeepaliveLimit", 5, "missed keepalive intervals before a peer is dead"),
    _ctdb("RecoverTimeout", 30, "s, recovery daemon control timeout"),
    _ctdb("RecoverInterval", 1, "s, recovery daemon main loop period"),
    _ctdb("ElectionTimeout", 3, "s an election waits after the last election packet"),
    _ctdb("TakeoverTimeout", 9, "s per takeover stage"),
    _ctdb("MonitorInterval", 15, "s between monitor events"),
    _ctdb("TickleUpdateInterval", 20, "s between tickle-list pushes"),
    _ctdb("EventScriptTimeout", 30, "s an event may run"),
    _ctdb("MonitorTimeoutCount", 20, "consecutive monitor timeouts before UNHEALTHY"),
    _ctdb("EventScriptUnhealthyOnTimeout", 0, "unused", obsolete=True),
    _ctdb("RecoveryGracePeriod", 120, "s before a node's ban credits are forgiven"),
    _ctdb("RecoveryBanPeriod", 300, "s a culprit node is banned"),
    _ctdb("DatabaseHashSize", 100001, "TDB hash chains for volatile databases"),
    _ctdb("DatabaseMaxDead", 5, "dead records per chain (TDB_VOLATILE)"),
    _ctdb("RerecoveryTimeout", 10, "s between recoveries"),
    _ctdb("EnableBans", 1, "1 = nodes may be banned"),
    _ctdb("DeterministicIPs", 0, "unused (see IPAllocAlgorithm)", obsolete=True),
    _ctdb("ReclockPingPeriod", 60, "unused", obsolete=True),
    _ctdb("NoIPFailback", 0, "1 = IPs do not move back to a recovered node"),
    _ctdb("DisableIPFailover", 0, "unused (see [failover] disabled)", obsolete=True),
    _ctdb("VerboseMemoryNames", 0, "1 = verbose talloc names"),
    _ctdb("RecdPingTimeout", 60, "s without a recovery-daemon ping before counting a failure"),
    _ctdb("RecdFailCount", 10, "recovery-daemon ping failures before restarting"),
    _ctdb("LogLatencyMs", 0, "ms, log database operations slower than this (0 = off)"),
    _ctdb("RecLockLatencyMs", 1000, "ms, warn when taking the cluster lock is slower"),
    _ctdb("RecoveryDropAllIPs", 120, "s in recovery mode before dropping all IPs"),
    _ctdb("VerifyRecoveryLock", 1, "unused", obsolete=True),
    _ctdb("VacuumInterval", 10, "s between vacuum runs"),
    _ctdb("VacuumMaxRunTime", 120, "s a vacuum run may take"),
    _ctdb("RepackLimit", 10000, "freelist entries that trigger a repack"),
    _ctdb("VacuumLimit", 5000, "unused", obsolete=True),
    _ctdb("MaxQueueDropMsg", 1000000, "queued messages before a client is dropped"),
    _ctdb("AllowUnhealthyDBRead", 0, "1 = allow reading unhealthy databases"),
    _ctdb("StatHistoryInterval", 1, "s per statistics history slot"),
    _ctdb("DeferredAttachTO", 120, "s a client attach may wait during a freeze"),
    _ctdb("VacuumFastPathCount", 60, "fast-path vacuum runs per full run"),
    _ctdb("LCP2PublicIPs", 1, "unused (see IPAllocAlgorithm)", obsolete=True),
    _ctdb("AllowClientDBAttach", 1, "0 = clients may not attach databases"),
    _ctdb("RecoverPDBBySeqNum", 1, "unused (always by sequence number)", obsolete=True),
    _ctdb("DeferredRebalanceOnNodeAdd", 300, "unused", obsolete=True),
    _ctdb("FetchCollapse", 1, "1 = collapse concurrent fetches of one record"),
    _ctdb("HopcountMakeSticky", 50, "hop count that makes a record sticky"),
    _ctdb("StickyDuration", 600, "s a record stays sticky"),
    _ctdb("StickyPindown", 200, "ms a sticky record is pinned"),
    _ctdb("NoIPTakeover", 0, "1 = this node does not take over IPs"),
    _ctdb("DBRecordCountWarn", 100000, "records in a database before a warning"),
    _ctdb("DBRecordSizeWarn", 10000000, "bytes in one record before a warning"),
    _ctdb("DBSizeWarn", 100000000, "bytes in a database before a warning"),
    _ctdb("PullDBPreallocation", 10485760, "bytes preallocated for database pulls"),
    _ctdb("NoIPHostOnAllDisabled", 1, "unused", obsolete=True),
    _ctdb("Samba3AvoidDeadlocks", 0, "unused", obsolete=True),
    _ctdb("TDBMutexEnabled", 1, "unused (see [database] tdb mutexes)", obsolete=True),
    _ctdb("LockProcessesPerDB", 200, "lock helper processes per database"),
    _ctdb("RecBufferSizeLimit", 1000000, "bytes per recovery/vacuum record buffer"),
    _ctdb("QueueBufferSize", 1024, "bytes read per socket read"),
    _ctdb("IPAllocAlgorithm", 2, "0 deterministic, 1 non-deterministic, 2 LCP2"),
    _ctdb("AllowMixedVersions", 0, "1 = allow nodes of different CTDB versions"),
)


# pyctdbd's own tunables, listed after CTDB's. Values are starting points; the daemon team tunes
# them by measurement. A 0 means "behave like CTDB" where the description says so.
_PYCTDBD = (
    ("HeartbeatIntervalMs", 100,
     "ms, send a keepalive to each peer at least this often (0 = every KeepaliveInterval s)"),
    ("DeadTimeoutMs", 400,
     "ms a silent peer is given before it is dead (0 = KeepaliveInterval x KeepaliveLimit s)"),
    ("ElectionTimeoutMs", 300, "ms a no-lock election settles (0 = ElectionTimeout s)"),
    ("GratuitousArpRepeatMs", 250,
     "ms between bursts of gratuitous ARP + tickle ACK after a takeover"),
    ("GratuitousArpBursts", 3, "bursts of gratuitous ARP + tickle ACK after a takeover"),
    ("TakeoverRunDelayMs", 0, "ms to wait before starting a takeover run"),
    ("SweepDelayMs", 1000,
     "ms after recovery mode ends before a node sweeps the keys a membership change left "
     "unsettled (0 = no sweep: they are settled on first use until a full recovery)"),
)

CTDB_TUNABLES: tuple[TunableSpec, ...] = tuple(
    TunableSpec(name, default, obsolete, index, description)
    for index, (name, default, obsolete, description) in enumerate(_CTDB_WIRE))
PYCTDBD_TUNABLES: tuple[TunableSpec, ...] = tuple(
    TunableSpec(name, default, False, None, description) for name, default, description in _PYCTDBD)
ALL_TUNABLES: tuple[TunableSpec, ...] = CTDB_TUNABLES + PYCTDBD_TUNABLES

WIRE_COUNT = len(CTDB_TUNABLES)  # 62
WIRE_ORDER: tuple[str, ...] = tuple(spec.name for spec in CTDB_TUNABLES)
# The wire layout and ctdbd's listing order are the protocol's (one table each, there).
assert WIRE_ORDER == TUNABLE_NAMES, "CTDB tunables here and in protocol.types disagree"
_BY_FOLDED = {ascii_lower(spec.name): spec for spec in ALL_TUNABLES}
_BY_NAME = {spec.name: spec for spec in ALL_TUNABLES}
LISTING_ORDER: tuple[str, ...] = tuple(
    name for name in TUNABLE_LISTVARS_ORDER if not _BY_NAME[name].obsolete) + tuple(
    spec.name for spec in PYCTDBD_TUNABLES)


class UnknownTunableError(KeyError):
    """No tunable has this name (compared case-insensitively)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown tunable {shown(self.name)}"


class TunableValueError(ValueError):
    """A tunable value that is not a 32-bit unsigned integer."""


def tunable_spec(name: str) -> TunableSpec:
    """The spec for a name in any case; UnknownTunableError if there is none."""
    spec = _BY_FOLDED.get(ascii_lower(name))
    if spec is None:
        raise UnknownTunableError(name)
    return spec


class Tunables:
    """The values of all tunables, starting from the defaults."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {spec.name: spec.default for spec in ALL_TUNABLES}

    def get(self, name: str) -> int:
        return self._values[tunable_spec(name).name]

    def set(self, name: str, value: int) -> None:
        """Set a tunable (obsolete ones too: CTDB stores them; check ``is_obsolete`` to answer
        SET_TUNABLE with status 1 as CTDB does)."""
        spec = tunable_spec(name)
        if isinstance(value, bool) or not isinstance(value, int):
            shown_value = shown(value) if isinstance(value, str) else repr(value)[:80]
            raise TunableValueError(f"{spec.name}: value {shown_value} is not an integer")
        if not 0 <= value <= U32_MAX:
            raise TunableValueError(f"{spec.name}: value {value} is outside 0..{U32_MAX}")
        self._values[spec.name] = value

    def __getitem__(self, name: str) -> int:
        return self.get(name)

    def __setitem__(self, name: str, value: int) -> None:
        self.set(name, value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and ascii_lower(name) in _BY_FOLDED

    @staticmethod
    def canonical_name(name: str) -> str:
        """CTDB's spelling of a name given in any case."""
        return tunable_spec(name).name

    @staticmethod
    def is_obsolete(name: str) -> bool:
        return tunable_spec(name).obsolete

    @staticmethod
    def names() -> list[str]:
        """Names in listing order: CTDB's non-obsolete ones as ``ctdb listvars`` shows them, then
        pyctdbd's own."""
        return list(LISTING_ORDER)

    @staticmethod
    def all_names() -> list[str]:
        """Every name: CTDB's 62 in wire order, then pyctdbd's."""
        return [spec.name for spec in ALL_TUNABLES]

    def wire_values(self) -> list[int]:
        """CTDB's 62 values in ctdb_tunable_list order (the GET_ALL_TUNABLES payload)."""
        return [self._values[name] for name in WIRE_ORDER]

    def set_wire_values(self, values: list[int]) -> None:
        """Take all 62 CTDB values in wire order (pyctdbd's own are unchanged)."""
        if len(values) != WIRE_COUNT:
            raise TunableValueError(f"expected {WIRE_COUNT} values, got {len(values)}")
        for name, value in zip(WIRE_ORDER, values):
            self.set(name, value)

    def as_dict(self) -> dict[str, int]:
        """{name: value} for every tunable, CTDB's (wire order) then pyctdbd's."""
        return dict(self._values)

    def changed(self) -> dict[str, int]:
        """The tunables whose value differs from the default."""
        return {spec.name: self._values[spec.name] for spec in ALL_TUNABLES
                if self._values[spec.name] != spec.default}

    def copy(self) -> Tunables:
        clone = Tunables()
        clone._values = dict(self._values)
        return clone

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tunables) and other._values == self._values

    def __repr__(self) -> str:
        return f"Tunables({self.changed()!r})"


def load_tunables_text(text: str, path: str = "ctdb.tunables", tunables: Tunables | None = None,
                       errors_out: list[ConfigError] | None = None) -> Tunables:
    """Apply ctdb.tunables text to the defaults (CTDB resets to defaults before loading) or, if
    given, to a copy of ``tunables``. Raises ConfigError (ConfigErrors for several bad lines).
    With ``errors_out`` it behaves like ctdbd instead: the problems are appended there and the
    good lines are still applied."""
    result = tunables.copy() if tunables is not None else Tunables()
    errors: list[ConfigError] = []
    nul = nul_byte_error(text, path)
    if nul is not None:
        errors.append(nul)
    for item in parse_ini(text, allow_empty_value=True):
        if isinstance(item, SyntaxProblem):
            errors.append(ConfigError(f"syntax error, {item.reason}: {shown(item.text)}", path, item.line))
            break
        if isinstance(item, Section):
            errors.append(ConfigError(f"sections are not supported here: [{item.name}]", path, item.line))
            continue
        assert isinstance(item, Param)
        if not item.value:
            errors.append(ConfigError(f"{shown(item.name)} has no value (expected Name=value)", path, item.line))
            continue
        try:
            value = smb_strtoul_full(item.value, 0)
        except ValueError as exc:
            errors.append(ConfigError(f"invalid value {shown(item.value)} for tunable {shown(item.name)}: {exc}",
                                      path, item.line))
            continue
        try:
            spec = tunable_spec(item.name)
        except UnknownTunableError:
            errors.append(ConfigError(f"unknown tunable {shown(item.name)}", path, item.line))
            continue
        if spec.obsolete:
            if value <= U32_MAX:
                result.set(spec.name, value)  # ctdbd stores it before complaining
            errors.append(ConfigError(f"obsolete tunable {spec.name!r}", path, item.line))
            continue
        if value > U32_MAX:
            errors.append(ConfigError(f"value {shown(item.value)} for tunable {spec.name!r} does not "
                                      "fit in 32 bits", path, item.line))
            continue
        result.set(spec.name, value)
    if errors_out is not None:
        errors_out.extend(errors)
    else:
        raise_collected(errors)
    return result


def load_tunables_file(path: str, tunables: Tunables | None = None,
                       errors_out: list[ConfigError] | None = None) -> Tunables:
    """Read and apply a ctdb.tunables file; a missing file means defaults (as in CTDB).
    ``errors_out`` as for load_tunables_text (an unreadable file still raises)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return tunables.copy() if tunables is not None else Tunables()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from None
    return load_tunables_text(data.decode("utf-8", "surrogateescape"), path, tunables, errors_out)
