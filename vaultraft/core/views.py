"""Storage views over the barrier: what a mount, the token store or the policy store sees.

Every view is scoped to a prefix and carries the replication class of what it writes:
``local`` entries (tokens, cubbyholes, leases, local mounts) are never shipped to a
performance secondary. The class is fixed here, by core, from the mount and the path.
"""

from __future__ import annotations

from typing import Sequence

from vaultraft.barrier import Barrier, BarrierSealed
from vaultraft.logical import InternalError, Sealed, StorageEntry, WriteOp


class BarrierView:
    """A :class:`vaultraft.logical.StorageView` of ``barrier`` under ``prefix``."""

    def __init__(self, barrier: Barrier, prefix: str, *, local: bool) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError("a view prefix ends in '/'")
        self.barrier = barrier
        self.prefix = prefix
        self.local = local

    def sub(self, prefix: str) -> "BarrierView":
        """A narrower view with the same replication class."""
        return BarrierView(self.barrier, self.prefix + prefix, local=self.local)

    async def get(self, key: str) -> StorageEntry | None:
        try:
            value = await self.barrier.get(self.prefix + key)
        except BarrierSealed:
            raise Sealed() from None
        return None if value is None else StorageEntry(key, value)

    async def put(self, entry: StorageEntry) -> None:
        await self.write_batch([WriteOp(entry.key, entry.value)])

    async def delete(self, key: str) -> None:
        await self.write_batch([WriteOp(key, None)])

    async def list(self, prefix: str) -> list[str]:
        try:
            return await self.barrier.list(self.prefix + prefix)
        except BarrierSealed:
            raise Sealed() from None

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        if not ops:
            return
        try:
            result = await self.barrier.apply([(self.prefix + o.key, o.value, self.local) for o in ops])
        except BarrierSealed:
            raise Sealed() from None
        if result.error is not None:
            raise InternalError(f"storage rejected the write: {result.error}")
