"""Inputs and outputs of the record-migration core (:mod:`.migration`): settings, events and
actions, as frozen dataclasses. Packet bodies are the codecs of
:mod:`ctdblab.daemon.protocol.packets`, so what the core sends is what goes on the wire.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Union

from ...protocol.packets import ReplyCall, ReplyDmaster, ReplyError, ReqCall, ReqDmaster
from ...protocol.types import LtdbHeader, VnnMap


@dataclass(frozen=True)
class MigrationSettings:
    pnn: int
    #: s: after a record lands for waiting local clients, peers' calls for it wait this long so
    #: the clients can take the chain lock first (pyctdbd; see the core's docstring).
    local_grace: float = 0.002
    #: s: the pin instead when the record is contended: two or more local calls waited for it
    #: (collapsed into one migration), or a peer asked for it while it was on its way here (held
    #: or routed on by this node). Its local clients then get a longer turn with it before it
    #: moves on. The spread cell of benchmarks.contended_opens (one locking record hot on 3
    #: nodes, 2026-12-07) with every pin this long: 0 / 1 / 2 / 5 / 10 / 20 ms gave 523 / 799 /
    #: 1 091 / 1 380 / 1 507 / 1 322 opens/s (ctdbd: 1 093). A hand-over to one waiting client
    #: keeps `local_grace`, so two nodes taking turns on a record wait 2 ms, not this.
    contended_grace: float = 0.010
    #: s: a migration not finished after this long is sent again and its collapsed callers are
    #: released (ctdbd's 30 s deferred-fetch timeout, ``dfq_timeout``).
    collapse_timeout: float = 30.0


# -- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DbAttached:
    """A database this node knows (attached locally or by a peer's broadcast)."""

    db_id: int
    name: str = ""
    persistent: bool = False


@dataclass(frozen=True)
class DbDetached:
    db_id: int


@dataclass(frozen=True)
class VnnMapChanged:
    """The vnnmap set by a recovery (generation + the lmaster-capable pnns, in map order)."""

    vnnmap: VnnMap


@dataclass(frozen=True)
class RecoveryMode:
    """This node's recovery mode (ACTIVE: ``active``). Leaving it sends the calls held back."""

    active: bool


@dataclass(frozen=True)
class DbThawed:
    """A recovery thawed this database (DB_THAW): its held-back calls are sent."""

    db_id: int


@dataclass(frozen=True)
class SetBanned:
    """A banned node drops every REQ_CALL, REPLY_CALL, REQ_DMASTER and REPLY_DMASTER."""

    banned: bool


@dataclass(frozen=True)
class LocalCall:
    """A REQ_CALL from a local client (smbd's migrate or fetch), or from the daemon itself.

    `client` is the shell's token for whoever gets the reply (`ReplyToClient.client`), `reqid`
    the client's own reqid, echoed in the reply. `requeued` marks a call the core sent back
    through `Requeue` (not counted again); `started` keeps its original arrival time."""

    client: Hashable
    reqid: int
    db_id: int
    key: bytes
    callid: int
    flags: int = 0
    calldata: bytes = b""
    requeued: bool = False
    started: float | None = None


NodeBody = Union[ReqCall, ReplyCall, ReqDmaster, ReplyDmaster, ReplyError]


@dataclass(frozen=True)
class PeerPacket:
    """A REQ_CALL, REPLY_CALL, REQ_DMASTER, REPLY_DMASTER or REPLY_ERROR from the node transport,
    with the header fields that matter (srcnode is the *origin* of a forwarded REQ_CALL)."""

    srcnode: int
    reqid: int
    generation: int
    body: NodeBody


@dataclass(frozen=True)
class Reissue:
    """Send the migration under way for (db_id, key) again (emitted by the core via Requeue)."""

    db_id: int
    key: bytes


@dataclass(frozen=True)
class KeysUnsettled:
    """A recovery after a membership change from `old_map` to the current vnnmap: the keys of
    `db_id` whose hand-off it cut off (:mod:`.unsettled`)."""

    db_id: int
    old_map: tuple[int, ...]
    keys: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class CopiesGathered:
    """Every active node's copy of (db_id, key) (`complete`), or not all of them could be read;
    `copies` as `core/db/partial_recovery.Copy`."""

    db_id: int
    key: bytes
    copies: tuple = ()
    complete: bool = True


@dataclass(frozen=True)
class SweptCopies:
    """A sweep's copies of one key (every active node's, `core/db/partial_recovery.Copy`):
    applied under the key's chain lock (:mod:`.sweep`)."""

    db_id: int
    key: bytes
    sweep_id: int
    copies: tuple = ()


@dataclass(frozen=True)
class SweepFinished:
    """The shell fed all `keys` SweptCopies of the sweep: its epochs close once every one of
    them is applied (or `failed`: the sweep is abandoned with that reason)."""

    db_id: int
    sweep_id: int
    keys: int
    failed: str = ""


@dataclass(frozen=True)
class ClientGone:
    """A local client disconnected: its waiting calls get no reply."""

    client: Hashable


@dataclass(frozen=True)
class Tick:
    """Time passes (collapse timeouts, expired pins). About once a second is enough."""


Event = Union[DbAttached, DbDetached, VnnMapChanged, RecoveryMode, DbThawed, SetBanned, LocalCall,
              PeerPacket, Reissue, KeysUnsettled, CopiesGathered, SweptCopies, SweepFinished, ClientGone,
              Tick]


# -- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreRecord:
    """Write header + data for the key of the event being handled (under its chain lock)."""

    db_id: int
    key: bytes
    header: LtdbHeader
    data: bytes


@dataclass(frozen=True)
class DeleteRecord:
    """Delete the key of the event being handled (ctdbd's store of an empty, never-migrated-with-
    data record by a node that is neither its lmaster nor its dmaster)."""

    db_id: int
    key: bytes


@dataclass(frozen=True)
class ScheduleForDeletion:
    """Put this empty record on the vacuum queue (ctdbd's ctdb_local_schedule_for_deletion)."""

    db_id: int
    key: bytes
    header: LtdbHeader


@dataclass(frozen=True)
class UnscheduleDeletion:
    """Take this key off the vacuum queue: it was stored and kept without being scheduled
    (ctdbd's ctdb_local_remove_from_delete_queue)."""

    db_id: int
    key: bytes


@dataclass(frozen=True)
class SendPacket:
    """Send `body` to node `dest` with this header (srcnode is not always this node: a
    redirected REQ_CALL keeps its origin)."""

    dest: int
    srcnode: int
    reqid: int
    generation: int
    body: NodeBody


@dataclass(frozen=True)
class ReplyToClient:
    """Answer a local call: REPLY_CALL (status, data) or REPLY_ERROR, with the client's reqid."""

    client: Hashable
    reqid: int
    body: Union[ReplyCall, ReplyError]


@dataclass(frozen=True)
class GatherCopies:
    """Ask every active node for its copy of (db_id, key), `delay` seconds from now; answer
    with CopiesGathered (the key's lmaster settles it: :mod:`.unsettled`)."""

    db_id: int
    key: bytes
    delay: float = 0.0


@dataclass(frozen=True)
class Requeue:
    """Feed `event` to the core again, `delay` seconds from now, through the normal path (take
    the key's chain lock, read the record, step). Keep the order of Requeues with equal delays."""

    event: Event
    delay: float = 0.0


@dataclass(frozen=True)
class ForceRecovery:
    """ctdbd sets recovery mode ACTIVE here (a REQ_DMASTER from a node that is not the dmaster)."""

    reason: str


@dataclass(frozen=True)
class Log:
    level: int
    text: str


Action = Union[StoreRecord, DeleteRecord, ScheduleForDeletion, UnscheduleDeletion, SendPacket,
               ReplyToClient, Requeue, GatherCopies, ForceRecovery, Log]
