"""Snapshots and offline files in the lab: the ``[snap]`` share, lab-made snapshots, and what a
client sees of them through one public IP.

Every node exports ``<shared>/snap`` as ``[snap]`` with ``vfs objects = shadow_copy2 offline``
(Debian's samba-vfs-modules):

- ``shadow_copy2`` serves previous versions from ``<shared>/.snapshots/@GMT-YYYY.MM.DD-HH.MM.SS``
  (``shadow:snapdir`` absolute, ``shadow:basedir`` = the share's directory, so a snapshot holds
  the share's files at their own relative paths; names in UTC, ``shadow:localtime = no``; listed
  newest first, ``shadow:sort = desc``, as Windows expects).
- ``offline`` reports FILE_ATTRIBUTE_OFFLINE (0x1000) on every file of the share.

Both modules sit on the same host directory every node sees (the lab's "cluster filesystem"),
so every node must serve the same versions and attributes.  The lab makes a snapshot by copying
the share's directory into the snapdir (:func:`take_snapshot`); real blades would take it with
the cluster filesystem's own snapshots (GPFS, btrfs, LVM) and point ``shadow:snapdir`` at them.
A copy, not hard links: a hard-linked "snapshot" would change whenever the live file is
rewritten in place.

:func:`client_view` runs ``scenarios/probes/snapview.py`` inside a lab client and returns what
that client sees through one IP: the snapshot list (FSCTL_SRV_ENUMERATE_SNAPSHOTS and
smbclient's ``allinfo``), the file's attributes and content now and in every snapshot (opened by
smbprotocol with a timewarp token, and fetched by smbclient from the ``@GMT-.../NAME`` path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SNAP_SHARE = "snap"
SNAPSHOT_FORMAT = "@GMT-%Y.%m.%d-%H.%M.%S"       # shadow_copy2's default, in UTC
FILE_ATTRIBUTE_OFFLINE = 0x1000
VFS_MODULES = ("shadow_copy2", "offline")        # top of the stack first (smb.conf order)
PROBE_MODULE = "ctdblab.scenarios.probes.snapview"


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


@dataclass
class ClientView:
    """What one client saw of one file of ``[snap]`` through one IP."""

    ip: str
    snapshots: list[str]                  # FSCTL_SRV_ENUMERATE_SNAPSHOTS, as the server sent it
    allinfo_snapshots: list[str]          # smbclient `allinfo`, in its order
    smbclient_versions: dict[str, str]    # snapshot -> content smbclient got from @GMT-.../name
    attributes: int                       # of the live file (SMB2 CREATE response)
    listed_attributes: int                # of the live file in a directory listing
    content: str                          # of the live file
    versions: dict[str, dict]             # snapshot -> {"content", "attributes"} or {"error"}

    @property
    def offline(self) -> bool:
        return bool(self.attributes & FILE_ATTRIBUTE_OFFLINE)

    @classmethod
    def from_json(cls, data: dict) -> "ClientView":
        missing = [k for k in cls.__dataclass_fields__ if k not in data]
        if missing:
            raise SnapshotError(f"the probe's view lacks {', '.join(missing)}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def comparable(self) -> dict:
        """Everything but the IP: what must be identical through every node."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "ip"}


def client_view(client, ip: str, name: str, *, password: str, user: str = "root",
                timeout: float = 60.0) -> ClientView:
    """Run the snapview probe inside ``client`` (a lab host) against ``ip``."""
    return ClientView.from_json(_run_probe(client, ip, name, SNAP_SHARE, password, user, timeout))


def client_attributes(client, ip: str, name: str, *, share: str, password: str,
                      user: str = "root", timeout: float = 60.0) -> dict:
    """The live file's ``attributes``, ``listed_attributes`` and ``content`` through ``ip``, on
    any share (no snapshot requests)."""
    return _run_probe(client, ip, name, share, password, user, timeout, "--attributes-only")


def _run_probe(client, ip: str, name: str, share: str, password: str, user: str,
               timeout: float, *extra: str) -> dict:
    cmd = [sys.executable, "-u", "-m", PROBE_MODULE, ip, "--file", name, "--share", share,
           "--user", user, "--password", password, *extra]
    t0 = time.monotonic()
    result = client.run(cmd, timeout=timeout)
    if result.returncode != 0:
        raise SnapshotError(f"snapview through {ip} failed (exit {result.returncode}, "
                            f"{time.monotonic() - t0:.1f} s): "
                            f"{(result.stderr or result.stdout).strip()[-800:]}")
    try:
        view = json.loads(result.stdout)
        if not isinstance(view, dict):
            raise ValueError(f"not an object: {type(view).__name__}")
        return view
    except ValueError as exc:
        raise SnapshotError(f"snapview through {ip} printed no view ({exc}): "
                            f"{result.stdout.strip()[-400:]}") from None
