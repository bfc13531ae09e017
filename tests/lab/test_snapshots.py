"""Snapshots and offline files seen through every node, before and after a failover.

A 3-node cluster (pyctdbd, and real ctdbd as the reference) serves ``[snap]`` (vfs shadow_copy2
+ offline, cluster/snapshots.py) from the shared "cluster filesystem" directory.  The test writes
a file, snapshots the share, rewrites the file in place, snapshots again, rewrites it once more;
then through every public IP a client (scenarios/snapshot_views.py; also before the first
snapshot, when the list is empty) must see:

- the same snapshot list, newest first, both from FSCTL_SRV_ENUMERATE_SNAPSHOTS and from
  smbclient's ``allinfo``;
- the file's content at each snapshot equal to what it was when that snapshot was taken (opened
  by smbprotocol with a timewarp token, and fetched by smbclient from ``@GMT-.../NAME``), and the
  live content now;
- FILE_ATTRIBUTE_OFFLINE on the live file (CREATE response and directory listing) and on every
  previous version;
- exactly the same view through every IP;
- and, as a control, no OFFLINE on a file of ``[share]`` (no vfs offline there).

Then one node is powered off (the lab's hard reset), its IP moves, a third snapshot is taken,
and everything is checked again through every IP, the moved one included; the node is powered
on, rejoins, and everything is checked once more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ctdblab.cluster.samba import SHARE, SMB_PASSWORD
from ctdblab.cluster.snapshots import (FILE_ATTRIBUTE_OFFLINE, SnapshotLayout,
                                       missing_vfs_modules, take_snapshot)
from ctdblab.scenarios.snapshot_views import ClientView, client_attributes, client_view

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

FILE = "report.txt"
VICTIM = 1
DAEMONS = ["pyctdbd", "ctdb"]       # ctdb: the reference


def rewrite_in_place(path: Path, text: str) -> None:
    """Same inode, new content (as an editor saving over the file would through SMB)."""
    with open(path, "r+", encoding="utf-8") as f:
        f.truncate(0)
        f.write(text)


def views_through_every_ip(cluster) -> dict[str, ClientView]:
    return {ip: client_view(cluster.client(0), ip, FILE, password=SMB_PASSWORD)
            for ip in cluster.public_ips()}


def check_views(views: dict[str, ClientView], expected_versions: dict[str, str], live: str,
                when: str) -> None:
    newest_first = sorted(expected_versions, reverse=True)
    for ip, view in views.items():
        where = f"{when}, through {ip}"
        assert view.snapshots == newest_first, f"{where}: FSCTL snapshot list {view.snapshots}"
        assert view.allinfo_snapshots == newest_first, \
            f"{where}: smbclient allinfo lists {view.allinfo_snapshots}"
        assert view.content == live, f"{where}: live content {view.content!r}"
        assert view.offline, f"{where}: live file attributes {view.attributes:#x} lack OFFLINE"
        assert view.listed_attributes & FILE_ATTRIBUTE_OFFLINE, \
            f"{where}: listed attributes {view.listed_attributes:#x} lack OFFLINE"
        for token, content in expected_versions.items():
            version = view.versions[token]
            assert "error" not in version, f"{where}: opening {token}: {version.get('error')}"
            assert version["content"] == content, f"{where}: {token} has {version['content']!r}"
            assert version["attributes"] & FILE_ATTRIBUTE_OFFLINE, \
                f"{where}: {token} attributes {version['attributes']:#x} lack OFFLINE"
        assert view.smbclient_versions == expected_versions, \
            f"{where}: smbclient got {view.smbclient_versions} from the @GMT paths"
    first_ip, first = next(iter(views.items()))
    for ip, view in views.items():
        assert view.comparable() == first.comparable(), \
            f"{when}: {ip} sees {view.comparable()}, {first_ip} sees {first.comparable()}"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_snapshots_and_offline_identical_through_every_node_and_after_failover(lab_cluster, daemon):
    missing = missing_vfs_modules()
    if missing:
        pytest.skip(f"smbd cannot load {', '.join(missing)}: install samba-vfs-modules "
                    "(./ctdblab.sh does it)")
    cluster = lab_cluster(3, daemon=daemon, tunables="aggressive")
    layout = SnapshotLayout(cluster.shared_dir)
    path = layout.share_dir / FILE

    path.write_text("version 1: before the first snapshot\n", encoding="utf-8")
    check_views(views_through_every_ip(cluster), {}, path.read_text(encoding="utf-8"),
                "before any snapshot")
    # Control: the same file on [share] (no vfs offline) is not offline.
    (cluster.shared_dir / SHARE / FILE).write_text("plain\n", encoding="utf-8")
    plain = client_attributes(cluster.client(0), cluster.public_ips()[0], FILE, share=SHARE,
                              password=SMB_PASSWORD)
    assert plain["content"] == "plain\n"
    assert not plain["attributes"] & FILE_ATTRIBUTE_OFFLINE, f"[{SHARE}]: {plain}"
    assert not plain["listed_attributes"] & FILE_ATTRIBUTE_OFFLINE, f"[{SHARE}]: {plain}"

    versions = {take_snapshot(layout): path.read_text(encoding="utf-8")}
    rewrite_in_place(path, "version 2: between the snapshots, a little longer\n")
    versions[take_snapshot(layout)] = path.read_text(encoding="utf-8")
    live = "version 3: live\n"
    rewrite_in_place(path, live)
    assert layout.snapshots() == sorted(versions, reverse=True)

    check_views(views_through_every_ip(cluster), versions, live, "before the failover")

    moved = sorted(ip for ip, pnn in cluster.ip_all().items() if pnn == VICTIM)
    assert moved, f"node {VICTIM} hosts no public IP before the failover"
    cluster.power_off(VICTIM)
    survivor = next(n.index for n in cluster.nodes if n.index != VICTIM)

    def ips_moved() -> bool:
        try:
            owners = cluster.ip_all(survivor)
        except Exception:
            return False
        return all(owners.get(ip, -1) not in (-1, VICTIM) for ip in cluster.public_ips())

    moved_after = cluster.wait_until(ips_moved, 60,
                                     f"node {VICTIM}'s IPs {moved} hosted by the survivors")
    versions[take_snapshot(layout)] = live
    check_views(views_through_every_ip(cluster), versions, live,
                f"after powering off node {VICTIM} (moved: {', '.join(moved)})")

    cluster.power_on(VICTIM)
    rejoined_after = cluster.wait_healthy(timeout=120)
    # Healthy is not settled: the rejoined node gets its IP back at a takeover run that may come
    # later, and a view under way through that IP is then reset (seen once with real ctdbd).
    cluster.ip_per_node(timeout=60)
    final = views_through_every_ip(cluster)
    check_views(final, versions, live, f"after node {VICTIM} was powered on again")
    print(f"{daemon}: {len(versions)} snapshots identical through {len(final)} IPs; "
          f"{', '.join(moved)} moved {moved_after:.1f} s after the power-off; "
          f"node {VICTIM} healthy {rejoined_after:.1f} s after the power-on")
