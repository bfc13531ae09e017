"""load_config: all four files together, errors collected from all of them."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ctdblab.daemon.config import (
    ClusterLock,
    ConfigError,
    ConfigErrors,
    DaemonConfig,
    LogLocation,
    Paths,
    load_config,
)


def write_tree(etc: Path, tmp: Path, *, conf: str | None = None, nodes: str | None = "198.18.0.1\n198.18.0.2\n",
               public: str | None = None, tunables: str | None = None, home: str | None = None) -> None:
    etc.mkdir(exist_ok=True)
    if conf is None:
        conf = (f"[logging]\nlocation = file:{tmp}/log.ctdb\n[cluster]\ncluster lock = {tmp}/reclock\n"
                f"[database]\nvolatile database directory = {tmp}\npersistent database directory = {tmp}\n"
                f"state database directory = {tmp}\n")
    for name, text in (("ctdb.conf", conf), ("nodes", nodes), ("public_addresses", public),
                       ("ctdb.tunables", tunables), ("home_nodes", home)):
        if text is not None:
            (etc / name).write_text(text)


def test_complete_tree(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, public="198.19.8.1/20 n1-eth1\n# c\n198.19.8.2/20 n1-eth1 extra\n",
               tunables="KeepaliveInterval=1\nDeadTimeoutMs=200\n", home="198.19.8.1 1\n")
    config = load_config(str(etc), env={})
    assert isinstance(config, DaemonConfig)
    assert config.paths.nodes_file == f"{etc}/nodes"
    assert config.log_location == LogLocation("file", path=f"{tmp_path}/log.ctdb")
    assert config.cluster_lock == ClusterLock(f"{tmp_path}/reclock", lock_file=f"{tmp_path}/reclock")
    assert [str(n.address) for n in config.nodes] == ["198.18.0.1", "198.18.0.2"]
    assert [str(p.ip) for p in config.public_addresses] == ["198.19.8.1", "198.19.8.2"]
    assert config.home_nodes == {IPv4Address("198.19.8.1"): 1}
    assert config.tunables.get("KeepaliveInterval") == 1 and config.tunables.get("DeadTimeoutMs") == 200
    assert any("extra" in warning for warning in config.warnings)
    assert config.my_node(["198.18.0.2"]).pnn == 1
    with pytest.raises(ConfigError):
        config.my_node(["198.18.9.9"])


def test_only_a_nodes_file_is_required(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "nodes").write_text("198.18.0.1\n")
    config = load_config(str(etc), env={}, check_filesystem=False)
    assert config.conf.log_level_name == "NOTICE" and config.cluster_lock is None
    assert config.public_addresses == () and config.home_nodes == {}
    assert config.tunables.changed() == {}


def test_node_address_picks_the_entry(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, conf="[cluster]\nnode address = 198.18.0.2\n")
    config = load_config(str(etc), env={}, check_filesystem=False)
    assert config.my_node(["198.18.0.1", "198.18.0.2"]).pnn == 1


def test_errors_from_every_file_are_collected(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, conf="[logging]\nlog level = LOUD\n[cluster]\ncluster lock = !\n",
               nodes="198.18.0.1\n198.18.0.300\n", public="198.19.8.1/20\n",
               tunables="NoSuch=1\n", home="x 1\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    text = str(info.value)
    assert f"{etc}/ctdb.conf:2: [logging] log level = 'LOUD'" in text
    assert f"{etc}/nodes:2: '198.18.0.300' is not an IP address" in text
    assert f"{etc}/public_addresses:1: no interface given" in text
    assert f"{etc}/ctdb.tunables:1: unknown tunable 'NoSuch'" in text
    assert f"{etc}/home_nodes:1: 'x' is not an IP address" in text
    assert len(info.value.errors) == 5  # a bad ctdb.conf hides its cluster lock problem


def test_empty_cluster_lock_command(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, conf="[cluster]\n\ncluster lock = !\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    assert str(info.value).startswith(f"{etc}/ctdb.conf:3: [cluster] cluster lock: ")


def test_missing_nodes_file_and_empty_nodes(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, nodes=None)
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    assert "cannot read nodes file" in str(info.value)
    (etc / "nodes").write_text("#198.18.0.1\n\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    assert "no (undeleted) nodes" in str(info.value)


def test_filesystem_checks_at_startup(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, conf=f"[database]\nstate database directory = {tmp_path}/gone\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={})
    assert f"{tmp_path}/gone" in str(info.value) and info.value.line == 2


def test_strict_and_not_strict(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path, conf="[pyctdbd]\nfoo = 1\n")
    with pytest.raises(ConfigError):
        load_config(str(etc), env={}, check_filesystem=False)
    config = load_config(str(etc), env={}, check_filesystem=False, strict=False)
    assert any("unknown section [pyctdbd]" in warning for warning in config.warnings)
    write_tree(etc, tmp_path, conf="", tunables="KeepaliveInterval=2\nNoSuch=1\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    assert info.value.line == 2
    config = load_config(str(etc), env={}, check_filesystem=False, strict=False)
    assert config.tunables.get("KeepaliveInterval") == 2
    assert f"{etc}/ctdb.tunables:2: unknown tunable 'NoSuch' (ignored)" in config.warnings


def test_nodes_list_file_and_command(tmp_path):
    etc = tmp_path / "etc"
    (tmp_path / "other-nodes").write_text("198.18.0.7\n")
    write_tree(etc, tmp_path, conf=f"[cluster]\nnodes list = {tmp_path}/other-nodes\n")
    config = load_config(str(etc), env={}, check_filesystem=False)
    assert [str(n.address) for n in config.nodes] == ["198.18.0.7"]
    assert config.nodes_source == f"{tmp_path}/other-nodes"

    write_tree(etc, tmp_path, conf="[cluster]\nnodes list = !/usr/bin/list-nodes  --all\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False)
    assert "run_command" in str(info.value)
    seen = []

    def runner(argv):
        seen.append(tuple(argv))
        return "198.18.0.8\n#198.18.0.9\n198.18.0.10\n"

    config = load_config(str(etc), env={}, check_filesystem=False, run_command=runner)
    assert seen == [("/usr/bin/list-nodes", "--all")]
    assert [n.pnn for n in config.nodes if not n.deleted] == [0, 2]

    def failing(argv):
        raise OSError("exit status 1")

    with pytest.raises(ConfigError) as info:
        load_config(str(etc), env={}, check_filesystem=False, run_command=failing)
    assert "nodes list command failed" in str(info.value)


def test_explicit_paths_and_env(tmp_path):
    etc = tmp_path / "etc"
    write_tree(etc, tmp_path)
    paths = Paths.from_env({}, etc_dir=str(etc))
    assert load_config(paths=paths).paths is paths
    config = load_config(env={"CTDB_TEST_MODE": "1", "CTDB_BASE": str(etc)})
    assert config.paths.test_mode and len(config.nodes) == 2
    with pytest.raises(ConfigError):
        load_config(env={"CTDB_TEST_MODE": "1"})
