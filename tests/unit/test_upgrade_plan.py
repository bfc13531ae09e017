"""The rolling upgrade's generator, its builds and its command-line checks."""

from __future__ import annotations

import subprocess

import pytest

from ctdblab.cluster.builds import (Build, InstalledBuildLauncher, bumped, installed_version,
                                    prepare_builds, set_tree_version, tree_version)
from ctdblab.errors import UserError
from ctdblab.events import UPGRADE_PHASES, upgrade_phase
from ctdblab.scenarios import run_scenario
from ctdblab.scenarios.upgrade_plan import STEP_PHASES, make_plan, parse_order


def test_one_step_per_node_in_pnn_order_with_every_phase():
    plan = make_plan(3)
    assert [(s.index, s.node) for s in plan] == [(0, 0), (1, 1), (2, 2)]
    assert all(s.phases == ("disable", "stop", "install", "start", "enable", "settle") for s in plan)
    assert set(STEP_PHASES) | {"step"} == set(UPGRADE_PHASES)
    assert plan[1].as_dict() == {"index": 1, "node": 1, "phases": list(STEP_PHASES)}


@pytest.mark.parametrize("spec, order", [("pnn", [0, 1, 2, 3]), ("reverse", [3, 2, 1, 0]),
                                         ("2,0,3,1", [2, 0, 3, 1])])
def test_orders(spec, order):
    assert parse_order(spec, 4) == order
    assert [s.node for s in make_plan(4, spec)] == order


@pytest.mark.parametrize("spec", ["0,1", "0,1,1", "0,1,3", "x", ""])
def test_bad_orders_are_refused(spec):
    with pytest.raises(UserError, match="--order"):
        parse_order(spec, 3)


def test_one_node_cannot_be_upgraded_online():
    with pytest.raises(UserError, match="at least 2 nodes"):
        make_plan(1)


def test_phase_events_are_checked():
    assert upgrade_phase(1, "stop", "begin", t=1.0)["kind"] == "upgrade"
    with pytest.raises(ValueError):
        upgrade_phase(1, "reboot", "begin")
    with pytest.raises(ValueError):
        upgrade_phase(1, "stop", "middle")


def test_version_bumps():
    assert bumped("0.1.0") == "0.1.0.post1"
    assert bumped("0.1.0.post1") == "0.1.0.post2"


def test_set_tree_version(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.2"\n')
    set_tree_version(tmp_path, "1.2.post1")
    assert tree_version(tmp_path) == "1.2.post1"


def test_two_builds_of_the_working_tree_differ_by_version_only(tmp_path):
    old, new = prepare_builds(tmp_path / "builds")
    assert old.version != new.version and new.version == bumped(old.version)
    assert old.revision == new.revision == "working tree"
    for build in (old, new):
        assert installed_version(build.root) == build.version
        assert (build.root / "lib" / "pyctdbd" / "pyctdbd" / "main.py").exists()
        assert build.executable.stat().st_mode & 0o111
        # the installed launcher runs the build's own package
        result = subprocess.run([str(build.executable), "--help"], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0 and "pyctdbd" in result.stdout
    with pytest.raises(UserError, match="exists already"):
        prepare_builds(tmp_path / "builds")


def test_a_revision_that_does_not_exist_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a git revision"):
        prepare_builds(tmp_path / "builds", from_rev="no-such-revision-xyz")


class _Node:
    def __init__(self, name):
        self.name = name


def test_each_node_starts_the_build_installed_on_it(tmp_path):
    old = Build("from", "1", "working tree", tmp_path / "from-1")
    new = Build("to", "2", "working tree", tmp_path / "to-2")
    launcher = InstalledBuildLauncher(old)
    a, b = _Node("n1"), _Node("n2")
    launcher.install(b, new)
    assert launcher.start_command_for(a) == [str(old.executable)]
    assert launcher.start_command_for(b) == [str(new.executable)]
    assert launcher.installed(b) is new and launcher.name == "pyctdbd"


@pytest.mark.parametrize("kwargs, message", [
    (dict(nodes=[1]), "at least 2 nodes"),
    (dict(nodes=[2, 3]), "one node count"),
    (dict(nodes=[3], daemon="ctdb", from_rev="HEAD"), "--from/--to"),
    (dict(nodes=[3], repeat=2), "runs once"),
    (dict(nodes=[3], order="0,0,1"), "--order"),
])
def test_bad_upgrade_options_are_refused_before_anything_runs(tmp_path, kwargs, message):
    args = dict(daemon="pyctdbd", repeat=1, tunables="aggressive", out=tmp_path / "out",
                progress=lambda m: None) | kwargs
    with pytest.raises(UserError, match=message):
        run_scenario("upgrade", **args)
    assert not (tmp_path / "out").exists()


def test_from_and_to_belong_to_the_upgrade_only(tmp_path):
    with pytest.raises(UserError, match="upgrade scenario only"):
        run_scenario("failover", daemon="pyctdbd", nodes=[3], repeat=1, tunables="aggressive",
                     out=tmp_path / "out", progress=lambda m: None, to_rev="HEAD")


def test_a_build_from_a_git_revision(tmp_path):
    old, new = prepare_builds(tmp_path / "builds", from_rev="HEAD")
    assert len(old.revision) == 40 and new.revision == "working tree"
    assert installed_version(old.root) == old.version and new.version != old.version
