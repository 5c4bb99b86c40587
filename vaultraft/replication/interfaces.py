"""What the replication shipper needs from the node it runs on (implemented by the lead).

The shipper is below the barrier: it moves ciphertext between clusters and never sees a key.
A primary's active node exposes its retained WAL and consistent snapshots as a
:class:`WalSource`; a secondary's active node applies what it receives through its own Raft
log via a :class:`ReplicaSink`, so the secondary's standbys follow it.

Modes: ``"dr"`` secondaries receive every entry (local ones too: tokens, leases, local
mounts); ``"performance"`` secondaries receive only ops whose ``local`` flag is False (the
server filters WAL batches by ``Op.local``; the source filters snapshots and digests).
Keys under ``storage.wal.CLUSTER_OWN_PREFIXES`` never appear in either (the source drops them).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import AsyncIterator, Literal, Protocol, Sequence

from vaultraft.storage.wal import WalEntry

Mode = Literal["dr", "performance"]


class Snapshot(Protocol):
    """A consistent read of the replicated keyspace at primary log index ``index``."""

    index: int

    def chunks(self, max_bytes: int) -> AsyncIterator[list[tuple[str, bytes]]]:
        """(key, ciphertext) pairs in key order, in lists of about ``max_bytes``."""
        ...


class WalSource(Protocol):
    """The primary side. Reads run off the event loop inside the implementation."""

    def applied_index(self) -> int:
        """The last log index applied on this node."""
        ...

    def wal_bounds(self) -> tuple[int, int]:
        """(first retained WAL index, last WAL index); (0, 0) when nothing is retained.

        A secondary at remote index ``r`` can stream iff ``first - 1 <= r`` (entries after
        ``r`` are all retained); otherwise it must bulk-sync. WAL indexes have gaps (entries
        that changed nothing are not recorded).
        """
        ...

    async def read_wal(self, after: int, max_entries: int, max_bytes: int) -> list[WalEntry]:
        """Retained entries with index > ``after``, in order, at most ``max_entries`` and
        about ``max_bytes`` (always at least one entry if any exists)."""
        ...

    async def wait_for_index(self, after: int, timeout: float) -> int:
        """Wait until the applied index exceeds ``after`` (or ``timeout`` passes); return
        the applied index. Woken by applies, not by polling."""
        ...

    def snapshot(self, mode: Mode) -> AbstractAsyncContextManager[Snapshot]:
        """A consistent snapshot of what a ``mode`` secondary receives (bulk sync)."""
        ...

    async def digest(self, mode: Mode) -> tuple[int, str]:
        """(applied index, hex SHA-256 over the sorted (key, value) pairs a ``mode``
        secondary receives), computed from one consistent read."""
        ...


@dataclass(frozen=True)
class ReplicaPosition:
    """Where a secondary stands: which primary lineage, up to which primary index, and
    whether its last bulk sync completed (an incomplete one must start over)."""

    lineage: str
    remote_index: int
    complete: bool


class ReplicaSink(Protocol):
    """The secondary side: every call commits through the secondary's own Raft log and
    returns once applied locally (raises on infrastructure faults; the client reconnects)."""

    def position(self) -> ReplicaPosition:
        """The persisted position (lineage "" and index 0 for a never-synced secondary)."""
        ...

    async def begin_bulk(self, lineage: str, index: int) -> None:
        """Start a bulk sync from snapshot ``index`` of ``lineage``: delete every key except
        cluster-own ones and mark the position incomplete."""
        ...

    async def bulk_put(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store one chunk of snapshot pairs (ciphertext, stored verbatim)."""
        ...

    async def end_bulk(self, lineage: str, index: int) -> None:
        """Mark the bulk sync complete at remote ``index``."""
        ...

    async def apply_wal(self, lineage: str, entries: Sequence[WalEntry]) -> None:
        """Apply shipped entries in order; entries at or below the stored remote index are
        skipped (a resend after a reconnect applies nothing twice)."""
        ...

    async def digest(self, mode: Mode) -> tuple[int, str]:
        """(remote index, hex digest) of the local replicated keyspace, same function as
        :meth:`WalSource.digest`."""
        ...
