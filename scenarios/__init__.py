"""Scenarios: a workload, a fault schedule and checkers over one history per run.

``run_scenario`` writes ``OUT/results.json`` and ``OUT/history.jsonl``, then the report (plots and
report.md) from those two files alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ctdblab.errors import UserError

SCENARIOS = ("failover", "scaling", "soak", "upgrade")


def run_scenario(name: str, *, daemon: str, nodes: list[int], repeat: int, tunables: str,
                 victim: str = "nonleader", bw_mbit: float | None = None,
                 link_params: dict | None = None, out: Path,
                 progress: Callable[[str], None], clustered_smbd: bool | None = None,
                 check_data: bool = False, faults: int = 20, seed: int = 1,
                 sample_period: float | None = None, from_rev: str | None = None,
                 to_rev: str | None = None, order: str = "pnn", hosts: Path | None = None,
                 allow_hard_reset: bool = False, lock: str = "file",
                 then: str | None = None) -> list[Path]:
    """Validate everything first (nothing is created on bad input), then run and report.
    `clustered_smbd`: None runs smbd as the daemon's launcher does by default.
    `check_data` (failover only): add the data workload and its checker (datacheck.py).
    `then` (failover only): a second fault while the cluster recovers (recovery_faults.py).
    `hosts`: an inventory file (cluster/inventory.py): run on those machines over SSH instead
    of Mininet (failover only so far); `nodes` must then be [the inventory's host count] or
    empty.  A hard reset there needs `allow_hard_reset`.
    `lock` (failover, soak): "file" or "etcd", where the cluster lock lives (etcd_lock.py)."""
    from ctdblab.cluster.etcd_lock import get_lab_lock
    from ctdblab.cluster.etcd_lock import check_installed as check_etcd_installed
    from ctdblab.cluster.launchers import get_launcher
    from ctdblab.cluster.mininet_backend import MAX_NODES, LinkSpec
    from ctdblab.cluster.profiles import get_profile
    from ctdblab.cluster.prereq import check_lab

    if name not in SCENARIOS:
        raise UserError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    inventory = None
    if hosts is not None:
        from ctdblab.cluster.inventory import load_inventory

        inventory = load_inventory(hosts)
        if name != "failover":
            raise UserError(f"--hosts runs the failover scenario only (not {name} yet)")
        if check_data:
            raise UserError("--check-data is not supported with --hosts yet")
        count = len(inventory.hosts)
        if nodes and nodes != [count]:
            raise UserError(f"--nodes {nodes[0] if len(nodes) == 1 else nodes} contradicts "
                            f"{hosts}, which has {count} hosts (leave --nodes out)")
        nodes = [count]
        inventory.power.check_hard_reset(allow_hard_reset, str(hosts))
        if not inventory.clients:
            raise UserError(f"{hosts}: failover needs a client host ([[client]]) for its probes")
    if check_data and name != "failover":
        raise UserError("--check-data is an option of the failover scenario only")
    if then is not None:
        if name != "failover":
            raise UserError("--then is an option of the failover scenario only")
        if inventory is not None:
            raise UserError("--then is not supported with --hosts")
    if repeat < 1:
        raise UserError(f"--repeat must be at least 1, not {repeat}")
    if not nodes or min(nodes) < 1 or max(nodes) > MAX_NODES:
        raise UserError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if name == "failover":
        from .failover import parse_victim
        if len(nodes) != 1:
            raise UserError("failover takes one node count (--nodes N), not a range")
        if nodes[0] < 2:
            raise UserError("failover needs at least 2 nodes (a survivor must take the IP)")
        parse_victim(victim, nodes[0])
        from .recovery_faults import check_then
        check_then(then, nodes[0], parse_victim(victim, nodes[0]))
    if name == "soak":
        if len(nodes) != 1 or nodes[0] < 2:
            raise UserError("soak takes one node count of at least 2 (--nodes N)")
        if faults < 1:
            raise UserError(f"--faults must be at least 1, not {faults}")
        if sample_period is not None and not 0.1 <= sample_period <= 5:
            raise UserError(f"--sample-period must be 0.1..5 seconds, not {sample_period:g}")
    if name == "upgrade":
        from .upgrade_plan import make_plan
        if len(nodes) != 1:
            raise UserError("upgrade takes one node count (--nodes N), not a range")
        make_plan(nodes[0], order)
        if daemon != "pyctdbd" and (from_rev or to_rev):
            raise UserError("--from/--to choose pyctdbd builds; with --daemon ctdb the upgrade "
                            "is a plain restart of the installed ctdbd")
        if repeat != 1:
            raise UserError("upgrade runs once (--repeat 1): every node is upgraded in one run")
        if link_params or bw_mbit is not None:
            raise UserError("upgrade takes no --bw/--link")
    elif from_rev or to_rev:
        raise UserError("--from/--to are options of the upgrade scenario only")
    params = dict(link_params or {})
    if bw_mbit is not None:
        params["bw"] = bw_mbit
    bw_mbit = LinkSpec.from_params(params).bw_mbit
    get_profile(tunables)
    lab_lock = get_lab_lock(lock)
    if lock != "file":
        if name not in ("failover", "soak"):
            raise UserError(f"--lock {lock} is an option of the failover and soak scenarios")
        if inventory is not None:
            raise UserError(f"--lock {lock} runs its lock service inside Mininet nodes; not with "
                            "--hosts")
    launcher = get_launcher(daemon, smb_clustered=clustered_smbd, lock=lab_lock)
    if not launcher.answers_ctdb_tool:
        # keepalived: no ctdb tool (status, leader, pstore), so only the failover scenario.
        if name != "failover":
            raise UserError(f"{daemon} runs the failover scenario only (the {name} scenario "
                            "asks the daemon through the ctdb tool)")
        if victim == "leader":
            raise UserError(f"{daemon} has no leader: use --victim nonleader or a PNN")
        if check_data:
            raise UserError(f"--check-data needs `ctdb pstore` and a clustered smbd; {daemon} "
                            "has neither")
    if inventory is None:          # remote hosts are checked over SSH when the cluster starts
        check_lab()
        launcher.check_installed()
        if lock == "etcd":
            check_etcd_installed()
    elif bw_mbit is not None:
        raise UserError("--bw/--link shape Mininet links; remote hosts keep their real links")
    out = Path(out).resolve()
    if (out / "results.json").exists() or (out / "history.jsonl").exists():
        raise UserError(f"{out} already holds a run; choose a new --out directory")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if name == "failover":
        from .failover import run_failover
        results = run_failover(daemon=daemon, nodes=nodes[0], repeat=repeat, tunables=tunables,
                               victim=victim, bw_mbit=bw_mbit, out=out, progress=progress,
                               clustered_smbd=clustered_smbd, check_data_loss=check_data,
                               inventory=inventory, allow_hard_reset=allow_hard_reset,
                               lock=lock, then=then)
    elif name == "upgrade":
        from .upgrade import run_upgrade
        results = run_upgrade(daemon=daemon, nodes=nodes[0], tunables=tunables, out=out,
                              progress=progress, from_rev=from_rev, to_rev=to_rev, order=order)
    elif name == "soak":
        from .soak import run_soak
        from .truth import DEFAULT_PERIOD_S
        results = run_soak(daemon=daemon, nodes=nodes[0], faults=faults, seed=seed,
                           tunables=tunables, out=out, progress=progress,
                           period=sample_period or DEFAULT_PERIOD_S, lock=lock)
    else:
        from .scaling import run_scaling
        results = run_scaling(daemon=daemon, node_counts=nodes, bw_mbit=bw_mbit,
                              tunables=tunables, repeat=repeat, out=out, progress=progress)
    results["wall_s"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    written = [out / "results.json", out / "history.jsonl"]
    from ctdblab.reports import make_report
    written += make_report(out)
    progress(f"{name} finished in {results['wall_s']:.0f} s; results in {out}")
    return written
