"""Stopping the background tasks core owns (no fire-and-forget: every task is cancelled and
awaited by its owner)."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("vaultraft.core")


async def cancel_and_wait(task: "asyncio.Task[None] | None") -> None:
    """Cancel ``task`` (if any) and wait for it to finish; its own failure is logged, not
    raised (a background task that died must not stop a seal or a shutdown halfway)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception as e:
        log.error("background_task_failed", task=task.get_name(), error=type(e).__name__)
