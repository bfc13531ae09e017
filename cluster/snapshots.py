"""Snapshots and offline files in the lab: the ``[snap]`` share, lab-made snapshots, and what a
client sees of them through one public IP.

Every node exports ``<shared>/snap`` as ``[snap]`` with ``vfs objects = shadow_copy2 offline``
(Debian's samba-vfs-modules):

- ``shadow_copy2`` serves previous versions from ``<shared>/.snapshots/@GMT-YYYY.MM.DD-HH.MM.SS``
  (``shadow:snapdir`` absolute, ``shadow:basedir`` = the share's directory, so a snapshot holds
  the share's files at their own relative paths; names in UTC, ``shadow:localtime = no``; listed
  newest first, ``shadow:sort = desc``, as Windows expects).
- ``offline`` reports FILE_ATTRIBUTE_OFFLINE (0x1000) on every file of the share.

The order puts shadow_copy2 on top: it maps a previous version (a timewarp token or ``@GMT-``
path) to the snapshot's file, and offline below it, which only ORs the attribute into whatever
file it is asked about, marks live files and previous versions alike (the lab test sees 0x1000 on
both).  A share of its own, always configured, rather than modules on ``[share]``: ``[share]``
and ``[nolock]`` stay exactly as the other scenarios measured them, and smbd loads the modules
only when a client connects to ``[snap]`` (smbd_vfs_init in make_connection_snum).

Both modules sit on the same host directory every node sees (the lab's "cluster filesystem"),
so every node must serve the same versions and attributes.  The lab makes a snapshot by copying
the share's directory into the snapdir (:func:`take_snapshot`); real blades would take it with
the cluster filesystem's own snapshots (GPFS, btrfs, LVM) and point ``shadow:snapdir`` at them.
A copy, not hard links: a hard-linked "snapshot" would change whenever the live file is
rewritten in place.

What a client sees of them through one IP: scenarios/snapshot_views.py.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SNAP_SHARE = "snap"
SNAPSHOT_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"       # shadow_copy2's default, in UTC
FILE_ATTRIBUTE_OFFLINE = 0x1000
VFS_MODULES = ("shadow_copy2", "offline")        # top of the stack first (smb.conf order)


class SnapshotError(RuntimeError):
    pass


@dataclass(frozen=True)
class SnapshotLayout:
    """Where the ``[snap]`` share and its snapshots live under the cluster's shared directory."""

    shared_dir: Path

    @property
    def share_dir(self) -> Path:
        return self.shared_dir / SNAP_SHARE

    @property
    def snapdir(self) -> Path:
        return self.shared_dir / ".snapshots"

    def create(self) -> None:
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.snapdir.mkdir(parents=True, exist_ok=True)

    def smb_conf_section(self) -> str:
        return f"""
[{SNAP_SHARE}]
    path = {self.share_dir}
    read only = no
    guest ok = yes
    create mask = 0644
    vfs objects = {" ".join(VFS_MODULES)}
    shadow:snapdir = {self.snapdir}
    shadow:basedir = {self.share_dir}
    shadow:format = {SNAPSHOT_FORMAT}
    shadow:localtime = no
    shadow:sort = desc
"""

    def snapshots(self) -> list[str]:
        """The snapshot names in the snapdir, newest first (as shadow:sort = desc lists them)."""
        if not self.snapdir.is_dir():
            return []
        names = [p.name for p in self.snapdir.iterdir() if p.is_dir() and parse_name(p.name)]
        return sorted(names, reverse=True)


def snapshot_name(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime(SNAPSHOT_FORMAT)


def parse_name(name: str) -> datetime | None:
    """The UTC time of a snapshot name, or None if it is not one."""
    try:
        return datetime.strptime(name, SNAPSHOT_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def take_snapshot(layout: SnapshotLayout, when: datetime | None = None) -> str:
    """Copy the share's directory into a new ``@GMT-...`` snapshot; returns its name.

    Names have one-second resolution: without ``when`` the snapshot gets the current second, or
    the second after the newest snapshot if that one already has it (a name is never reused).
    """
    if not layout.share_dir.is_dir():
        raise SnapshotError(f"{layout.share_dir} does not exist (is the cluster up?)")
    if when is None:
        when = datetime.now(timezone.utc).replace(microsecond=0)
        existing = [parse_name(n) for n in layout.snapshots()]
        if existing and existing[0] >= when:
            when = existing[0] + timedelta(seconds=1)
    name = snapshot_name(when)
    target = layout.snapdir / name
    if target.exists():
        raise SnapshotError(f"snapshot {target} exists already")
    layout.snapdir.mkdir(parents=True, exist_ok=True)
    partial = layout.snapdir / f".partial-{name}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(layout.share_dir, partial, symlinks=True)
    partial.rename(target)        # appears whole: smbd never lists a half-copied snapshot
    return name


def missing_vfs_modules() -> list[str]:
    """The VFS modules of ``[snap]`` this machine's smbd cannot load (samba-vfs-modules)."""
    try:
        out = subprocess.run(["smbd", "-b"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return list(VFS_MODULES)
    modules_dir = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                        if line.strip().startswith("MODULESDIR:")), None)
    if modules_dir is None:
        return list(VFS_MODULES)
    return [m for m in VFS_MODULES if not (Path(modules_dir) / "vfs" / f"{m}.so").exists()]
