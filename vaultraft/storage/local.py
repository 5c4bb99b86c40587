"""The async :class:`Physical` for one node: a store driven off the event loop.

Reads are answered from the store's read cache when it holds the key (a dict lookup, no
thread hop) and otherwise run on a dedicated reader thread, batched per loop iteration. Writes go through a group committer: ``apply``
only enqueues and awaits a future; one owned background task drains everything queued
so far and commits it as ONE transaction (one fsync) on a dedicated writer thread,
assigning consecutive log indexes. Under load many writers share one fsync; alone, a
writer pays exactly one.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

from vaultraft.storage.batch import Batch
from vaultraft.storage.inmem import InmemStore
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.physical import ApplyResult
from vaultraft.storage.reader import BatchReader

STORAGE_TYPES = ("raft", "inmem")


class StorageError(Exception):
    """An infrastructure fault below the state machine (closed store, disk, map full)."""


class StoreClosed(StorageError):
    """The physical backend was closed or never started."""


class KVStore(Protocol):
    """The synchronous store interface shared by :class:`LMDBStore` and :class:`InmemStore`."""

    def get(self, key: str) -> bytes | None: ...
    def peek(self, key: str) -> tuple[bool, bytes | None]: ...
    def list(self, prefix: str) -> builtins.list[str]: ...
    def apply_many(self, batches: Sequence[tuple[Batch, int]]) -> builtins.list[ApplyResult]: ...
    def applied_index(self) -> int: ...
    def all_items(self) -> Iterator[tuple[str, bytes]]: ...
    def close(self) -> None: ...


@dataclass
class _Pending:
    batch: Batch
    future: asyncio.Future[ApplyResult] = field(repr=False)


class LocalPhysical:
    """Async Physical over one local store with group commit.

    Lifecycle: construct, ``await start()``, use, ``await close()``. ``commit_count`` and
    ``batch_count`` expose how many transactions served how many batches.
    """

    def __init__(self, store: KVStore, storage_type: str, *, max_group: int = 512) -> None:
        """Wrap ``store``; ``storage_type`` is what ``sys/storage`` reports ("raft"/"inmem")."""
        if storage_type not in STORAGE_TYPES:
            raise ValueError(f"unknown local storage type {storage_type!r}")
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self.storage_type = storage_type
        self._store = store
        self._max_group = max_group
        self._reader = BatchReader("vr-store-read")
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vr-store-write")
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied_cond: asyncio.Condition | None = None
        self._applied = store.applied_index()
        self._closing = False
        self._closed = False
        self.commit_count = 0
        self.batch_count = 0

    @classmethod
    async def open(cls, storage_type: str, path: str | None = None, *, map_size: int = 1 << 30) -> "LocalPhysical":
        """Build and start a LocalPhysical: LMDB at ``path`` for "raft", memory for "inmem"."""
        store: KVStore
        if storage_type == "inmem":
            store = InmemStore()
        elif storage_type == "raft":
            if not path:
                raise ValueError("storage \"raft\" needs a path")
            loop = asyncio.get_running_loop()
            store = await loop.run_in_executor(None, lambda: LMDBStore(path, map_size=map_size))
        else:
            raise ValueError(f"unknown local storage type {storage_type!r}")
        phys = cls(store, storage_type)
        await phys.start()
        return phys

    @property
    def store(self) -> KVStore:
        """The underlying synchronous store (for snapshots and tests)."""
        return self._store

    async def start(self) -> None:
        """Start the group-commit task on the running loop; idempotent."""
        if self._closed or self._closing:
            raise StoreClosed("storage is closed")
        if self._task is not None:
            return
        self._queue = asyncio.Queue()
        self._applied_cond = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._commit_loop(), name="vr-group-commit")

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The stored bytes at ``key``, or None: from the store's non-blocking read cache
        when it has the answer, else read on the reader thread."""
        self._check_open()
        hit, value = self._store.peek(key)
        if hit:
            return value
        return await self._reader.run(self._store.get, key)

    def peek(self, key: str) -> tuple[bool, bytes | None]:
        """Non-blocking: ``(True, value)`` when the store's read cache knows ``key`` (None:
        absent), else ``(False, None)``."""
        return self._store.peek(key)

    async def list(self, prefix: str) -> builtins.list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted."""
        self._check_open()
        return await self._reader.run(self._store.list, prefix)

    def applied_index(self) -> int:
        """The index of the last batch committed locally."""
        return self._applied

    # -- writes --------------------------------------------------------------------------

    async def apply(self, batch: Batch) -> ApplyResult:
        """Queue ``batch`` for the next group commit and return its result once durable.

        Raises StoreClosed if not started or closing, StorageError if the commit failed
        (nothing of that group was written). A cancelled caller's batch may still commit.
        """
        self._check_open()
        if self._queue is None or self._task is None:
            raise StoreClosed("storage is not started")
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(batch, fut))
        return await asyncio.shield(fut)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """Wait until the applied index reaches ``index``; False if ``timeout`` s pass first."""
        if self._applied >= index:
            return True
        cond = self._applied_cond
        if cond is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(lambda: self._applied >= index or self._closing)
        except TimeoutError:
            return False
        return self._applied >= index

    async def _commit_loop(self) -> None:
        assert self._queue is not None and self._applied_cond is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            group: builtins.list[_Pending] = []
            stop = first is None
            if first is not None:
                group.append(first)
            while len(group) < self._max_group and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    continue
                group.append(nxt)
            if group:
                await self._commit(loop, group)
            if stop and self._queue.empty():
                return

    async def _commit(self, loop: asyncio.AbstractEventLoop, group: builtins.list[_Pending]) -> None:
        assert self._applied_cond is not None
        base = self._applied
        pairs = [(p.batch, base + 1 + i) for i, p in enumerate(group)]
        try:
            results = await loop.run_in_executor(self._writer, self._store.apply_many, pairs)
        except Exception as e:  # an infrastructure fault: fail the whole group
            err = StorageError(f"storage commit failed: {type(e).__name__}: {e}")
            for p in group:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        self.commit_count += 1
        self.batch_count += len(group)
        self._applied = self._store.applied_index()
        for p, r in zip(group, results):
            if not p.future.done():
                p.future.set_result(r)
        async with self._applied_cond:
            self._applied_cond.notify_all()

    # -- lifecycle -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise StoreClosed("storage is closed")

    def _fail_queued(self) -> None:
        """Fail any batch still queued (only possible if the committer died)."""
        assert self._queue is not None
        while not self._queue.empty():
            p = self._queue.get_nowait()
            if p is not None and not p.future.done():
                p.future.set_exception(StoreClosed("storage is closed"))

    async def close(self) -> None:
        """Commit everything already queued, stop the committer, close the store; idempotent."""
        if self._closed or self._closing:
            return
        self._closing = True
        if self._task is not None and self._queue is not None:
            self._queue.put_nowait(None)
            try:
                await self._task
            finally:
                self._task = None
                self._fail_queued()
        if self._applied_cond is not None:
            async with self._applied_cond:
                self._applied_cond.notify_all()
        loop = asyncio.get_running_loop()
        await self._reader.aclose()
        await loop.run_in_executor(self._writer, self._store.close)
        self._writer.shutdown(wait=False)
        self._closed = True
