"""Tunable profiles the lab can run a daemon with (``--tunables``).

``default``     CTDB's defaults: no ctdb.tunables entries.
``aggressive``  the fastest CTDB setting that did not flap on the 2-core lab VM (reference lab.md
                §14.3): KeepaliveInterval=1, KeepaliveLimit=2 and shorter election, recovery,
                takeover and monitor timers.
``aggressive_lt2``  aggressive plus ``[cluster] leader timeout = 2`` in ctdb.conf.

Both daemons read the same files.  pyctdbd honours CTDB's tunables and, on top, has its own
millisecond failure-detection tunables whose defaults apply under every profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctdblab.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    tunables: dict[str, int] = field(default_factory=dict)
    cluster_options: dict[str, str] = field(default_factory=dict)   # extra [cluster] options


_AGGRESSIVE = {"KeepaliveInterval": 1, "KeepaliveLimit": 2, "ElectionTimeout": 1,
               "RerecoveryTimeout": 1, "TakeoverTimeout": 3, "MonitorInterval": 5}

PROFILES = {
    "default": Profile("default"),
    "aggressive": Profile("aggressive", dict(_AGGRESSIVE)),
    "aggressive_lt2": Profile("aggressive_lt2", dict(_AGGRESSIVE), {"leader timeout": "2"}),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown tunables profile {name!r}; choose one of "
                        f"{', '.join(PROFILES)}") from None


def tunables_file_text(profile: Profile) -> str:
    lines = [f"# ctdblab tunables profile: {profile.name}"]
    lines += [f"{name}={value}" for name, value in profile.tunables.items()]
    return "\n".join(lines) + "\n"
