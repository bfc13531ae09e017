"""keepalived's state changes, timestamped as they happen, in the lab's log format.

    python -m ctdblab.cluster.keepalived_notify FIFO LOG PREFIXLEN IFACE     (inside a node)

keepalived writes one line per VRRP state change to its ``vrrp_notify_fifo`` —
``INSTANCE "vip_198_19_8_3" MASTER 254`` — right after it added (or removed) the IP.  This reader,
started before keepalived and blocked on the FIFO, stamps each line on arrival with microseconds
(keepalived's own console log has whole seconds) and appends it to the node's keepalived log in
the RFC 3339 format ``cluster/daemonlog.py`` parses.  A MASTER line reads ``Takeover of IP
<ip>/<len> on interface <if>`` — CTDB's wording when it adds an IP — so the lab's log reader finds
the takeover of either daemon.  (A notify *script* would be stamped after a fork and two execs:
70 ms late on a loaded 2-core machine, later than the client's first ping reply.)
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime, timezone

PROGRAM = "keepalived-notify"


def instance_ip(name: str) -> str | None:
    """``vip_198_19_8_3`` -> ``198.19.8.3`` (keepalived_conf.instance_name's inverse)."""
    if not name.startswith("vip_"):
        return None
    parts = name[4:].split("_")
    return ".".join(parts) if len(parts) == 4 and all(p.isdigit() for p in parts) else None


def log_line(raw: str, t: float, *, prefixlen: int, iface: str, pid: int, host: str) -> str | None:
    """The log line for one FIFO line, or None if it is not a VRRP instance's state change."""
    fields = raw.split()
    if len(fields) < 3 or fields[0] != "INSTANCE":
        return None
    name, state = fields[1].strip('"'), fields[2]
    ip = instance_ip(name)
    if ip is None:
        return None
    if state == "MASTER":
        what = f"Takeover of IP {ip}/{prefixlen} on interface {iface}"
    elif state == "BACKUP":
        what = f"IP {ip}/{prefixlen} on interface {iface}: BACKUP, not holding it"
    else:
        what = f"IP {ip}/{prefixlen} on interface {iface}: state {state}"
    stamp = datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")
    return f"{stamp} {host} {PROGRAM}[{pid}]: {name} entered {state}: {what}\n"


def main(argv: list[str] | None = None) -> int:
    fifo, log, prefixlen, iface = (argv if argv is not None else sys.argv[1:])
    # O_RDWR: never an end of file while keepalived is restarted; the node's reset ends us.
    fd = os.open(fifo, os.O_RDWR)
    pid, host = os.getpid(), socket.gethostname()
    with os.fdopen(fd, "r", buffering=1) as source, open(log, "a", buffering=1) as out:
        for raw in source:
            line = log_line(raw, time.time(), prefixlen=int(prefixlen), iface=iface,
                            pid=pid, host=host)
            if line is not None:
                out.write(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
