"""The etcd cluster lock's configuration (cluster/etcd_lock.py) and where the lab uses it.
No root, no etcd: files and command lines only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctdblab.cli import build_parser
from ctdblab.cluster.etcd_lock import (CLIENT_PORT, HELPER, HELPER_PYTHON, LOCK_TTL_S, PEER_PORT,
                                       READ_TIMEOUT_S, REFRESH_S, EtcdLock, EtcdMembers, FileLock,
                                       get_lab_lock, helper_config_text, initial_cluster,
                                       lock_keys_path, member_argv, parse_lock_holder,
                                       remove_data_under)
from ctdblab.cluster.launchers import get_launcher
from ctdblab.cluster.profiles import get_profile
from ctdblab.daemon.config.ctdbconf import parse_ctdb_conf
from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.server.node import node_settings
from ctdblab.errors import UserError

NODE_IPS = ["198.18.16.1", "198.18.16.2", "198.18.16.3"]
SHARED = Path("/var/tmp/ctdblab/cx9/shared")


def helper_reads(text: str) -> dict:
    """The config file as /usr/libexec/ctdb/ctdb_etcd_lock reads it: every line split once on
    "=", stripped, int() where it parses (its int_or_not)."""
    values = {}
    for line in text.splitlines(True):
        key, value = line.split("=", 1)          # the helper's own unpacking: raises on a bad line
        value = value.strip()
        try:
            values[key.strip()] = int(value)
        except ValueError:
            values[key.strip()] = value
    return values


def node_config(daemon: str, pnn: int, lock=None):
    launcher = get_launcher(daemon, lock=lock)
    return launcher.node_config(node_ips=NODE_IPS, public_addresses=["198.19.24.1/20 n1-eth1"],
                                shared_dir=SHARED, profile=get_profile("aggressive"), pnn=pnn)


def test_helper_config_points_at_the_local_member_with_the_lease_figures():
    values = helper_reads(helper_config_text("198.18.16.2"))
    assert values == {"host": "198.18.16.2", "port": CLIENT_PORT, "lock_ttl": LOCK_TTL_S,
                      "lock_refresh": REFRESH_S, "read_timeout": READ_TIMEOUT_S,
                      "locks_dir": "_ctdb"}
    # The helper passes these to time.sleep / etcd's TTL as read: whole seconds only.
    assert all(isinstance(values[k], int) for k in ("lock_ttl", "lock_refresh", "read_timeout"))


def test_python_etcd_accepts_the_client_parameters():
    etcd = pytest.importorskip("etcd")           # Debian's python3-etcd
    values = helper_reads(helper_config_text("198.18.16.2"))
    client = etcd.Client(host=values["host"], port=values["port"],
                         read_timeout=values["read_timeout"])     # no connection is made here
    assert client.base_uri == f"http://198.18.16.2:{CLIENT_PORT}"


def test_lease_figures_let_the_old_holder_hear_first_and_expire_between_ctdbd_attempts():
    # A cut-off holder exits (the daemon hears "lock lost") at most refresh + read timeout after
    # its last renewal; the majority can take the lock only when the TTL has run out.
    assert REFRESH_S + READ_TIMEOUT_S < LOCK_TTL_S
    # A failed attempt's key lives a TTL; ctdbd tries once per leader timeout (5 s by default):
    # a longer TTL would make every attempt meet the previous attempt's key.
    assert LOCK_TTL_S < parse_ctdb_conf("").leader_timeout


def test_members_listen_on_the_private_address_only():
    argv = member_argv(1, NODE_IPS, Path("/d/etcd"), "tok")
    text = " ".join(argv)
    assert argv[0] == "/usr/bin/etcd" and "--enable-v2=true" in argv
    for flag in ("--listen-client-urls", "--advertise-client-urls"):
        assert argv[argv.index(flag) + 1] == f"http://198.18.16.2:{CLIENT_PORT}"
    for flag in ("--listen-peer-urls", "--initial-advertise-peer-urls"):
        assert argv[argv.index(flag) + 1] == f"http://198.18.16.2:{PEER_PORT}"
    assert "0.0.0.0" not in text and "127.0.0.1" not in text and "localhost" not in text
    assert argv[argv.index("--data-dir") + 1] == "/d/etcd"
    assert argv[argv.index("--name") + 1] == "node1"
    assert initial_cluster(NODE_IPS) == ",".join(
        f"node{p}=http://{ip}:{PEER_PORT}" for p, ip in enumerate(NODE_IPS))


def test_start_script_runs_the_member_in_the_background_with_its_log():
    class Dirs:
        durable = Path("/w/nodes/cx9n2/durable")
        log = Path("/w/nodes/cx9n2/log")

    class Node:
        index, name, dirs = 1, "cx9n2", Dirs()

    script = EtcdMembers(NODE_IPS, "tok").start_script(Node())
    assert "mkdir -p -m 0700 /w/nodes/cx9n2/durable/etcd /w/nodes/cx9n2/log/etcd" in script
    assert script.rstrip().endswith(">>/w/nodes/cx9n2/log/etcd/etcd.log 2>&1 </dev/null &")
    assert "setsid /usr/bin/etcd --name node1" in script


@pytest.mark.parametrize("daemon", ["ctdb", "pyctdbd"])
def test_both_daemons_get_the_etcd_helper_and_their_own_config(daemon):
    for pnn, ip in enumerate(NODE_IPS):
        config = node_config(daemon, pnn, EtcdLock())
        assert helper_reads(config.ctdb_files["etcd"])["host"] == ip
        conf = parse_ctdb_conf(config.ctdb_files["ctdb.conf"], "ctdb.conf")
        spec = conf.cluster_lock_spec()
        # /usr/bin/python3: the helper's `#!/usr/bin/env python3` may find a python3 without etcd
        assert spec.is_command and spec.command == (HELPER_PYTHON, HELPER)


def test_file_lock_stays_the_default():
    config = node_config("ctdb", 0)
    assert "etcd" not in config.ctdb_files
    conf = parse_ctdb_conf(config.ctdb_files["ctdb.conf"], "ctdb.conf")
    assert conf.cluster_lock == str(SHARED / ".ctdb" / "reclock")
    assert isinstance(get_launcher("pyctdbd").lock, FileLock)


def test_bad_choices_are_clear_errors():
    with pytest.raises(UserError, match="unknown cluster lock 'zk'"):
        get_lab_lock("zk")
    with pytest.raises(UserError, match="keepalived takes no cluster lock"):
        get_launcher("keepalived", lock=EtcdLock())
    assert get_launcher("keepalived", lock=FileLock()).name == "keepalived"


def test_pyctdbd_backs_off_only_with_a_command_helper():
    tunables = Tunables()
    etcd_conf = parse_ctdb_conf(node_config("pyctdbd", 0, EtcdLock()).ctdb_files["ctdb.conf"])
    file_conf = parse_ctdb_conf(node_config("pyctdbd", 0).ctdb_files["ctdb.conf"])
    with_etcd = node_settings(tunables, etcd_conf, lock_enabled=True, wall_offset=0.0)
    with_file = node_settings(tunables, file_conf, lock_enabled=True, wall_offset=0.0)
    assert with_etcd.election.lock_retry_max == etcd_conf.leader_timeout
    assert with_file.election.lock_retry_max is None


def test_lock_holder_is_the_pnn_of_the_lowest_key():
    listing = {"action": "get", "node": {"key": lock_keys_path(), "dir": True, "nodes": [
        {"key": f"{lock_keys_path()}/00000000000000000031", "value": "bb_0", "ttl": 3},
        {"key": f"{lock_keys_path()}/00000000000000000008", "value": "c9a9_2", "ttl": 3}]}}
    assert lock_keys_path() == "/_locks/_ctdb/CTDBLAB"
    assert parse_lock_holder(json.dumps(listing)) == 2
    listing["node"]["nodes"] = []
    assert parse_lock_holder(json.dumps(listing)) is None
    with pytest.raises(ValueError, match="not an etcd v2 answer"):
        parse_lock_holder("<html>")
    listing["node"]["nodes"] = [{"key": f"{lock_keys_path()}/1", "value": "nopnn"}]
    with pytest.raises(ValueError, match="not <uuid>_<pnn>"):
        parse_lock_holder(json.dumps(listing))


def test_down_removes_the_data_directories(tmp_path):
    for name in ("cx9n1", "cx9n2"):
        (tmp_path / "nodes" / name / "durable" / "etcd" / "member").mkdir(parents=True)
    (tmp_path / "nodes" / "cx9n3" / "durable" / "ctdb").mkdir(parents=True)
    assert remove_data_under(tmp_path) == 2
    assert not list(tmp_path.glob("nodes/*/durable/etcd"))
    assert (tmp_path / "nodes" / "cx9n3" / "durable" / "ctdb").is_dir()


def test_cli_takes_the_lock_option():
    parser = build_parser()
    assert parser.parse_args(["up", "--lock", "etcd"]).lock == "etcd"
    assert parser.parse_args(["up"]).lock == "file"
    assert parser.parse_args(["run", "soak", "--lock", "etcd", "--out", "x"]).lock == "etcd"
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--lock", "zk"])


def test_scenarios_without_the_option_refuse_it(tmp_path):
    from ctdblab.scenarios import run_scenario

    with pytest.raises(UserError, match="failover and soak"):
        run_scenario("scaling", daemon="ctdb", nodes=[1, 2], repeat=1, tunables="default",
                     out=tmp_path, progress=print, lock="etcd")
    assert not (tmp_path / "results.json").exists()
