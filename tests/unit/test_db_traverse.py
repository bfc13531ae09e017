"""Cluster-wide traverses (daemon/core/db/traverse.py): which nodes are asked, which records a
node sends, what the client gets (smbd's reading of the messages), the end marker after all
nodes, after a timeout, a node's death or a kill — and a simulated 3-node cluster."""

from __future__ import annotations

import pytest

from ctdblab.daemon.config.tunables import Tunables
from ctdblab.daemon.core.db.registry import ClientGone, DbInfo, Tick
from ctdblab.daemon.core.db.traverse import (
    BroadcastTraverseKill, DatabaseGone, LocalTraverseDone, MessageClient, NodeGone, Reply,
    RunLocalTraverse, SendTraverseAll, SendTraverseData, StartTraverse, StopLocalTraverse,
    TraverseAllReceived, TraverseData, TraverseKill, Traverses, TraverseSettings, end_marker,
    is_end_marker, wanted_record,
)
from ctdblab.daemon.protocol.constants import DbFlag
from ctdblab.daemon.protocol.ltdb import db_id_of, pack_record
from ctdblab.daemon.protocol.types import (
    LtdbHeader, RecData, TraverseAll, TraverseAllExt, TraverseStart, TraverseStartExt,
)

VOL = DbInfo("smbXsrv_session_global.tdb", db_id_of("smbXsrv_session_global.tdb"), DbFlag(0))
PER = DbInfo("registry.tdb", db_id_of("registry.tdb"), DbFlag.PERSISTENT)
SRVID = 0x1122334455667788


def rec(dmaster: int, value: bytes = b"v", rsn: int = 1) -> bytes:
    return pack_record(LtdbHeader(rsn, dmaster), value)


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def start(core: Traverses, db=VOL, *, reqid=77, srvid=SRVID, empty=None, client=3, ticket="t",
          active=(0, 1, 2), vnnmap=(0, 1, 2), now=0.0):
    request = (TraverseStart(db.db_id, reqid, srvid) if empty is None
               else TraverseStartExt(db.db_id, reqid, srvid, empty))
    return core.step(StartTraverse(ticket, client, request, db, tuple(active), tuple(vnnmap)), now)


def client_view(actions):
    """What smbd's ctdbd_traverse makes of the messages: (key, value) pairs, then 'END'."""
    out = []
    for msg in of(actions, MessageClient):
        assert msg.srvid == SRVID
        rd = RecData.unpack(msg.record.pack())
        assert rd.reqid == 77                       # the client's reqid
        if not rd.key and not rd.data:
            out.append("END")
            continue
        assert len(rd.data) >= 24, "smbd fails with EIO on a record without header"
        out.append((rd.key, rd.data[24:]))
    return out


# -- what a node sends -----------------------------------------------------------------------
@pytest.mark.parametrize("value,volatile,with_empty,wanted", [
    (rec(0), True, False, True),
    (rec(1), True, False, False),               # not dmaster here
    (rec(0, b""), True, False, False),          # empty record
    (rec(0, b""), True, True, True),            # ... unless asked for
    (rec(1, b""), True, True, False),
    (rec(1), False, False, True),               # persistent: every record
    (rec(1, b""), False, False, True),
    (b"short", True, True, False),              # not a record (pyctdbd)
    (b"short", False, False, False),
])
def test_wanted_record(value, volatile, with_empty, wanted):
    assert wanted_record(value, volatile=volatile, with_empty=with_empty, my_pnn=0) is wanted


def test_end_marker():
    assert end_marker(9).pack() == RecData(9, b"", b"").pack()
    assert len(end_marker(9).pack()) == 16
    assert is_end_marker(end_marker(9)) and not is_end_marker(RecData(9, b"k", b""))


# -- the originator --------------------------------------------------------------------------
def test_volatile_traverse_asks_every_active_node_and_answers_first():
    core = Traverses(1)
    actions = start(core, active=(0, 1, 2))
    assert isinstance(actions[0], Reply) and actions[0].status == 0
    (reqid,) = core.active()
    sends = of(actions, SendTraverseAll)
    assert [s.pnn for s in sends] == [0, 2]
    assert sends[0].request == TraverseAll(VOL.db_id, reqid, 1, 77, SRVID)
    (walk,) = of(actions, RunLocalTraverse)
    assert (walk.dest, walk.reqid, walk.volatile, walk.with_empty, walk.my_pnn) == (1, reqid, True, False, 1)


