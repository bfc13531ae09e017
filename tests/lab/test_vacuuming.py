"""Vacuuming with clustered Samba on pyctdbd: the tombstones smbd leaves when files are opened
and closed through every node are deleted cluster-wide within a few VacuumIntervals, and the
files stay intact."""

from __future__ import annotations

import time

from ctdblab.cluster.samba import SHARE, SMB_PASSWORD, SMB_USER

DATABASES = ("locking.tdb", "brlock.tdb", "smbXsrv_open_global.tdb")


def records(cluster, pnn: int) -> dict[str, int]:
    """Records (tombstones included) in each database's file on node `pnn`."""
    script = ("for f in " + " ".join(f"/var/lib/ctdb/volatile/{db}.{pnn}" for db in DATABASES)
              + '; do [ -e "$f" ] && echo "$(basename $f) $(tdbdump $f | grep -c "^key")"; done')
    out = cluster.node(pnn).run(["bash", "-c", script], timeout=30).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines() if line.strip()}


def test_tombstones_of_opened_and_deleted_files_are_vacuumed_everywhere(lab_cluster):
    cluster = lab_cluster(3, daemon="pyctdbd", tunables="aggressive")   # clustered smbd
    client = cluster.client(0)
    ips = sorted(cluster.ip_all(0))
    for ip in ips:
        commands = "".join(f"put /etc/hostname f-{ip}-{i}; " for i in range(30))
        commands += "".join(f"del f-{ip}-{i}; " for i in range(0, 30, 2))
        result = client.run(["smbclient", f"//{ip}/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}",
                             "-c", commands], timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    before = {p: records(cluster, p) for p in range(3)}
    churned = sum(n for counts in before.values() for n in counts.values())
    assert churned > 100, before            # smbd left tombstones to vacuum

    # VacuumInterval is 10 s: two runs (the dmaster's, then the lmaster's) and some slack.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        after = {p: records(cluster, p) for p in range(3)}
        if sum(n for counts in after.values() for n in counts.values()) <= 3:
            break
        time.sleep(2)
    print(f"\nrecords before {before}\nafter {after}")
    assert sum(n for counts in after.values() for n in counts.values()) <= 3, after
    # The 45 files that were not deleted are all there, through every node.
    for ip in ips:
        listing = client.run(["smbclient", f"//{ip}/{SHARE}", "-U", f"{SMB_USER}%{SMB_PASSWORD}",
                              "-c", "ls f-*"], timeout=60).stdout
        assert sum(1 for line in listing.splitlines() if line.strip().startswith("f-")) == 45
