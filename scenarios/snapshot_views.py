"""What an SMB client sees of ``[snap]`` (cluster/snapshots.py) through one public IP.

:func:`client_view` runs ``scenarios/probes/snapview.py`` inside a lab client and returns a
:class:`ClientView`: the snapshot list (FSCTL_SRV_ENUMERATE_SNAPSHOTS and smbclient's
``allinfo``), the file's attributes and content now and in every snapshot (opened by smbprotocol
with a timewarp token, and fetched by smbclient from the ``@GMT-.../NAME`` path).
:func:`client_attributes` gives the live file's attributes on any share (a control).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from ctdblab.cluster.snapshots import FILE_ATTRIBUTE_OFFLINE, SNAP_SHARE

PROBE_MODULE = "ctdblab.scenarios.probes.snapview"


class ProbeError(RuntimeError):
    pass


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
            raise ProbeError(f"the probe's view lacks {', '.join(missing)}")
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
        raise ProbeError(f"snapview through {ip} failed (exit {result.returncode}, "
                            f"{time.monotonic() - t0:.1f} s): "
                            f"{(result.stderr or result.stdout).strip()[-800:]}")
    try:
        view = json.loads(result.stdout)
        if not isinstance(view, dict):
            raise ValueError(f"not an object: {type(view).__name__}")
        return view
    except ValueError as exc:
        raise ProbeError(f"snapview through {ip} printed no view ({exc}): "
                            f"{result.stdout.strip()[-400:]}") from None
