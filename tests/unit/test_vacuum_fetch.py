"""server/vacuum_fetch.py: VACUUM_FETCH records migrated here a few calls at a time."""

from __future__ import annotations

import asyncio

from ctdblab.daemon.protocol.constants import CallFlag, CallFunc
from ctdblab.daemon.server.vacuum_fetch import VacuumFetches

DB, OTHER = 0x11, 0x22


class Recorder:
    """Stands in for RecordCalls.daemon_call: records the calls, answers them when told (or at
    once, as a record already here is answered)."""

    def __init__(self, answer_at_once: bool = False) -> None:
        self.calls: list[tuple[object, int, bytes, int, int]] = []
        self.answer_at_once = answer_at_once

    def __call__(self, caller, db_id: int, key: bytes, callid: int, flags: int) -> None:
        self.calls.append((caller, db_id, key, callid, flags))
        if self.answer_at_once:
            caller.send(b"REPLY_CALL")

    def answer(self, index: int) -> None:
        self.calls[index][0].send(b"REPLY_CALL")

    def keys(self) -> list[bytes]:
        return [c[2] for c in self.calls]


def keys(n: int) -> list[bytes]:
    return [b"key-%03d" % i for i in range(n)]


def test_at_most_in_flight_calls_and_each_answer_starts_the_next_in_order():
    async def main():
        calls = Recorder()
        fetches = VacuumFetches(calls, lambda: 0.0, in_flight=4)
        fetches.add(DB, keys(10) + keys(3))             # a key sent twice is queued once
        assert calls.keys() == keys(4)
        assert all(c[1] == DB and c[3] == CallFunc.NULL_FUNC
                   and c[4] == CallFlag.IMMEDIATE_MIGRATION | CallFlag.VACUUM_MIGRATION for c in calls.calls)
        calls.answer(1)
        assert calls.keys() == keys(5)
        calls.answer(1)                                 # an answer counts once
        assert calls.keys() == keys(5)
        for i in range(len(keys(10))):
            if i != 1:
                calls.answer(i)
        await asyncio.sleep(0)
        assert calls.keys() == keys(10) and not fetches.waiting and not fetches.running
        c = fetches.counters
        assert (c.queued, c.started, c.answered) == (10, 10, 10)
    asyncio.run(main())


def test_calls_answered_at_once_go_on_over_loop_turns_not_in_one_pass():
    async def main():
        calls = Recorder(answer_at_once=True)
        fetches = VacuumFetches(calls, lambda: 0.0, in_flight=8)
        fetches.add(DB, keys(100))
        assert len(calls.calls) == 8                    # one pass: the loop is given back
        for _ in range(20):
            await asyncio.sleep(0)
        assert calls.keys() == keys(100) and fetches.counters.answered == 100
    asyncio.run(main())


def test_recovery_drops_what_waits_and_takes_nothing_until_it_ends():
    async def main():
        calls = Recorder()
        fetches = VacuumFetches(calls, lambda: 0.0, in_flight=2)
        fetches.add(DB, keys(5))
        fetches.recovery_mode(True)
        assert not fetches.waiting and fetches.counters.dropped == 3
        fetches.add(DB, [b"during"])
        calls.answer(0)                                 # calls under way still end normally
        assert len(calls.calls) == 2 and not fetches.waiting
        fetches.recovery_mode(False)
        fetches.add(DB, [b"after"])
        assert calls.keys() == keys(2) + [b"after"]
    asyncio.run(main())


def test_a_detached_database_loses_its_waiting_keys_and_a_stuck_call_frees_its_slot():
    async def main():
        now = [0.0]
        calls = Recorder()
        fetches = VacuumFetches(calls, lambda: now[0], in_flight=1, stuck_after=60)
        fetches.add(DB, keys(3))
        fetches.add(OTHER, [b"other"])
        fetches.database_gone(DB)
        assert list(fetches.waiting) == [(OTHER, b"other")]
        fetches.tick(59.0)
        assert len(calls.calls) == 1                    # the first call still holds the slot
        now[0] = 61.0
        fetches.tick(61.0)
        assert calls.calls[-1][1:3] == (OTHER, b"other") and fetches.counters.stuck == 1
        calls.answer(0)                                 # a late answer changes nothing
        assert fetches.counters.answered == 0 and len(fetches.running) == 1
    asyncio.run(main())
