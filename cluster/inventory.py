"""The remote-hosts inventory: which machines form the cluster, how to reach them, how to reset them.

A TOML file (read with ``tomllib``); every mistake is an ``InventoryError`` naming the file and
the key, e.g. ``inventory.toml: host[2].private_address: 198.18.0.1 is also host[0]'s``::

    [cluster]
    shared_dir = "/clusterfs/ctdblab"    # the cluster filesystem, mounted at this path on every host
    install_dir = "/opt/ctdblab"          # where the backend copies pyctdbd and the probes (default)

    [ssh]                                 # all optional
    user = "root"                         # for targets without user@
    identity_file = "~/.ssh/ctdblab"
    known_hosts_file = "~/.ssh/known_hosts"
    strict_host_key_checking = "yes"      # yes | accept-new
    connect_timeout = 5                   # s, OpenSSH ConnectTimeout
    command_timeout = 30                  # s, default limit of one remote command
    options = ["-o", "Port=22"]           # further ssh(1) arguments

    [power]                               # needed only for a hard reset (--allow-hard-reset)
    # off_command = ["ipmitool", "-H", "{bmc}", "chassis", "power", "off"]   # default: sysrq-b
    on = "command"                        # "command": run on_command, or "wait": the host returns
    on_command = ["ipmitool", "-H", "{bmc}", "chassis", "power", "on"]
    boot_timeout = 600                    # s until SSH answers again

    [[host]]                              # one per cluster node, in PNN order
    name = "blade1"
    ssh = "root@blade1.mgmt"              # OpenSSH destination
    private_address = "198.18.0.1"          # the node's address on the cluster network (nodes file)
    public_interface = "eth1"
    public_address = "198.18.1.1/24"        # the host's own address on public_interface
    public_ips = ["198.18.1.100", "198.18.1.101"]   # floating IPs this node may host
    vars = { bmc = "blade1-bmc.mgmt" }    # extra {placeholders} for the power commands

    [[client]]                            # hosts that run the workload probes
    name = "client1"
    ssh = "root@client1.mgmt"
    address = "198.18.1.200"
    python = "/opt/probes/bin/python3"    # an interpreter with smbprotocol (default python3)

Power commands run on the orchestrator (not on the host), as argv lists; ``{name}``, ``{ssh}``,
``{private_address}`` and the host's ``vars`` are filled in.  An ``off_command`` may print one
JSON line ``{"t_cut": ..., "t_killed": ..., "killed": ...}`` to say exactly when it cut the host
(the lab test's hook does); otherwise the instant it returned is the cut.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdblab.errors import UserError

DEFAULT_INSTALL_DIR = "/opt/ctdblab"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_COMMAND_TIMEOUT = 30.0
DEFAULT_BOOT_TIMEOUT = 600.0
POWER_ON_MODES = ("command", "wait")
HOST_KEY_CHECKING = ("yes", "accept-new")
PLACEHOLDERS = ("name", "ssh", "private_address")


class InventoryError(UserError):
    pass


@dataclass(frozen=True)
class SshSettings:
    user: str | None = None
    identity_file: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: str = "yes"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PowerPolicy:
    off_command: tuple[str, ...] | None = None     # None: echo b > /proc/sysrq-trigger over SSH
    on: str | None = None                          # "command" | "wait" | None (not configured)
    on_command: tuple[str, ...] | None = None
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT

    def check_hard_reset(self, allowed: bool, source: str) -> None:
        """A hard reset needs the operator's flag AND a configured way back (see README)."""
        if not allowed:
            raise InventoryError("a hard reset of a remote host needs --allow-hard-reset "
                                 "(it reboots the machine without syncing its disks)")
        if self.on is None:
            raise InventoryError(f"{source}: power.on: say how a reset host comes back before "
                                 f"allowing hard resets: on = \"command\" (with on_command) or "
                                 f"on = \"wait\"")


