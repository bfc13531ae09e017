"""A synthetic soak history for the checker and report tests: explicit times, three nodes."""

from __future__ import annotations

from ctdblab import events
from ctdblab.history import History, load_numbered
from ctdblab.scenarios.soak_checks import Bounds, check_soak

IPS = ["198.19.8.1", "198.19.8.2", "198.19.8.3"]
MACS = {"02:00:00:00:00:00": 0, "02:00:00:00:00:01": 1, "02:00:00:00:00:02": 2}
MAC_OF = {p: m for m, p in MACS.items()}
HOME = {"198.19.8.1": 0, "198.19.8.2": 1, "198.19.8.3": 2}


class Soak:
    """Writes a soak history with explicit times; ``check()`` runs the checker over it."""

    def __init__(self, tmp_path, schedule, bounds=None):
        self.path = tmp_path / "history.jsonl"
        self.history = History(self.path)
        self.history.run = 0
        self.bounds = bounds or Bounds()
        self.history.record(events.run_start(0, scenario="soak", daemon="pyctdbd", t=0.0,
                                             schedule=schedule, public_ips=IPS, public_macs=MACS,
                                             bounds=self.bounds.as_dict()))
        self.cpu = {0: 0.0, 1: 0.0, 2: 0.0}
        self.log = {0: 0, 1: 0, 2: 0}

    def sample(self, t, owners=None, leaders=None, status=None, powered=(0, 1, 2),
               cpu_rate=None, log_rate=None):
        """One truth sample; ``owners`` {ip: [pnns]} (default: each IP at home)."""
        owners = owners or {ip: [p] for ip, p in HOME.items()}
        nodes = {}
        for p in range(3):
            if p not in powered:
                nodes[str(p)] = {"powered": False}
                continue
            self.cpu[p] += (cpu_rate or {}).get(p, 0.01) * 0.5
            self.log[p] += int((log_rate or {}).get(p, 10) * 0.5)
            nodes[str(p)] = {
                "powered": True, "addrs": sorted(ip for ip, ps in owners.items() if p in ps),
                "leader": (leaders or {}).get(p, 0),
                "status": (status or {}).get(p, {str(q): "OK" for q in powered}),
                "cpu_s": round(self.cpu[p], 3), "log_bytes": self.log[p]}
        self.history.record(events.truth_sample(nodes, t=t))

    def arp(self, t, owners=None, **times):
        """One ARP round closing at ``t``; ``times``: ``t_sent``/``t_replied`` as the probe writes."""
        owners = owners or {ip: [p] for ip, p in HOME.items()}
        answers = {ip: sorted(MAC_OF[p] for p in ps) for ip, ps in owners.items()}
        self.history.record(events.capture("arp", "arp", "answers", t=t, answers=answers, **times))

    def steady(self, t0, t1, **kw):
        t = t0
        while t < t1:
            self.sample(t, **kw)
            self.arp(t + 0.1, owners=kw.get("owners"))
            t += 0.5

    def fault(self, t, name, node, phase, index, **fields):
        build = {"begin": events.fault_begin, "end": events.fault_end}[phase]
        self.history.record(build(name, node, t=t, soak_index=index, target=node, **fields))

    def check(self):
        self.history.close()
        return check_soak(load_numbered(self.path))
