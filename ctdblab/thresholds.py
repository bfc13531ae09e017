"""Regression thresholds: fail a CI job when a failover or scaling figure gets worse.

A thresholds file is TOML.  Failover limits are upper bounds on a summary statistic of a metric
(``p50``, ``p90`` or ``max``), keyed by daemon, tunables profile and victim role; scaling limits
are lower bounds on MB/s or on efficiency against N × the one-node figure::

    [failover.pyctdbd.aggressive.nonleader]
    "reset_s.p50" = 0.5
    "takeover_s.max" = 1.0

    [scaling.ctdb]
    "efficiency.min" = 0.9        # every N, smbclient and smbprotocol
    "mb_s.1" = 11.0               # the one-node figure

``check(results, table)`` returns the list of violations (empty when all hold); a missing metric
(null in every run) violates its limit — a figure that did not happen did not improve.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from .errors import UserError
from .stats import summarize

STATS = ("p50", "p90", "max")


def load(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"thresholds file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"thresholds file {path}: {e}") from None


def check(results: dict[str, Any], table: dict[str, Any]) -> list[str]:
    if results.get("scenario") == "failover":
        return _check_failover(results, table.get("failover", {}))
    if results.get("scenario") == "scaling":
        return _check_scaling(results, table.get("scaling", {}))
    raise UserError(f"results of unknown scenario {results.get('scenario')!r}")


def _check_failover(results: dict[str, Any], table: dict[str, Any]) -> list[str]:
    violations = []
    profile = table.get(results["daemon"], {}).get(results["tunables"], {})
    for role in ("leader", "nonleader"):
        runs = [r for r in results["runs"] if r.get("victim_role") == role]
        limits = profile.get(role, {})
        if not runs or not limits:
            continue
        for key, limit in limits.items():
            metric, _, stat = key.rpartition(".")
            if stat not in STATS or not metric:
                raise UserError(f"threshold key {key!r}: use <metric>.<{'|'.join(STATS)}>")
            value = summarize(r.get(metric) for r in runs)[stat]
            where = f"{results['daemon']}/{results['tunables']}/{role} {metric} {stat}"
            if value is None:
                violations.append(f"{where}: no value (it did not happen), limit {limit}")
            elif value > limit:
                violations.append(f"{where} = {value:.3f} s exceeds {limit} s")
    return violations


def _check_scaling(results: dict[str, Any], table: dict[str, Any]) -> list[str]:
    violations = []
    limits = table.get(results["daemon"], {})
    by_tool: dict[str, dict[int, list[float]]] = {}
    for p in results["points"]:
        by_tool.setdefault(p["client"], {}).setdefault(p["nodes"], []).append(p["mb_s"])
    for tool, per_n in by_tool.items():
        medians = {n: summarize(v)["p50"] for n, v in per_n.items()}
        one = medians.get(1)
        for key, limit in limits.items():
            if key == "efficiency.min":
                if one is None:
                    continue
                for n, mb in medians.items():
                    eff = mb / (n * one)
                    if eff < limit:
                        violations.append(f"{tool} N={n}: efficiency {eff:.2f} below {limit}")
            elif key.startswith("mb_s."):
                n = int(key.split(".", 1)[1])
                if n in medians and medians[n] < limit:
                    violations.append(f"{tool} N={n}: {medians[n]:.1f} MB/s below {limit}")
            else:
                raise UserError(f"scaling threshold key {key!r}: use efficiency.min or mb_s.<N>")
    return violations
