"""Core: seal state, init/unseal/seal, and the wiring that exists only while unsealed."""

from __future__ import annotations

import asyncio
import base64
import binascii
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
from vaultraft.core.tokens import TokenEntry, TokenStore
from vaultraft.core.views import BarrierView
from vaultraft.engines import BUILTIN_ENGINES
from vaultraft.engines.cubbyhole import destroy_cubbyhole
from vaultraft.framework import Backend
from vaultraft.logical import InvalidRequest, NotInitialized, Request, Response, Sealed, StorageEntry
from vaultraft.seal.shamir import split
from vaultraft.seal.shamir_seal import SealConfig, ShareError, UnsealProgress, unwrap_root_key, wrap_root_key
from vaultraft.storage import Physical

log = structlog.get_logger("vaultraft.core")

SEAL_CONFIG_KEY = "core/seal-config"
ROOT_KEY_KEY = "core/root-key"
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


def decode_key(key: str) -> bytes:
    """An unseal key given as hex or base64; InvalidRequest otherwise (Vault's message)."""
    k = key.strip()
    try:
        return bytes.fromhex(k)
    except ValueError:
        pass
    try:
        return base64.b64decode(k, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'key' must be a valid hex or base64 string") from None


class Core:
    """One node's core. Every public coroutine is safe to call concurrently."""

    def __init__(self, physical: Physical, settings: CoreSettings) -> None:
        self.physical = physical
        self.settings = settings
        self.barrier = Barrier(physical)
        self.router = Router()
        self.audit = AuditBroker()
        self._lock = asyncio.Lock()
        self._progress: UnsealProgress | None = None
        self._seal_config: SealConfig | None = None
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

    async def seal_config(self) -> SealConfig | None:
        """The stored seal configuration, or None before init."""
        if self._seal_config is None:
            raw = await self.barrier.raw_get(SEAL_CONFIG_KEY)
            if raw is not None:
                self._seal_config = SealConfig.from_bytes(raw)
        return self._seal_config

    async def initialized(self) -> bool:
        """Whether ``sys/init`` has run against this storage."""
        return await self.seal_config() is not None

    async def seal_status(self) -> dict[str, Any]:
        """Vault's ``sys/seal-status`` body."""
        cfg = await self.seal_config()
        body: dict[str, Any] = {
            "type": cfg.type if cfg else "shamir",
            "initialized": cfg is not None,
            "sealed": self.sealed,
            "t": cfg.secret_threshold if cfg else 0,
            "n": cfg.secret_shares if cfg else 0,
            "progress": self._progress.progress if (self._progress and self.sealed) else 0,
            "nonce": self._progress.nonce if (self._progress and self.sealed and self._progress.progress) else "",
            "version": VAULT_COMPAT_VERSION,
            "build_date": "2026-11-23T00:00:00Z",
            "migration": False,
            "recovery_seal": False,
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
            _check_shares(secret_shares, secret_threshold)
            root_key = os.urandom(32)
            kek = os.urandom(32)
            shares = [kek] if secret_shares == 1 else split(kek, secret_shares, secret_threshold)
            await self.barrier.initialize(root_key)
            await self.barrier.raw_put(ROOT_KEY_KEY, wrap_root_key(kek, root_key))
            await self.barrier.unseal(root_key)
            try:
                sys_view = BarrierView(self.barrier, "core/", local=False)
                cluster = {"id": str(uuid.uuid4()), "name": self.settings.cluster_name or f"vault-cluster-{secrets.token_hex(4)}"}
                await sys_view.put(StorageEntry("cluster", json.dumps(cluster).encode()))
                await self._setup(first_time=True)
                root = await self.unsealed.tokens.create_root_token(root_token_id)
                cfg = SealConfig(type="shamir", secret_shares=secret_shares, secret_threshold=secret_threshold)
                await self.barrier.raw_put(SEAL_CONFIG_KEY, cfg.to_bytes())
                self._seal_config = cfg
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
            cfg = await self.seal_config()
            if cfg is None:
                raise NotInitialized()
            if reset:
                self._progress = None
                return
            if not self.sealed:
                return
            if not key:
                raise InvalidRequest("missing required 'key' parameter")
            share = decode_key(key)
            if self._progress is None:
                self._progress = UnsealProgress(cfg.secret_threshold)
            try:
                kek = self._progress.add(share)
            except ShareError as e:
                raise InvalidRequest(str(e)) from None
            if kek is None:
                return
            self._progress = None
            blob = await self.barrier.raw_get(ROOT_KEY_KEY)
            if blob is None:
                raise InvalidRequest("stored root key is missing")
            try:
                root_key = unwrap_root_key(kek, blob)
            except Exception:
                raise InvalidRequest("Error unsealing: failed to decrypt the root key: invalid key or key combination") from None
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
            self._progress = None
            log.info("core_sealed")

    def unseal_progress(self) -> tuple[int, str]:
        """(progress, nonce) of the current unseal attempt."""
        if self._progress is None:
            return 0, ""
        return self._progress.progress, self._progress.nonce

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


def _check_shares(n: int, t: int) -> None:
    if n < 1:
        raise InvalidRequest("shares must be at least one")
    if t < 1:
        raise InvalidRequest("threshold must be at least one")
    if t > n:
        raise InvalidRequest("threshold cannot be larger than shares")
    if n > 1 and t < 2:
        raise InvalidRequest("threshold must be greater than one for multiple shares")
    if n > 255:
        raise InvalidRequest("shares must be less than 256")

