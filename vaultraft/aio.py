"""Waiting with a timeout without ever losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns the inner result when the task is cancelled at
the moment the awaited thing completes (cpython gh-86296, fixed in 3.12 by building
``wait_for`` on ``asyncio.timeout``): the cancellation is swallowed. A background loop that
waits for its wake-up event that way, and is cancelled at seal time just as something wakes
it, goes on running, and the seal that waits for it hangs (seen: a DR secondary's standby
that never finished sealing itself for its primary's keys). ``asyncio.timeout`` keeps the
cancellation, so every timed wait goes through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False); a
    cancellation always propagates."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def within(aw: Awaitable[T], timeout: float) -> T:
    """``await aw`` for at most ``timeout`` seconds (TimeoutError after, ``aw`` cancelled),
    like ``asyncio.wait_for`` but never swallowing a cancellation of the caller."""
    async with asyncio.timeout(timeout):
        return await aw
