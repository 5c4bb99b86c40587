"""Storage views over the barrier: what a mount, the token store or the policy store sees.

Every view is scoped to a prefix and carries the replication class of what it writes:
``local`` entries (tokens, cubbyholes, leases, local mounts) are never shipped to a
performance secondary. The class is fixed here, by core, from the mount and the path.
"""

from __future__ import annotations

from typing import Sequence

from vaultraft.barrier import Barrier, BarrierSealed
from vaultraft.barrier.aes_gcm import SealWrapper
from vaultraft.logical import InternalError, NotLeader, Sealed, StorageEntry, Unavailable, WriteOp
from vaultraft.raft.node import CommitTimeout, ConsensusStopped, NotLeaderError, RaftError


class BarrierView:
    """A :class:`vaultraft.logical.StorageView` of ``barrier`` under ``prefix``."""

    def __init__(self, barrier: Barrier, prefix: str, *, local: bool, wrapper: SealWrapper | None = None) -> None:
        """``wrapper`` (the seal manager) seal-wraps every value written through this view
        (a mount with ``seal_wrap=true``); reads unwrap wrapped values and pass others through."""
        if prefix and not prefix.endswith("/"):
            raise ValueError("a view prefix ends in '/'")
        self.barrier = barrier
        self.prefix = prefix
        self.local = local
        self.wrapper = wrapper

    def stamp_current(self, key: str, stamp: object) -> bool:
        """Whether the value at ``key`` is still the one :meth:`get_stamped` returned with
        ``stamp``: the physical read cache holds exactly that stored value (the cache is
        kept exact by every write and snapshot, on every node). Non-blocking; False while
        sealed, when the physical layer has no cache, or when the entry was evicted."""
        if stamp is None or self.barrier.sealed:
            return False
        peek = getattr(self.barrier.physical, "peek", None)
        if peek is None:
            return False
        hit, value = peek(self.prefix + key)
        return bool(hit) and value is stamp

    async def get_stamped(self, key: str) -> tuple[StorageEntry | None, object | None]:
        """:meth:`get`, plus a stamp for :meth:`stamp_current`: the stored (encrypted)
        bytes the entry was decrypted from, or None for a missing key.

        Lets a caller keep something decoded from the entry and reuse it exactly as long as
        the stored value has not changed, without reading it again.
        """
        path = self.prefix + key
        if self.barrier.sealed:
            raise Sealed()
        stored = await self.barrier.physical.get(path)
        if stored is None:
            return None, None
        try:
            value = self.barrier.decrypt(path, stored)
        except BarrierSealed:
            raise Sealed() from None
        if self.wrapper is not None:
            value = await self.wrapper.seal_unwrap(path, value)
        return StorageEntry(key, value), stored

    def sub(self, prefix: str) -> "BarrierView":
        """A narrower view with the same replication class (and seal wrapping)."""
        return BarrierView(self.barrier, self.prefix + prefix, local=self.local, wrapper=self.wrapper)

    async def get(self, key: str) -> StorageEntry | None:
        try:
            value = await self.barrier.get(self.prefix + key)
        except BarrierSealed:
            raise Sealed() from None
        if value is not None and self.wrapper is not None:
            value = await self.wrapper.seal_unwrap(self.prefix + key, value)
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
        if self.wrapper is not None:
            ops = [o if o.value is None else WriteOp(o.key, await self.wrapper.seal_wrap(self.prefix + o.key, o.value))
                   for o in ops]
        try:
            result = await self.barrier.apply([(self.prefix + o.key, o.value, self.local) for o in ops])
        except BarrierSealed:
            raise Sealed() from None
        except (NotLeaderError, ConsensusStopped):
            raise NotLeader(None, "this node lost the active role during the request") from None
        except CommitTimeout:
            raise Unavailable("the write was not committed in time (no raft quorum?)") from None
        except RaftError as e:
            raise Unavailable(f"raft error: {e}") from None
        if result.error is not None:
            raise InternalError(f"storage rejected the write: {result.error}")