def test_ext_with_empty_records_sends_traverse_all_ext():
    core = Traverses(0)
    actions = start(core, empty=True, active=(0, 2))
    (reqid,) = core.active()
    assert of(actions, SendTraverseAll) == [
        SendTraverseAll(2, TraverseAllExt(VOL.db_id, reqid, 0, 77, SRVID, True))]
    assert of(actions, RunLocalTraverse)[0].with_empty
    actions = start(Traverses(0), empty=False, active=(0, 2))     # EXT without empties: plain ALL
    assert isinstance(of(actions, SendTraverseAll)[0].request, TraverseAll)


def test_inactive_originator_does_not_walk_its_own_copy():
    actions = start(Traverses(2), active=(0, 1))
    assert [s.pnn for s in of(actions, SendTraverseAll)] == [0, 1]
    assert of(actions, RunLocalTraverse) == []


def test_persistent_traverse_is_local_or_the_first_vnnmap_node():
    actions = start(Traverses(1), PER, vnnmap=(0, 1, 2))
    assert of(actions, SendTraverseAll) == [] and len(of(actions, RunLocalTraverse)) == 1
    assert not of(actions, RunLocalTraverse)[0].volatile
    actions = start(Traverses(3), PER, vnnmap=(2, 0, 1))
    assert [s.pnn for s in of(actions, SendTraverseAll)] == [2] and of(actions, RunLocalTraverse) == []


def test_refusals():
    core = Traverses(0)
    actions = core.step(StartTraverse("t", 3, TraverseStart(0x55, 1, 2), None, (0,), (0,)), 0.0)
    assert [r.status for r in of(actions, Reply)] == [-1] and core.active() == []
    assert of(actions, SendTraverseAll) == [] and of(actions, RunLocalTraverse) == []
    sick = DbInfo(VOL.name, VOL.db_id, VOL.flags, unhealthy_reason="broken")
    actions = start(core, sick)
    assert of(actions, Reply)[0].status == -1 and "broken" in of(actions, Reply)[0].error
    core = Traverses(0, TraverseSettings(allow_unhealthy_read=True))
    assert of(start(core, sick), Reply)[0].status == 0


def test_records_are_relayed_and_the_end_comes_after_every_node():
    core = Traverses(0)
    start(core)
    (reqid,) = core.active()
    out = core.step(TraverseData(1, RecData(reqid, b"a", rec(1, b"A"))), 0.1)
    out += core.step(TraverseData(0, RecData(reqid, b"b", rec(0, b"B"))), 0.1)
    out += core.step(TraverseData(1, end_marker(reqid)), 0.2)
    out += core.step(TraverseData(1, RecData(reqid, b"late", rec(1))), 0.2)    # after its end: dropped
    out += core.step(TraverseData(5, RecData(reqid, b"who", rec(5))), 0.2)     # not asked: dropped
    out += core.step(TraverseData(0, RecData(reqid + 1, b"x", rec(0))), 0.2)   # other reqid
    out += core.step(TraverseData(0, end_marker(reqid)), 0.3)
    assert client_view(out) == [(b"a", b"A"), (b"b", b"B")]
    out = core.step(TraverseData(2, end_marker(reqid)), 0.4)
    assert client_view(out) == ["END"]
    assert of(out, BroadcastTraverseKill) == [] and core.active() == []
    assert core.step(TraverseData(2, RecData(reqid, b"z", rec(2))), 0.5) == []


def test_silent_node_hits_the_timeout_and_the_end_marker_is_sent_anyway():
    core = Traverses(0, TraverseSettings(timeout=20.0))
    actions = start(core, now=100.0)
    (walk,) = of(actions, RunLocalTraverse)
    (reqid,) = core.active()
    core.step(TraverseData(1, end_marker(reqid)), 101.0)
    assert core.next_deadline() == 120.0
    assert core.step(Tick(), 119.9) == []
    out = core.step(Tick(), 120.0)
    assert client_view(out) == ["END"]
    assert of(out, BroadcastTraverseKill) == [BroadcastTraverseKill(TraverseStart(VOL.db_id, 77, SRVID))]
    assert of(out, StopLocalTraverse) == [StopLocalTraverse(walk.handle)]    # our own walk too
    assert core.active() == [] and core.walks() == []


def test_node_dying_mid_traverse_ends_it_without_waiting():
    core = Traverses(0)
    start(core)
    (reqid,) = core.active()
    core.step(TraverseData(0, end_marker(reqid)), 0.1)
    core.step(TraverseData(2, end_marker(reqid)), 0.1)
    assert client_view(core.step(NodeGone(1), 0.2)) == ["END"]
    assert core.step(NodeGone(1), 0.3) == []


