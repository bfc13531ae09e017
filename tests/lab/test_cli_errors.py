"""Bad input gets one clear line (`ctdblab: ...`, exit 2) and leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CTDBLAB = [sys.executable, "-m", "ctdblab"]


def run_cli(args, tmp_path, env=None):
    # A private slot registry: building any network must take a slot there first, so an empty
    # registry afterwards proves nothing was built (machine-wide link lists would race with
    # other pytest-xdist workers that build clusters at the same time).
    state = tmp_path / "state"
    env = {**(env or os.environ), "CTDBLAB_STATE_DIR": str(state)}
    result = subprocess.run([*CTDBLAB, *args], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("ctdblab: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists(), "an output directory was created for a bad run"
    assert not state.exists() or not any(state.iterdir()), "a lab slot was taken"
    return lines[0]


@pytest.mark.parametrize("args, expect", [
    (["run", "failovr", "--out", "out"], "unknown scenario"),
    (["run", "failover", "--nodes", "0", "--out", "out"], "--nodes"),
    (["run", "failover", "--nodes", "1", "--out", "out"], "at least 2 nodes"),
    (["run", "failover", "--nodes", "1..3", "--out", "out"], "one node count"),
    (["run", "scaling", "--nodes", "4..2", "--out", "out"], "--nodes"),
    (["run", "scaling", "--nodes", "1..200", "--out", "out"], "between 1 and"),
    (["run", "failover", "--victim", "7", "--out", "out"], "no such node"),
    (["run", "failover", "--tunables", "fastest", "--out", "out"], "unknown tunables profile"),
    (["run", "failover", "--link", "delay=5ms", "--out", "out"], "netem"),
    (["run", "failover", "--link", "loss=10", "--out", "out"], "netem"),
    (["run", "scaling", "--bw", "5000", "--nodes", "1..2", "--out", "out"], "bandwidth"),
    (["up", "--nodes", "99"], "between 1 and"),
    (["up", "--link", "jitter=1ms"], "netem"),
    (["exec", "abc", "--", "true"], "target must be"),
    (["report", "missing-dir"], ""),
])
def test_bad_input_is_one_clear_line(tmp_path, args, expect):
    line = run_cli(args, tmp_path)
    assert expect in line


def test_missing_package_is_named(tmp_path):
    # A PATH that has every lab tool but ctdbd: as if the ctdb package were not installed.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("mnexec", "brctl", "ip", "tc", "nft", "ping", "tcpdump", "ss", "ctdb", "smbd",
                 "smbpasswd"):
        (bindir / tool).symlink_to(shutil.which(tool))
    line = run_cli(["run", "failover", "--daemon", "ctdb", "--out", "out"], tmp_path,
                   env={**os.environ, "PATH": str(bindir)})
    assert "ctdbd" in line and "install" in line


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_not_root_is_refused(tmp_path):
    tmp_path.chmod(0o777)
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *CTDBLAB, "run", "failover", "--out", "out"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "ctdblab: the lab must run as root (it builds network namespaces)"
    assert not Path(tmp_path / "out").exists()
