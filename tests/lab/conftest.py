"""Fixtures for lab tests: root, Mininet, a slot of our own per xdist worker.

Every fixture tears its network down even when the test fails; slots (subnets and name
prefixes) come from cluster/registry.py, so parallel workers never collide.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ctdblab.cluster.mininet_backend import MininetCluster


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    if shutil.which("mnexec") is None:
        return "lab tests need Debian's mininet package"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _lab_unavailable()
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def bare_network(tmp_path):
    """A factory for networks without daemons: ``bare_network(nodes, clients)``."""
    built = []

    def make(nodes: int = 2, clients: int = 1, **kwargs) -> MininetCluster:
        net = MininetCluster(nodes, clients, workdir=tmp_path / f"net{len(built)}", **kwargs)
        built.append(net)
        net.build()
        return net

    yield make
    for net in built:
        net.teardown()
