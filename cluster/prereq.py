"""Check what the lab needs before touching the machine, with one clear line per problem."""

from __future__ import annotations

import os
import shutil

from ctdblab.errors import UserError

LAB_TOOLS = {
    "mnexec": "mininet", "brctl": "bridge-utils", "ip": "iproute2", "tc": "iproute2",
    "nft": "nftables", "ping": "iputils-ping", "tcpdump": "tcpdump", "ss": "iproute2",
}


def check_lab() -> None:
    """Root, Mininet and the network tools; raises UserError naming what is missing."""
    if os.geteuid() != 0:
        raise UserError("the lab must run as root (it builds network namespaces)")
    try:
        import mininet.node  # noqa: F401
    except ImportError:
        raise UserError("Python cannot import mininet: install Debian's `mininet` package and use "
                        "a venv made with --system-site-packages (./ctdblab.sh does both)") from None
    missing = [f"{tool} (package {pkg})" for tool, pkg in LAB_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise UserError(f"missing tools: {', '.join(missing)}; ./ctdblab.sh installs them")
