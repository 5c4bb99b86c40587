"""The interface every physical backend offers (LMDB alone, in-memory, Raft over LMDB)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vaultraft.storage.batch import Batch


@dataclass(frozen=True)
class ApplyResult:
    """Outcome of applying one batch: its log index and, if it failed, why.

    A state machine never raises; a failed batch is recorded with ``error`` set and
    changes nothing.
    """

    index: int
    error: str | None = None


class Physical(Protocol):
    """Async ordered key/value storage written only through atomic batches.

    Blocking work (LMDB transactions, Raft round trips) runs off the event loop.
    """

    storage_type: str

    async def get(self, key: str) -> bytes | None:
        """The stored bytes at ``key``, or None."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted."""
        ...

    async def apply(self, batch: Batch) -> ApplyResult:
        """Apply ``batch`` atomically and durably; return once it is applied locally.

        Raises StorageError subclasses only for infrastructure faults (not leader,
        timeout); a batch the state machine rejects comes back with ``error`` set.
        """
        ...

    def applied_index(self) -> int:
        """The index of the last batch applied locally (for X-Vault-Index)."""
        ...

    async def close(self) -> None:
        """Release files and background tasks; idempotent."""
        ...
