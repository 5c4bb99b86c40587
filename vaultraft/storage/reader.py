"""Blocking store reads off the event loop, batched: one thread hop per loop iteration.

``run_in_executor`` costs a concurrent future, an asyncio wrapper, a worker wake-up and a
loop wake-up *per read*, and under load every hop is also a GIL hand-off between threads.
:class:`BatchReader` collects the reads requested during one loop iteration, hands them
to its thread as one job, and delivers all the answers with one ``call_soon_threadsafe``.
Reads still never run on the loop; they run in the order they were requested.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[Callable[[Any], Any], Any, "asyncio.Future[Any]"]
_STOP = None


class ReaderClosed(RuntimeError):
    """The reader was stopped before the read could run."""


class BatchReader:
    """One daemon thread running blocking read functions for one event loop at a time.

    ``await reader.run(fn, arg)`` returns ``fn(arg)`` (or raises what it raised). Calls made
    in the same loop iteration share one hop to the thread and one hop back.
    """

    def __init__(self, name: str) -> None:
        """Start the thread (named ``name``)."""
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, list[_Item]] | None] = queue.SimpleQueue()
        self._pending: list[_Item] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.jobs = 0
        self.reads = 0
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[Any], T], arg: Any) -> T:
        """``fn(arg)`` on the reader thread; raises ReaderClosed after :meth:`close`."""
        if self._closed:
            raise ReaderClosed("reader is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            self._loop = loop
            loop.call_soon(self._dispatch)
        elif loop is not self._loop:  # another loop (tests): never mix loops in one job
            self._jobs.put((loop, [(fn, arg, fut)]))
            return await fut
        self._pending.append((fn, arg, fut))
        return await fut

    def _dispatch(self) -> None:
        items, self._pending = self._pending, []
        loop = self._loop
        if items and loop is not None:
            self._jobs.put((loop, items))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, items = job
            self.jobs += 1
            self.reads += len(items)
            results: list[tuple[bool, Any]] = []
            for fn, arg, _ in items:
                try:
                    results.append((True, fn(arg)))
                except BaseException as e:  # noqa: BLE001 - delivered to the awaiting coroutine
                    results.append((False, e))
            try:
                loop.call_soon_threadsafe(_deliver, items, results)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    async def aclose(self) -> None:
        """Run what was already handed over, then stop the thread and wait for it (call on
        the loop that uses the reader). Reads requested in the current loop iteration and
        not yet handed over fail with ReaderClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        items, self._pending = self._pending, []
        for _, _, fut in items:
            if not fut.done():
                fut.set_exception(ReaderClosed("reader is closed"))
        self._jobs.put(_STOP)
        await asyncio.to_thread(self._thread.join, 30)


def _deliver(items: list[_Item], results: list[tuple[bool, Any]]) -> None:
    for (_, _, fut), (ok, value) in zip(items, results):
        if fut.done():  # the caller was cancelled
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
