#!/usr/bin/env python3
"""The lab test's power hook: ``blade_power.py SOCKET off|on LAB_NODE``.

test_remote_hosts.py names this script as the inventory's ``off_command`` and ``on_command``.
It asks the test process (listening on the Unix socket SOCKET) to power the Mininet node
LAB_NODE off (the lab's own sysrq-style power-off: cut, SIGKILL, delete links) or on (a fresh
node whose sshd starts again) and prints the test's JSON answer — for ``off`` the
``{"t_cut", "t_killed", "killed"}`` the remote-hosts backend records.  It never touches
/proc/sysrq-trigger.  Exit status 0 when the test did it, 1 otherwise.
"""

from __future__ import annotations

import json
import socket
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("off", "on"):
        print("usage: blade_power.py SOCKET off|on LAB_NODE", file=sys.stderr)
        return 2
    path, action, node = argv
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(f"{action} {node}\n".encode())
        answer = s.makefile().readline()
    print(answer.strip())
    try:
        return 0 if json.loads(answer).get("ok") else 1
    except ValueError:
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
