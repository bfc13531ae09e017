"""Samba in the lab: the per-node smb.conf, the SMB user, the shared test files.

Every node exports the same host directory (the "cluster filesystem") as ``[share]``, and the
same directory once more as ``[nolock]`` with ``posix locking = no``: there a byte-range lock
lives in brlock.tdb only (no fcntl lock on the file), so a conflict between two nodes can only
come from the clustered database.  smbd runs clustered by default with either daemon (its
databases live in the daemon); ``clustered_smbd=False`` runs it standalone, each node with its
own passdb.  A third share, ``[snap]``, serves snapshots and offline files (snapshots.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from .snapshots import SnapshotLayout

SMB_USER = "root"
SMB_PASSWORD = "ctdblab-Pass1"
SHARE = "share"
SHARE_NO_POSIX_LOCKING = "nolock"      # [share]'s directory, byte-range locks in brlock.tdb only
NETBIOS_NAME = "CTDBLAB"
WORKGROUP = "CTDBLAB"


def smb_conf(share_path: Path, *, clustered: bool, snapshots: SnapshotLayout | None = None) -> str:
    """smb.conf of a node; with ``snapshots`` it also has the ``[snap]`` share."""
    # Paths stay at Samba's defaults: inside a node they are the node's own (see node.py).
    return f"""# written by ctdblab
[global]
    clustering = {"yes" if clustered else "no"}
    netbios name = {NETBIOS_NAME}
    workgroup = {WORKGROUP}
    server role = standalone server
    security = user
    passdb backend = tdbsam
    map to guest = Bad User
    disable netbios = yes
    smb ports = 445
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    log file = /var/log/samba/log.%m
    max log size = 0
    log level = 1
    server signing = auto
    server min protocol = SMB2_02

[{SHARE}]
    path = {share_path}
    read only = no
    guest ok = yes
    create mask = 0644

[{SHARE_NO_POSIX_LOCKING}]
    path = {share_path}
    read only = no
    guest ok = yes
    create mask = 0644
    posix locking = no
""" + (snapshots.smb_conf_section() if snapshots is not None else "")


def add_user_command() -> list[str]:
    """Run inside a node (stdin: the password twice) to add the SMB user to its passdb."""
    return ["smbpasswd", "-s", "-a", SMB_USER]


def add_user_input() -> str:
    return f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n"


def ensure_test_file(share_dir: Path, name: str, size: int) -> Path:
    """A file of pseudo-random (not trivially compressible) bytes in the share, made once."""
    path = share_dir / name
    if path.exists() and path.stat().st_size == size:
        return path
    tmp = path.with_suffix(".tmp")
    chunk = 1 << 20
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    tmp.replace(path)
    return path
