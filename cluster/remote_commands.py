"""The commands the remote-hosts backend runs, built as data (argv lists, scripts) without I/O.

Kept apart from remote_backend.py so the mapping from a fault or a step to a command is
unit-tested without SSH (tests/unit/test_remote_commands.py).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .inventory import ClientEntry, HostEntry, PowerPolicy, expand_command
from .ssh import SshConnection

# The daemon's programs by launcher (chaos/processes.py's DAEMON_PROGRAMS, plus its helpers).
REMOTE_DAEMONS = {"pyctdbd": ("pyctdbd",), "ctdb": ("ctdbd", "ctdb-recoverd", "ctdb-eventd")}
TOOLS = ("ctdb", "smbd", "smbpasswd", "nft", "ss", "ip", "bash", "timeout", "kill", "tar")
STOCK_EVENTS = "/usr/share/ctdb/events/legacy"
EVENTS_DIR = "/etc/ctdb/events/legacy"
NFT_TABLES = ("ctdblab_partition", "ctdblab_loss")       # chaos/network.py's tables
SYSRQ_RESET = ["sh", "-c", "echo b > /proc/sysrq-trigger"]
SYSRQ_TIMEOUT = 3.0          # the command never returns: the host is gone
LOG_DIRS = ("/var/log/ctdb", "/var/log/samba")
MIN_PYTHON = (3, 11)


# -- checks before anything is changed -------------------------------------------------------------
def node_check_command(daemon: str, stock_scripts: tuple[str, ...], shared_dir: str) -> str:
    tools = TOOLS + (("ctdbd",) if daemon == "ctdb" else ())
    q = shlex.quote
    lines = [f"for t in {' '.join(tools)} python3; do command -v \"$t\" >/dev/null 2>&1 || echo \"missing $t\"; done",
             "echo \"python $(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null)\"",
             "ip -o -4 addr show | while read -r _ dev _ cidr _; do echo \"addr $dev $cidr\"; done",
             "ip -o link show | while read -r _ dev _; do echo \"link ${dev%:}\"; done",
             f"[ -d {q(shared_dir)} ] || echo 'no-shared-dir'",
             "[ -w /proc/sysrq-trigger ] || echo 'no-sysrq'"]
    for name in stock_scripts:
        lines.append(f"[ -e {q(f'{STOCK_EVENTS}/{name}.script')} ] || echo 'missing-script {name}'")
    return "\n".join(lines)


def node_problems(entry: HostEntry, report: str) -> tuple[list[str], str | None]:
    """What is wrong on a node for the inventory entry, from node_check_command's output; and
    the interface that carries its private address."""
    problems: list[str] = []
    addrs: list[tuple[str, ipaddress.IPv4Interface]] = []
    links: set[str] = set()
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "missing":
            problems.append(f"`{rest}` is not installed")
        elif word == "missing-script":
            problems.append(f"{STOCK_EVENTS}/{rest}.script is missing (Debian's ctdb package)")
        elif word == "no-shared-dir":
            problems.append("the cluster filesystem is not there (no directory at the "
                            "inventory's shared_dir)")
        elif word == "python":
            version = tuple(int(x) for x in rest.split(".") if x.isdigit())
            if version and version < MIN_PYTHON:
                problems.append(f"python3 is {rest}; pyctdbd needs 3.11 or later")
        elif word == "addr":
            dev, _, cidr = rest.partition(" ")
            try:
                addrs.append((dev.split("@")[0], ipaddress.IPv4Interface(cidr)))
            except ValueError:
                pass
        elif word == "link":
            links.add(rest.split("@")[0])
    private_iface = next((dev for dev, a in addrs if str(a.ip) == entry.private_address), None)
    if private_iface is None:
        problems.append(f"has no address {entry.private_address} (private_address); it has "
                        f"{', '.join(sorted(str(a) for _, a in addrs)) or 'no IPv4 address'}")
    if links and entry.public_interface not in links:
        problems.append(f"has no interface {entry.public_interface} (public_interface); it has "
                        f"{', '.join(sorted(links))}")
    own = ipaddress.IPv4Interface(entry.public_address)
    if entry.public_interface in links and (entry.public_interface, own) not in addrs:
        problems.append(f"{entry.public_interface} does not carry {entry.public_address} "
                        f"(public_address)")
    return problems, private_iface


def client_check_command(python: str) -> str:
    q = shlex.quote
    return "\n".join([
        "for t in ping env; do command -v \"$t\" >/dev/null 2>&1 || echo \"missing $t\"; done",
        f"{q(python)} -c 'import smbprotocol' >/dev/null 2>&1 || echo 'no-smbprotocol'",
        "ip -o -4 addr show | while read -r _ dev _ cidr _; do echo \"addr $dev $cidr\"; done"])


def client_problems(entry: ClientEntry, report: str) -> list[str]:
    problems = []
    addresses = set()
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "missing":
            problems.append(f"`{rest}` is not installed")
        elif word == "no-smbprotocol":
            problems.append(f"{entry.python} cannot import smbprotocol (the probes need it: "
                            f"pip install smbprotocol, and point python= at that interpreter)")
        elif word == "addr":
            addresses.add(rest.partition(" ")[2].split("/")[0])
    if entry.address not in addresses:
        problems.append(f"has no address {entry.address} (address)")
    return problems


# -- set-up ------------------------------------------------------------------------------------------
def shared_dirs_command(shared_dir: str) -> list[str]:
    """The directories launchers' smb.conf and ctdb.conf point at, in the cluster filesystem."""
    d = PurePosixPath(shared_dir)
    return ["mkdir", "-p", str(d / "share"), str(d / ".ctdb"), str(d / "snap"), str(d / ".snapshots")]


