"""Core: seal state, init/unseal/seal, and the wiring that exists only while unsealed."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from vaultraft import VAULT_COMPAT_VERSION
from vaultraft.audit import AuditBroker
from vaultraft.barrier import Barrier
from vaultraft.core.audit_table import AuditTable
from vaultraft.core.mounts import MountEntry, MountTable, Route, Router, new_entry
from vaultraft.core.policy_store import PolicyStore
from vaultraft.core.seal_manager import SealManager, check_shares
from vaultraft.core.tokens import TokenEntry, TokenStore
from vaultraft.core.views import BarrierView
from vaultraft.engines import BUILTIN_ENGINES
from vaultraft.engines.cubbyhole import destroy_cubbyhole
from vaultraft.framework import Backend
from vaultraft.logical import InvalidRequest, NotInitialized, Request, Response, Sealed, StorageEntry
from vaultraft.storage import Physical

log = structlog.get_logger("vaultraft.core")

BUILD_DATE = "2026-11-23T00:00:00Z"
TIDY_INTERVAL = 30.0


@dataclass(frozen=True)
class CoreSettings:
    """What core needs from the server configuration."""

    cluster_name: str = ""
    default_lease_ttl: int = 768 * 3600
    max_lease_ttl: int = 768 * 3600
    api_addr: str = ""
    cluster_addr: str = ""


@dataclass(frozen=True)
class InitResult:
    """The one-time output of ``sys/init``: shares of the unseal key and the root token."""

    keys: list[bytes]
    root_token: str


@dataclass
class _Unsealed:
    """Everything that exists only between unseal and seal."""

    cluster_id: str
    cluster_name: str
    mounts: MountTable
    auth: MountTable
    policies: PolicyStore
    tokens: TokenStore
    audit_table: AuditTable
    tidy_task: asyncio.Task[None] | None = None
    sys_view: BarrierView | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Core:
    """One node's core. Every public coroutine is safe to call concurrently."""

    def __init__(self, physical: Physical, settings: CoreSettings) -> None:
        self.physical = physical
        self.settings = settings
        self.barrier = Barrier(physical)
        self.router = Router()
        self.audit = AuditBroker()
        self.seals = SealManager(self.barrier)
        self._lock = asyncio.Lock()
        self._u: _Unsealed | None = None

    # ---- state ---------------------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        """True until a successful unseal, and again after seal."""
        return self._u is None

    @property
    def unsealed(self) -> _Unsealed:
        """The unsealed state; raises Sealed when sealed."""
        if self._u is None:
            raise Sealed()
        return self._u

    async def initialized(self) -> bool:
        """Whether ``sys/init`` has run against this storage."""
        return await self.seals.config() is not None

    async def seal_status(self) -> dict[str, Any]:
        """Vault's ``sys/seal-status`` body."""
        fields = await self.seals.status_fields(self.sealed)
        body: dict[str, Any] = {
            "type": fields["type"],
            "initialized": fields["initialized"],
            "sealed": self.sealed,
            "t": fields["t"],
            "n": fields["n"],
            "progress": fields["progress"],
            "nonce": fields["nonce"],
            "version": VAULT_COMPAT_VERSION,
            "build_date": BUILD_DATE,
            "migration": fields["migration"],
            "recovery_seal": fields["recovery_seal"],
            "storage_type": self.physical.storage_type,
        }
        if self._u is not None:
            body["cluster_name"] = self._u.cluster_name
            body["cluster_id"] = self._u.cluster_id
        return body

    # ---- init ----------------------------------------------------------------------------

    async def initialize(self, secret_shares: int, secret_threshold: int, *, root_token_id: str | None = None) -> InitResult:
        """Create the root key, keyring and root token; leave the node sealed.

        Raises InvalidRequest when already initialized or the share parameters are bad.
        """
        async with self._lock:
            if await self.initialized():
                raise InvalidRequest("Vault is already initialized")
            check_shares(secret_shares, secret_threshold)
            root_key = os.urandom(32)
            await self.barrier.initialize(root_key)
            shares, cfg = await self.seals.wrap_new_root_key(root_key, secret_shares, secret_threshold)
            await self.barrier.unseal(root_key)
            try:
                sys_view = BarrierView(self.barrier, "core/", local=False)
                cluster = {"id": str(uuid.uuid4()), "name": self.settings.cluster_name or f"vault-cluster-{secrets.token_hex(4)}"}
                await sys_view.put(StorageEntry("cluster", json.dumps(cluster).encode()))
                await self._setup(first_time=True)
                root = await self.unsealed.tokens.create_root_token(root_token_id)
                await self.seals.store_config(cfg)
            finally:
                await self._teardown()
                self.barrier.seal()
            log.info("core_initialized", shares=secret_shares, threshold=secret_threshold)
            return InitResult(keys=shares, root_token=root.id)

    # ---- unseal / seal -------------------------------------------------------------------

    async def unseal(self, key: str | None, *, reset: bool = False) -> None:
        """Submit one unseal key share (hex or base64), or reset progress.

        Unseals once the threshold is reached. A wrong combination resets progress and
        raises InvalidRequest; the node stays sealed.
        """
        async with self._lock:
            if not await self.initialized():
                raise NotInitialized()
            if reset:
                self.seals.reset_progress()
                return
            if not self.sealed:
                return
            if not key:
                raise InvalidRequest("missing required 'key' parameter")
            root_key = await self.seals.submit_share(key)
            if root_key is None:
                return
            await self._unseal_with(root_key)

    async def _unseal_with(self, root_key: bytes) -> None:
        await self.barrier.unseal(root_key)
        try:
            await self._setup(first_time=False)
        except BaseException:
            await self._teardown()
            self.barrier.seal()
            raise
        log.info("core_unsealed")

    async def seal(self) -> None:
        """Seal: stop background work, forget routes and keys."""
        async with self._lock:
            await self._teardown()
            self.barrier.seal()
            self.seals.reset_progress()
            log.info("core_sealed")

    # ---- requests --------------------------------------------------------------------------

    async def handle_request(self, req: Request) -> Response | None:
        """Run an authenticated request through the pipeline; Sealed while sealed."""
        from vaultraft.core.pipeline import handle_request

        if self._u is None:
            raise Sealed()
        return await handle_request(self, req)

    def ha_role(self) -> str:
        """This node's role: "active" (single node), later "standby" / "perf_standby"."""
        return "active"

    # ---- wiring while unsealed -----------------------------------------------------------

    async def _setup(self, *, first_time: bool) -> None:
        from vaultraft.core.sys import build_sys_backend

        core_view = BarrierView(self.barrier, "core/", local=False)
        core_local = BarrierView(self.barrier, "core/", local=True)
        cluster_raw = await core_view.get("cluster")
        cluster = json.loads(cluster_raw.value) if cluster_raw else {"id": "", "name": ""}
        mounts = MountTable("mounts", core_view, core_local)
        auth = MountTable("auth", core_view, core_local)
        policies = PolicyStore(BarrierView(self.barrier, "sys/policy/", local=False))
        tokens = TokenStore(
            BarrierView(self.barrier, "sys/token/", local=True),
            now=time.time,
            default_ttl=self.settings.default_lease_ttl,
            max_ttl=self.settings.max_lease_ttl,
            on_revoke=self._on_token_revoked,
        )
        audit_table = AuditTable(core_view, core_local, self.audit)
        self._u = _Unsealed(
            cluster_id=cluster["id"], cluster_name=cluster["name"], mounts=mounts, auth=auth,
            policies=policies, tokens=tokens, audit_table=audit_table, sys_view=core_view,
        )
        if not await mounts.load():
            mounts.update(new_entry("cubbyhole/", "cubbyhole", local=True, description="per-token private secret storage"))
            mounts.update(new_entry("sys/", "system", description="system endpoints used for control, policy and debugging"))
            await mounts.save()
        if not await auth.load():
            auth.update(new_entry("token/", "token", prefix_for_accessor="auth_token", description="token based credentials"))
            await auth.save()
        await policies.setup()
        await audit_table.load()
        self.router.mount(Route("sys/", mounts.entries["sys/"], build_sys_backend(self), None))
        for entry in mounts.entries.values():
            if entry.type != "system":
                self.mount_backend(entry)
        self.router.mount(Route("auth/token/", auth.entries["token/"], tokens.backend(), None))
        self._u.tidy_task = asyncio.get_running_loop().create_task(self._tidy_loop(), name="token_tidy")

    async def _teardown(self) -> None:
        u, self._u = self._u, None
        self.router.clear()
        self.audit.close()
        if u is not None and u.tidy_task is not None:
            u.tidy_task.cancel()
            try:
                await u.tidy_task
            except asyncio.CancelledError:
                pass

    def engine_view(self, entry: MountEntry) -> BarrierView:
        """The barrier view a secret-engine mount sees."""
        return BarrierView(self.barrier, f"logical/{entry.uuid}/", local=entry.local or entry.type == "cubbyhole")

    def mount_backend(self, entry: MountEntry) -> Backend:
        """Start the backend for ``entry`` and route to it; InvalidRequest for unknown types."""
        factory = BUILTIN_ENGINES.get(entry.type)
        if factory is None:
            raise InvalidRequest(f"plugin not found in the catalog: {entry.type}")
        backend = factory(dict(entry.options), time.time)
        self.router.mount(Route(entry.path, entry, backend, self.engine_view(entry)))
        return backend

    async def _on_token_revoked(self, entry: TokenEntry) -> None:
        if self._u is None:
            return
        cubby = self._u.mounts.entries.get("cubbyhole/")
        if cubby is not None and entry.cubbyhole_id:
            await destroy_cubbyhole(self.engine_view(cubby), entry.cubbyhole_id)

    async def _tidy_loop(self) -> None:
        while True:
            await asyncio.sleep(TIDY_INTERVAL)
            u = self._u
            if u is None:
                return
            try:
                n = await u.tokens.tidy()
                if n:
                    log.info("expired_tokens_revoked", count=n)
            except Exception as e:  # a failed tidy must not kill the node
                log.warning("token_tidy_failed", error=type(e).__name__)
