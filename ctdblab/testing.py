"""pytest support for lab tests and CI failover regressions (a pytest plugin).

Loaded automatically where ctdblab is installed (entry point ``pytest11``).  It gives:

``@pytest.mark.lab``        a test that needs root and Mininet; skipped with the reason when the
                            machine cannot run the lab (not root, no Mininet).
``lab_cluster`` fixture     a factory: ``lab_cluster(nodes=3, daemon="ctdb",
                            tunables="aggressive")`` returns a started LabCluster and tears it
                            down after the test, also when the test fails (or fails to start).
                            Further keywords go to LabCluster, e.g. ``clustered_smbd=True``
                            (smbd with ``clustering = yes`` also on pyctdbd).
``lab_network`` fixture     the same for a bare network without daemons (MininetCluster).
``assert_thresholds``       fail a test when a scenario's figures exceed a thresholds table.

Every cluster takes its own slot (subnets, name prefix) from cluster/registry.py, so tests are
safe under pytest-xdist: workers never share names or addresses.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root"
    if shutil.which("mnexec") is None:
        return "lab tests need Debian's mininet package"
    try:
        import mininet.node  # noqa: F401
    except ImportError:
        return "lab tests need Python to import mininet (venv with --system-site-packages)"
    return None


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "lab: needs root and Mininet; builds network namespaces")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    reason = lab_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab_cluster(tmp_path):
    from ctdblab.cluster.lab import LabCluster

    started = []

    def make(nodes: int = 3, *, daemon: str = "ctdb", tunables: str = "aggressive",
             clients: int = 1, **kwargs) -> LabCluster:
        cluster = LabCluster(nodes, daemon=daemon, tunables=tunables, clients=clients,
                             workdir=tmp_path / f"cluster{len(started)}", **kwargs)
        started.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


@pytest.fixture
def lab_network(tmp_path):
    from ctdblab.cluster.mininet_backend import MininetCluster

    built = []

    def make(nodes: int = 2, clients: int = 1, **kwargs) -> MininetCluster:
        net = MininetCluster(nodes, clients, workdir=tmp_path / f"net{len(built)}", **kwargs)
        built.append(net)
        net.build()
        return net

    yield make
    for net in built:
        net.teardown()


def assert_thresholds(results: dict[str, Any], table: dict[str, Any]) -> None:
    from .thresholds import check

    violations = check(results, table)
    assert not violations, "regression: " + "; ".join(violations)
