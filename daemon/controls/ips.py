"""Public IP and interface controls: the IP lists a takeover run gathers, TAKEOVER_IP and
RELEASE_IP, IPREALLOCATED, interface link state, reloading the configured list, and gratuitous
ARPs on request."""

from __future__ import annotations

from ..config import ConfigError, load_public_addresses
from ..log import log
from ..protocol import (
    UNKNOWN_PNN, AddrInfo, Control, ControlFlag, Iface, IfaceList, PublicIp, PublicIpInfo, PublicIpList,
    SockAddr, Srvid, SrvidMessage, pack_message,
)
from ..server.context import ControlContext
from ..server.dispatch import Request, Result
from ..server.wire import address_of, public_ip
from .registry import Handlers, reply_with, value_of

HANDLERS = Handlers()
handles = HANDLERS.handles


@handles(Control.GET_PUBLIC_IPS)
def get_public_ips(ctx: ControlContext, req: Request) -> Result:
    vnns = ctx.ips.available() if req.flags & ControlFlag.ONLY_AVAILABLE else ctx.ips.all()
    return reply_with(req, PublicIpList([public_ip(v.pnn, v.ip) for v in vnns]))


@handles(Control.GET_PUBLIC_IP_INFO)
def get_public_ip_info(ctx: ControlContext, req: Request) -> Result:
    addr: SockAddr = value_of(req)
    ip = address_of(addr) if addr.ip is not None else None
    vnn = ctx.ips.find(ip) if ip else None
    if vnn is None:
        log.error("Could not get public ip info, '%s'not a public address", addr)
        return Result(-1, errmsg="not a public address")
    ifaces = ctx.ips.interfaces(vnn)
    active = next((i for i, iface in enumerate(ifaces) if iface.name == vnn.iface), 0xFFFFFFFF)
    return reply_with(req, PublicIpInfo(public_ip(vnn.pnn, vnn.ip), active,
                                        [Iface(i.name, 1 if i.link_up else 0, i.references) for i in ifaces]))


@handles(Control.GET_IFACES)
def get_ifaces(ctx: ControlContext, req: Request) -> Result:
    return reply_with(req, IfaceList([Iface(i.name, 1 if i.link_up else 0, i.references)
                                      for i in ctx.ips.interfaces()]))


@handles(Control.SET_IFACE_LINK_STATE)
def set_iface_link_state(ctx: ControlContext, req: Request) -> Result:
    iface: Iface = value_of(req)
    if iface.link_state not in (0, 1):
        return Result(-1, errmsg=f"link_state[{iface.link_state}] invalid")
    if iface.references != 0:
        return Result(-1, errmsg=f"references[{iface.references}] should be 0")
    try:
        changed = ctx.ips.set_link(iface.name, iface.link_state == 1)
    except KeyError:
        return Result(-1, errmsg=f"unknown interface {iface.name}")
    if changed:
        log.error("iface[%s] has changed it's link status %s => %s", iface.name,
                  "down" if iface.link_state else "up", "up" if iface.link_state else "down")
        leader = ctx.node.leader
        if leader != UNKNOWN_PNN:
            ctx.messenger.send_message(leader, Srvid.TAKEOVER_RUN,
                                       pack_message(Srvid.TAKEOVER_RUN, SrvidMessage(ctx.pnn, 0)))
    return Result(0)


@handles(Control.TAKEOVER_IP)
async def takeover_ip(ctx: ControlContext, req: Request) -> Result:
    pip: PublicIp = value_of(req)
    return await ctx.ips.takeover(address_of(pip.addr), pip.pnn)


@handles(Control.RELEASE_IP)
async def release_ip(ctx: ControlContext, req: Request) -> Result:
    pip: PublicIp = value_of(req)
    return await ctx.ips.release(address_of(pip.addr), pip.pnn)


@handles(Control.IPREALLOCATED)
async def ipreallocated(ctx: ControlContext, req: Request) -> Result:
    return await ctx.ips.ipreallocated()


@handles(Control.START_IPREALLOCATE)
def start_ipreallocate(ctx: ControlContext, req: Request) -> Result:
    ctx.messenger.deliver_local(Srvid.START_IPREALLOCATE, b"")
    return Result(0)


@handles(Control.RELOAD_PUBLIC_IPS)
async def reload_public_ips(ctx: ControlContext, req: Request) -> Result:
    path = ctx.config.paths.public_addresses_file
    try:
        entries = load_public_addresses(path, [])
    except ConfigError as exc:
        log.error("Failed to reload public addresses: %s", exc)
        return Result(-1, errmsg=str(exc))
    await ctx.ips.reload(((str(p.ip), p.prefixlen, p.ifaces) for p in entries), path)
    return Result(0)


@handles(Control.SEND_GRATUITOUS_ARP)
def send_gratuitous_arp(ctx: ControlContext, req: Request) -> Result:
    info = value_of(req)
    ip = address_of(info.addr)
    if ip is None or not info.iface:
        return Result(-1, errmsg="need an address and an interface")
    try:
        ctx.ips.gratuitous_arp(info.iface, ip)
    except Exception as exc:
        log.error("Gratuitous ARP for %s on %s failed: %s", ip, info.iface, exc)
        return Result(-1, errmsg=str(exc))
    return Result(0)


@handles(Control.ADD_PUBLIC_IP, Control.DEL_PUBLIC_IP)
def add_del_public_ip(ctx: ControlContext, req: Request) -> Result:
    info: AddrInfo = value_of(req)
    # As ctdbd: the payload must be exactly the address, mask, length and interface name.
    expected = 36 + (len(info.iface.encode()) + 1 if info.iface else 0)
    if len(req.data) != expected:
        log.error("Wrong size of indata for %s: %u bytes, expected %u", Control(req.opcode).name,
                  len(req.data), expected)
        return Result(-1, errmsg="wrong size of indata")
    ip = address_of(info.addr)
    if ip is None:
        return Result(-1, errmsg="not an IP address")
    if req.opcode == Control.DEL_PUBLIC_IP:
        return ctx.ips.delete_ip(ip)
    return ctx.ips.add_ip(ip, info.mask, info.iface or "")

