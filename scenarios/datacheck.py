"""Data checker of a failover run: was any acknowledged write or commit lost?

``check_data(events) -> verdict`` (one run's events, from the history alone; the verdict goes to
results.json).  It reads:

===================  ===========================================================================
acked blocks         ``op`` ``f: smb_write_block`` ``ok`` (``writer``, ``file``, ``block``,
                     ``crc``): the WRITE and its FLUSH returned
written at all       the same ops' ``invoke``; invoked but never ``ok`` = indeterminate
read-back            ``capture`` ``smb_readback``/``file_blocks`` (``blocks`` {n: crc},
                     ``bad_slots``) or ``file_read_failed``, after the cluster settled
acked commits        ``op`` ``f: pdb_store`` ``ok`` (``key``, ``value``): ``ctdb pstore`` exit 0
node copies          ``capture`` ``pdb_dump``/``pdb_copy`` per node (``records`` {key: value}),
                     read from each node's own TDB file after the victim rejoined
contention           ``op`` ``f: contend_open_lock`` (``baseline``, ``conflict``) and the
                     ``smb_contend`` captures; the takeover instant from the failover checker
===================  ===========================================================================

A block is **lost** when it was acknowledged and the read-back of its file lacks it or holds
other bytes (another CRC, or a slot that is no valid block).  A commit is lost on a node when it
was acknowledged and that node's copy lacks the key or holds another value; every node counts,
the rejoined victim included.  Unacknowledged operations are **indeterminate**: present or not,
both are correct.  An acknowledged item that could not be checked (its file or a node's copy was
never read) is **unverified**, which fails the run as a loss would: the checker proves presence,
it does not assume it.

Contention: a survivor's client must get a deny-write open and an exclusive lock on the file a
client of the victim held, once the failover is done.  Its attempts may be refused (``conflict``)
until the takeover instant plus CONTENTION_GRACE_S; a conflict on an attempt started later means
a stale share-mode or byte-range entry of the dead node's client blocked it.  The baseline
attempt (while the holder was alive) must have been refused, or the probe proves nothing.
"""

from __future__ import annotations

from typing import Any, Iterable

from ctdblab.events import Event

from .checkers import failover_facts, failover_metrics

WRITE_OP = "smb_write_block"
LOCK_OP = "smb_lock"
COMMIT_OP = "pdb_store"
CONTEND_OP = "contend_open_lock"
CONTENTION_GRACE_S = 2.0
EXAMPLES = 10          # lost items listed per writer or node (the counts are complete)


def has_data_workload(events: Iterable[Event]) -> bool:
    return any(e.get("kind") == "op" and e.get("f") in (WRITE_OP, COMMIT_OP) for e in events)


def check_data(events: Iterable[Event]) -> dict[str, Any]:
    """The data verdict of one failover run."""
    events = [e for e in events if isinstance(e.get("t"), (int, float))]
    facts = failover_facts(events)
    nodes = facts.start.get("nodes")
    if not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"run {facts.run}: the start event gives no node count")
    blocks = check_blocks(events)
    commits = check_commits(events, list(range(nodes)))
    takeover_s = failover_metrics(events)[0]["takeover_s"]
    contention = check_contention(events, facts.t_cut, takeover_s)
    problems = blocks["problems"] + commits["problems"] + contention["problems"]
    return {"verdict": "ok" if not problems else "fail", "problems": problems,
            "blocks": blocks, "commits": commits, "contention": contention}


def _ops(events: list[Event], f: str, op_type: str) -> list[Event]:
    return [e for e in events if e.get("kind") == "op" and e.get("f") == f
            and e.get("type") == op_type]


