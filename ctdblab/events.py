"""The history's vocabulary: one constructor per event, so every writer says the same thing.

Every event is a plain dict (one JSON line of ``history.jsonl``) with ``t`` (``time.time()``,
epoch seconds: all network namespaces share the kernel clock) and ``kind``.  The orchestrator,
the faults, the probes (standalone programs inside the hosts) and the log import all build their
events here; checkers and reports read them by the same names.

=========  ===========================================================================================
kind       fields
=========  ===========================================================================================
run        ``event``: ``start`` (with the run's parameters: ``scenario``, ``daemon`` and, for a
           failover, ``victim``, ``victim_role``, ``vip``, ``leader``, ``survivor_ip``, ...),
           ``window_end`` (the orchestrator stopped watching the fault's effects) or ``end``
fault      ``fault`` (one of FAULTS), ``node`` (PNN or null), ``phase``: ``begin``, ``step``
           (an instant inside the fault, named by ``step``: see FAULT_STEPS), ``end`` or ``fail``
           (with ``error``)
op         a client operation: ``process``, ``f``, ``type``: invoke|ok|fail, ``id``, ``target``,
           ``role``; ok/fail carry ``latency_s``, fail an ``error``
state      an observed daemon state: ``what``: ``node_state`` (``subject``, ``value``),
           ``ip_owner`` (``ip``, ``value``: the owner's PNN) or ``log`` (``event``, ``message``);
           ``node`` is the node that observed or logged it
capture    a probe's observation: ``probe``, ``process``, ``what``.  Ground truth for the soak's
           checkers: ``probe: truth`` ``what: sample`` (``nodes``: per PNN what is really
           configured and what its daemon answers, see ``truth_sample``) and ``probe: arp``
           ``what: answers`` (``answers``: per public IP the MACs that answered a client's who-has)
upgrade    a phase of a rolling upgrade (``scenarios/upgrade.py``): ``node``, ``phase`` (one of
           UPGRADE_PHASES), ``edge``: ``begin``, ``end`` or ``fail`` (with ``error``)
note       free text (``text``), e.g. why a step did not happen
=========  ===========================================================================================

Derived figures (a failover's detect or takeover instant) are not events: checkers compute them
from the history and write them to ``results.json``.
"""

from __future__ import annotations

import time
from typing import Any

Event = dict[str, Any]

KINDS = ("run", "fault", "op", "state", "capture", "note", "upgrade")
# Kinds that older histories hold and readers skip: derived milestones live in results.json now.
RETIRED_KINDS = ("milestone",)

RUN_START, RUN_WINDOW_END, RUN_END = "start", "window_end", "end"
RUN_SETTLED = "settled"

FAULTS = ("power_off", "power_on", "crash", "restart", "freeze", "thaw", "kill_smbd", "partition",
          "heal", "flap", "loss", "clear_loss")
# The instants inside a fault that a checker may need, in the order they happen.
FAULT_STEPS = {
    "power_off": ("cut", "killed"),   # switch ports down (nothing leaves after this); all killed
    "power_on": ("up",),              # a fresh node is on the network (its daemon starts next)
    "flap": ("down", "up"),
}
FAULT_PHASES = ("begin", "step", "end", "fail")
OP_TYPES = ("invoke", "ok", "fail")
# Operations of the failover's data workload (``--check-data``): judged by the data checker,
# kept out of the latency figures (survivor stall, client-operation tables) of the SMB probes.
DATA_WORKLOAD_OPS = ("smb_write_block", "smb_lock", "contend_open_lock", "pdb_store")
STATE_WHATS = ("node_state", "ip_owner", "log")
# A rolling upgrade's step on one node ("step") and its phases, in the order they run.
UPGRADE_PHASES = ("step", "disable", "stop", "install", "start", "enable", "settle")
UPGRADE_EDGES = ("begin", "end", "fail")


def _event(kind: str, t: float | None, fields: dict[str, Any]) -> Event:
    event: Event = {"t": time.time() if t is None else t, "kind": kind}
    event.update(fields)
    return event


# -- runs -------------------------------------------------------------------------------------------
def run_start(run: int, *, scenario: str, daemon: str, t: float | None = None,
              **params: Any) -> Event:
    """A repetition begins; ``params`` are everything a checker needs to know about it."""
    return _event("run", t, {"event": RUN_START, "run": run, "scenario": scenario,
                             "daemon": daemon, **params})


def window_end(t: float | None = None) -> Event:
    """The orchestrator stopped observing the fault's effects (the probes stop next)."""
    return _event("run", t, {"event": RUN_WINDOW_END})


def settled(t: float | None = None) -> Event:
    """The fault's effects are over as far as the run waits for them (the IP moved, a client
    resumed, the idle client was reset or cannot be).  Probes may go on watching until the
    window ends (for a reset a daemon without tickles never sends)."""
    return _event("run", t, {"event": RUN_SETTLED})


def run_end(run: int, t: float | None = None) -> Event:
    return _event("run", t, {"event": RUN_END, "run": run})


# -- faults -----------------------------------------------------------------------------------------
def _fault(fault: str, node: int | None, phase: str, t: float | None,
           fields: dict[str, Any]) -> Event:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}")
    return _event("fault", t, {"fault": fault, "node": node, "phase": phase, **fields})


