"""DatabaseService, the shell around the database registry: what it promises the daemon's
packet routers (no processes, no sockets; a real store in a temporary directory)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from types import SimpleNamespace

from ctdblab.daemon.config import CtdbConf, Tunables
from ctdblab.daemon.controls.databases import db_attach
from ctdblab.daemon.protocol import Control, pack_request
from ctdblab.daemon.protocol.constants import Runstate
from ctdblab.daemon.server.databases import DatabaseService
from ctdblab.daemon.server.dispatch import Request
from ctdblab.daemon.server.tasks import Tasks
from ctdblab.daemon.protocol import db_id_of


class Peers:
    """The messenger as the service uses it: who is connected, and what went out."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []

    def connected_peers(self) -> list[int]:
        return [1, 2]

    def active_peers(self) -> list[int]:
        return [1, 2]

    def send_noreply(self, pnn: int, opcode: int, data: bytes, **_kw) -> None:
        self.sent.append((pnn, opcode))


def service(tmp_path) -> tuple[DatabaseService, Peers]:
    (tmp_path / "volatile").mkdir()
    (tmp_path / "persistent").mkdir()
    (tmp_path / "state").mkdir()
    conf = replace(CtdbConf(), volatile_db_dir=str(tmp_path / "volatile"),
                   persistent_db_dir=str(tmp_path / "persistent"), state_db_dir=str(tmp_path / "state"))
    peers = Peers()
    svc = DatabaseService(0, conf, peers, Tunables(), Tasks(), clock=time.monotonic,
                          force_recovery=lambda why: None)
    return svc, peers


def test_a_peers_attach_is_done_in_the_same_turn_so_its_next_record_calls_find_the_database(tmp_path):
    """A node attaches a database for its client and sends record calls for it right after, on
    the same connection; they arrive in one read. The attach must not wait for a task: a call
    handled before it finds no database and fails (the stock tool's pstore then hung 30 s)."""
    async def run() -> None:
        svc, _peers = service(tmp_path)
        svc.runstate(Runstate.RUNNING)
        name = "g_lock.tdb"
        req = Request(Control.DB_ATTACH, 0, 0, 0, pack_request(Control.DB_ATTACH, name), 1)
        answer = db_attach(SimpleNamespace(databases=svc), req)
        assert not asyncio.isfuture(answer) and answer.status == 0
        assert svc.database(db_id_of(name)) is not None          # before any other loop turn
        svc.close()
    asyncio.run(run())


def test_a_clients_attach_during_recovery_waits_and_is_broadcast_when_done(tmp_path):
    async def run() -> None:
        svc, peers = service(tmp_path)
        svc.runstate(Runstate.RUNNING)
        svc.recovery_mode(True)
        answer = svc.attach("locking.tdb", Control.DB_ATTACH, client_id=7, recovery=False)
        assert not answer.done() and svc.database(db_id_of("locking.tdb")) is None
        svc.recovery_mode(False)
        result = await asyncio.wait_for(answer, 5)
        assert result.status == 0 and svc.database(db_id_of("locking.tdb")) is not None
        assert {(1, Control.DB_ATTACH), (2, Control.DB_ATTACH)} <= set(peers.sent)
        svc.close()
    asyncio.run(run())
