"""pyctdbd's configuration: CTDB's own files (ctdb.conf, nodes, public_addresses, ctdb.tunables),
read the way CTDB 4.17 reads them, and the tunables table (CTDB's 62 in wire order + pyctdbd's).

``load_config()`` loads everything at once and reports every problem it finds; the per-file
parsers take text and a file name and do no I/O (their ``load_*`` wrappers read the file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .clib import IPAddress
from .ctdbconf import (
    OPTIONS,
    ClusterLock,
    CtdbConf,
    LogLocation,
    check_ctdb_conf_paths,
    debug_level_name,
    load_ctdb_conf,
    parse_cluster_lock,
    parse_ctdb_conf,
    parse_debug_level,
    parse_log_location,
    validate_ctdb_conf,
)
from .errors import ConfigError, ConfigErrors, raise_collected
from .nodes import NodeEntry, find_my_node, find_my_pnn, load_nodes_file, parse_nodes
from .paths import Paths, PathsError
from .public_addresses import (
    PublicAddress,
    load_home_nodes,
    load_public_addresses,
    parse_home_nodes,
    parse_public_addresses,
)
from .tunables import (
    ALL_TUNABLES,
    CTDB_TUNABLES,
    LISTING_ORDER,
    PYCTDBD_TUNABLES,
    WIRE_COUNT,
    WIRE_ORDER,
    Tunables,
    TunableSpec,
    TunableValueError,
    UnknownTunableError,
    load_tunables_file,
    load_tunables_text,
    tunable_spec,
)

__all__ = [
    "ALL_TUNABLES", "CTDB_TUNABLES", "ClusterLock", "ConfigError", "ConfigErrors", "CtdbConf",
    "DaemonConfig", "LISTING_ORDER", "LogLocation", "NodeEntry", "OPTIONS", "PYCTDBD_TUNABLES",
    "Paths", "PathsError", "PublicAddress", "TunableSpec", "TunableValueError", "Tunables",
    "UnknownTunableError", "WIRE_COUNT", "WIRE_ORDER", "check_ctdb_conf_paths", "debug_level_name",
    "find_my_node", "find_my_pnn", "load_config", "load_ctdb_conf", "load_home_nodes",
    "load_nodes_file", "load_public_addresses", "load_tunables_file", "load_tunables_text",
    "nodes_list_command", "parse_cluster_lock", "parse_ctdb_conf", "parse_debug_level",
    "parse_home_nodes", "parse_log_location", "parse_nodes", "parse_public_addresses",
    "raise_collected", "tunable_spec", "validate_ctdb_conf",
]

RunCommand = Callable[[Sequence[str]], str]


@dataclass(frozen=True)
class DaemonConfig:
    """Everything pyctdbd reads at start-up."""

    paths: Paths
    conf: CtdbConf
    log_location: LogLocation
    cluster_lock: ClusterLock | None
    nodes_source: str  # the nodes file, or "!command" ([cluster] nodes list)
    nodes: tuple[NodeEntry, ...]
    public_addresses: tuple[PublicAddress, ...]
    home_nodes: Mapping[IPAddress, int]
    tunables: Tunables
    warnings: tuple[str, ...] = field(default=())

    def my_node(self, local_addresses: Sequence[object] = ()) -> NodeEntry:
        """This node's entry: ``[cluster] node address`` if set, else the first nodes-file
        address found among ``local_addresses``. ConfigError if none matches."""
        return find_my_node(self.nodes, local_addresses, self.conf.node_address, self.nodes_source)


def nodes_list_command(setting: str) -> tuple[str, ...] | None:
    """For ``nodes list = !command args``: the argv (split on blanks, no shell); else None."""
    if not setting.startswith("!"):
        return None
    return tuple(arg for arg in setting[1:].replace("\t", " ").split(" ") if arg)


def _load_nodes(source: str, run_command: RunCommand | None) -> list[NodeEntry]:
    argv = nodes_list_command(source)
    if argv is None:
        return load_nodes_file(source)
    if not argv:
        raise ConfigError("[cluster] nodes list: the command after '!' is empty", source)
    if run_command is None:
        raise ConfigError("[cluster] nodes list is a command, and load_config was given no "
                          "run_command to run it", source)
    try:
        output = run_command(argv)
    except Exception as exc:  # the caller's runner: report any failure as a config problem
        raise ConfigError(f"nodes list command failed: {exc}", source) from None
    return parse_nodes(output, source)


def load_config(etc_dir: str | None = None, *, env: Mapping[str, str] | None = None,
                paths: Paths | None = None, strict: bool = True, check_filesystem: bool = True,
                run_command: RunCommand | None = None, **path_overrides: object) -> DaemonConfig:
    """Load ctdb.conf, the nodes list, public_addresses, home_nodes and ctdb.tunables together.

    Paths come from ``paths``, else ``Paths.from_env(env, etc_dir=etc_dir, **path_overrides)``
    (``etc_dir`` moves every file; default: where CTDB 4.17 looks). ``strict`` rejects unknown
    ctdb.conf options (as ``ctdb-config validate``) and bad ctdb.tunables lines;
    ``strict=False`` behaves like ctdbd: unknown options are ignored and bad tunables lines
    skipped (the good ones apply), each with a warning. ``check_filesystem`` runs the stat() checks ctdb-config and ctdbd make (database
    directories, debug scripts, log directory). ``run_command(argv) -> stdout`` runs a
    ``nodes list = !command``. Missing ctdb.conf, public_addresses, home_nodes or ctdb.tunables
    mean defaults; a missing nodes file is an error. All problems are raised together
    (ConfigError, or ConfigErrors when there are several).
    """
    if paths is None:
        if etc_dir is not None:
            path_overrides.setdefault("etc_dir", etc_dir)
        try:
            paths = Paths.from_env(env, **path_overrides)
        except PathsError as exc:
            raise ConfigError(str(exc)) from None
    errors: list[ConfigError] = []
    warnings: list[str] = []

    try:
        conf = load_ctdb_conf(paths.config_file, strict)
    except ConfigError as exc:
        errors.extend(exc.errors)
        conf = CtdbConf(path=paths.config_file)
    warnings.extend(conf.warnings)
    if check_filesystem:
        errors.extend(check_ctdb_conf_paths(conf, paths.etc_dir, startup=True))

    cluster_lock = None
    try:
        cluster_lock = conf.cluster_lock_spec()
    except ConfigError as exc:
        errors.append(exc)

    nodes_source = conf.nodes_list if conf.nodes_list is not None else paths.nodes_file
    nodes: list[NodeEntry] = []
    try:
        nodes = _load_nodes(nodes_source, run_command)
        if not any(not entry.deleted for entry in nodes):
            errors.append(ConfigError("the nodes list has no (undeleted) nodes", nodes_source))
    except ConfigError as exc:
        errors.extend(exc.errors)

    public: list[PublicAddress] = []
    try:
        public = load_public_addresses(paths.public_addresses_file, warnings)
    except ConfigError as exc:
        errors.extend(exc.errors)

    home: dict[IPAddress, int] = {}
    try:
        home = load_home_nodes(paths.home_nodes_file)
    except ConfigError as exc:
        errors.extend(exc.errors)

    tunables = Tunables()
    try:
        if strict:
            tunables = load_tunables_file(paths.tunables_file)
        else:
            tunable_problems: list[ConfigError] = []
            tunables = load_tunables_file(paths.tunables_file, errors_out=tunable_problems)
            warnings.extend(f"{problem} (ignored)" for problem in tunable_problems)
    except ConfigError as exc:
        errors.extend(exc.errors)

    raise_collected(errors)
    return DaemonConfig(
        paths=paths, conf=conf, log_location=conf.location(), cluster_lock=cluster_lock,
        nodes_source=nodes_source, nodes=tuple(nodes), public_addresses=tuple(public),
        home_nodes=home, tunables=tunables, warnings=tuple(warnings))
