"""A secondary's activation on the manager (a mixin): following the activation staged in
this cluster's own log, the one-batch switch to the primary's keyring after the first
complete bulk sync, and abandoning an activation that cannot finish (``disable``: the
cluster's own data comes back from ``backup.py``). See DESIGN.md, "Activation"."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from vaultraft.barrier import KEYRING_PATH, Barrier, BarrierInvalidKey
from vaultraft.core.replication import backup, staging
from vaultraft.core.replication.adapters import KeyringOverlay
from vaultraft.core.replication.key_sync import RECOVERY_BACKUP_KEY, KeyHolderSync
from vaultraft.core.replication.records import (
    EPOCH_KEY,
    RECORD_PREFIX,
    ReplicationRecord,
)
from vaultraft.core.seal_replica import adoption_records, log_adopted
from vaultraft.core.seal_state import RAW_SEAL_RECORDS
from vaultraft.logical import InternalError, InvalidRequest, Unavailable
from vaultraft.storage import Batch, Op
from vaultraft.storage.wal import CLUSTER_OWN_PREFIXES

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.replication")


@dataclass
class PendingActivation:
    """A secondary between activation and the end of its first bulk sync: the record to
    store and the primary's root key. Both are also staged durably in this cluster's own
    log (``staging.py``), so whichever node is active finishes the activation."""

    record: ReplicationRecord
    root_key: bytes = field(repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ActivationMixin:
    """Activation steps of :class:`vaultraft.core.replication.manager.ReplicationManager`."""

    core: Core
    records: dict[str, ReplicationRecord]
    pending: PendingActivation | None
    staged_kind: str | None
    staged_since: int
    activation_error: str
    activation_lock: asyncio.Lock
    _staged_unreadable: bool
    _leftovers_checked: bool
    key_sync: KeyHolderSync

    if TYPE_CHECKING:
        def set_record(self, kind: str, rec: ReplicationRecord | None) -> None: ...
        async def _stop_client(self) -> None: ...
        async def read_staged(self) -> bytes | None: ...

    def staged_activation_kind(self) -> str | None:
        """The kind of the activation under way (in memory here, or staged in storage)."""
        return self.pending.record.kind if self.pending is not None else self.staged_kind

    async def _forget_pending(self) -> None:
        """A standby: drop an activation this node ran while it was active (deposed in its
        middle). The node that is active now resumes it from the staged record; kept here,
        it would make this standby refuse clients after that activation was finished or
        abandoned, which only the staged record tells a standby. Skipped while this node
        holds ``activation_lock`` (retried next round)."""
        if self.pending is None or self.activation_lock.locked():
            return
        async with self.activation_lock:
            p, self.pending = self.pending, None
            if p is None:
                return
            p.done.set()
            await self._stop_client()
            self.set_record(p.record.kind, self.records.get(p.record.kind))
            log.info("replication_activation_left_to_active", kind=p.record.kind)

    async def _sync_staged(self) -> None:
        """The active node: follow the activation staged in storage. Resume one this node
        does not hold in memory (it became active, or was restarted and unsealed, while an
        activation was under way); forget one that is no longer staged (another node
        finished it); finish abandoning one that a ``disable`` gave up (the node that
        started it crashed, or lost its leadership, before it was done). Skipped while this
        node enables, replaces, switches or abandons an activation (``activation_lock``):
        that operation leaves memory and storage consistent itself, whereas a round in its
        middle would see the staged record before the pending activation exists (enable) or
        gone before the switch has finished (and cancel it)."""
        if self.activation_lock.locked():
            return
        async with self.activation_lock:
            await self._follow_staged()

    async def _follow_staged(self) -> None:
        barrier = self.core.barrier
        raw = await self.read_staged()
        if raw is None:
            self._staged_unreadable = False
            self.activation_error = ""
            p, self.pending = self.pending, None
            if p is not None:
                p.done.set()
                await self._stop_client()
                self.set_record(p.record.kind, self.records.get(p.record.kind))
            if not self._leftovers_checked:
                await self._drop_leftovers()
            return
        abandoning = backup.marker_kind(await barrier.raw_get(backup.ABANDON_KEY))
        if abandoning is not None:
            await self._stop_client()
            p, self.pending = self.pending, None
            if p is not None:
                p.done.set()
            try:
                await self._finish_abandon(abandoning)
            except Exception as e:  # retried next round
                self.activation_error = f"abandoning the staged activation failed ({type(e).__name__}); retrying"
                raise
            return
        if self.pending is not None:
            return
        try:
            staged = await staging.load(self.core.seals, self.core.barrier)
        except staging.StagedUnreadable:
            if not self._staged_unreadable:
                log.warning("replication_staged_activation_unreadable")
            self._staged_unreadable = True
            return
        if staged is None:
            return
        await self._stop_client()
        self.pending = PendingActivation(staged.record, staged.root_key)
        self.set_record(staged.record.kind, self.records.get(staged.record.kind))
        await self.core.enter_dr_secondary()
        log.info("replication_secondary_activation_resumed", kind=staged.record.kind,
                 secondary_id=staged.record.secondary_id)

    async def _drop_leftovers(self) -> None:
        """Once per unseal of the active node with no activation staged (under
        ``activation_lock``): delete a backup left by an enable that never staged its
        activation (a crash during the call)."""
        self._leftovers_checked = True
        physical = self.core.barrier.physical
        if await self.core.barrier.raw_get(staging.STAGED_KEY) is None and await backup.staged_keys(physical):
            await backup.clear(physical)
            log.info("replication_activation_leftovers_deleted")

    # ---- abandoning a staged activation (disable) ---------------------------------------------

    async def abandon_activation(self, kind: str) -> None:
        """``disable`` while an activation of ``kind`` is staged: give up the activation and
        leave this cluster as it was before the enable (its own data from the backup, its
        own keys, which the activation never replaced, no role of ``kind``). The decision is
        stored first, so whichever node is active finishes it after a crash."""
        async with self.activation_lock:
            staged = self.staged_activation_kind()
            if staged is None:
                raise InvalidRequest("no replication activation is staged on this cluster")
            if staged != kind:
                raise InvalidRequest(other_kind_staged(staged))
            barrier = self.core.barrier
            if not await backup.exists(barrier.physical):
                raise InvalidRequest(
                    "this staged activation has no backup of the cluster's own data (it was staged by an earlier "
                    "version): it cannot be abandoned; activate it with a new token (update-primary), or wipe "
                    "the cluster's storage and initialize it again")
            await self._stop_client()
            result = await barrier.physical.apply(
                Batch((Op.put(backup.ABANDON_KEY, backup.abandon_marker(kind)),), secrets.token_bytes(16)))
            if result.error is not None:
                raise InternalError(f"failed to store the abandonment: {result.error}")
            p, self.pending = self.pending, None
            if p is not None:
                p.done.set()
            log.info("replication_secondary_activation_abandoning", kind=kind)
            try:
                await self._finish_abandon(kind)
            except Exception as e:
                self.activation_error = f"abandoning the staged activation failed ({type(e).__name__}); retrying"
                raise Unavailable("the staged activation was given up, but restoring this cluster's data did not "
                                  "finish; the active node retries it: watch sys/replication/"
                                  f"{'dr' if kind == 'dr' else 'performance'}/status") from None

    async def _finish_abandon(self, kind: str) -> None:
        """Restore the backup (idempotent), then delete the staged activation, everything it
        staged and the role of ``kind`` in one batch, and serve this cluster's own data."""
        core = self.core
        physical = core.barrier.physical
        restored = await backup.restore(physical)
        ops = await backup.cleanup_ops(physical, staging.STAGED_KEY, "core/" + RECORD_PREFIX + kind)
        result = await physical.apply(Batch(tuple(ops), secrets.token_bytes(16)))
        if result.error is not None:
            raise InternalError(f"failed to delete the staged activation: {result.error}")
        self.staged_kind, self.staged_since, self.activation_error = None, 0, ""
        self._staged_unreadable = False
        self.set_record(kind, None)
        await core.leave_dr_secondary()
        log.info("replication_secondary_activation_abandoned", kind=kind, restored_keys=restored)

    async def _own_plaintexts(self) -> dict[str, bytes]:
        """This cluster's own barrier-encrypted entries (plaintext, read with its own keys
        right before the switch). The seal records and the staged activation are stored
        unencrypted and the replication records are replaced: they are left out."""
        barrier = self.core.barrier
        out: dict[str, bytes] = {}
        skip = {staging.STAGED_KEY, "core/" + RECORD_PREFIX + "dr", "core/" + RECORD_PREFIX + "performance",
                backup.STAGED_PREFIX}
        stack = [p for p in CLUSTER_OWN_PREFIXES if p.endswith("/") and p != "core/hsm/"]
        for key in (p for p in CLUSTER_OWN_PREFIXES if not p.endswith("/") and p not in RAW_SEAL_RECORDS):
            v = await barrier.get(key)
            if v is not None:
                out[key] = v
        while stack:
            prefix = stack.pop()
            for child in await barrier.list(prefix):
                path = prefix + child
                if path in skip:
                    continue
                if child.endswith("/"):
                    stack.append(path)
                else:
                    v = await barrier.get(path)
                    if v is not None:
                        out[path] = v
        return out

    async def finish_activation(self, keyring_blob: bytes) -> None:
        """After the first complete bulk sync (the primary's keyring held back by the sink):
        switch to the primary's keyring in ONE storage batch that also re-encrypts this
        cluster's own entries under it, stores the secondary record, makes the seal records
        protect the primary's root key (they follow the primary's key holders) and deletes
        the staged activation with everything it staged (the backup of the cluster's own
        data included). A crash leaves either the old state (the staged activation is
        resumed) or the finished one, never a keyring its seal records do not open.
        Raises on failure: the activation is retried with the next bulk sync (the reason is
        shown in the status as ``last_error``). Never runs at the same time as an abandon or
        a replacement of the staged activation (``activation_lock``)."""
        async with self.activation_lock:
            try:
                await self._switch(keyring_blob)
            except InternalError as e:  # our own messages: no stored data in them
                self.activation_error = f"the activation could not finish: {e}"
                raise
            except Exception as e:
                self.activation_error = f"the activation could not finish: {type(e).__name__}"
                raise

    async def _switch(self, keyring_blob: bytes) -> None:
        p = self.pending
        if p is None:
            return
        core = self.core
        scratch = Barrier(KeyringOverlay(core.barrier.physical, keyring_blob))  # type: ignore[arg-type]
        try:
            try:
                await scratch.unseal(p.root_key)
            except BarrierInvalidKey:
                raise InternalError("the primary's keyring does not open with the activation's root key") from None
            found = await adoption_records(core.seals, scratch)
            if found is None:
                raise InternalError("the primary's key holders record has not arrived; retrying the activation")
            kh, seal_records = found
            plain = await self._own_plaintexts()
            rec_key = "core/" + RECORD_PREFIX + p.record.kind
            plain[rec_key] = p.record.encode()
            epoch_key = "core/" + EPOCH_KEY
            old_epoch = int(plain[epoch_key]) if epoch_key in plain else 0
            if p.record.epoch > old_epoch:
                plain[epoch_key] = str(p.record.epoch).encode()
            ops = [Op.put(KEYRING_PATH, keyring_blob)]
            ops += [Op.put(path, scratch.encrypt(path, value)) for path, value in sorted(plain.items())]
            other = "core/" + RECORD_PREFIX + ("performance" if p.record.kind == "dr" else "dr")
            if await core.barrier.raw_get(other) is not None:
                ops.append(Op.delete(other))  # unreadable under the new keyring
            ops += [Op.delete(path) if value is None else Op.put(path, bytes(value))
                    for path, value in seal_records.items()]
            for path in (staging.STAGED_KEY, RECOVERY_BACKUP_KEY):
                if await core.barrier.raw_get(path) is not None:
                    ops.append(Op.delete(path))
            ops += [Op.delete(path) for path in await backup.staged_keys(core.barrier.physical)]
        finally:
            scratch.seal()
        result = await core.barrier.physical.apply(Batch(tuple(ops), secrets.token_bytes(16)))
        if result.error is not None:
            raise InternalError(f"failed to store the activation: {result.error}")
        await core.barrier.switch_root_key(p.root_key)
        core.seals.forget_config()
        self.key_sync.adopt_needed = False
        if seal_records:
            log_adopted(await core.seals.mode(), kh, seal_records)
        self.pending = None
        self.staged_kind, self.staged_since, self.activation_error = None, 0, ""
        self.set_record(p.record.kind, p.record)
        if p.record.kind == "performance":
            await core.leave_dr_secondary()  # fresh stores over the primary's data; serve again
        else:
            await core.refresh_cluster_identity()
        p.done.set()
        log.info("replication_secondary_activated", kind=p.record.kind, secondary_id=p.record.secondary_id)

    async def reload_keyring(self) -> None:
        """Pick up a keyring the primary changed (rotation) on this secondary's active node."""
        if self.pending is None:
            try:
                await self.core.barrier.reload_keyring()
            except Exception as e:
                log.warning("replication_keyring_reload_failed", error=type(e).__name__)


def other_kind_staged(staged: str) -> str:
    name = "DR" if staged == "dr" else "performance"
    return (f"a {name} secondary activation is staged on this cluster: abandon it first with "
            f"sys/replication/{staged}/secondary/disable, or replace it with a new {name} token")
