"""``merkle_root`` for ``sys/replication/<kind>/status``: a digest of the replicated keyspace
(the one ``merkle-check`` compares), kept off the request path.

Why not compute it per status call: it reads every replicated key (about a second per 100k
keys), and drills poll status several times a second. Why not an incremental tree: it would
cost every write a read of the value it replaces. So a status call returns the last digest
and, when the store has moved on and the last one is at least ``REFRESH_S`` old, starts one
computation in the background (one at a time, cancelled at seal). The root therefore trails
writes by up to ``REFRESH_S`` plus one computation, like Vault's, which also moves with the
log; two clusters show the same root once both are idle at the same index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from vaultraft.core.tasks import cancel_and_wait

log = structlog.get_logger("vaultraft.replication")

REFRESH_S = 5.0

#: ``compute(kind) -> (index, hex digest)``.
Compute = Callable[[str], Awaitable[tuple[int, str]]]


class MerkleRoots:
    """The last digest per replication kind, refreshed in the background on demand."""

    def __init__(self, compute: Compute, applied_index: Callable[[], int]) -> None:
        """``compute`` digests a kind's keyspace; ``applied_index`` tells whether it moved."""
        self._compute = compute
        self._applied = applied_index
        self._roots: dict[str, tuple[int, str, float]] = {}  # kind -> (index, root, computed at)
        self._task: asyncio.Task[None] | None = None

    def root(self, kind: str) -> str:
        """The last root of ``kind`` ("" until one was computed); may start a refresh."""
        cached = self._roots.get(kind)
        stale = cached is None or (cached[0] != self._applied() and time.monotonic() - cached[2] >= REFRESH_S)
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._refresh(kind), name="merkle_root")
        return cached[1] if cached is not None else ""

    async def _refresh(self, kind: str) -> None:
        try:
            index, root = await self._compute(kind)
        except Exception as e:  # a status field: log and keep the last root
            log.warning("merkle_root_failed", kind=kind, error=type(e).__name__)
            return
        self._roots[kind] = (index, root, time.monotonic())

    async def wait_idle(self) -> None:
        """Wait for a running computation (tests, shutdown ordering)."""
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        """Cancel a running computation (at seal)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
