"""The paths CTDB 4.17 uses on Debian, and how its environment variables move them.

Facts (ctdb/common/path.c, ctdb/server/ctdbd.c; confirmed with ``/usr/libexec/ctdb/ctdb-path`` and
``strings`` on Debian's 4.17.12 binaries):
- compiled in: etc /etc/ctdb, run /run/ctdb, var /var/lib/ctdb, data /usr/share/ctdb, helpers
  /usr/libexec/ctdb, log file /var/log/ctdb/log.ctdb;
- ``CTDB_TEST_MODE`` set: etc = $CTDB_BASE (which must be set), run = $CTDB_BASE/run,
  var = $CTDB_BASE/var, data = $CTDB_BASE/share. Without test mode ``CTDB_BASE`` does not move
  ctdb.conf, ctdb.tunables or the event daemon's scripts;
- but ctdbd itself reads ``$CTDB_BASE/nodes``, ``$CTDB_BASE/public_addresses``, runs
  ``$CTDB_BASE/events/legacy`` and ``$CTDB_BASE/notify.sh`` (CTDB_BASE defaulting to /etc/ctdb),
  test mode or not; this is ``base_dir`` below;
- ``CTDB_SOCKET`` overrides ctdbd's socket (4.17 honours it always; 4.24 only in test mode);
- ``CTDB_PIDFILE`` is **not** read by 4.17 (ctdbd_wrapper, which used it, is gone; the pid file is
  always <run>/ctdbd.pid);
- ``CTDB_CLUSTER_MUTEX_HELPER`` replaces <helpers>/ctdb_mutex_fcntl_helper.
- the [database] directory defaults in ctdb.conf are compiled in (/var/lib/ctdb/...) and do not
  follow test mode; see ctdbconf.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

ETC_DIR = "/etc/ctdb"
RUN_DIR = "/run/ctdb"
VAR_DIR = "/var/lib/ctdb"
DATA_DIR = "/usr/share/ctdb"
HELPER_DIR = "/usr/libexec/ctdb"
LOG_FILE = "/var/log/ctdb/log.ctdb"


class PathsError(ValueError):
    """The environment does not describe a usable layout (test mode without CTDB_BASE)."""


@dataclass(frozen=True)
class Paths:
    etc_dir: str  # ctdb.conf, ctdb.tunables, home_nodes, event daemon scripts
    base_dir: str  # $CTDB_BASE: nodes, public_addresses, events/legacy, notify.sh
    run_dir: str
    var_dir: str
    data_dir: str
    helper_dir: str
    config_file: str
    tunables_file: str
    nodes_file: str
    public_addresses_file: str
    home_nodes_file: str
    script_options_file: str
    event_scripts_dir: str  # events/legacy
    notification_script: str  # notify.sh, which runs events/notification/*.script
    notification_dir: str
    socket: str  # ctdbd.socket
    pid_file: str  # ctdbd.pid
    eventd_socket: str
    log_file: str  # the default of [logging] location = file:...
    cluster_mutex_helper: str  # runs `cluster lock = <file>`
    test_mode: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Paths:
        """The paths the 4.17 binaries would use under ``env`` (default: os.environ); keyword
        ``overrides`` replace any field afterwards. Setting ``etc_dir`` alone also moves
        ``base_dir`` and every file derived from either, so ``Paths.from_env(etc_dir=d)`` describes
        a complete configuration tree under ``d``."""
        if env is None:
            env = os.environ
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown Paths fields: {', '.join(sorted(unknown))}")
        test_mode = env.get("CTDB_TEST_MODE") is not None
        if test_mode:
            base = env.get("CTDB_BASE")
            if base is None:
                raise PathsError("CTDB_TEST_MODE is set but CTDB_BASE is not")
            etc, run, var, data = base, f"{base}/run", f"{base}/var", f"{base}/share"
        else:
            etc, run, var, data = ETC_DIR, RUN_DIR, VAR_DIR, DATA_DIR
            base = env.get("CTDB_BASE", ETC_DIR)
        etc = str(overrides.get("etc_dir", etc))
        if "etc_dir" in overrides and "base_dir" not in overrides:
            base = etc
        base = str(overrides.get("base_dir", base))
        run = str(overrides.get("run_dir", run))
        helper_dir = str(overrides.get("helper_dir", HELPER_DIR))
        values: dict[str, object] = dict(
            etc_dir=etc, base_dir=base, run_dir=run, var_dir=var, data_dir=data,
            helper_dir=helper_dir,
            config_file=f"{etc}/ctdb.conf",
            tunables_file=f"{etc}/ctdb.tunables",
            nodes_file=f"{base}/nodes",
            public_addresses_file=f"{base}/public_addresses",
            home_nodes_file=f"{etc}/home_nodes",
            script_options_file=f"{etc}/script.options",
            event_scripts_dir=f"{base}/events/legacy",
            notification_script=f"{base}/notify.sh",
            notification_dir=f"{base}/events/notification",
            socket=env.get("CTDB_SOCKET", f"{run}/ctdbd.socket"),
            pid_file=f"{run}/ctdbd.pid",
            eventd_socket=f"{run}/eventd.socket",
            log_file=LOG_FILE,
            cluster_mutex_helper=env.get("CTDB_CLUSTER_MUTEX_HELPER",
                                         f"{helper_dir}/ctdb_mutex_fcntl_helper"),
            test_mode=test_mode,
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