# -- SMB blocks ---------------------------------------------------------------------------------
def check_blocks(events: list[Event]) -> dict[str, Any]:
    acked: dict[str, dict[int, int]] = {}
    invoked: dict[str, set[int]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for e in _ops(events, WRITE_OP, "invoke"):
        invoked.setdefault(e["file"], set()).add(e["block"])
        meta.setdefault(e["file"], {"writer": e.get("writer"), "process": e.get("process"),
                                    "role": e.get("role"), "target": e.get("target")})
    for e in _ops(events, WRITE_OP, "ok"):
        acked.setdefault(e["file"], {})[e["block"]] = e["crc"]
    readback: dict[str, Event] = {}
    for e in events:
        if e.get("kind") == "capture" and e.get("probe") == "smb_readback" \
                and e.get("what") in ("file_blocks", "file_read_failed"):
            readback[e["file"]] = e          # the last read of a file counts
    lock_conflicts = sum(1 for e in _ops(events, LOCK_OP, "fail") if e.get("conflict"))
    writers = []
    problems: list[str] = []
    totals = {"acked": 0, "indeterminate": 0, "lost": 0, "unverified": 0,
              "unacked_present": 0, "torn_unacked": 0}
    for file in sorted(set(invoked) | set(acked)):
        ack = acked.get(file, {})
        indeterminate = invoked.get(file, set()) - set(ack)
        read = readback.get(file)
        entry: dict[str, Any] = {"file": file, **meta.get(file, {}), "acked": len(ack),
                                 "indeterminate": len(indeterminate), "lost": 0,
                                 "unverified": 0, "lost_blocks": []}
        if read is None or read.get("what") != "file_blocks":
            entry["unverified"] = len(ack)
            why = "never read back" if read is None else f"read-back failed: {read.get('error')}"
            if ack:
                problems.append(f"{file}: {len(ack)} acknowledged blocks unverified ({why})")
        else:
            present = {int(n): crc for n, crc in read.get("blocks", {}).items()}
            bad = set(read.get("bad_slots", ()))
            lost = sorted(n for n, crc in ack.items() if present.get(n) != crc)
            entry["lost"] = len(lost)
            entry["lost_blocks"] = [{"block": n, "found": "corrupt" if n in bad else
                                     "other bytes" if n in present else "missing"}
                                    for n in lost[:EXAMPLES]]
            entry["unacked_present"] = len(indeterminate & set(present))
            entry["torn_unacked"] = len(bad - set(ack))
            totals["unacked_present"] += entry["unacked_present"]
            totals["torn_unacked"] += entry["torn_unacked"]
            if lost:
                problems.append(f"{file}: {len(lost)} acknowledged blocks lost "
                                f"(first: {entry['lost_blocks'][0]})")
        for k in ("acked", "indeterminate", "lost", "unverified"):
            totals[k] += entry[k]
        writers.append(entry)
    if not writers:
        problems.append("no SMB data writer ran (no smb_write_block operation in the history)")
    elif totals["acked"] == 0:
        problems.append("no block was acknowledged: nothing was proven")
    return {**totals, "lock_conflicts": lock_conflicts, "writers": writers,
            "problems": problems}


# -- persistent-database commits ----------------------------------------------------------------
def check_commits(events: list[Event], nodes: list[int]) -> dict[str, Any]:
    invoked = {e["key"] for e in _ops(events, COMMIT_OP, "invoke")}
    acked = {e["key"]: e["value"] for e in _ops(events, COMMIT_OP, "ok")}
    copies: dict[int, Event] = {}
    for e in events:
        if e.get("kind") == "capture" and e.get("probe") == "pdb_dump" \
                and e.get("what") in ("pdb_copy", "pdb_copy_failed"):
            copies[e["node"]] = e
    problems: list[str] = []
    per_node = []
    lost_total = unverified_total = 0
    for pnn in nodes:
        copy = copies.get(pnn)
        entry: dict[str, Any] = {"node": pnn, "lost": 0, "unverified": 0, "lost_keys": []}
        if copy is None or copy.get("what") != "pdb_copy":
            entry["unverified"] = len(acked)
            why = "never read" if copy is None else f"read failed: {copy.get('error')}"
            if acked:
                problems.append(f"node {pnn}: {len(acked)} acknowledged commits unverified "
                                f"(its copy was {why})")
        else:
            records = copy.get("records", {})
            lost = sorted(k for k, v in acked.items() if records.get(k) != v)
            entry["lost"] = len(lost)
            entry["lost_keys"] = [{"key": k, "found": records.get(k)} for k in lost[:EXAMPLES]]
            entry["records"] = len(records)
            if lost:
                problems.append(f"node {pnn}: {len(lost)} acknowledged commits missing or "
                                f"different (first: {lost[0]})")
        lost_total += entry["lost"]
        unverified_total += entry["unverified"]
        per_node.append(entry)
    writers = sorted({e.get("process") for e in _ops(events, COMMIT_OP, "invoke")})
    if not writers:
        problems.append("no persistent-database writer ran (no pdb_store operation)")
    elif not acked:
        problems.append("no commit was acknowledged: nothing was proven")
    return {"acked": len(acked), "indeterminate": len(invoked - set(acked)),
            "lost": lost_total, "unverified": unverified_total, "writers": writers,
            "nodes": per_node, "problems": problems}


# -- share-mode and byte-range contention -------------------------------------------------------
def check_contention(events: list[Event], t_cut: float, takeover_s: float | None) -> dict[str, Any]:
    captures = {e.get("what"): e for e in events
                if e.get("kind") == "capture" and e.get("probe") == "smb_contend"}
    attempts = [e for e in events if e.get("kind") == "op" and e.get("f") == CONTEND_OP
                and e.get("type") in ("ok", "fail")]
    baseline = [e for e in attempts if e.get("baseline")]
    after = sorted((e for e in attempts if not e.get("baseline") and not e.get("aborted")
                    and _started(e) >= t_cut), key=_started)
    result: dict[str, Any] = {"verdict": None, "wait_s": None, "attempts": len(after),
                              "conflicts": 0, "last_conflict_after_takeover_s": None,
                              "problems": []}
    problems = result["problems"]
    if not captures and not attempts:
        problems.append("contention: the probe did not run")
        result["verdict"] = "not_run"
        return result
    if "held" not in captures:
        failed = captures.get("hold_failed", {})
        problems.append(f"contention: the victim-side client never held the file "
                        f"({failed.get('error', 'no hold event')})")
        result["verdict"] = "not_held"
        return result
    if not baseline or baseline[0]["type"] == "ok" or not baseline[0].get("conflict"):
        got = "no baseline attempt" if not baseline else (
            "it was granted" if baseline[0]["type"] == "ok" else baseline[0].get("error"))
        problems.append(f"contention: the baseline attempt (holder alive) was not refused with a "
                        f"conflict ({got}), so the probe cannot tell blocked from free")
        result["verdict"] = "invalid"
        return result
    conflicts = [e for e in after if e["type"] == "fail" and e.get("conflict")]
    result["conflicts"] = len(conflicts)
    first_ok = next((e for e in after if e["type"] == "ok"), None)
    if first_ok is not None:
        result["wait_s"] = round(first_ok["t"] - t_cut, 4)
    if conflicts and takeover_s is not None:
        result["last_conflict_after_takeover_s"] = round(
            _started(conflicts[-1]) - t_cut - takeover_s, 4)
    if first_ok is None:
        result["verdict"] = "never_granted"
        problems.append(f"contention: the survivor's client never got the file after the cut "
                        f"({len(after)} attempts, {len(conflicts)} refused for a conflict)")
    elif conflicts and takeover_s is None:
        result["verdict"] = "blocked"
        problems.append("contention: refused for a conflict, and no takeover was seen to bound it")
    elif conflicts and result["last_conflict_after_takeover_s"] > CONTENTION_GRACE_S:
        result["verdict"] = "blocked"
        problems.append(f"contention: a stale entry refused the survivor's client "
                        f"{result['last_conflict_after_takeover_s']:.2f} s after the takeover "
                        f"(allowed {CONTENTION_GRACE_S:g} s)")
    else:
        result["verdict"] = "ok"
    return result


def _started(op: Event) -> float:
    return op["t"] - (op.get("latency_s") or 0.0)


def summarize_data(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over the runs' data verdicts (results.json ``data_summary``)."""
    waits = [r["contention"]["wait_s"] for r in records if r["contention"]["wait_s"] is not None]
    return {
        "runs": len(records), "runs_ok": sum(r["verdict"] == "ok" for r in records),
        "blocks_acked": sum(r["blocks"]["acked"] for r in records),
        "blocks_indeterminate": sum(r["blocks"]["indeterminate"] for r in records),
        "blocks_lost": sum(r["blocks"]["lost"] for r in records),
        "blocks_unverified": sum(r["blocks"]["unverified"] for r in records),
        "commits_acked": sum(r["commits"]["acked"] for r in records),
        "commits_indeterminate": sum(r["commits"]["indeterminate"] for r in records),
        "commits_lost": sum(r["commits"]["lost"] for r in records),
        "commits_unverified": sum(r["commits"]["unverified"] for r in records),
        "contention_ok": sum(r["contention"]["verdict"] == "ok" for r in records),
        "contention_conflicts": sum(r["contention"]["conflicts"] for r in records),
        "contention_wait_max_s": max(waits) if waits else None,
        "lock_conflicts": sum(r["blocks"]["lock_conflicts"] for r in records),
    }
