"""Catch sockets opened lazily from the wrong network namespace.

Sockets belong to the namespace of the thread that creates them. Objects that open sockets
on first use remember the namespace they were constructed in and refuse to open one from
anywhere else (a GARP on the host's own ``eth0`` instead of the node's would be silent).
"""

from __future__ import annotations

import os

from .errors import FailoverError

_SELF_NETNS = "/proc/thread-self/ns/net"


def current_netns() -> tuple[int, int] | None:
    """(device, inode) identifying the calling thread's network namespace, if readable."""
    try:
        st = os.stat(_SELF_NETNS)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class NetnsGuard:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.netns = current_netns()

    def check(self) -> None:
        now = current_netns()
        if self.netns is not None and now is not None and now != self.netns:
            raise FailoverError(
                f"{self.owner} must open its sockets in the network namespace it was created in, "
                "not from a different network namespace (call prepare() there)")
