"""The HA role of an unsealed node (a mixin of :class:`vaultraft.core.core.Core`): follow the
Raft log to become active or standby, and find the active node for standbys."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import structlog

from vaultraft.core import raft_ops
from vaultraft.core.cluster import LEADER_KEY, ROLE_POLL, ClusterLink, LeaderInfo
from vaultraft.core.tasks import cancel_and_wait as _cancel
from vaultraft.core.views import BarrierView
from vaultraft.logical import StorageEntry

if TYPE_CHECKING:
    from vaultraft.barrier import Barrier
    from vaultraft.core.core import CoreSettings, _Unsealed
    from vaultraft.core.replication.manager import ReplicationManager

log = structlog.get_logger("vaultraft.core")


class HaRoles:
    """Active / standby transitions; the core provides the attributes declared here."""

    cluster: ClusterLink
    barrier: "Barrier"
    settings: "CoreSettings"
    replication: "ReplicationManager"
    _u: "_Unsealed | None"
    _active: bool

    if TYPE_CHECKING:
        @property
        def unsealed(self) -> _Unsealed: ...
        @property
        def active(self) -> bool: ...
        async def _load_tables(self, *, create: bool) -> None: ...
        async def _tidy_loop(self) -> None: ...

    async def _role_loop(self, active: bool) -> None:
        """Follow the log: become active when this node holds the leader lease, standby
        when it loses it. Runs from unseal to seal."""
        while True:
            now_active = self.cluster.is_active()
            if now_active and not active:
                try:
                    await self._become_active()
                    active = True
                except Exception as e:  # e.g. lost the lease mid-way: try again next round
                    log.warning("become_active_failed", error=type(e).__name__)
                    try:
                        await self._become_standby()
                    except Exception as e2:
                        log.warning("become_standby_failed", error=type(e2).__name__)
            elif active and not now_active:
                active = False
                try:
                    await self._become_standby()
                except Exception as e:  # e.g. the keyring changed under a restore: retried next change
                    log.warning("become_standby_failed", error=type(e).__name__)
            await asyncio.sleep(ROLE_POLL)

    async def wait_active(self, timeout: float) -> bool:
        """Wait until this node is the active node; False on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self.active:
            if loop.time() >= end:
                return False
            await asyncio.sleep(ROLE_POLL)
        return True

    async def _become_active(self) -> None:
        u = self.unsealed
        dr_secondary = self.replication.dr_secondary
        if self.cluster.enabled:
            await self.barrier.reload_keyring()
        # a DR secondary writes nothing but its own records; an activation reads no tables
        if not dr_secondary and not self.replication.activating:
            # a performance secondary's replicated tables belong to its primary: never create them
            await self._load_tables(create=not self.replication.perf_secondary)
        raft = self.cluster.raft
        if raft is not None and u.sys_view is not None:
            info = LeaderInfo(self.settings.api_addr, self.settings.cluster_addr, raft.node_id,
                              self.settings.replication_addr)
            await u.sys_view.put(StorageEntry(LEADER_KEY, info.encode()))
            await raft_ops.register_node(self, raft.node_id, raft.self_addr, self.settings.api_addr,  # type: ignore[arg-type]
                                         replication_addr=self.settings.replication_addr)
        if dr_secondary:
            self._active = True
            log.info("became_active", dr_secondary=True)
            return
        u.tidy_task = asyncio.get_running_loop().create_task(self._tidy_loop(), name="token_tidy")
        self._active = True
        log.info("became_active")

    async def refresh_cluster_identity(self) -> None:
        """Re-read the cluster id and name (a secondary after the switch to its primary's keys)."""
        u, view = self._u, BarrierView(self.barrier, "core/", local=False)
        raw = await view.get("cluster") if u is not None else None
        if u is not None and raw is not None:
            cluster = json.loads(raw.value)
            u.cluster_id, u.cluster_name = cluster["id"], cluster["name"]

    async def _become_standby(self) -> None:
        was_active, self._active = self._active, False
        u = self._u
        if u is not None and u.tidy_task is not None:
            await _cancel(u.tidy_task)
            u.tidy_task = None
        if (u is not None and self.settings.performance_standby and not self.replication.dr_secondary
                and not self.replication.activating):
            await self.barrier.reload_keyring()
            await self._load_tables(create=False)
        if was_active:
            log.info("became_standby")

    async def leader_info(self) -> LeaderInfo | None:
        """Where the active node is, or None when unknown.

        Raft's own view of the leader comes first (mapped to an API address through the
        node records); the ``core/leader`` record may be stale on a node that was just
        deposed, so it is used only when it names another node.
        """
        u = self._u
        if u is None or u.sys_view is None:
            return None
        raft = self.cluster.raft
        if raft is not None:
            leader = raft.leader_addr()
            if leader is not None and leader != raft.self_addr:
                for rec in (await raft_ops.node_records(self)).values():  # type: ignore[arg-type]
                    if rec.get("address") == leader and rec.get("api_addr"):
                        return LeaderInfo(str(rec["api_addr"]), "https://" + leader, str(rec.get("node_id", "")))
        raw = await u.sys_view.get(LEADER_KEY)
        if raw is None:
            return None
        info = LeaderInfo.decode(raw.value)
        if info.api_addr == self.settings.api_addr:
            return None  # our own stale advertisement: we are not active now
        return info