def test_client_leaving_kills_the_walks_everywhere():
    core = Traverses(0)
    actions = start(core, client=3)
    (walk,) = of(actions, RunLocalTraverse)
    (reqid,) = core.active()
    assert core.step(ClientGone(4), 0.1) == []
    out = core.step(ClientGone(3), 0.1)
    assert of(out, MessageClient) == []
    assert of(out, BroadcastTraverseKill) == [BroadcastTraverseKill(TraverseStart(VOL.db_id, 77, SRVID))]
    assert of(out, StopLocalTraverse) == [StopLocalTraverse(walk.handle)]
    assert core.step(TraverseData(1, RecData(reqid, b"k", rec(1))), 0.2) == []


def test_nobody_to_ask_ends_at_once():
    out = start(Traverses(0), active=())
    assert isinstance(out[0], Reply) and client_view(out) == ["END"]
    out = start(Traverses(0), PER, vnnmap=())
    assert client_view(out) == ["END"]


def test_concurrent_traverses_get_their_own_reqids():
    core = Traverses(0)
    start(core, reqid=77, client=3)
    start(core, reqid=77, client=4, srvid=SRVID)
    first, second = core.active()
    assert first != second
    out = core.step(TraverseData(1, RecData(second, b"k", rec(1, b"V"))), 0.1)
    assert client_view(out) == [(b"k", b"V")]


def test_database_gone_ends_its_traverses():
    core = Traverses(0)
    actions = start(core)
    out = core.step(DatabaseGone(VOL.db_id), 0.1)
    assert client_view(out) == ["END"]
    assert of(out, StopLocalTraverse) == [StopLocalTraverse(of(actions, RunLocalTraverse)[0].handle)]


# -- every node ------------------------------------------------------------------------------
def test_traverse_all_starts_a_walk_for_the_originator():
    core = Traverses(2)
    out = core.step(TraverseAllReceived(TraverseAll(VOL.db_id, 5, 0, 77, SRVID), VOL), 0.0)
    (walk,) = out
    assert isinstance(walk, RunLocalTraverse)
    assert (walk.db_id, walk.dest, walk.reqid, walk.volatile, walk.with_empty, walk.my_pnn) == (
        VOL.db_id, 0, 5, True, False, 2)
    assert walk.record(b"k", rec(2)) == RecData(5, b"k", rec(2)) and walk.end() == end_marker(5)
    out = core.step(TraverseAllReceived(TraverseAllExt(VOL.db_id, 6, 0, 78, SRVID, True), VOL), 0.0)
    assert out[0].with_empty


def test_refused_traverse_all_still_sends_the_end_marker():
    core = Traverses(2)
    out = core.step(TraverseAllReceived(TraverseAll(0x99, 5, 0, 77, SRVID), None), 0.0)
    assert of(out, SendTraverseData) == [SendTraverseData(0, end_marker(5))]
    assert core.walks() == []


def test_traverse_kill_stops_only_matching_walks():
    core = Traverses(2)
    a = core.step(TraverseAllReceived(TraverseAll(VOL.db_id, 5, 0, 77, SRVID), VOL), 0.0)[0]
    b = core.step(TraverseAllReceived(TraverseAll(VOL.db_id, 6, 1, 78, SRVID), VOL), 0.0)[0]
    assert core.step(TraverseKill(TraverseStart(VOL.db_id, 77, SRVID + 1)), 0.1) == []
    assert core.step(TraverseKill(TraverseStart(VOL.db_id, 77, SRVID)), 0.1) == [StopLocalTraverse(a.handle)]
    core.step(LocalTraverseDone(b.handle), 0.2)
    assert core.walks() == []


def test_settings_from_tunables():
    tunables = Tunables()
    tunables.set("TraverseTimeout", 3)
    tunables.set("AllowUnhealthyDBRead", 1)
    assert TraverseSettings.from_tunables(tunables) == TraverseSettings(3.0, True)


