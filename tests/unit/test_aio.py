"""vaultraft.aio: timed waits that never lose a cancellation (asyncio.wait_for on 3.11 can)."""

from __future__ import annotations

import asyncio

import pytest

from vaultraft.aio import wait_event, within


async def test_wait_event_reports_set_or_timeout() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    ev.set()
    assert await wait_event(ev, 0.01) is True


async def test_a_loop_woken_and_cancelled_in_the_same_turn_stops() -> None:
    """The shape of the replication reconcile loop: cancelled at seal time in the very turn
    something wakes it. It must end; with 3.11's wait_for it went on forever."""
    ev = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await wait_event(ev, 10)
            ev.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop now waits for its event
    ev.set()
    task.cancel()  # the wake-up and the cancellation land together
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert rounds == 1


async def test_within_returns_times_out_and_keeps_cancellations() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    done.set_result(7)
    assert await within(done, 1) == 7
    never: asyncio.Future[int] = loop.create_future()
    with pytest.raises(TimeoutError):
        await within(never, 0.01)
    assert never.cancelled()

    fut: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(within(fut, 10))
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()  # completes and is cancelled in the same turn: the cancellation wins
    with pytest.raises(asyncio.CancelledError):
        await task
