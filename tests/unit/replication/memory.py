"""In-memory test doubles of the replication interfaces (WalSource, ReplicaSink, registry)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from vaultraft.replication.interfaces import Mode, ReplicaPosition
from vaultraft.replication.registry import PrimaryState, SecondaryContact
from vaultraft.storage.batch import Batch, Op, OpKind
from vaultraft.storage.wal import WalEntry, is_cluster_own


def digest_pairs(pairs: Iterable[tuple[str, bytes]]) -> str:
    """Hex SHA-256 over sorted, length-prefixed (key, value) pairs."""
    h = hashlib.sha256()
    for key, value in sorted(pairs):
        k = key.encode()
        h.update(len(k).to_bytes(4, "big") + k + len(value).to_bytes(8, "big") + value)
    return h.hexdigest()


@dataclass
class MemorySnapshot:
    """A frozen copy of the replicated keyspace."""

    index: int
    items: list[tuple[str, bytes]]

    async def chunks(self, max_bytes: int) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Items in key order, in lists of about ``max_bytes``."""
        chunk: list[tuple[str, bytes]] = []
        size = 0
        for key, value in self.items:
            chunk.append((key, value))
            size += len(key) + len(value)
            if size >= max_bytes:
                yield chunk
                await asyncio.sleep(0)
                chunk, size = [], 0
        if chunk:
            yield chunk


class MemoryWalSource:
    """A primary: a dict, an applied index and a retained WAL that can be truncated."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[bytes, bool]] = {}
        self.applied = 0
        self.wal: list[WalEntry] = []
        self.snapshots = 0
        self.after_digest: Callable[[], None] | None = None
        self._changed = asyncio.Event()

    # -- writing (test side) -------------------------------------------------------------------

    def commit(self, *batches: Batch) -> int:
        """Apply batches as one log entry recorded in the WAL; returns its index."""
        self.applied += 1
        for batch in batches:
            for op in batch.ops:
                if op.kind is OpKind.PUT:
                    assert op.value is not None
                    self.data[op.key] = (op.value, op.local)
                else:
                    self.data.pop(op.key, None)
        self.wal.append(WalEntry(self.applied, int(time.time() * 1000), tuple(b.encode() for b in batches)))
        self._notify()
        return self.applied

    def put(self, key: str, value: bytes, *, local: bool = False) -> int:
        """One put as one entry."""
        return self.commit(Batch((Op.put(key, value, local=local),)))

    def noop(self) -> int:
        """A log entry that changed nothing (not in the WAL)."""
        self.applied += 1
        self._notify()
        return self.applied

    def truncate(self, through: int) -> None:
        """Drop retained entries with index <= ``through``."""
        self.wal = [e for e in self.wal if e.index > through]

    def replicated(self, mode: Mode) -> dict[str, bytes]:
        """What a ``mode`` secondary should hold."""
        return {k: v for k, (v, local) in self.data.items()
                if not is_cluster_own(k) and not (mode == "performance" and local)}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- WalSource -----------------------------------------------------------------------------

    def applied_index(self) -> int:
        return self.applied

    def wal_bounds(self) -> tuple[int, int]:
        if not self.wal:
            return (0, 0)
        return (self.wal[0].index, self.wal[-1].index)

    async def read_wal(self, after: int, max_entries: int, max_bytes: int) -> list[WalEntry]:
        await asyncio.sleep(0)
        out: list[WalEntry] = []
        size = 0
        for e in self.wal:
            if e.index <= after:
                continue
            out.append(e)
            size += sum(len(b) for b in e.batches)
            if len(out) >= max_entries or size >= max_bytes:
                break
        return out

    async def wait_for_index(self, after: int, timeout: float) -> int:
        if self.applied <= after:
            try:
                async with asyncio.timeout(timeout):
                    while self.applied <= after:
                        await self._changed.wait()
            except TimeoutError:
                pass
        return self.applied

    @asynccontextmanager
    async def snapshot(self, mode: Mode) -> AsyncIterator[MemorySnapshot]:
        self.snapshots += 1
        yield MemorySnapshot(self.applied, sorted(self.replicated(mode).items()))

    async def digest(self, mode: Mode) -> tuple[int, str]:
        await asyncio.sleep(0)
        result = (self.applied, digest_pairs(self.replicated(mode).items()))
        if self.after_digest is not None:
            self.after_digest()
        return result


class MemorySink:
    """A secondary: applies bulk syncs and WAL entries to a dict, recording what it got."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lineage = ""
        self.remote_index = 0
        self.complete = False
        self.received: list[int] = []  # every entry index passed to apply_wal
        self.applies: list[int] = []  # how many entries each apply_wal call carried
        self.received_batches: list[Batch] = []
        self.bulk_begins: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None  # when set to an unset event, apply_wal waits on it

    def position(self) -> ReplicaPosition:
        return ReplicaPosition(self.lineage, self.remote_index, self.complete)

    async def begin_bulk(self, lineage: str, index: int) -> None:
        self.bulk_begins.append((lineage, index))
        self.data = {k: v for k, v in self.data.items() if is_cluster_own(k)}
        self.lineage, self.complete = lineage, False

    async def bulk_put(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.data.update(items)

    async def end_bulk(self, lineage: str, index: int) -> None:
        assert lineage == self.lineage
        self.remote_index, self.complete = index, True

    async def apply_wal(self, lineage: str, entries: Sequence[WalEntry]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        assert lineage == self.lineage and self.complete
        self.applies.append(len(entries))
        for e in entries:
            self.received.append(e.index)
            if e.index <= self.remote_index:
                continue
            for raw in e.batches:
                batch = Batch.decode(raw)
                self.received_batches.append(batch)
                for op in batch.ops:
                    if op.kind is OpKind.PUT:
                        assert op.value is not None
                        self.data[op.key] = op.value
                    else:
                        self.data.pop(op.key, None)
            self.remote_index = e.index

    async def digest(self, mode: Mode) -> tuple[int, str]:
        return self.remote_index, digest_pairs((k, v) for k, v in self.data.items() if not is_cluster_own(k))


@dataclass
class MemoryRegistry:
    """The primary's secondary registry."""

    allowed: dict[str, Mode] = field(default_factory=dict)
    state: PrimaryState = field(default_factory=lambda: PrimaryState(True, "L1", 1))
    contacts: list[SecondaryContact] = field(default_factory=list)
    authorize_calls: list[str] = field(default_factory=list)

    def authorize(self, secondary_id: str) -> Mode | None:
        self.authorize_calls.append(secondary_id)
        return self.allowed.get(secondary_id)

    def primary_state(self) -> PrimaryState:
        return self.state

    def on_contact(self, contact: SecondaryContact) -> None:
        self.contacts.append(contact)

    def disconnects(self, secondary_id: str) -> int:
        """How many disconnect contacts ``secondary_id`` has had."""
        return sum(1 for c in self.contacts if c.secondary_id == secondary_id and not c.connected)