def fault_begin(fault: str, node: int | None, t: float | None = None, **params: Any) -> Event:
    return _fault(fault, node, "begin", t, params)


def fault_step(fault: str, node: int | None, step: str, t: float | None = None,
               **fields: Any) -> Event:
    if step not in FAULT_STEPS.get(fault, ()):
        raise ValueError(f"fault {fault!r} has no step {step!r}")
    return _fault(fault, node, "step", t, {"step": step, **fields})


def fault_end(fault: str, node: int | None, t: float | None = None, **fields: Any) -> Event:
    return _fault(fault, node, "end", t, fields)


def fault_fail(fault: str, node: int | None, error: str, t: float | None = None,
               **fields: Any) -> Event:
    return _fault(fault, node, "fail", t, {"error": error, **fields})


# -- client operations ------------------------------------------------------------------------------
def _op(op_type: str, process: str, f: str, op_id: int, target: str | None, role: str | None,
        t: float | None, fields: dict[str, Any]) -> Event:
    base: dict[str, Any] = {"process": process, "f": f, "type": op_type, "id": op_id,
                            "target": target}
    if role:
        base["role"] = role
    return _event("op", t, {**base, **fields})


def op_invoke(process: str, f: str, op_id: int, *, target: str | None, role: str | None = None,
              t: float | None = None, **fields: Any) -> Event:
    return _op("invoke", process, f, op_id, target, role, t, fields)


def op_ok(process: str, f: str, op_id: int, *, latency_s: float, target: str | None,
          role: str | None = None, t: float | None = None, **fields: Any) -> Event:
    return _op("ok", process, f, op_id, target, role, t,
               {"latency_s": round(latency_s, 6), **fields})


def op_fail(process: str, f: str, op_id: int, *, latency_s: float, error: str,
            target: str | None, role: str | None = None, t: float | None = None,
            **fields: Any) -> Event:
    return _op("fail", process, f, op_id, target, role, t,
               {"latency_s": round(latency_s, 6), "error": error, **fields})


# -- observed daemon state --------------------------------------------------------------------------
def node_state(observer: int, subject: int, value: str, t: float | None = None) -> Event:
    """``observer``'s ``ctdb status`` shows node ``subject`` in state ``value`` (e.g. OK)."""
    return _event("state", t, {"what": "node_state", "node": observer, "subject": subject,
                               "value": value})


def ip_owner(observer: int, ip: str, owner: int, t: float | None = None) -> Event:
    """``observer``'s ``ctdb ip all`` shows ``ip`` on node ``owner`` (-1: nowhere)."""
    return _event("state", t, {"what": "ip_owner", "node": observer, "ip": ip, "value": owner})


def log_line(node: int, event: str, message: str, program: str, t: float,
             **fields: Any) -> Event:
    """A daemon log line on ``node`` that marks a failover step (daemonlog.EVENTS names it)."""
    return _event("state", t, {"what": "log", "node": node, "event": event,
                               "message": message, "program": program, **fields})


# -- probes and notes -------------------------------------------------------------------------------
def capture(probe: str, process: str, what: str, t: float | None = None, **fields: Any) -> Event:
    return _event("capture", t, {"probe": probe, "process": process, "what": what, **fields})


def truth_sample(nodes: dict[int, dict[str, Any]], t: float | None = None, **fields: Any) -> Event:
    """What the lab found really configured on every node in one sampling round.

    ``nodes`` maps each PNN to ``powered`` (bool) and, for a powered node: ``addrs`` (the public
    IPs configured in its namespace, from ``ip -j addr``), ``leader`` (what ``ctdb leader``
    answered; null: no answer within the timeout), ``status`` ({PNN: state word} from its
    ``ctdb -X status``; null: no answer), ``cpu_s`` (CPU seconds of the daemon's processes;
    null: none running), ``log_bytes`` (size of its daemon log).
    """
    return capture("truth", "sampler", "sample", t=t, nodes=nodes, **fields)


def upgrade_phase(node: int, phase: str, edge: str, t: float | None = None,
                  **fields: Any) -> Event:
    """Phase ``phase`` of the upgrade step on ``node`` begins, ends or fails (``error``)."""
    if phase not in UPGRADE_PHASES:
        raise ValueError(f"unknown upgrade phase {phase!r}")
    if edge not in UPGRADE_EDGES:
        raise ValueError(f"unknown upgrade phase edge {edge!r}")
    return _event("upgrade", t, {"node": node, "phase": phase, "edge": edge, **fields})


def daemon_running(node: int, *, pid: int | None, cmdline: list[str], version: str | None,
                   build: str | None, t: float | None = None) -> Event:
    """What daemon process runs on ``node`` now: its pid, command line, and the version of the
    build that command line belongs to (None: not known, e.g. ctdbd without a version answer)."""
    return capture("daemon", "orchestrator", "running", t=t, node=node, pid=pid,
                   cmdline=cmdline, version=version, build=build)


def note(text: str, t: float | None = None, **fields: Any) -> Event:
    return _event("note", t, {"text": text, **fields})
