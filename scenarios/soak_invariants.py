"""The soak's invariants at one instant: what a truth sample or an ARP round shows wrong.

A truth sample's ``nodes`` (``events.truth_sample``) maps PNN (as a string) to ``powered``,
``addrs``, ``leader``, ``status``; an ARP round's ``answers`` maps public IP to the MACs that
answered, and ``macs`` (the run start's ``public_macs``) maps those to PNNs.

``ip_unique``      every public IP configured on exactly one powered node, and answered over ARP
                   by exactly one node
``leader_agreed``  every powered node answers ``ctdb leader``, all with the same powered PNN
``nodes_ok``       every powered node answers ``ctdb status`` and shows every powered node OK

The orchestrator's live convergence wait and the checkers call the same functions.
"""

from __future__ import annotations

from typing import Any, Iterable

INVARIANTS = ("ip_unique", "leader_agreed", "nodes_ok")


def powered(nodes: dict[str, Any]) -> list[int]:
    return sorted(int(p) for p, n in nodes.items() if n.get("powered"))


def ip_holders(nodes: dict[str, Any], ip: str) -> list[int]:
    return sorted(int(p) for p, n in nodes.items() if n.get("powered") and ip in (n.get("addrs") or ()))


def node_violations(nodes: dict[str, Any], public_ips: list[str]) -> list[tuple[str, str]]:
    """(invariant, what is wrong) for one truth sample's ``nodes``."""
    found: list[tuple[str, str]] = []
    up = powered(nodes)
    for pnn in up:
        if nodes[str(pnn)].get("addrs") is None:
            found.append(("ip_unique", f"node {pnn}: its addresses could not be read"))
    for ip in public_ips:
        holders = ip_holders(nodes, ip)
        if len(holders) != 1:
            found.append(("ip_unique", f"{ip} configured on {nodes_text(holders)}"))
    leaders = {pnn: nodes[str(pnn)].get("leader") for pnn in up}
    silent = [p for p, l in leaders.items() if l is None]
    if silent:
        found.append(("leader_agreed", f"no leader answer from {nodes_text(silent)}"))
    named = {l for l in leaders.values() if l is not None}
    if len(named) > 1:
        found.append(("leader_agreed", "nodes disagree on the leader: "
                      + ", ".join(f"{p}->{l}" for p, l in leaders.items() if l is not None)))
    elif named and next(iter(named)) not in up:
        found.append(("leader_agreed", f"the leader named, {next(iter(named))}, is not powered"))
    for pnn in up:
        status = nodes[str(pnn)].get("status")
        if status is None:
            found.append(("nodes_ok", f"node {pnn} did not answer ctdb status"))
            continue
        bad = [f"{q} {status.get(str(q), 'missing')}" for q in up if status.get(str(q)) != "OK"]
        if bad:
            found.append(("nodes_ok", f"node {pnn} sees " + ", ".join(bad)))
    return found


def arp_violations(answers: dict[str, list[str]], macs: dict[str, int],
                   public_ips: list[str]) -> list[tuple[str, str]]:
    """(``ip_unique``, what is wrong) for one ARP round: each IP answered by exactly one node."""
    found = []
    for ip in public_ips:
        who = answer_nodes(answers.get(ip, []), macs)
        if len(who) != 1:
            found.append(("ip_unique", f"{ip} answered over ARP by {nodes_text(who)}"))
    return found


def answer_nodes(mac_list: Iterable[str], macs: dict[str, int]) -> list[Any]:
    return sorted({macs.get(m.lower(), m) for m in mac_list}, key=str)


def nodes_text(nodes: list[Any]) -> str:
    if not nodes:
        return "no node"
    return ("node " if len(nodes) == 1 else "nodes ") + ", ".join(str(n) for n in nodes)
