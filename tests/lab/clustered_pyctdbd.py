"""What the lab tests of pyctdbd's recovery share: a 3-node pyctdbd cluster with clustered smbd
and one client, and the stock ctdb tool run on a node with its failure as the assertion."""

from __future__ import annotations

from collections.abc import Iterator

from ctdblab.cluster.lab import LabCluster


def clustered_cluster(tmp_path_factory, name: str) -> Iterator[LabCluster]:
    """For a module-scoped fixture: ``yield from clustered_cluster(tmp_path_factory, "x")``."""
    with LabCluster(3, daemon="pyctdbd", clients=1, workdir=tmp_path_factory.mktemp(name),
                    clustered_smbd=True) as lab:
        yield lab


def ctdb_ok(cluster: LabCluster, pnn: int, *args: str) -> str:
    result = cluster.ctdb(pnn, *args)
    assert result.returncode == 0, f"ctdb {' '.join(args)} on node {pnn}: {result.stderr.strip()}"
    return result.stdout
