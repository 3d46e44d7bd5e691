"""Waiting with a deadline in the stages' loops."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True when it was set.

    Not `asyncio.wait_for`: on Python 3.11 it can swallow a cancellation that
    arrives just as the event is set (gh-86296), and a stage told to stop then
    loops on, holding the daemon's shutdown forever.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
