"""Keeping each cluster's seal records in step with replication, on the active node.

* A primary publishes its key holders (``seal_replica.publish``) when it becomes a primary,
  when its active node starts, and whenever this node rewrote its seal records (rekey,
  recovery rekey, seal migration: ``SealState.records_version``).
* A secondary adopts its primary's key holders (``seal_replica.adopt``) right after the switch
  to the primary's root key, and again whenever the shipped record changes (the primary
  rekeyed) or the active node starts; a failure (HSM down) is retried every reconcile round.
* A former secondary (promoted, or replication disabled) seal-wraps the keyring it received
  unwrapped with its own HSM (``seal_replica.reclaim_keyring``).

The reconcile loop calls :meth:`KeyHolderSync.safe_step` every round, apart from its own
work: a failure here (an HSM that does not answer) never stops the stream, is logged once
until it succeeds, and is retried on the next round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from vaultraft.core.seal_replica import KEY_HOLDERS_PATH, adopt, publish, read_published, reclaim_keyring
from vaultraft.logical import InternalError, InvalidRequest

if TYPE_CHECKING:
    from vaultraft.core.core import Core
    from vaultraft.core.replication.manager import ReplicationManager

log = structlog.get_logger("vaultraft.replication")

#: The rekey backup of this cluster's own recovery shares: cluster-own by prefix, encrypted
#: under the keyring a secondary gives up at activation (so it is dropped then).
RECOVERY_BACKUP_KEY = "core/recovery-keys-backup"
KEY_HOLDERS_MARK = KEY_HOLDERS_PATH.encode()


class KeyHolderSync:
    """One node's key-holder bookkeeping (owned by the replication manager)."""

    def __init__(self, core: "Core") -> None:
        self._core = core
        self._published: int | None = None  # SealState.records_version last published
        self._reclaimed = False
        self._failing = False
        self.adopt_needed = True

    def shipped_changed(self) -> None:
        """The primary's key holders record arrived in the stream: adopt it next round."""
        self.adopt_needed = True

    async def after_switch(self) -> None:
        """Activation, right after the barrier switched to the primary's root key: this
        cluster's seal now protects the primary's root key (raises on failure, so the
        activation is retried with the next bulk sync)."""
        core = self._core
        if await read_published(core.barrier) is None:
            raise InternalError("the primary's key holders record has not arrived; retrying the activation")
        await adopt(core.seals, core.barrier)
        self.adopt_needed = False
        if await core.barrier.raw_get(RECOVERY_BACKUP_KEY) is not None:
            await core.barrier.delete(RECOVERY_BACKUP_KEY)

    async def publish_now(self) -> None:
        """A primary (or one becoming one): publish its key holders before a secondary may
        need them. InvalidRequest while a seal migration is pending."""
        core = self._core
        await publish(core.seals, core.barrier)
        self._published = core.seals.records_version

    async def safe_step(self, m: "ReplicationManager") -> None:
        """:meth:`step`, logging a failure once per episode instead of raising."""
        try:
            await self.step(m)
        except Exception as e:  # retried next round
            if not self._failing:
                log.warning("replication_key_holders_sync_failed", error=type(e).__name__, detail=str(e)[:200])
            self._failing = True
        else:
            self._failing = False

    async def step(self, m: "ReplicationManager") -> None:
        """One reconcile round (active node only; standbys reset and wait)."""
        core = self._core
        if not core.active:
            self._published = None
            self.adopt_needed = True
            return
        if m.activating:  # the activation's switch adopts the primary's key holders
            return
        following = m.secondary_record()
        if following is not None:
            self._reclaimed = False  # once it stops following, its keyring is re-wrapped
            if self.adopt_needed and following.secondary_id:  # a demoted primary has no primary yet
                await adopt(core.seals, core.barrier)
                self.adopt_needed = False
            return
        if not self._reclaimed:
            await reclaim_keyring(core.seals, core.barrier)
            self._reclaimed = True
        if m.primary_record() is not None and self._published != core.seals.records_version:
            try:
                await self.publish_now()
            except InvalidRequest as e:  # a seal migration is pending: publish once it is done
                self._published = core.seals.records_version
                log.warning("replication_key_holders_not_published", reason=str(e))
