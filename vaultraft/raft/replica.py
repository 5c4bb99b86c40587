"""The replication shipper's view of a Raft node: a WAL source (primary) and a replica sink
(secondary), both over the node's LMDB store and Raft log (see replication/interfaces.py).

The source reads retained WAL entries and consistent snapshots on worker threads, never on
the event loop. The sink turns everything a primary ships into this cluster's own log
entries (``REPL_*`` commands), so the secondary's standbys apply exactly what its active
node applied, and a restart resumes from the position stored with the data.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Iterator, Sequence

import msgpack

from vaultraft.raft.command import Command, CommandKind
from vaultraft.raft.node import RaftError, RaftPhysical
from vaultraft.replication.interfaces import ReplicaPosition
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.wal import WalEntry

#: ``keep(key)`` for a mode: DR secondaries get everything; performance secondaries only
#: what the primary's core does not classify as local (set by core, which knows mounts).
KeyFilter = Callable[[str], bool]
#: Largest REPL_PUT / REPL_WAL entry the sink writes (Raft frames stay well under the cap).
MAX_ENTRY_BYTES = 4 << 20


def _keep_all(key: str) -> bool:
    return True


def _digest(items: Iterator[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for k, v in items:
        h.update(msgpack.packb([k, v], use_bin_type=True))
    return h.hexdigest()


class _StoreSnapshot:
    """A snapshot read on one dedicated thread, handed over in chunks through a small queue
    (LMDB read transactions stay on the thread that opened them)."""

    def __init__(self, store: LMDBStore, keep: KeyFilter) -> None:
        self._store, self._keep = store, keep
        self.index = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def open(self, max_bytes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[tuple[str, bytes]] | BaseException | None] = asyncio.Queue(maxsize=4)
        self._ready: asyncio.Future[int] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(max_bytes,), name="vr-repl-snapshot", daemon=True)
        self._thread.start()
        self.index = await self._ready

    def _put(self, item: list[tuple[str, bytes]] | BaseException | None) -> bool:
        fut = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        while not self._stop.is_set():
            try:
                fut.result(timeout=0.2)
                return True
            except TimeoutError:
                continue
        fut.cancel()
        return False

    def _run(self, max_bytes: int) -> None:
        try:
            with self._store.replicated_items(self._keep) as (index, items):
                self._loop.call_soon_threadsafe(_resolve, self._ready, index)
                chunk: list[tuple[str, bytes]] = []
                size = 0
                for k, v in items:
                    chunk.append((k, v))
                    size += len(k) + len(v) + 16
                    if size >= max_bytes:
                        if not self._put(chunk):
                            return
                        chunk, size = [], 0
                if chunk and not self._put(chunk):
                    return
            self._put(None)
        except BaseException as e:  # reported to the reader; the thread ends either way
            self._loop.call_soon_threadsafe(_fail, self._ready, e)
            self._put(e)

    async def _chunks(self) -> AsyncIterator[list[tuple[str, bytes]]]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise RaftError(f"snapshot read failed: {type(item).__name__}") from item
            yield item

    def chunks(self, max_bytes: int) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The chunks (``max_bytes`` was fixed when the snapshot opened)."""
        return self._chunks()

    async def close(self) -> None:
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[int], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(RaftError(f"snapshot read failed: {type(e).__name__}"))


