"""Core's replication roles (a mixin of :class:`vaultraft.core.core.Core`): entering and
leaving DR-secondary service, following a primary's keyring on standbys, the local-state
prefixes a performance secondary keeps, and running a performance secondary's forwarded
writes on the primary."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from vaultraft.barrier import BarrierInvalidKey
from vaultraft.core.tasks import cancel_and_wait
from vaultraft.logical import NotLeader, Request, Response, Sealed

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.core")


class ReplicationRoles:
    """Methods of Core that only replication needs."""

    _self_seal: asyncio.Task[None] | None

    async def _follow_keyring(self: "Core") -> bool:  # type: ignore[misc]
        """A standby after the keyring changed: reload it. When this node's root key no longer
        opens it (the cluster was activated as a replication secondary and now runs on its
        primary's keys), seal but stay in consensus, so an operator unseals it with the
        primary's keys; with an HSM seal it unseals itself again once its active node has
        re-wrapped the primary's root key. A keyring missing for a moment (a bulk sync
        replacing it) is waited out. False when the keyring could not be loaded."""
        try:
            await self.barrier.reload_keyring()
            return True
        except BarrierInvalidKey:
            log.warning("keyring_unreadable_sealing")
            if self._self_seal is None or self._self_seal.done():
                self._self_seal = asyncio.get_running_loop().create_task(self._seal_for_new_keys(),
                                                                         name="self_seal")
            return False
        except Exception as e:
            log.info("keyring_reload_deferred", error=type(e).__name__)
            return False

    async def _seal_for_new_keys(self: "Core") -> None:  # type: ignore[misc]
        """Seal, staying in consensus; then resume auto-unseal retries (HSM seal only)."""
        await self.seal(keep_consensus=True)
        self.seals.resume_auto_unseal()

    async def enter_dr_secondary(self: "Core") -> None:  # type: ignore[misc]
        """Stop serving clients: this cluster now only follows a DR primary."""
        u = self.unsealed
        if u.tidy_task is not None:
            await cancel_and_wait(u.tidy_task)
            u.tidy_task = None
        self.router.clear()
        self.audit.close()

    async def leave_dr_secondary(self: "Core") -> None:  # type: ignore[misc]
        """Serve clients again from the replicated data (promotion or disable)."""
        await self.barrier.reload_keyring()
        u, fresh = self.unsealed, await self._new_unsealed()
        u.cluster_id, u.cluster_name, u.mounts, u.auth = fresh.cluster_id, fresh.cluster_name, fresh.mounts, fresh.auth
        u.policies, u.tokens, u.audit_table = fresh.policies, fresh.tokens, fresh.audit_table
        u.extra.clear()
        await self._load_tables(create=False)
        if u.tidy_task is None and self._active:
            u.tidy_task = asyncio.get_running_loop().create_task(self._tidy_loop(), name="token_tidy")

    def local_prefixes(self: "Core") -> tuple[str, ...]:  # type: ignore[misc]
        """Storage prefixes of this cluster's local state (never shipped to a performance
        secondary, kept by one across a resync): tokens, local tables, local mounts."""
        prefixes = ["sys/token/", "core/local-"]
        u = self._u
        if u is not None:
            for entry in u.mounts.entries.values():
                if entry.local or entry.type == "cubbyhole":
                    prefixes.append(f"logical/{entry.uuid}/")
        return tuple(prefixes)

    def is_local_key(self: "Core", key: str) -> bool:  # type: ignore[misc]
        """Whether the physical ``key`` is local state (see :meth:`local_prefixes`)."""
        return key.startswith(self.local_prefixes())

    async def handle_forwarded(self: "Core", req: Request, caller: Any) -> Response | None:  # type: ignore[misc]
        """A performance secondary's forwarded write, run here (the primary's active node)
        as the caller it authenticated, under the same lease and sync rules as any write."""
        from vaultraft.core.pipeline import handle_request

        if self._u is None:
            raise Sealed()
        if not self.active:
            info = await self.leader_info()
            raise NotLeader(info.api_addr if info else None)
        self.replication.fencing.check_writes()
        resp = await handle_request(self, req, forwarded=caller)
        if self.settings.dr_sync:
            await self.replication.wait_if_sync(self.settings.dr_sync_timeout)
        self.replication.fencing.check_writes()
        return resp