# Run on a node with config_spec()'s JSON on stdin.  A file the backend overwrites for the first
# time is kept as FILE.ctdblab-orig; the event-script links it replaces are listed once in
# EVENTS_DIR/.ctdblab-orig-links (name -> target), so an operator can put the host back.
WRITE_CONFIG = r"""
import json, os, shutil, sys
spec = json.load(sys.stdin)
for path, text in spec["files"].items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path) and not os.path.exists(path + ".ctdblab-orig"):
        shutil.copy2(path, path + ".ctdblab-orig")
    with open(path + ".ctdblab-new", "w") as f:
        f.write(text)
    os.replace(path + ".ctdblab-new", path)
events = spec["events_dir"]
os.makedirs(events, exist_ok=True)
links = {e: os.readlink(os.path.join(events, e)) for e in os.listdir(events)
         if e.endswith(".script") and os.path.islink(os.path.join(events, e))}
record = os.path.join(events, ".ctdblab-orig-links")
if not os.path.exists(record):
    with open(record, "w") as f:
        json.dump(links, f, indent=1)
for name in links:
    os.unlink(os.path.join(events, name))
for name, target in spec["links"].items():
    os.symlink(target, os.path.join(events, name))
"""


def config_spec(config: Any, shipped_dir: str) -> dict[str, Any]:
    """WRITE_CONFIG's input for a launchers.NodeConfig."""
    files = {f"/etc/ctdb/{name}": text for name, text in config.ctdb_files.items()}
    files["/etc/samba/smb.conf"] = config.smb_conf
    links = {f"{n}.script": f"{STOCK_EVENTS}/{n}.script" for n in config.stock_scripts}
    links.update({f"{n}.script": f"{shipped_dir}/{n}.script" for n in config.shipped_scripts})
    return {"files": files, "events_dir": EVENTS_DIR, "links": links}


def ensure_file_command(path: str, size: int) -> str:
    """A file of ``size`` random bytes at ``path``, made once (samba.ensure_test_file's job)."""
    q = shlex.quote
    return (f"[ \"$(stat -c %s {q(path)} 2>/dev/null)\" = {size} ] || "
            f"{{ head -c {size} /dev/urandom > {q(path + '.tmp')} && mv {q(path + '.tmp')} {q(path)}; }}")


# -- faults ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerOffPlan:
    argv: list[str]
    local: bool            # an off_command run here; False: sysrq-b sent over SSH
    timeout: float


def power_off_plan(policy: PowerPolicy, entry: HostEntry, ssh: SshConnection) -> PowerOffPlan:
    if policy.off_command:
        return PowerOffPlan(expand_command(policy.off_command, entry), local=True, timeout=120.0)
    return PowerOffPlan(ssh.argv(SYSRQ_RESET, timeout=None), local=False, timeout=SYSRQ_TIMEOUT)


def cut_times(output: str, *, t_sent: float, t_done: float, local: bool) -> dict[str, Any]:
    """{t_cut, t_killed, killed} of a power-off.  An off_command may print them as a JSON line
    (the lab's hook does); otherwise its return is the cut.  sysrq-b: the instant it was sent
    (the reset follows within milliseconds; the command itself never returns)."""
    for line in reversed(output.strip().splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and isinstance(found.get("t_cut"), (int, float)):
            t_cut = float(found["t_cut"])
            return {"t_cut": t_cut, "t_killed": float(found.get("t_killed", t_cut)),
                    "killed": found.get("killed")}
    t_cut = t_done if local else t_sent
    return {"t_cut": t_cut, "t_killed": t_cut, "killed": None}


def cleanup_command(entry: HostEntry) -> str:
    """Drop the backend's nftables tables and the floating IPs left on the public interface."""
    q = shlex.quote
    lines = [f"nft delete table inet {t} 2>/dev/null" for t in NFT_TABLES]
    for ip in entry.public_ips:
        lines.append(f"ip addr del {q(f'{ip}/{entry.public_prefixlen}')} dev "
                     f"{q(entry.public_interface)} 2>/dev/null")
    return "\n".join(lines) + "\ntrue"


def logs_archive_command() -> str:
    """The daemon's and Samba's logs as a tar.gz on stdout."""
    return "tar -czf - --ignore-failed-read " + " ".join(LOG_DIRS) + " 2>/dev/null"
