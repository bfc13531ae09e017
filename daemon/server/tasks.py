"""The daemon's background tasks: started through one place, so a failing task is logged and
nothing new starts once shutdown has begun (only the releases shutdown itself needs)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from ..log import log


class Tasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self.shutting_down = False

    def spawn(self, coro: Coroutine, name: str | None = None) -> asyncio.Task | None:
        if self.shutting_down and not (name or "").startswith("release"):
            coro.close()            # nothing new starts once shutdown has begun
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("internal task %s failed: %r", task.get_name(), exc, exc_info=exc)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def wait_for_wakeup(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` passes; True if it was set. Clears it first.

    A plain timer that sets the event, rather than asyncio.wait_for: that wraps the wait in a
    task of its own and costs several loop turns each time it times out, which an idle daemon
    paid every second."""
    event.clear()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        event.set()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await event.wait()
    finally:
        timer.cancel()
    return not expired
