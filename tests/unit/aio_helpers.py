"""Waiting inside asyncio tests."""

from __future__ import annotations

import asyncio


async def until(cond, timeout=5.0):
    """Poll `cond` every 10 ms until it holds; AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