class RaftWalSource:
    """``WalSource`` over a primary node's store. ``local_filter(key)`` (set by core) says
    whether a key is local (not shipped to performance secondaries)."""

    SNAPSHOT_CHUNK = 1 << 20

    def __init__(self, raft: RaftPhysical, local_filter: KeyFilter | None = None) -> None:
        self.raft = raft
        self.store = raft.store
        self.local_filter = local_filter

    def _keep(self, mode: str) -> KeyFilter:
        if mode == "dr" or self.local_filter is None:
            return _keep_all
        is_local = self.local_filter
        return lambda key: not is_local(key)

    def applied_index(self) -> int:
        """The last applied log index on this node."""
        return self.store.applied_index()

    def wal_bounds(self) -> tuple[int, int]:
        """(first, last) retained WAL index; (0, 0) when none."""
        return self.store.wal_bounds()

    async def read_wal(self, after: int, max_entries: int, max_bytes: int) -> list[WalEntry]:
        """Retained entries after ``after``: from the store's in-memory tail when it reaches
        back that far (a streaming secondary), else read on a worker thread."""
        cached = self.store.read_wal_cached(after, max_entries, max_bytes)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.store.read_wal, after, max_entries, max_bytes)

    async def wait_for_index(self, after: int, timeout: float) -> int:
        """Wait for an apply beyond ``after``; the applied index."""
        return await self.raft.wait_for_index(after, timeout)

    @asynccontextmanager
    async def snapshot(self, mode: str) -> AsyncIterator[_StoreSnapshot]:
        """A consistent snapshot of what a ``mode`` secondary receives."""
        snap = _StoreSnapshot(self.store, self._keep(mode))
        await snap.open(self.SNAPSHOT_CHUNK)
        try:
            yield snap
        finally:
            await snap.close()

    async def digest(self, mode: str) -> tuple[int, str]:
        """(applied index, hex digest) of what a ``mode`` secondary receives."""
        keep = self._keep(mode)

        def run() -> tuple[int, str]:
            with self.store.replicated_items(keep) as (index, items):
                return index, _digest(items)

        return await asyncio.to_thread(run)


class RaftReplicaSink:
    """``ReplicaSink`` over a secondary's active node: each call is a log entry of its own."""

    def __init__(self, raft: RaftPhysical, local_filter: KeyFilter | None = None) -> None:
        self.raft = raft
        self.store = raft.store
        self.local_filter = local_filter

    def position(self) -> ReplicaPosition:
        """The persisted position in the primary's log."""
        st = self.store.replica_state()
        return ReplicaPosition(st.lineage, st.remote_index, st.complete)

    async def _submit(self, cmd: Command) -> None:
        result = await self.raft.submit_replicated(cmd)
        if result.error is not None:
            raise RaftError(result.error)

    async def begin_bulk(self, lineage: str, index: int) -> None:
        """Drop every replicated key and start an incomplete sync at ``index``."""
        await self.begin_bulk_keeping(lineage, index, ())

    async def begin_bulk_keeping(self, lineage: str, index: int, keep: tuple[str, ...]) -> None:
        """:meth:`begin_bulk`, keeping keys under the ``keep`` prefixes (local state)."""
        await self._submit(Command(CommandKind.REPL_RESET, lineage=lineage, remote_index=index, keep=keep))

    async def bulk_put(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store snapshot pairs verbatim (split into entries of at most MAX_ENTRY_BYTES)."""
        chunk: list[tuple[str, bytes]] = []
        size = 0
        for k, v in items:
            if chunk and size + len(k) + len(v) > MAX_ENTRY_BYTES:
                await self._submit(Command(CommandKind.REPL_PUT, items=tuple(chunk)))
                chunk, size = [], 0
            chunk.append((k, v))
            size += len(k) + len(v)
        if chunk:
            await self._submit(Command(CommandKind.REPL_PUT, items=tuple(chunk)))

    async def end_bulk(self, lineage: str, index: int) -> None:
        """Mark the sync complete at remote ``index``."""
        await self._submit(Command(CommandKind.REPL_END, lineage=lineage, remote_index=index))

    async def apply_wal(self, lineage: str, entries: Sequence[WalEntry]) -> None:
        """Apply shipped entries (in entries of at most MAX_ENTRY_BYTES)."""
        chunk: list[WalEntry] = []
        size = 0
        for e in entries:
            n = sum(len(b) for b in e.batches) + 32
            if chunk and size + n > MAX_ENTRY_BYTES:
                await self._submit(Command(CommandKind.REPL_WAL, lineage=lineage, wal=tuple(chunk)))
                chunk, size = [], 0
            chunk.append(e)
            size += n
        if chunk:
            await self._submit(Command(CommandKind.REPL_WAL, lineage=lineage, wal=tuple(chunk)))

    async def digest(self, mode: str) -> tuple[int, str]:
        """(remote index, hex digest) of the local replicated keyspace."""
        keep: KeyFilter = _keep_all
        if mode != "dr" and self.local_filter is not None:
            is_local = self.local_filter
            keep = lambda key: not is_local(key)  # noqa: E731

        def run() -> tuple[int, str]:
            with self.store.replicated_items(keep) as (_, items):
                return self.store.replica_state().remote_index, _digest(items)

        return await asyncio.to_thread(run)
