"""Tunable profiles the lab can run a daemon with (``--tunables``).

``default``     CTDB's defaults: no ctdb.tunables entries.
``aggressive``  the fastest CTDB setting that did not flap on the 2-core lab VM (reference lab.md
                §14.3): KeepaliveInterval=1, KeepaliveLimit=2 and shorter election, recovery,
                takeover and monitor timers.
``aggressive_lt2``  aggressive plus ``[cluster] leader timeout = 2`` in ctdb.conf.
``fast``        aggressive, and for pyctdbd heartbeats every 20 ms with a 60 ms dead timeout
                (keepalived's 10 ms VRRP adverts are the yardstick: lab.md Part C).  Until
                2026-12-06 it was 15/60 ms: 0.97-1.97 % of a core per idle daemon depending on
                the day (target 1.5 %; `benchmarks.idle_cost` prints the VM's floor beside it).
                Since a watcher asks a silent peer's kernel before declaring it dead
                (core/membership.py), a stall or two lost heartbeats no longer cost a death,
                so the beats need not come four to a timeout: 20 ms keeps the detection (60 ms
                of silence, 50 ms after the cut on average instead of 52.5) and wakes the
                daemon 60 times a second instead of 77 (same cluster, alternating: 1.08-1.10 %
                against 1.30-1.36 %).  ctdbd has no such tunables and runs it as
                ``aggressive``.

keepalived (``--daemon keepalived``) reads none of CTDB's tunables: a profile gives it its VRRPv3
advert interval, ``vrrp_advert_s`` — 0.1 s in every profile (lab.md Part C: IP moved in 0.35 s, no
flapping) except ``fast``, 0.01 s (VRRPv3's minimum: 0.03 s).

Both CTDB daemons read the same files.  pyctdbd honours CTDB's tunables and, on top, has its own
millisecond failure-detection tunables (defaults: heartbeat 100 ms, dead timeout 400 ms) that a
profile sets in ``pyctdbd_tunables``; they are written to pyctdbd nodes only (ctdbd refuses
tunables it does not know).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ctdblab.errors import UserError


@dataclass(frozen=True)
class Profile:
    name: str
    tunables: dict[str, int] = field(default_factory=dict)
    cluster_options: dict[str, str] = field(default_factory=dict)   # extra [cluster] options
    pyctdbd_tunables: dict[str, int] = field(default_factory=dict)  # pyctdbd's own, its nodes only
    vrrp_advert_s: float = 0.1                                      # keepalived's advert_int


_AGGRESSIVE = {"KeepaliveInterval": 1, "KeepaliveLimit": 2, "ElectionTimeout": 1,
               "RerecoveryTimeout": 1, "TakeoverTimeout": 3, "MonitorInterval": 5}

PROFILES = {
    "default": Profile("default"),
    "aggressive": Profile("aggressive", dict(_AGGRESSIVE)),
    "aggressive_lt2": Profile("aggressive_lt2", dict(_AGGRESSIVE), {"leader timeout": "2"}),
    "fast": Profile("fast", dict(_AGGRESSIVE),
                    pyctdbd_tunables={"HeartbeatIntervalMs": 20, "DeadTimeoutMs": 60},
                    vrrp_advert_s=0.01),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown tunables profile {name!r}; choose one of "
                        f"{', '.join(PROFILES)}") from None


def tunables_file_text(profile: Profile, pyctdbd: bool = False) -> str:
    lines = [f"# ctdblab tunables profile: {profile.name}"]
    lines += [f"{name}={value}" for name, value in profile.tunables.items()]
    if pyctdbd:
        lines += [f"{name}={value}" for name, value in profile.pyctdbd_tunables.items()]
    return "\n".join(lines) + "\n"