@dataclass(frozen=True)
class HostEntry:
    name: str
    ssh: str
    private_address: str
    public_interface: str
    public_address: str                 # address/prefixlen
    public_ips: tuple[str, ...]
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def public_network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Interface(self.public_address).network

    @property
    def public_prefixlen(self) -> int:
        return self.public_network.prefixlen

    @property
    def own_public_ip(self) -> str:
        return str(ipaddress.IPv4Interface(self.public_address).ip)

    def placeholders(self) -> dict[str, str]:
        return {"name": self.name, "ssh": self.ssh, "private_address": self.private_address,
                **self.vars}


@dataclass(frozen=True)
class ClientEntry:
    name: str
    ssh: str
    address: str
    python: str = "python3"


@dataclass(frozen=True)
class Inventory:
    source: Path
    hosts: tuple[HostEntry, ...]
    clients: tuple[ClientEntry, ...]
    shared_dir: str
    install_dir: str = DEFAULT_INSTALL_DIR
    ssh: SshSettings = SshSettings()
    power: PowerPolicy = PowerPolicy()

    def public_ips(self) -> list[str]:
        """Every floating IP of the cluster, each once, in the order the inventory names them."""
        seen: dict[str, None] = {}
        for host in self.hosts:
            for ip in host.public_ips:
                seen.setdefault(ip, None)
        return list(seen)


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryError(f"cannot read inventory {path}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"{path}: not valid TOML: {e}") from None
    return parse_inventory(data, path)


def parse_inventory(data: dict[str, Any], source: Path) -> Inventory:
    r = _Reader(source)
    r.only_keys(data, "", ("cluster", "ssh", "power", "host", "client"))
    cluster = r.table(data, "cluster", required=True)
    r.only_keys(cluster, "cluster", ("shared_dir", "install_dir"))
    shared_dir = r.abs_path(cluster, "cluster.shared_dir", required=True)
    install_dir = r.abs_path(cluster, "cluster.install_dir") or DEFAULT_INSTALL_DIR
    ssh = _parse_ssh(r, r.table(data, "ssh"))
    power = _parse_power(r, r.table(data, "power"))
    host_items = data.get("host")
    if not host_items:
        raise InventoryError(f"{source}: no [[host]] entries: a cluster needs at least one host")
    if not isinstance(host_items, list):
        raise InventoryError(f"{source}: host: must be an array of tables ([[host]])")
    hosts = tuple(_parse_host(r, item, f"host[{i}]") for i, item in enumerate(host_items))
    client_items = data.get("client", [])
    if not isinstance(client_items, list):
        raise InventoryError(f"{source}: client: must be an array of tables ([[client]])")
    clients = tuple(_parse_client(r, item, f"client[{i}]") for i, item in enumerate(client_items))
    _check_unique(r, hosts, clients)
    _check_power_placeholders(r, power, hosts)
    return Inventory(source=source, hosts=hosts, clients=clients, shared_dir=shared_dir,
                     install_dir=install_dir, ssh=ssh, power=power)


def expand_command(template: tuple[str, ...], host: HostEntry) -> list[str]:
    """A power command's argv with the host's placeholders filled in."""
    values = host.placeholders()
    return [arg.format_map(values) for arg in template]


# -- parts ----------------------------------------------------------------------------------------
def _parse_ssh(r: "_Reader", t: dict) -> SshSettings:
    r.only_keys(t, "ssh", ("user", "identity_file", "known_hosts_file", "strict_host_key_checking",
                           "connect_timeout", "command_timeout", "options"))
    checking = r.string(t, "ssh.strict_host_key_checking") or "yes"
    if checking not in HOST_KEY_CHECKING:
        r.fail("ssh.strict_host_key_checking", f"must be one of {', '.join(HOST_KEY_CHECKING)} "
                                               f"(never 'no'), not {checking!r}")
    return SshSettings(
        user=r.string(t, "ssh.user"), identity_file=r.string(t, "ssh.identity_file"),
        known_hosts_file=r.string(t, "ssh.known_hosts_file"), strict_host_key_checking=checking,
        connect_timeout=r.seconds(t, "ssh.connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        command_timeout=r.seconds(t, "ssh.command_timeout", DEFAULT_COMMAND_TIMEOUT),
        options=tuple(r.string_list(t, "ssh.options") or ()))


def _parse_power(r: "_Reader", t: dict) -> PowerPolicy:
    r.only_keys(t, "power", ("off_command", "on", "on_command", "boot_timeout"))
    on = r.string(t, "power.on")
    if on is not None and on not in POWER_ON_MODES:
        r.fail("power.on", f"must be \"command\" or \"wait\", not {on!r}")
    on_command = r.string_list(t, "power.on_command", nonempty=True)
    if on == "command" and on_command is None:
        r.fail("power.on_command", "missing: power.on = \"command\" needs the command to run")
    if on != "command" and on_command is not None:
        r.fail("power.on_command", "given, but power.on is not \"command\"")
    off = r.string_list(t, "power.off_command", nonempty=True)
    return PowerPolicy(off_command=tuple(off) if off else None, on=on,
                       on_command=tuple(on_command) if on_command else None,
                       boot_timeout=r.seconds(t, "power.boot_timeout", DEFAULT_BOOT_TIMEOUT))


def _parse_host(r: "_Reader", t: Any, key: str) -> HostEntry:
    if not isinstance(t, dict):
        r.fail(key, "must be a table")
    r.only_keys(t, key, ("name", "ssh", "private_address", "public_interface", "public_address",
                         "public_ips", "vars"))
    name = r.string(t, f"{key}.name", required=True)
    ssh = r.string(t, f"{key}.ssh", required=True)
    private = r.ipv4(t, f"{key}.private_address", required=True)
    iface = r.string(t, f"{key}.public_interface", required=True)
    if len(iface) > 15 or "/" in iface or " " in iface:
        r.fail(f"{key}.public_interface", f"{iface!r} is not an interface name")
    public_address = r.string(t, f"{key}.public_address", required=True)
    try:
        own = ipaddress.IPv4Interface(public_address)
    except ValueError:
        r.fail(f"{key}.public_address", f"{public_address!r} is not an IPv4 address/prefixlen")
    if "/" not in public_address or own.network.prefixlen == 32:
        r.fail(f"{key}.public_address", f"{public_address!r} needs the prefix length of the "
                                         f"public network (e.g. 198.18.1.1/24)")
    ips = r.string_list(t, f"{key}.public_ips", required=True, nonempty=True)
    for i, ip in enumerate(ips):
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            r.fail(f"{key}.public_ips[{i}]", f"{ip!r} is not an IPv4 address")
        if addr not in own.network:
            r.fail(f"{key}.public_ips[{i}]", f"{ip} is outside {own.network}, the network of "
                                             f"{iface} ({public_address}) on this host")
        if addr == own.ip:
            r.fail(f"{key}.public_ips[{i}]", f"{ip} is the host's own public_address")
    if len(set(ips)) != len(ips):
        r.fail(f"{key}.public_ips", "lists an address twice")
    variables = r.table(t, "vars", prefix=key)
    for k, v in variables.items():
        if not isinstance(v, str):
            r.fail(f"{key}.vars.{k}", "must be a string")
        if k in PLACEHOLDERS:
            r.fail(f"{key}.vars.{k}", f"{{{k}}} is set from the host entry already")
    return HostEntry(name=name, ssh=ssh, private_address=private, public_interface=iface,
                     public_address=public_address, public_ips=tuple(ips), vars=dict(variables))


def _parse_client(r: "_Reader", t: Any, key: str) -> ClientEntry:
    if not isinstance(t, dict):
        r.fail(key, "must be a table")
    r.only_keys(t, key, ("name", "ssh", "address", "python"))
    return ClientEntry(name=r.string(t, f"{key}.name", required=True),
                       ssh=r.string(t, f"{key}.ssh", required=True),
                       address=r.ipv4(t, f"{key}.address", required=True),
                       python=r.string(t, f"{key}.python") or "python3")


def _check_unique(r: "_Reader", hosts: tuple[HostEntry, ...], clients: tuple[ClientEntry, ...]) -> None:
    names: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for kind, entries in (("host", hosts), ("client", clients)):
        for i, e in enumerate(entries):
            key = f"{kind}[{i}]"
            if e.name in names:
                r.fail(f"{key}.name", f"{e.name!r} is also {names[e.name]}'s name")
            names[e.name] = key
            own = ([("private_address", e.private_address), ("public_address", e.own_public_ip)]
                   if kind == "host" else [("address", e.address)])
            for field_name, addr in own:
                if addr in addresses:
                    r.fail(f"{key}.{field_name}", f"{addr} is also {addresses[addr]}")
                addresses[addr] = f"{key}.{field_name}"
    for i, host in enumerate(hosts):
        for j, ip in enumerate(host.public_ips):
            if ip in addresses:
                r.fail(f"host[{i}].public_ips[{j}]", f"{ip} is also {addresses[ip]}: a floating "
                                                     f"IP must be no host's own address")


def _check_power_placeholders(r: "_Reader", power: PowerPolicy, hosts: tuple[HostEntry, ...]) -> None:
    for key, template in (("power.off_command", power.off_command),
                          ("power.on_command", power.on_command)):
        for i, host in enumerate(hosts):
            try:
                expand_command(template or (), host)
            except KeyError as e:
                r.fail(key, f"uses {{{e.args[0]}}}, which host[{i}] ({host.name}) does not "
                            f"define (in its vars table)")
            except (ValueError, IndexError) as e:
                r.fail(key, f"bad placeholder: {e}")


class _Reader:
    """Typed access to TOML values; every error names the file and the key."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, key: str, message: str):
        raise InventoryError(f"{self.source}: {key}: {message}")

    def only_keys(self, t: dict, where: str, allowed: tuple[str, ...]) -> None:
        for k in t:
            if k not in allowed:
                self.fail(f"{where}.{k}" if where else k,
                          f"unknown key (expected one of: {', '.join(allowed)})")

    def table(self, t: dict, key: str, *, required: bool = False, prefix: str = "") -> dict:
        full = f"{prefix}.{key}" if prefix else key
        value = t.get(key)
        if value is None:
            if required:
                self.fail(full, f"missing table [{full}]")
            return {}
        if not isinstance(value, dict):
            self.fail(full, "must be a table")
        return value

    def string(self, t: dict, key: str, *, required: bool = False) -> str | None:
        value = t.get(key.rsplit(".", 1)[-1])
        if value is None:
            if required:
                self.fail(key, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def string_list(self, t: dict, key: str, *, required: bool = False,
                    nonempty: bool = False) -> list[str] | None:
        value = t.get(key.rsplit(".", 1)[-1])
        if value is None:
            if required:
                self.fail(key, "missing")
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(key, f"must be a list of strings (an argv), not {value!r}")
        if nonempty and not value:
            self.fail(key, "must not be empty")
        return value

    def seconds(self, t: dict, key: str, default: float) -> float:
        value = t.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.fail(key, f"must be a positive number of seconds, not {value!r}")
        return float(value)

    def ipv4(self, t: dict, key: str, *, required: bool = False) -> str:
        text = self.string(t, key, required=required)
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            self.fail(key, f"{text!r} is not an IPv4 address")

    def abs_path(self, t: dict, key: str, *, required: bool = False) -> str | None:
        text = self.string(t, key, required=required)
        if text is not None and (not text.startswith("/") or any(c in text for c in "\n'\"")):
            self.fail(key, f"must be an absolute path without quotes, not {text!r}")
        return text.rstrip("/") if text else text
