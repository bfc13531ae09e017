"""keepalived.conf for one lab node: VRRPv3, one instance per public IP, unicast peers.

Pure text generation; ``KeepalivedLauncher`` (launchers.py) writes the result under the node's
run directory and starts keepalived with it (never /etc/keepalived).

Choices (keepalived as an operator would set it up to do CTDB's public-IP job):

- **One VRRP instance per public IP** (virtual_router_id = IP index + 1).  CTDB moves every
  public IP on its own and spreads them over the nodes; a single instance holding all IPs would
  put every IP on one node.  A ``vrrp_sync_group`` is not wanted either: the IPs are independent.
- **Priorities spread the IPs like CTDB does**: IP k's MASTER is node ``k mod N``; its backups
  follow in PNN order after it (``priority = 254 - (p - k) mod N``), so the IPs of a dead node
  go to different survivors when there are several per node.  Every instance starts as BACKUP
  (the highest priority wins after the master-down timer) and preempts, so a node that comes
  back takes its IP back — as CTDB rebalances IPs onto a rejoined node.
- **Unicast adverts on the private network** (``unicast_src_ip`` = the node's private address,
  ``unicast_peer`` = every other node's): the peers are known, as CTDB's nodes file knows them,
  the adverts travel where CTDB's heartbeats travel, and nothing depends on multicast over the
  lab's bridges.  The VIP itself lives on the public interface, and ``track_interface`` on it
  puts an instance in FAULT (giving the IP up) when the node's public link goes down.
- **advert_int from the tunables profile** (lab.md Part C: 0.1 s failed over in 0.35 s without
  flapping; 0.01 s, VRRPv3's minimum, in 0.03 s).  VRRPv3 counts it in centiseconds: 0.01 to
  40.95 s, in steps of 0.01 s.
- GARP after becoming MASTER: keepalived's defaults (a burst of 5 at once, another after 5 s):
  what an operator gets.
- ``vrrp_notify_fifo``: keepalived writes every state change to a FIFO, right after adding or
  removing the IP; keepalived_notify.py reads it and logs each change with a microsecond
  timestamp (a notify script would be stamped a fork and two execs late).
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal, InvalidOperation

from ctdblab.errors import UserError

MAX_PRIORITY = 254          # 255 is reserved for the address owner (RFC 5798)
MIN_ADVERT_S = Decimal("0.01")
MAX_ADVERT_S = Decimal("40.95")
MAX_INSTANCES = 255         # virtual_router_id is 1..255


class KeepalivedConfigError(UserError):
    """Parameters keepalived would refuse (or silently change)."""


def advert_interval(value: float | str) -> Decimal:
    """A VRRPv3 advert interval in seconds, validated: 0.01..40.95 in steps of 0.01."""
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        raise KeepalivedConfigError(f"VRRP advert interval {value!r} is not a number of seconds") from None
    if not seconds.is_finite() or not MIN_ADVERT_S <= seconds <= MAX_ADVERT_S:
        raise KeepalivedConfigError(f"VRRP advert interval {value} s is outside VRRPv3's range "
                                    f"{MIN_ADVERT_S}..{MAX_ADVERT_S} s")
    if seconds % MIN_ADVERT_S != 0:
        raise KeepalivedConfigError(f"VRRP advert interval {value} s is not a whole number of "
                                    "centiseconds (VRRPv3 counts it in 0.01 s steps)")
    return seconds


def priority(pnn: int, ip_index: int, num_nodes: int) -> int:
    """Node ``pnn``'s priority for public IP ``ip_index``: IP k's MASTER is node k mod N."""
    if not 0 <= pnn < num_nodes:
        raise KeepalivedConfigError(f"node {pnn} is not one of the {num_nodes} nodes")
    if num_nodes > MAX_PRIORITY:
        raise KeepalivedConfigError(f"{num_nodes} nodes need more than the {MAX_PRIORITY} VRRP "
                                    "priorities there are")
    return MAX_PRIORITY - (pnn - ip_index) % num_nodes


def instance_name(ip: str) -> str:
    return "vip_" + ip.replace(".", "_")


def keepalived_conf(pnn: int, node_ips: list[str], public_ips: list[str], *, private_iface: str,
                    public_iface: str, prefixlen: int, advert_s: float | str, notify_fifo: str) -> str:
    """The keepalived.conf of node ``pnn``; ``node_ips`` are the private addresses by PNN."""
    interval = advert_interval(advert_s)
    if len(node_ips) < 2:
        raise KeepalivedConfigError("keepalived needs at least 2 nodes (a backup for each IP)")
    if not 0 <= pnn < len(node_ips):
        raise KeepalivedConfigError(f"node {pnn} is not one of the {len(node_ips)} nodes "
                                    f"(PNNs 0..{len(node_ips) - 1})")
    if not public_ips:
        raise KeepalivedConfigError("no public IPs: keepalived would have nothing to move")
    if len(public_ips) > MAX_INSTANCES:
        raise KeepalivedConfigError(f"{len(public_ips)} public IPs need more than the "
                                    f"{MAX_INSTANCES} VRRP router ids there are")
    for ip in node_ips + public_ips:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise KeepalivedConfigError(f"{ip!r} is not an IPv4 address") from None
    for what, ips in (("node", node_ips), ("public", public_ips)):
        if len(set(ips)) != len(ips):
            raise KeepalivedConfigError(f"{what} IPs repeat: {', '.join(ips)}")
    if not 0 < prefixlen <= 32:
        raise KeepalivedConfigError(f"prefix length {prefixlen} is not 1..32")
    peers = [ip for other, ip in enumerate(node_ips) if other != pnn]
    lines = ["# written by ctdblab: one VRRPv3 instance per public IP, unicast on the private network",
             "global_defs {",
             f"    router_id ctdblab-node{pnn}",
             "    vrrp_version 3",
             f"    vrrp_notify_fifo {notify_fifo}",
             "}", ""]
    for index, ip in enumerate(public_ips):
        lines += [
            f"vrrp_instance {instance_name(ip)} {{",
            "    state BACKUP",
            f"    interface {private_iface}",
            f"    virtual_router_id {index + 1}",
            f"    priority {priority(pnn, index, len(node_ips))}",
            f"    advert_int {interval}",
            f"    unicast_src_ip {node_ips[pnn]}",
            "    unicast_peer {",
            *(f"        {peer}" for peer in peers),
            "    }",
            "    track_interface {",
            f"        {public_iface}",
            "    }",
            "    virtual_ipaddress {",
            f"        {ip}/{prefixlen} dev {public_iface}",
            "    }",
            "}", ""]
    return "\n".join(lines)
