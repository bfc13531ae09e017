"""Where ctdbd keeps a database, with which libtdb flags, and under which id.

Facts (Samba 4.17.12: ``ctdb/server/ctdb_ltdb_server.c`` ``ctdb_local_attach``,
``ctdb/common/ctdb_ltdb.c`` ``ctdb_db_tdb_flags``; checked against a real ctdbd 4.17 in the lab,
``ctdb getdbmap`` after ``ctdb attach foo`` / ``ctdb attach bar persistent``):

- the file is ``<dir>/<name>.<pnn>`` with the name exactly as the client gave it: smbd's
  ``locking.tdb`` is ``/var/lib/ctdb/volatile/locking.tdb.0``, ``ctdb attach foo`` gives
  ``/var/lib/ctdb/volatile/foo.0``, ``ctdb attach bar persistent`` ``/var/lib/ctdb/persistent/bar.0``;
- ``<dir>`` is ctdb.conf's ``[database] persistent database directory`` for persistent databases
  and ``volatile database directory`` for volatile *and replicated* ones; the ``state database
  directory`` holds ctdbd's own files (``persistent_health.tdb.<pnn>``, recovery's scratch DBs);
- created with mode 0600 and ``hash_size`` = tunable DatabaseHashSize (100001);
- flags: persistent ``DISALLOW_NESTING`` (0x400); replicated ``NOSYNC|CLEAR_IF_FIRST|
  INCOMPATIBLE_HASH|DISALLOW_NESTING`` (0xc41); volatile the same plus ``MUTEX_LOCKING`` when
  ``[database] tdb mutexes`` is true (the default) and robust mutexes work (0x1c41); ENABLE_SEQNUM
  later adds ``SEQNUM`` (0x1cc1). ctdbd answers DB_OPEN_FLAGS with ``tdb_get_flags`` and smbd opens
  its own copy with exactly those flags;
- db_id = Jenkins hash of the name plus its NUL (``foo`` 0xcd3f77e5, ``bar`` 0xe72564a3,
  ``locking.tdb`` 0x7a19d84d: values from the lab's ``ctdb getdbmap``).

Deliberate difference: ctdbd accepts any name; a name with '/' (it would leave the directory)
or a NUL is refused here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..config.ctdbconf import CtdbConf
from ..protocol.constants import DbFlag, TdbFlag
from .libtdb import jenkins_hash, robust_mutexes_available

#: Tunable DatabaseHashSize: the hash size ctdbd creates every database with.
DATABASE_HASH_SIZE = 100001
#: ctdb_local_attach creates files 0600.
DB_FILE_MODE = 0o600


class DbKind(enum.Enum):
    VOLATILE = "volatile"
    PERSISTENT = "persistent"
    REPLICATED = "replicated"

    @property
    def db_flags(self) -> DbFlag:
        """The GET_DBMAP flag bits of this kind (READONLY/STICKY are set later, per database)."""
        if self is DbKind.PERSISTENT:
            return DbFlag.PERSISTENT
        if self is DbKind.REPLICATED:
            return DbFlag.REPLICATED
        return DbFlag(0)

    @classmethod
    def from_db_flags(cls, flags: int) -> DbKind:
        if flags & DbFlag.PERSISTENT:
            return cls.PERSISTENT
        if flags & DbFlag.REPLICATED:
            return cls.REPLICATED
        return cls.VOLATILE


def check_db_name(name: str) -> str:
    """The name if it can name a file in the database directory; ValueError otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("database name is empty")
    if "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"database name {name!r} is not a plain file name")
    return name


def db_id(name: str) -> int:
    """ctdbd's db_id: ``tdb_jenkins_hash(name + NUL)`` (libtdb's own function)."""
    return jenkins_hash(check_db_name(name).encode("utf-8", "surrogateescape") + b"\0")


def tdb_flags(kind: DbKind, mutexes: bool = True, robust: bool | None = None) -> int:
    """ctdb_db_tdb_flags: the libtdb flags ctdbd opens a database of ``kind`` with. ``mutexes``
    is ctdb.conf's ``tdb mutexes``; ``robust`` defaults to the runtime check ctdbd also makes."""
    if kind is DbKind.PERSISTENT:
        flags = TdbFlag.DEFAULT
    else:
        flags = TdbFlag.NOSYNC | TdbFlag.CLEAR_IF_FIRST | TdbFlag.INCOMPATIBLE_HASH
        if kind is DbKind.VOLATILE and mutexes:
            if robust is None:
                robust = robust_mutexes_available()
            if robust:
                flags |= TdbFlag.MUTEX_LOCKING
    return int(flags | TdbFlag.DISALLOW_NESTING)


@dataclass(frozen=True)
class DbDirs:
    """The three ``[database]`` directories of ctdb.conf."""

    volatile: str = "/var/lib/ctdb/volatile"
    persistent: str = "/var/lib/ctdb/persistent"
    state: str = "/var/lib/ctdb/state"

    @classmethod
    def from_conf(cls, conf: CtdbConf) -> DbDirs:
        return cls(conf.volatile_db_dir, conf.persistent_db_dir, conf.state_db_dir)

    def directory(self, kind: DbKind) -> str:
        return self.persistent if kind is DbKind.PERSISTENT else self.volatile

    def path(self, name: str, pnn: int, kind: DbKind) -> str:
        """``<dir>/<name>.<pnn>``, formatted as ctdb_local_attach does (``%s/%s.%u``: a directory
        given with a trailing '/' gives '//', which GETDBPATH then shows)."""
        return f"{self.directory(kind)}/{check_db_name(name)}.{pnn}"

    def state_path(self, name: str, pnn: int) -> str:
        """A ctdbd-internal database in the state directory, e.g. ``persistent_health.tdb.0``."""
        return f"{self.state}/{check_db_name(name)}.{pnn}"
