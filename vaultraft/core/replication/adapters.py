"""The manager's adapters to the shipper's interfaces (vaultraft.replication): what the
replication server asks of this primary (:class:`Registry`), the replica sink a secondary's
client writes into (:class:`ActivatingSink`), and the read-only store a scratch barrier
opens the primary's held-back keyring with (:class:`KeyringOverlay`)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from vaultraft.barrier import KEYRING_PATH
from vaultraft.core.replication.key_sync import KEY_HOLDERS_MARK
from vaultraft.core.replication.seal_stream import normalized_digest
from vaultraft.logical import InternalError
from vaultraft.raft.replica import RaftReplicaSink
from vaultraft.replication.interfaces import ReplicaPosition
from vaultraft.replication.registry import PrimaryState, SecondaryContact

if TYPE_CHECKING:
    from vaultraft.core.replication.manager import ReplicationManager


class KeyringOverlay:
    """Storage as seen by a scratch barrier: ``core/keyring`` is the shipped keyring held
    back by the activation, every other read goes to the real store (read only)."""

    def __init__(self, physical: Any, keyring_blob: bytes) -> None:
        self._physical, self._blob = physical, keyring_blob

    async def get(self, key: str) -> bytes | None:
        if key == KEYRING_PATH:
            return self._blob
        got: bytes | None = await self._physical.get(key)
        return got

    async def list(self, prefix: str) -> list[str]:
        listed: list[str] = await self._physical.list(prefix)
        return listed

    async def apply(self, batch: Any) -> Any:
        raise InternalError("the activation's scratch barrier is read only")


class Registry:
    """The server's view of this primary (``replication.server.SecondaryRegistry``)."""

    def __init__(self, manager: ReplicationManager) -> None:
        self._m = manager

    def authorize(self, secondary_id: str) -> Any:
        for rec in self._m.records.values():
            if rec.mode != "primary":
                continue
            s = rec.secondary(secondary_id)
            if s is not None and not s.revoked and s.activated:
                return s.mode
        return None

    def primary_state(self) -> PrimaryState:
        rec = self._m.primary_record()
        core = self._m.core
        active = core.active and rec is not None
        return PrimaryState(is_active=active, lineage=rec.lineage if rec else "", epoch=rec.epoch if rec else 0,
                            active_addr=None if active else self._m.active_replication_addr)

    def stream_policy(self, secondary_id: str) -> tuple[str, Any]:
        """A performance secondary's paths filter as (tag, key filter): with ``deny`` the
        data of the listed mounts is never shipped to it; with ``allow`` only theirs is
        (system state — mount tables, policies — always is). The tag changes with the
        filter, which makes the secondary resync."""
        rec = self._m.perf
        s = rec.secondary(secondary_id) if rec is not None and rec.mode == "primary" else None
        if s is None or not s.filter_mode:
            return "", None
        u = self._m.core._u
        mounts = u.mounts.entries if u is not None else {}
        listed = {f"logical/{e.uuid}/" for path, e in mounts.items() if path in s.filter_paths}
        tag = hashlib.sha256(f"{s.filter_mode}:{','.join(s.filter_paths)}".encode()).hexdigest()[:12]
        if s.filter_mode == "deny":
            denied = tuple(listed)
            return tag, (lambda key: not key.startswith(denied)) if denied else None
        allowed = tuple(listed)
        return tag, lambda key: not key.startswith("logical/") or key.startswith(allowed)

    def on_contact(self, contact: SecondaryContact) -> None:
        self._m.contacts[contact.secondary_id] = contact
        self._m.wake_durable()


class ActivatingSink(RaftReplicaSink):
    """The replica sink, finishing a pending activation after the first complete bulk sync,
    reloading the keyring when the primary's keyring changes, following the primary's key
    holders, and digesting the normalized keyspace (``seal_stream``)."""

    def __init__(self, manager: ReplicationManager) -> None:
        raft = manager.core.cluster.raft
        assert raft is not None
        super().__init__(raft)
        self._m = manager
        self._held_keyring: bytes | None = None  # the primary's keyring, during a first bulk sync

    def position(self) -> Any:
        pos = super().position()
        # reindex, or an activation (which completes only with a bulk sync): report an
        # incomplete sync, so the primary bulk-syncs
        if self._m.force_resync or self._m.pending is not None:
            return ReplicaPosition(pos.lineage, pos.remote_index, False)
        return pos

    async def begin_bulk(self, lineage: str, index: int) -> None:
        self._m.force_resync = False
        # A performance secondary keeps its own local state (tokens, local mounts) across
        # a resync; a first activation (pending) and a DR secondary keep nothing but their
        # cluster-own entries.
        keep: tuple[str, ...] = ()
        if self._m.perf_secondary and self._m.pending is None:
            keep = self._m.core.local_prefixes()
        self._held_keyring = None
        if self._m.pending is not None:
            # an activation keeps this cluster's own keyring until the switch, which
            # stores the primary's in one batch with everything that depends on it
            keep = (KEYRING_PATH,)
        await self.begin_bulk_keeping(lineage, index, keep)

    async def bulk_put(self, items: Any) -> None:
        if self._m.pending is not None:
            rest = []
            for k, v in items:
                if k == KEYRING_PATH:
                    self._held_keyring = bytes(v)
                else:
                    rest.append((k, v))
            items = rest
        await super().bulk_put(items)

    async def end_bulk(self, lineage: str, index: int) -> None:
        if self._m.pending is not None:
            held, self._held_keyring = self._held_keyring, None
            if held is None:
                raise InternalError("the bulk sync carried no keyring; retrying the activation")
            await self._m.finish_activation(held)
        await super().end_bulk(lineage, index)
        await self._m.reload_keyring()

    async def apply_wal(self, lineage: str, entries: Any) -> None:
        await super().apply_wal(lineage, entries)
        if any(b"core/keyring" in raw for e in entries for raw in e.batches):
            await self._m.reload_keyring()
        if any(KEY_HOLDERS_MARK in raw for e in entries for raw in e.batches):
            self._m.key_sync.shipped_changed()
            self._m.poke()

    async def digest(self, mode: str) -> tuple[int, str]:
        keep: Any = lambda key: True
        if mode != "dr" and self.local_filter is not None:
            is_local = self.local_filter
            keep = lambda key: not is_local(key)
        core = self._m.core
        return await normalized_digest(self.store, keep, core.barrier, core.seals, remote_index=True)
