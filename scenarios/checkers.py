"""Failover checkers: from one run's history events to the metrics of results.json.

Every metric is seconds after ``t_cut`` (the instant the victim's switch ports went down), so all
of them sit on one time axis; ``survivor_stall_s`` alone is a duration.  How long the victim took
to rejoin once powered on is ``rejoin_s - power_on_s``.  A metric that did not happen is None,
and the checker says why in a note (returned alongside, written to the history).

=====================  =================================================================
detect_s               first survivor log line declaring the victim dead (CTDB wording:
                       "dead count reached" / "node X is dead"); else the first 10 Hz status
                       poll showing it DISCONNECTED
takeover_s             "Takeover of IP <vip>" in a survivor's log; else the poll that saw it move
ping_s                 first ping reply from the vip after the kill finished
reset_s                the client blocked in recv() on vip:445 (registered by smbd) gets ECONNRESET
smb_resumed_s          first successful SMB connect+read through the vip (staggered retriers)
survivor_stall_s       worst open+read+close latency through a surviving node's IP around the fault
power_on_s             the victim was powered on again (a fresh node, same identity)
rejoin_s               a survivor sees the victim OK again
failback_s             the victim hosts a public IP again
unregistered_reset_s   a plain TCP connection nobody registered gets ECONNRESET (CTDB: never)
tickled_reset_s        a plain TCP connection added with `ctdb addtickle` gets ECONNRESET
smb_session_closed_s   the open SMB session (reads every 0.2 s) sees its connection closed
=====================  =================================================================
"""

from __future__ import annotations

from typing import Any, Iterable

SMB_PORT = 445
PLAIN_PORT = 7777      # a listener on the victim that nobody registers with the daemon
TICKLED_PORT = 7778    # the same, registered on every node with `ctdb addtickle`

METRICS = ("detect_s", "takeover_s", "ping_s", "reset_s", "smb_resumed_s", "survivor_stall_s",
           "power_on_s", "rejoin_s", "failback_s", "unregistered_reset_s", "tickled_reset_s",
           "smb_session_closed_s")

WHY = {
    "detect_s": "no survivor logged or showed the victim as dead",
    "takeover_s": "the victim's public IP was never taken over",
    "ping_s": "the public IP never answered ping after the cut",
    "reset_s": "the client blocked on vip:445 never got a reset",
    "smb_resumed_s": "no SMB operation through the public IP succeeded after the cut",
    "survivor_stall_s": "no SMB operation through a survivor ran during the fault",
    "power_on_s": "the victim was not powered on again",
    "rejoin_s": "the victim never showed OK again after power-on",
    "failback_s": "the victim hosted no public IP again after power-on",
    "unregistered_reset_s": "the unregistered TCP connection was never reset (the daemon did "
                            "not know it: no tickle)",
    "tickled_reset_s": "the TCP connection added with `ctdb addtickle` was never reset",
    "smb_session_closed_s": "the open SMB session never noticed its server was gone",
}


def failover_metrics(events: Iterable[dict[str, Any]], *, t_cut: float, t_killed: float,
                     victim: int, vip: str, t_power_on: float | None,
                     window_end: float) -> tuple[dict[str, float | None], list[str]]:
    events = [e for e in events if isinstance(e.get("t"), (int, float))]
    after_cut = [e for e in events if e["t"] >= t_cut]

    def since_cut(t: float | None) -> float | None:
        return None if t is None else round(t - t_cut, 4)

    def first(predicate, pool=after_cut) -> float | None:
        times = [e["t"] for e in pool if predicate(e)]
        return min(times) if times else None

    m: dict[str, float | None] = {}
    m["detect_s"] = since_cut(
        first(lambda e: e["kind"] == "state" and e.get("what") == "log"
              and e.get("event") == "detect" and e.get("dead_node") == victim)
        or first(lambda e: e["kind"] == "state" and e.get("what") == "node_state"
                 and e.get("subject") == victim and "DISCONNECTED" in str(e.get("value"))))
    m["takeover_s"] = since_cut(
        first(lambda e: e["kind"] == "state" and e.get("what") == "log"
              and e.get("event") == "takeover" and e.get("ip") == vip)
        or first(lambda e: e["kind"] == "state" and e.get("what") == "ip_owner"
                 and e.get("ip") == vip and e.get("value", -1) not in (-1, victim)))
    m["ping_s"] = since_cut(first(
        lambda e: e.get("probe") == "ping" and e.get("what") == "reply" and e["t"] > t_killed))
    m["reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{SMB_PORT}")))
    m["unregistered_reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{PLAIN_PORT}")))
    m["tickled_reset_s"] = since_cut(first(lambda e: _tcp_reset(e, f"{vip}:{TICKLED_PORT}")))
    m["smb_resumed_s"] = since_cut(first(
        lambda e: e["kind"] == "op" and e.get("process", "").startswith("smb-retry")
        and e.get("type") == "ok" and e["t"] - e.get("latency_s", 0) >= t_cut))
    m["smb_session_closed_s"] = since_cut(first(
        lambda e: e.get("probe") == "smb_hold" and e.get("what") == "closed"))
    stall = [e.get("latency_s") for e in events
             if e["kind"] == "op" and e.get("role") == "survivor" and e.get("type") in ("ok", "fail")
             and not e.get("aborted")          # cut short because the probe was stopping
             and e.get("latency_s") is not None
             and e["t"] >= t_cut and e["t"] - e["latency_s"] <= window_end]
    m["survivor_stall_s"] = round(max(stall), 4) if stall else None
    m["power_on_s"] = since_cut(t_power_on)
    if t_power_on is not None:
        after_on = [e for e in events if e["t"] >= t_power_on]
        m["rejoin_s"] = since_cut(first(
            lambda e: e["kind"] == "state" and e.get("what") == "node_state"
            and e.get("subject") == victim and e.get("value") == "OK", after_on))
        m["failback_s"] = since_cut(first(
            lambda e: e["kind"] == "state" and e.get("what") == "ip_owner"
            and e.get("value") == victim, after_on))
    else:
        m["rejoin_s"] = m["failback_s"] = None
    notes = [f"{name}: {WHY[name]}" for name in METRICS if m.get(name) is None]
    return m, notes


def _tcp_reset(event: dict[str, Any], target: str) -> bool:
    return (event.get("probe") == "tcp_hold" and event.get("target") == target
            and event.get("what") == "reset")
