"""Control handlers: one function per opcode, `handler(daemon, request) -> Result` (or a coroutine
for the ones that wait on event scripts or other nodes).

Status conventions follow ctdbd 4.17 (ctdb/server/ctdb_control.c and friends): "simple" controls
answer in the status (GET_PNN, GET_PID, PING, GET_RECMODE, PROCESS_EXISTS, CHECK_PID_SRVID);
SET_TUNABLE answers 1 for an obsolete tunable; GET/SET_TCP_TICKLE_LIST answer 1 for an address
that is not a public IP; unsupported controls answer -1 with an error text.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING

from .config import ConfigError, TunableValueError, UnknownTunableError, load_nodes_file, load_public_addresses
from .core.tickles import REMOTE, client_source
from .protocol import (
    INVALID_GENERATION, UNKNOWN_PNN, BanState, Control, ControlFlag, DbMap, Iface, IfaceList,
    NodeAndFlags, NodeFlag, NodeMap, PublicIp, PublicIpInfo, PublicIpList, RecMode, SockAddr, Srvid, TickleList, Timeval, TunableList, Uptime, VarList, VnnMap, pack_message,
    pack_reply, unpack_request,
)

if TYPE_CHECKING:
    from .control import Request, Result
    from .server import Daemon

log = logging.getLogger("ctdblab.daemon")
NOTICE = 25
HANDLERS: dict[int, Callable] = {}

# Samba debug levels <-> Python logging levels.
_PY_LEVEL = {0: logging.ERROR, 1: logging.WARNING, 2: NOTICE, 3: NOTICE, 4: logging.INFO,
             5: logging.INFO}


def python_level(samba_level: int) -> int:
    if samba_level >= 6:
        return logging.DEBUG
    return _PY_LEVEL.get(max(0, samba_level), logging.ERROR)


def handles(*opcodes: int) -> Callable:
    def register(fn: Callable) -> Callable:
        for opcode in opcodes:
            HANDLERS[opcode] = fn
        return fn
    return register


def _result(*args, **kwargs) -> Result:
    from .control import Result
    return Result(*args, **kwargs)


def _value(req: Request):
    return unpack_request(req.opcode, req.data)


def _reply(req: Request, value) -> Result:
    return _result(0, pack_reply(req.opcode, value))


# -- identity and liveness -----------------------------------------------------------------------
@handles(Control.GET_PNN)
def get_pnn(d: Daemon, req: Request) -> Result:
    return _result(d.my_pnn)


@handles(Control.GET_PID)
def get_pid(d: Daemon, req: Request) -> Result:
    return _result(os.getpid())


@handles(Control.PING)
def ping(d: Daemon, req: Request) -> Result:
    # ctdbd counts its clients, ctdb-recoverd among them; pyctdbd's recovery daemon is
    # built in, so it is counted here to report the same number for the same clients.
    return _result((len(d.local) if d.local is not None else 0) + 1)


@handles(Control.PROCESS_EXISTS)
def process_exists(d: Daemon, req: Request) -> Result:
    pid = _value(req)
    if d.local is not None and any(c.pid == pid for c in d.local.clients.values()):
        return _result(0)
    return _result(-1)


@handles(Control.CHECK_PID_SRVID)
def check_pid_srvid(d: Daemon, req: Request) -> Result:
    value = _value(req)
    if d.local is not None and d.local.pid_has_srvid(value.pid, value.srvid):
        return _result(0)
    return _result(-1)


@handles(Control.GET_RUNSTATE)
def get_runstate(d: Daemon, req: Request) -> Result:
    return _reply(req, int(d.runstate))


@handles(Control.GET_CAPABILITIES)
def get_capabilities(d: Daemon, req: Request) -> Result:
    return _reply(req, d.capabilities)


@handles(Control.UPTIME)
def uptime(d: Daemon, req: Request) -> Result:
    return _reply(req, Uptime(Timeval.from_seconds(time.time()), Timeval.from_seconds(d.start_wall),
                              Timeval.from_seconds(d.last_recovery_started),
                              Timeval.from_seconds(d.last_recovery_finished)))


@handles(Control.SHUTDOWN)
def shutdown(d: Daemon, req: Request) -> Result:
    log.log(NOTICE, "Received SHUTDOWN command.")
    return _result(0, after=lambda: d.request_shutdown("SHUTDOWN control"))


@handles(Control.RECD_PING)
def recd_ping(d: Daemon, req: Request) -> Result:
    return _result(0)


@handles(Control.GET_DEBUG)
def get_debug(d: Daemon, req: Request) -> Result:
    return _reply(req, d.debug_level)


@handles(Control.SET_DEBUG)
def set_debug(d: Daemon, req: Request) -> Result:
    level = _value(req)
    d.debug_level = level
    logging.getLogger("ctdblab").setLevel(python_level(level))
    return _result(0)


@handles(Control.GET_RECLOCK_FILE)
def get_reclock_file(d: Daemon, req: Request) -> Result:
    lock = d.options.config.cluster_lock
    return _reply(req, lock.setting if lock is not None else None)


# -- node map, vnnmap, recovery ------------------------------------------------------------------
def _nodemap(entries) -> NodeMap:
    return NodeMap([NodeAndFlags(pnn, flags, SockAddr(address, 0)) for pnn, flags, address in entries])


@handles(Control.GET_NODEMAP)
def get_nodemap(d: Daemon, req: Request) -> Result:
    return _reply(req, _nodemap(d.nodemap.wire_entries()))


@handles(Control.GET_NODES_FILE)
def get_nodes_file(d: Daemon, req: Request) -> Result:
    source = d.options.config.nodes_source
    if source.startswith("!"):
        entries = [(p, int(NodeFlag.DELETED) if a is None else 0, a or "0.0.0.0")
                   for p, a in enumerate(d.addresses)]
    else:
        try:
            nodes = load_nodes_file(source)
        except ConfigError as exc:
            log.error("GET_NODES_FILE: %s", exc)
            return _result(-1, errmsg=str(exc))
        entries = [(n.pnn, int(NodeFlag.DELETED) if n.deleted else 0,
                    str(n.address) if n.address is not None else "0.0.0.0") for n in nodes]
    return _reply(req, _nodemap(entries))


@handles(Control.GETVNNMAP)
def getvnnmap(d: Daemon, req: Request) -> Result:
    return _reply(req, d.vnnmap)


@handles(Control.SETVNNMAP)
def setvnnmap(d: Daemon, req: Request) -> Result:
    vnnmap: VnnMap = _value(req)
    if vnnmap.generation == INVALID_GENERATION and vnnmap.map:
        return _result(-1, errmsg="refusing the invalid generation")
    d.vnnmap = vnnmap if not d.nodemap.inactive else VnnMap(INVALID_GENERATION, vnnmap.map)
    return _result(0)


@handles(Control.GET_RECMODE)
def get_recmode(d: Daemon, req: Request) -> Result:
    return _result(int(d.recmode))


@handles(Control.SET_RECMODE)
def set_recmode(d: Daemon, req: Request) -> Result:
    mode = _value(req)
    if mode not in (RecMode.NORMAL, RecMode.ACTIVE):
        return _result(-1, errmsg=f"invalid recovery mode {mode}")
    if mode == RecMode.NORMAL and d.nodemap.inactive:
        return _result(0)       # an inactive node stays in recovery mode
    if mode != d.recmode:
        d.recmode = RecMode(mode)
        log.log(NOTICE, "Recovery mode set to %s", "NORMAL" if mode == RecMode.NORMAL else "ACTIVE")
    if mode == RecMode.ACTIVE and req.client is not None and d.election is not None:
        # `ctdb recover`: as ctdb-recoverd, the leader recovers when a node is in recovery mode.
        from .net import internal
        leader = d.election.leader
        if leader == d.my_pnn:
            d._schedule_leader_work(recovery=True, reason="recovery mode set by a client")
        elif leader != UNKNOWN_PNN:
            d.send_message(leader, internal.RECOVERY_WANTED, internal.pack_node_dead(d.my_pnn, d.my_pnn)[:4])
    return _result(0)


@handles(Control.START_RECOVERY)
def start_recovery(d: Daemon, req: Request) -> Result:
    d.last_recovery_started = time.time()
    log.error("Recovery has started")
    return _result(0)


@handles(Control.END_RECOVERY)
def end_recovery(d: Daemon, req: Request) -> Result:
    log.error("Recovery has finished")
    d.recovery_finished()
    return _result(0)


@handles(Control.MODIFY_FLAGS)
def modify_flags(d: Daemon, req: Request) -> Result:
    change = _value(req)
    log.info("MODIFY_FLAGS for node %u from node %u ignored: every node pushes its own flags",
             change.pnn, req.src)
    return _result(0)


@handles(Control.GET_DBMAP)
def get_dbmap(d: Daemon, req: Request) -> Result:
    return _reply(req, DbMap([]))


@handles(Control.STARTUP)
def startup(d: Daemon, req: Request) -> Result:
    if req.src != d.my_pnn:
        d._push_all_tickle_lists(req.src)
    return _result(0)


# -- admin transitions ---------------------------------------------------------------------------
@handles(Control.DISABLE_NODE)
def disable_node(d: Daemon, req: Request) -> Result:
    log.error("Disable node")
    d.own_flags_changed(d.nodemap.disable(), "ctdb disable")
    return _result(0)


@handles(Control.ENABLE_NODE)
def enable_node(d: Daemon, req: Request) -> Result:
    log.error("Enable node")
    d.own_flags_changed(d.nodemap.enable(), "ctdb enable")
    return _result(0)


@handles(Control.STOP_NODE)
def stop_node(d: Daemon, req: Request) -> Result:
    log.error("Stopping node")
    d.own_flags_changed(d.nodemap.stop(), "ctdb stop")
    return _result(0)


@handles(Control.CONTINUE_NODE)
def continue_node(d: Daemon, req: Request) -> Result:
    log.error("Continue node")
    d.own_flags_changed(d.nodemap.cont(), "ctdb continue")
    return _result(0)


@handles(Control.SET_BAN_STATE)
def set_ban_state(d: Daemon, req: Request) -> Result:
    ban: BanState = _value(req)
    if ban.pnn != d.my_pnn:
        log.error("SET_BAN_STATE for node %u ignored: this is node %u", ban.pnn, d.my_pnn)
        return _result(-1, errmsg=f"ban state is for node {ban.pnn}, this is node {d.my_pnn}")
    if ban.time and not d.tunables.get("EnableBans"):
        log.warning("Bans are disabled (EnableBans=0): ban of %u seconds refused", ban.time)
        return _result(-1, errmsg="bans are disabled")
    d.set_ban(ban.time)
    return _result(0)


@handles(Control.GET_BAN_STATE)
def get_ban_state(d: Daemon, req: Request) -> Result:
    return _reply(req, BanState(d.my_pnn, d.nodemap.ban.seconds))


@handles(Control.SET_LMASTERROLE, Control.SET_RECMASTERROLE)
def set_role(d: Daemon, req: Request) -> Result:
    from .protocol import CAP_LMASTER, CAP_RECMASTER
    on = _value(req) != 0
    bit = CAP_LMASTER if req.opcode == Control.SET_LMASTERROLE else CAP_RECMASTER
    d.capabilities = (d.capabilities | bit) if on else (d.capabilities & ~bit)
    d._send_node_state()
    if d.election is not None:
        d._handle_election(d.election.set_can_lead(d.can_lead(), d.now))
        d._reschedule()
    return _result(0)


# -- tunables ------------------------------------------------------------------------------------
@handles(Control.GET_ALL_TUNABLES)
def get_all_tunables(d: Daemon, req: Request) -> Result:
    return _reply(req, TunableList(d.tunables.wire_values()))


@handles(Control.LIST_TUNABLES)
def list_tunables(d: Daemon, req: Request) -> Result:
    return _reply(req, VarList(d.tunables.names()))


@handles(Control.GET_TUNABLE)
def get_tunable(d: Daemon, req: Request) -> Result:
    name = _value(req) or ""
    try:
        return _reply(req, d.tunables.get(name))
    except UnknownTunableError:
        return _result(-errno.EINVAL, errmsg=f"no such tunable {name}")


@handles(Control.SET_TUNABLE)
def set_tunable(d: Daemon, req: Request) -> Result:
    tunable = _value(req)
    name = tunable.name or ""
    try:
        d.tunables.set(name, tunable.value)
        obsolete = d.tunables.is_obsolete(name)
    except UnknownTunableError:
        return _result(-1, errmsg=f"no such tunable {name}")
    except TunableValueError as exc:
        return _result(-1, errmsg=str(exc))
    canonical = d.tunables.canonical_name(name)
    log.log(NOTICE, "Tunable %s set to %u", canonical, tunable.value)
    apply_tunables(d)
    return _result(1 if obsolete else 0)


def apply_tunables(d: Daemon) -> None:
    """Push changed timing tunables into the running cores."""
    if d.detector is not None:
        d._handle_detector(d.detector.update_settings(d.detector_settings(), d.now))
    if d.election is not None:
        d.election.settings = d.election_settings()
    d._reschedule()


# -- messaging -----------------------------------------------------------------------------------
@handles(Control.REGISTER_SRVID)
def register_srvid(d: Daemon, req: Request) -> Result:
    if req.client is None or d.local is None:
        return _result(0)
    d.local.register_srvid(req.client, req.srvid)
    if req.srvid == Srvid.LEADER and d.election is not None and d.election.leader != UNKNOWN_PNN:
        client, leader = req.client, d.election.leader

        def tell_leader() -> None:
            from .protocol import ReqMessage, encode_packet
            client.send(encode_packet(ReqMessage(Srvid.LEADER, pack_message(Srvid.LEADER, leader)),
                                      destnode=d.my_pnn, srcnode=leader, reqid=0))

        return _result(0, after=tell_leader)
    return _result(0)


@handles(Control.DEREGISTER_SRVID)
def deregister_srvid(d: Daemon, req: Request) -> Result:
    if req.client is None or d.local is None:
        return _result(0)
    return _result(0 if d.local.deregister_srvid(req.client, req.srvid) else -1)


# -- public IPs and interfaces -------------------------------------------------------------------
@handles(Control.GET_PUBLIC_IPS)
def get_public_ips(d: Daemon, req: Request) -> Result:
    only_available = bool(req.flags & ControlFlag.ONLY_AVAILABLE)
    can_host = d.node_can_host()
    ips = [PublicIp(v.pnn, SockAddr(v.ip, 0)) for v in d.public
           if not only_available or d.public.available(v, can_host)]
    return _reply(req, PublicIpList(ips))


@handles(Control.GET_PUBLIC_IP_INFO)
def get_public_ip_info(d: Daemon, req: Request) -> Result:
    addr: SockAddr = _value(req)
    vnn = d.public.find(str(addr.canonical().ip)) if addr.ip is not None else None
    if vnn is None:
        log.error("Could not get public ip info, '%s'not a public address", addr)
        return _result(-1, errmsg="not a public address")
    ifaces = [d.public.ifaces[name] for name in vnn.ifaces if name in d.public.ifaces]
    active = next((i for i, iface in enumerate(ifaces) if iface.name == vnn.iface), 0xFFFFFFFF)
    info = PublicIpInfo(PublicIp(vnn.pnn, SockAddr(vnn.ip, 0)), active,
                        [Iface(i.name, 1 if i.link_up else 0, i.references) for i in ifaces])
    return _reply(req, info)


@handles(Control.GET_IFACES)
def get_ifaces(d: Daemon, req: Request) -> Result:
    return _reply(req, IfaceList([Iface(i.name, 1 if i.link_up else 0, i.references)
                                  for i in d.public.interface_list()]))


@handles(Control.SET_IFACE_LINK_STATE)
def set_iface_link_state(d: Daemon, req: Request) -> Result:
    iface: Iface = _value(req)
    if iface.link_state not in (0, 1):
        return _result(-1, errmsg=f"link_state[{iface.link_state}] invalid")
    if iface.references != 0:
        return _result(-1, errmsg=f"references[{iface.references}] should be 0")
    try:
        changed = d.public.set_link(iface.name, iface.link_state == 1)
    except KeyError:
        return _result(-1, errmsg=f"unknown interface {iface.name}")
    if changed:
        log.error("iface[%s] has changed it's link status %s => %s", iface.name,
                  "down" if iface.link_state else "up", "up" if iface.link_state else "down")
        _request_takeover_run(d)
    return _result(0)


def _request_takeover_run(d: Daemon) -> None:
    from .protocol import SrvidMessage
    leader = d.election.leader if d.election is not None else UNKNOWN_PNN
    if leader != UNKNOWN_PNN:
        d.send_message(leader, Srvid.TAKEOVER_RUN,
                       pack_message(Srvid.TAKEOVER_RUN, SrvidMessage(d.my_pnn, 0)))


def _addr_of(value: SockAddr) -> str | None:
    c = value.canonical()
    return str(c.ip) if c.ip is not None else None


@handles(Control.TAKEOVER_IP)
async def takeover_ip(d: Daemon, req: Request) -> Result:
    pip: PublicIp = _value(req)
    ip = _addr_of(pip.addr)
    if pip.pnn != d.my_pnn:
        log.error("takeoverip called for an ip '%s' with pnn %d, but we're node %d", ip, pip.pnn, d.my_pnn)
        return _result(-1, errmsg="wrong node")
    vnn = d.public.find(ip) if ip else None
    if vnn is None:
        log.info("takeoverip called for an ip '%s' that is not a public address", ip)
        return _result(0)
    held = vnn.iface is not None and (d.failover_disabled or d.effects.have_ip(vnn.ip))
    if held:
        log.info("Redundant takeover of IP %s/%u on interface %s (ip already held)", vnn.ip,
                 vnn.prefixlen, vnn.iface)
        vnn.pnn = d.my_pnn
        return _result(0)
    if vnn.update_in_flight:
        log.log(NOTICE, "Takeover of IP %s/%u rejected update for this IP already in flight",
                vnn.ip, vnn.prefixlen)
        return _result(-1, errmsg="update already in flight")
    return await d.take_ip(vnn)


@handles(Control.RELEASE_IP)
async def release_ip(d: Daemon, req: Request) -> Result:
    pip: PublicIp = _value(req)
    ip = _addr_of(pip.addr)
    vnn = d.public.find(ip) if ip else None
    if vnn is None:
        log.info("releaseip called for an ip '%s' that is not a public address", ip)
        return _result(0)
    d._stop_bursts(vnn.ip)
    held = vnn.iface is not None if d.failover_disabled else d.effects.have_ip(vnn.ip)
    if not held:
        log.debug("Redundant release of IP %s/%u (ip not held)", vnn.ip, vnn.prefixlen)
        d.public.unassign(vnn, pip.pnn)
        return _result(0)
    if vnn.update_in_flight:
        log.log(NOTICE, "Release of IP %s/%u rejected update for this IP already in flight",
                vnn.ip, vnn.prefixlen)
        return _result(-1, errmsg="update already in flight")
    return await d.release_ip(vnn, pip.pnn)


@handles(Control.IPREALLOCATED)
async def ipreallocated(d: Daemon, req: Request) -> Result:
    result = await d.run_event("ipreallocated")
    if result.timed_out:
        d._ban_self("ipreallocated event timed out")
    elif not result.ok and not result.cancelled:
        failed = result.failed_script
        log.error("ipreallocated event failed%s", f": {failed.output.strip()[:200]}" if failed else "")
        return _result(-1, errmsg="ipreallocated event failed")
    d._local_message(Srvid.IPREALLOCATED, b"")
    return _result(0)


@handles(Control.START_IPREALLOCATE)
def start_ipreallocate(d: Daemon, req: Request) -> Result:
    d._local_message(Srvid.START_IPREALLOCATE, b"")
    return _result(0)


@handles(Control.RELOAD_PUBLIC_IPS)
async def reload_public_ips(d: Daemon, req: Request) -> Result:
    path = d.options.config.paths.public_addresses_file
    try:
        entries = load_public_addresses(path, [])
    except ConfigError as exc:
        log.error("Failed to reload public addresses: %s", exc)
        return _result(-1, errmsg=str(exc))
    added, removed = d.public.reload((str(p.ip), p.prefixlen, p.ifaces) for p in entries)
    log.log(NOTICE, "Reloaded public addresses from %s: %u added, %u removed", path, len(added),
            len(removed))
    for ip in removed:
        vnn = d.public.find(ip)
        if vnn is not None and vnn.iface is not None:
            await d.release_ip(vnn, UNKNOWN_PNN, "reloadips")
        d.public.forget(ip)
    d.tickles.set_public_ips(d.public.vnns)
    return _result(0)


@handles(Control.SEND_GRATUITOUS_ARP)
def send_gratuitous_arp(d: Daemon, req: Request) -> Result:
    info = _value(req)
    ip = _addr_of(info.addr)
    if ip is None or not info.iface:
        return _result(-1, errmsg="need an address and an interface")
    try:
        d.effects.announce(info.iface, ip)
        conns = d.tickles.connections(ip) if d.tickles.knows_ip(ip) else []
        if conns:
            d.effects.tickle([((c.dst_ip, c.dst_port), (c.src_ip, c.src_port)) for c in conns])
    except Exception as exc:
        log.error("Gratuitous ARP for %s on %s failed: %s", ip, info.iface, exc)
        return _result(-1, errmsg=str(exc))
    return _result(0)


# -- TCP connection tracking ---------------------------------------------------------------------
def _conn(req: Request):
    from .convert import conn_from_wire
    return conn_from_wire(_value(req))


@handles(Control.TCP_CLIENT)
def tcp_client(d: Daemon, req: Request) -> Result:
    if not len(d.public):
        return _result(0)
    conn = _conn(req)
    if conn is None:
        return _result(0)
    vnn = d.public.find(conn.dst_ip)
    pid = req.client.pid if req.client is not None else 0
    if vnn is None:
        if ip_address(conn.dst_ip).is_loopback:
            return _result(0)
        log.error("Could not register TCP connection from %s to %s (not a public address) "
                  "(port %u) (client_id %u pid %u).", conn.src_ip, conn.dst_ip, conn.dst_port,
                  req.client_id, pid)
        return _result(0)
    if vnn.pnn != d.my_pnn:
        log.error("Attempt to register tcp client for IP %s we don't hold - failing "
                  "(client_id %u pid %u)", conn.dst_ip, req.client_id, pid)
        return _result(-1, errmsg="IP not held by this node")
    if d.tickles.add(conn, client_source(req.client_id)):
        d.tickle_changed(conn, True)
    return _result(0)


@handles(Control.TCP_ADD, Control.TCP_ADD_DELAYED_UPDATE)
def tcp_add(d: Daemon, req: Request) -> Result:
    if not len(d.public):
        return _result(0)
    conn = _conn(req)
    if conn is None or not d.tickles.knows_ip(conn.dst_ip):
        log.info("got TCP_ADD control for an address which is not a public address '%s'",
                 conn.dst_ip if conn else "?")
        return _result(-1, errmsg="not a public address")
    new = d.tickles.add(conn, REMOTE)
    if new and req.client is not None:
        d.tickle_changed(conn, True)        # `ctdb addtickle`: every node learns it now
    return _result(0)


@handles(Control.TCP_REMOVE)
def tcp_remove(d: Daemon, req: Request) -> Result:
    if not len(d.public):
        return _result(0)
    conn = _conn(req)
    if conn is None or not d.tickles.knows_ip(conn.dst_ip):
        log.error("unable to find public address %s", conn.dst_ip if conn else "?")
        return _result(0)
    if d.tickles.remove(conn) and req.client is not None:
        d.tickle_changed(conn, False)
    return _result(0)


@handles(Control.TCP_CLIENT_DISCONNECTED)
def tcp_client_disconnected(d: Daemon, req: Request) -> Result:
    conn = _conn(req)
    if conn is None or not d.tickles.knows_ip(conn.dst_ip):
        return _result(0)
    if d.tickles.drop_source(conn, client_source(req.client_id)):
        d.tickle_changed(conn, False)
    return _result(0)


@handles(Control.TCP_CLIENT_PASSED)
def tcp_client_passed(d: Daemon, req: Request) -> Result:
    conn = _conn(req)
    if conn is not None and d.tickles.knows_ip(conn.dst_ip):
        d.tickles.add(conn, client_source(req.client_id))
    return _result(0)


@handles(Control.GET_TCP_TICKLE_LIST)
def get_tcp_tickle_list(d: Daemon, req: Request) -> Result:
    addr: SockAddr = _value(req)
    ip = _addr_of(addr)
    if ip is None or d.public.find(ip) is None:
        log.error("Could not get tcp tickle list, '%s' is not a public address", addr)
        return _result(1)
    from .convert import wire_conn
    conns = [wire_conn(c) for c in d.tickles.connections(ip, addr.port)]
    return _reply(req, TickleList(addr, conns))


@handles(Control.SET_TCP_TICKLE_LIST)
def set_tcp_tickle_list(d: Daemon, req: Request) -> Result:
    from .convert import conn_from_wire
    tickles: TickleList = _value(req)
    ip = _addr_of(tickles.addr)
    vnn = d.public.find(ip) if ip else None
    if vnn is None:
        return _result(1)
    if vnn.pnn == d.my_pnn:
        return _result(0)           # we host it: ours is the authoritative list
    conns = [c for c in (conn_from_wire(w) for w in tickles.connections) if c is not None]
    d.tickles.replace(vnn.ip, conns)
    return _result(0)


# -- not (yet) supported -------------------------------------------------------------------------
@handles(Control.DB_ATTACH, Control.DB_ATTACH_PERSISTENT, Control.DB_ATTACH_REPLICATED)
def db_attach(d: Daemon, req: Request) -> Result:
    return _result(-1, errmsg="clustered databases are not supported by pyctdbd yet")


@handles(Control.STATISTICS, Control.GET_STAT_HISTORY, Control.GET_DB_STATISTICS)
def statistics(d: Daemon, req: Request) -> Result:
    return _result(-1, errmsg="statistics are not supported by pyctdbd yet")


@handles(Control.ADD_PUBLIC_IP, Control.DEL_PUBLIC_IP)
def add_del_public_ip(d: Daemon, req: Request) -> Result:
    return _result(-1, errmsg="edit public_addresses and run `ctdb reloadips` instead")

