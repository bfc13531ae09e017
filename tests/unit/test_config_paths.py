"""Default paths and environment overrides; Debian's ctdb-path as referee."""

from __future__ import annotations

import os
import subprocess

import pytest

from ctdblab.daemon.config import Paths, PathsError

CTDB_PATH = "/usr/libexec/ctdb/ctdb-path"


def test_debian_defaults():
    paths = Paths.from_env({})
    assert paths.etc_dir == paths.base_dir == "/etc/ctdb"
    assert paths.config_file == "/etc/ctdb/ctdb.conf"
    assert paths.tunables_file == "/etc/ctdb/ctdb.tunables"
    assert paths.nodes_file == "/etc/ctdb/nodes"
    assert paths.public_addresses_file == "/etc/ctdb/public_addresses"
    assert paths.event_scripts_dir == "/etc/ctdb/events/legacy"
    assert paths.notification_script == "/etc/ctdb/notify.sh"
    assert paths.notification_dir == "/etc/ctdb/events/notification"
    assert paths.run_dir == "/run/ctdb"
    assert paths.socket == "/run/ctdb/ctdbd.socket"
    assert paths.pid_file == "/run/ctdb/ctdbd.pid"
    assert paths.eventd_socket == "/run/ctdb/eventd.socket"
    assert paths.var_dir == "/var/lib/ctdb"
    assert paths.helper_dir == "/usr/libexec/ctdb"
    assert paths.cluster_mutex_helper == "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper"
    assert paths.log_file == "/var/log/ctdb/log.ctdb"
    assert not paths.test_mode


def test_ctdb_base_without_test_mode_moves_only_ctdbds_own_files():
    paths = Paths.from_env({"CTDB_BASE": "/srv/ctdb"})
    assert paths.config_file == "/etc/ctdb/ctdb.conf" and paths.tunables_file == "/etc/ctdb/ctdb.tunables"
    assert paths.nodes_file == "/srv/ctdb/nodes"
    assert paths.public_addresses_file == "/srv/ctdb/public_addresses"
    assert paths.event_scripts_dir == "/srv/ctdb/events/legacy"
    assert paths.socket == "/run/ctdb/ctdbd.socket"


def test_test_mode_moves_everything():
    paths = Paths.from_env({"CTDB_TEST_MODE": "1", "CTDB_BASE": "/t"})
    assert (paths.etc_dir, paths.run_dir, paths.var_dir, paths.data_dir) == ("/t", "/t/run", "/t/var", "/t/share")
    assert paths.config_file == "/t/ctdb.conf" and paths.nodes_file == "/t/nodes"
    assert paths.socket == "/t/run/ctdbd.socket" and paths.pid_file == "/t/run/ctdbd.pid"
    assert paths.test_mode
    with pytest.raises(PathsError):
        Paths.from_env({"CTDB_TEST_MODE": "1"})


def test_socket_and_helper_env():
    paths = Paths.from_env({"CTDB_SOCKET": "/x/s", "CTDB_PIDFILE": "/x/p",
                            "CTDB_CLUSTER_MUTEX_HELPER": "/x/helper"})
    assert paths.socket == "/x/s"
    assert paths.pid_file == "/run/ctdb/ctdbd.pid"  # 4.17 does not read CTDB_PIDFILE
    assert paths.cluster_mutex_helper == "/x/helper"


def test_overrides():
    paths = Paths.from_env({}, etc_dir="/node1/etc", run_dir="/node1/run")
    assert paths.base_dir == "/node1/etc" and paths.nodes_file == "/node1/etc/nodes"
    assert paths.config_file == "/node1/etc/ctdb.conf"
    assert paths.socket == "/node1/run/ctdbd.socket"
    assert Paths.from_env({}, pid_file="/p").pid_file == "/p"
    with pytest.raises(TypeError):
        Paths.from_env({}, no_such_field="x")


needs_ctdb_path = pytest.mark.skipif(not os.access(CTDB_PATH, os.X_OK),
                                     reason=f"{CTDB_PATH} (Debian package ctdb) is not installed")


def ctdb_path(env: dict[str, str], *args: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CTDB_")}
    result = subprocess.run([CTDB_PATH, *args], env={**clean, **env}, capture_output=True, text=True,
                            timeout=10, check=True)
    return result.stdout.strip()


@needs_ctdb_path
@pytest.mark.parametrize("env", [
    {}, {"CTDB_BASE": "/srv/ctdb"}, {"CTDB_SOCKET": "/x/s"}, {"CTDB_PIDFILE": "/x/p"},
    {"CTDB_TEST_MODE": "1", "CTDB_BASE": "/t"}, {"CTDB_TEST_MODE": "1", "CTDB_BASE": "/t", "CTDB_SOCKET": "/s"},
])
def test_same_paths_as_ctdb_path(env):
    paths = Paths.from_env(env)
    assert ctdb_path(env, "config") == paths.config_file
    assert ctdb_path(env, "etcdir") == paths.etc_dir
    assert ctdb_path(env, "rundir") == paths.run_dir
    assert ctdb_path(env, "vardir") == paths.var_dir
    assert ctdb_path(env, "datadir") == paths.data_dir
    assert ctdb_path(env, "socket", "ctdbd") == paths.socket
    assert ctdb_path(env, "pidfile", "ctdbd") == paths.pid_file
    assert ctdb_path(env, "socket", "eventd") == paths.eventd_socket
    assert ctdb_path(env, "etcdir", "append", "ctdb.tunables") == paths.tunables_file