# -- a simulated cluster ---------------------------------------------------------------------
class Cluster:
    """Three nodes, each with its Traverses core and a local copy of one volatile database;
    packets queue on a network and are delivered in order; a walk runs when the network runs."""

    def __init__(self, silent: set[int] = frozenset()) -> None:
        self.cores = {p: Traverses(p) for p in range(3)}
        self.copies: dict[int, dict[bytes, bytes]] = {p: {} for p in range(3)}
        self.silent = set(silent)               # nodes that receive but never walk (hung)
        self.network: list[tuple[int, object]] = []
        self.client: list = []
        self.killed: list[tuple[int, int]] = []
        self.walking: dict[int, list[int]] = {p: [] for p in range(3)}

    def act(self, pnn: int, actions) -> None:
        for action in actions:
            if isinstance(action, SendTraverseAll):
                self.network.append((action.pnn, TraverseAllReceived(action.request, VOL)))
            elif isinstance(action, SendTraverseData):
                self.network.append((action.dest, TraverseData(pnn, action.record)))
            elif isinstance(action, RunLocalTraverse):
                self.walking[pnn].append(action.handle)
                if pnn not in self.silent:
                    self.network.append((pnn, ("walk", action)))
            elif isinstance(action, StopLocalTraverse):
                self.killed.append((pnn, action.handle))
                self.walking[pnn].remove(action.handle)
            elif isinstance(action, BroadcastTraverseKill):
                self.network += [(other, TraverseKill(action.request))
                                 for other in self.cores if other != pnn]
            elif isinstance(action, MessageClient):
                self.client.append(action)

    def walk(self, pnn: int, action: RunLocalTraverse) -> None:
        """The child: records interleave with other traffic, one packet each."""
        if action.handle not in self.walking[pnn]:
            return                                   # killed before it ran
        for key, value in sorted(self.copies[pnn].items()):
            if action.wants(value):
                self.network.append((action.dest, TraverseData(pnn, action.record(key, value))))
        self.network.append((action.dest, TraverseData(pnn, action.end())))
        self.walking[pnn].remove(action.handle)
        self.act(pnn, self.cores[pnn].step(LocalTraverseDone(action.handle), 0.0))

    def run(self, now: float = 0.0) -> None:
        while self.network:
            dest, item = self.network.pop(0)
            if isinstance(item, tuple):
                self.walk(dest, item[1])
            else:
                self.act(dest, self.cores[dest].step(item, now))


def fill(cluster: Cluster) -> dict[bytes, bytes]:
    """Every node holds stale copies of every key; each key's dmaster holds the live one."""
    live = {}
    for i in range(12):
        key = f"session/{i}".encode()
        owner = i % 3
        for pnn in range(3):
            cluster.copies[pnn][key] = rec(owner, f"v{i}@{pnn}".encode(), rsn=5 if pnn == owner else 2)
        live[key] = f"v{i}@{owner}".encode()
    for pnn in range(3):
        cluster.copies[pnn][f"deleted/{pnn}".encode()] = rec(pnn, b"")      # empty: not sent
    return live


def test_three_node_traverse_returns_each_live_record_once_then_the_end():
    cluster = Cluster()
    live = fill(cluster)
    cluster.act(0, start(cluster.cores[0]))
    cluster.run()
    view = client_view(cluster.client)
    assert view[-1] == "END" and view.count("END") == 1
    assert dict(view[:-1]) == live and len(view) - 1 == len(live)
    assert cluster.killed == [] and cluster.cores[0].active() == []


def test_three_node_traverse_with_empty_records():
    cluster = Cluster()
    live = fill(cluster)
    cluster.act(0, start(cluster.cores[0], empty=True))
    cluster.run()
    got = dict(client_view(cluster.client)[:-1])
    assert got == {**live, b"deleted/0": b"", b"deleted/1": b"", b"deleted/2": b""}


def test_three_node_traverse_with_a_silent_node_ends_at_the_timeout_and_kills_its_walk():
    cluster = Cluster(silent={2})
    live = fill(cluster)
    cluster.act(0, start(cluster.cores[0], now=0.0))
    cluster.run(0.0)
    assert "END" not in client_view(cluster.client)       # still waiting for node 2
    assert cluster.walking[2]                             # node 2's walk hangs
    cluster.act(0, cluster.cores[0].step(Tick(), 19.0))
    assert "END" not in client_view(cluster.client)
    cluster.act(0, cluster.cores[0].step(Tick(), 20.0))
    cluster.run(20.0)
    view = client_view(cluster.client)
    assert view[-1] == "END"
    assert dict(view[:-1]) == {k: v for k, v in live.items() if int(k.split(b"/")[1]) % 3 != 2}
    assert cluster.walking[2] == [] and [p for p, _ in cluster.killed] == [2]


def test_three_node_traverse_with_a_node_dying_mid_way():
    cluster = Cluster(silent={1})
    fill(cluster)
    cluster.act(0, start(cluster.cores[0]))
    cluster.run()
    assert "END" not in client_view(cluster.client)
    cluster.act(0, cluster.cores[0].step(NodeGone(1), 1.0))
    assert client_view(cluster.client)[-1] == "END"
