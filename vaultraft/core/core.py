"""Core: seal state, init/unseal/seal, and the wiring that exists only while unsealed."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import structlog

from vaultraft import VAULT_COMPAT_VERSION
from vaultraft.audit import AuditBroker
from vaultraft.barrier import (
    KEYRING_PATH,
    Barrier,
    BarrierDecryptError,
    BarrierInvalidKey,
    ReplicatedReadOnly,
)
from vaultraft.core import raft_ops
from vaultraft.core.audit_table import AuditTable
from vaultraft.core.cluster import LEASE_LAPSE_WAIT, ClusterLink
from vaultraft.core.ha_roles import HaRoles
from vaultraft.core.mounts import MountEntry, MountTable, Route, Router, new_entry
from vaultraft.core.policy_store import PolicyStore
from vaultraft.core.raft_join import ChallengeIssuer, Joiner
from vaultraft.core.replication.manager import STAGED_PATHS, ReplicationManager
from vaultraft.core.replication.roles import ReplicationRoles
from vaultraft.core.replication.staging import STAGED_KEY
from vaultraft.core.seal_manager import SealManager
from vaultraft.core.tasks import cancel_and_wait as _cancel
from vaultraft.core.tokens import TokenEntry, TokenStore
from vaultraft.core.views import BarrierView
from vaultraft.engines import BUILTIN_ENGINES
from vaultraft.engines.cubbyhole import destroy_cubbyhole
from vaultraft.framework import Backend
from vaultraft.logical import (
    InvalidRequest,
    NotInitialized,
    NotLeader,
    Operation,
    PreconditionFailed,
    Request,
    Response,
    Sealed,
    StorageEntry,
    Unavailable,
)
from vaultraft.storage import Physical

log = structlog.get_logger("vaultraft.core")

BUILD_DATE = "2026-11-23T00:00:00Z"
_LOCAL_OPS = (Operation.READ, Operation.LIST, Operation.HELP)
_REGAIN_POLL = 0.01  # how often a request waiting for the lease looks again
INDEX_WAIT = 2.0
_TABLE_KEYS = ("core/mounts", "core/local-mounts", "core/auth", "core/local-auth", "core/audit", "core/local-audit")
_WATCHED = ("core/", "sys/policy/")
_SEAL_RECORDS = ("core/seal-config", "core/recovery-config")
_LOCAL_TABLES = ("core/local-", "core/replication/", "core/raft/", "core/leader")
TIDY_INTERVAL = 30.0
DR_PATH_DISABLED = "path disabled in replication DR secondary mode"
#: The refusal of client requests while a performance activation is staged (every node).
PERF_ACTIVATING = ("this cluster is being activated as a performance secondary and serves no client requests "
                   "until the activation has finished (see sys/replication/performance/status)")


@dataclass(frozen=True)
class CoreSettings:
    """What core needs from the server configuration."""

    cluster_name: str = ""
    default_lease_ttl: int = 768 * 3600
    max_lease_ttl: int = 768 * 3600
    api_addr: str = ""
    cluster_addr: str = ""
    performance_standby: bool = False
    replication_addr: str = ""  # host:port secondaries dial (advertised)
    replication_bind: str = ""  # host:port the replication listener binds
    dr_sync: bool = False  # acknowledge a write only once a DR secondary holds it
    dr_sync_timeout: float = 5.0
    auto_promote: bool = False
    failover_timeout: float = 10.0
    witness_address: str = ""
    witness_tls_bundle: str = ""


@dataclass(frozen=True)
class InitResult:
    """The one-time output of ``sys/init``: shares of the unseal key and the root token."""

    keys: list[bytes]
    root_token: str
    recovery_keys: list[bytes] = field(default_factory=list)  # issue 4: HSM seal init


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
    role_task: asyncio.Task[None] | None = None
    invalidation_task: asyncio.Task[None] | None = None
    sys_view: BarrierView | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Core(HaRoles, ReplicationRoles):
    """One node's core. Every public coroutine is safe to call concurrently."""

    def __init__(self, physical: Physical, settings: CoreSettings) -> None:
        self.physical = physical
        self.settings = settings
        self.barrier = Barrier(physical)
        self.router = Router()
        self.audit = AuditBroker()
        self.seals = SealManager(self.barrier)
        self.cluster = ClusterLink(physical)
        self.joiner = Joiner()
        self.challenges = ChallengeIssuer()
        self.retry_join_addrs: list[str] = []
        self.replication = ReplicationManager(self)
        self._self_seal: asyncio.Task[None] | None = None
        self._invalidations: asyncio.Queue[list[str]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if self.cluster.raft is not None:
            self.cluster.raft.fsm.observer = self._on_applied
        self._active = False
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
        """Whether ``sys/init`` has run against this storage (or a join awaits unseal)."""
        return await self.seals.config() is not None or self.joiner.pending is not None

    async def seal_status(self) -> dict[str, Any]:
        """Vault's ``sys/seal-status`` body."""
        if self.joiner.pending is not None and self.sealed:
            fields = self.joiner.status_fields()
        else:
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
        for extra in ("recovery_seal_type", "warnings"):  # issue 4: HSM seal status
            if extra in fields:
                body[extra] = fields[extra]
        if self._u is not None:
            body["cluster_name"] = self._u.cluster_name
            body["cluster_id"] = self._u.cluster_id
        return body

    # ---- init ----------------------------------------------------------------------------

    async def initialize(self, secret_shares: int, secret_threshold: int, *, root_token_id: str | None = None,
                         recovery_shares: int = 0, recovery_threshold: int = 0) -> InitResult:
        """Create the root key, keyring and root token. Shamir: leave the node sealed and
        return unseal shares. HSM seal: return recovery shares and leave the node unsealed.

        Raises InvalidRequest when already initialized, the share parameters are bad, or
        the HSM is unavailable.
        """
        async with self._lock:
            if await self.initialized():
                raise InvalidRequest("Vault is already initialized")
            self.seals.check_init_params(secret_shares, secret_threshold, recovery_shares, recovery_threshold)
            await self.seals.prepare_init()
            cluster_id = str(uuid.uuid4())
            await self.cluster.start_for_init(cluster_id)
            root_key = os.urandom(32)
            await self.barrier.initialize(root_key)
            init_keys = await self.seals.wrap_new_root_key(root_key, secret_shares, secret_threshold,
                                                           recovery_shares=recovery_shares,
                                                           recovery_threshold=recovery_threshold)
            await self.barrier.unseal(root_key)
            try:
                sys_view = BarrierView(self.barrier, "core/", local=False)
                cluster = {"id": cluster_id, "name": self.settings.cluster_name or f"vault-cluster-{secrets.token_hex(4)}"}
                await sys_view.put(StorageEntry("cluster", json.dumps(cluster).encode()))
                await self.cluster.store_tls(sys_view)
                await self._setup(first_time=True)
                root = await self.unsealed.tokens.create_root_token(root_token_id)
                await self.seals.store_config(init_keys.config)
            finally:
                await self._teardown()
                self.barrier.seal()
                await self.cluster.stop()
            log.info("core_initialized", seal=init_keys.config.type, shares=len(init_keys.keys) or recovery_shares,
                     threshold=secret_threshold or recovery_threshold, recovery_keys=bool(init_keys.recovery_keys))
            if self.seals.recovery_supported:  # an HSM seal unseals at once (Vault's init does too)
                await self._unseal_with(root_key)
            return InitResult(keys=init_keys.keys, root_token=root.id, recovery_keys=init_keys.recovery_keys)

    # ---- unseal / seal -------------------------------------------------------------------

    async def unseal(self, key: str | None, *, reset: bool = False, migrate: bool = False) -> None:
        """Submit one unseal key share (hex or base64; a recovery share with an HSM seal),
        or reset progress. ``key=None`` with an HSM seal auto-unseals (a no-op when the
        HSM fails: the seal manager logs it and seal-status shows it). ``migrate`` must be
        set while a seal migration is pending.

        Unseals once the threshold is reached. A wrong combination resets progress and
        raises InvalidRequest; the node stays sealed.
        """
        async with self._lock:
            if not await self.initialized():
                raise NotInitialized()
            if reset:
                self.seals.reset_progress()
                self.joiner.reset_progress()
                return
            if not self.sealed:
                return
            if not key:
                if self.seals.recovery_supported and not migrate:  # issue 4: auto-unseal
                    auto_root = await self.seals.try_auto_unseal()
                    if auto_root is not None:
                        try:
                            await self._unseal_with(auto_root)
                        except BarrierInvalidKey:  # a replication activation cut short
                            staged = await self.seals.staged_root()
                            if staged is None:
                                raise
                            await self._unseal_with(staged)
                    return
                raise InvalidRequest("missing required 'key' parameter")
            if self.joiner.pending is not None:
                root_key = await self.joiner.submit_share(key)
                if root_key is None:
                    return
                await self._finish_join_locked(root_key)
                return
            root_key = await self.seals.submit_share(key, migrate=migrate)
            if root_key is None:
                return
            await self._unseal_with(root_key)

    async def finish_join(self, root_key: bytes) -> None:
        """Complete a pending Raft join with the cluster's root key, then unseal."""
        async with self._lock:
            await self._finish_join_locked(root_key)

    async def _finish_join_locked(self, root_key: bytes) -> None:
        await raft_ops.complete_join(self, root_key)
        await self._unseal_with(root_key)

    async def _unseal_with(self, root_key: bytes) -> None:
        await self.barrier.unseal(root_key)
        try:
            await self._start_unsealed()
        except BarrierDecryptError:
            # e.g. a standby of a new replication secondary that has not caught up with the
            # entries its active node re-encrypted under the primary's keys
            raise InvalidRequest("this node's stored state cannot be read with these keys yet; "
                                 "it may still be catching up with its cluster: retry shortly") from None
        self.seals.start_health_monitor(self.seal)  # issue 4: seal when the HSM goes away
        log.info("core_unsealed")

    async def _start_unsealed(self) -> None:
        raft = self.cluster.raft
        in_consensus = raft is not None and raft.running  # sealed but kept in its group
        try:
            await self.cluster.start_after_unseal(BarrierView(self.barrier, "core/", local=False))
            await self._setup(first_time=False)
            await self.seals.after_unseal()  # issue 4: pending seal migration, HSM key re-wrap
        except BaseException:
            await self._teardown()
            self.barrier.seal()
            if not in_consensus:  # a node kept in consensus goes on catching up
                await self.cluster.stop()
            raise

    async def seal(self, *, keep_consensus: bool = False) -> None:
        """Seal: stop background work, forget routes and keys. ``keep_consensus`` keeps this
        node in the Raft group (it goes on applying ciphertext it cannot read): a standby whose
        cluster switched to a replication primary's keyring, so it catches up on everything
        the active node writes under the new keys and can be unsealed with them."""
        async with self._lock:
            await self._teardown()
            self.barrier.seal()
            if keep_consensus:
                self.cluster.follow_sealed()
            else:
                await self.cluster.stop()
            await self.seals.on_sealed()  # issue 4: also stops the HSM health monitor
            log.info("core_sealed", consensus=keep_consensus)

    # ---- requests --------------------------------------------------------------------------

    async def handle_request(self, req: Request) -> Response | None:
        """Run an authenticated request through the pipeline; Sealed while sealed."""
        from vaultraft.core.pipeline import handle_request

        if self._u is None:
            raise Sealed()
        repl = self.replication
        if repl.activating and req.path in STAGED_PATHS:
            return await repl.staged_request(req)  # its tokens are unusable: an operation token
        # every node of a cluster whose activation is staged refuses clients, standbys too
        # (before serving or forwarding anything): its store is being replaced by the bulk sync
        staged = repl.staged_activation_kind()
        if staged is None and repl.staged_unsettled:  # the log changed it a moment ago
            staged = await repl.staged_kind_in_storage()
        if repl.dr_secondary or staged == "dr":
            raise InvalidRequest(DR_PATH_DISABLED)
        if staged is not None:
            raise Unavailable(PERF_ACTIVATING)
        if not self.active and not await self._regain_active():
            if not self._serves_locally(req):
                info = await self.leader_info()
                raise NotLeader(info.api_addr if info else None)
            await self._wait_for_index(req)
            try:
                return await handle_request(self, req)
            except NotLeader:
                # the read needed a write (e.g. a token's last use): let the active node do it
                info = await self.leader_info()
                raise NotLeader(info.api_addr if info else None) from None
        if req.operation in _LOCAL_OPS:
            if "x-vault-index" in req.headers:  # an index from a standby or a forwarded write
                await self._wait_for_index(req)
            await self.cluster.read_barrier()
        fenced = req.operation not in _LOCAL_OPS and not req.path.startswith("sys/replication/")
        if fenced:
            self.replication.fencing.check_writes()
        try:
            resp = await handle_request(self, req)
        except ReplicatedReadOnly:
            # a performance secondary: the request writes replicated state, which only the
            # primary may do; it runs there under the caller's identity as checked here
            return await self.replication.forward_to_primary(req)
        if self.settings.dr_sync and fenced:
            await self.replication.wait_if_sync(self.settings.dr_sync_timeout)
        if fenced:
            self.replication.fencing.check_writes()  # never acknowledge once the lease may have ended
        return resp

    async def _regain_active(self) -> bool:
        """True once this node is active again, when it still leads the Raft log and only
        its quorum lease lapsed (a follower's answer, or its own Raft thread, came late
        under load; no election): such a request waits up to LEASE_LAPSE_WAIT instead of
        being refused with 503. It is served only once the lease holds again, exactly as
        any request on the active node. False at once on a standby."""
        if not self.cluster.leads_log():
            return False
        deadline = time.monotonic() + LEASE_LAPSE_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(_REGAIN_POLL)
            if self.active:
                return True
            if not self.cluster.leads_log():
                return False
        return False

    async def _wait_for_index(self, req: Request) -> None:
        """Read-after-write: wait until this node applied the client's X-Vault-Index."""
        raw = req.headers.get("x-vault-index")
        if not raw:
            return
        try:
            want = int(raw)
        except ValueError:
            raise InvalidRequest("X-Vault-Index must be an integer log index") from None
        wait = getattr(self.physical, "wait_applied", None)
        if wait is not None and not await wait(want, INDEX_WAIT):
            raise PreconditionFailed(f"this node has not yet applied index {want}; retry or "
                                     "send X-Vault-Inconsistent: forward-active-node")

    def _serves_locally(self, req: Request) -> bool:
        """A performance standby answers reads from its own copy of the state."""
        return (self.settings.performance_standby and req.operation in _LOCAL_OPS
                and req.headers.get("x-vault-inconsistent", "") != "forward-active-node"
                and self.router.match(req.path) is not None)

    async def reload_tables(self) -> None:
        """Re-read mount, auth, audit tables and policies from storage (after a restore)."""
        await self._load_tables(create=False)

    # ---- log-driven cache invalidation (standbys) ---------------------------------------

    def _on_applied(self, index: int, keys: Sequence[str]) -> None:
        """Called on the Raft thread after each applied entry (never blocks it)."""
        if STAGED_KEY in keys:
            self.replication.staged_record_applied()
        loop, queue = self._loop, self._invalidations
        if loop is None or queue is None or self._u is None or (self._active and not self.replication.dr_secondary
                                             and not self.replication.perf_secondary):
            return
        watched = [k for k in keys if k.startswith(_WATCHED)]
        if self._active:
            # an active secondary follows what its primary ships; its own writes of local
            # tables are already in memory (reloading them would race requests)
            watched = [k for k in watched if not k.startswith(_LOCAL_TABLES)]
        if watched:
            loop.call_soon_threadsafe(queue.put_nowait, watched)

    async def _invalidation_loop(self) -> None:
        assert self._invalidations is not None
        while True:
            keys = await self._invalidations.get()
            while not self._invalidations.empty():
                keys.extend(self._invalidations.get_nowait())
            if self._u is None or (self._active and not self.replication.dr_secondary
                                   and not self.replication.perf_secondary):
                continue
            if KEYRING_PATH in keys and not self._active and not await self._follow_keyring():
                continue
            if self.replication.dr_secondary or self.replication.activating:
                continue  # an activation's bulk sync: the new stores come with its end (or abandonment)
            try:
                if KEYRING_PATH in keys:
                    await self.barrier.reload_keyring()
                if any(k in _SEAL_RECORDS for k in keys):
                    self.seals.forget_config()
                if any(k.startswith(_TABLE_KEYS) for k in keys) and (self.settings.performance_standby
                                                                     or self.replication.perf_secondary):
                    await self._load_tables(create=False)
                elif any(k.startswith("sys/policy/") for k in keys):
                    self.unsealed.policies.invalidate()
            except Exception as e:  # a failed refresh is retried by the next change
                log.warning("standby_invalidation_failed", error=type(e).__name__)

    def ha_role(self) -> str:
        """"active", "perf_standby", "standby" or "dr_secondary" (and "sealed")."""
        if self._u is None:
            return "sealed"
        if self.replication.dr_secondary:
            return "dr_secondary"
        if self._active and self.cluster.is_active():
            return "active"
        return "perf_standby" if self.settings.performance_standby else "standby"

    @property
    def active(self) -> bool:
        """Whether this node is unsealed and acting as the active node."""
        return self._u is not None and self._active and self.cluster.is_active()

    # ---- wiring while unsealed -----------------------------------------------------------

    async def _setup(self, *, first_time: bool) -> None:
        if self.cluster.enabled and not first_time:
            # before anything replicated is read: an activation may be staged, and the
            # replicated entries may be its primary's already (unreadable until the switch)
            await self.replication.read_staged()
        self._u = await self._new_unsealed()
        if first_time:
            await self._load_tables(create=True)
            return
        if self.cluster.enabled:
            await self.replication.load()
        # Settle the first role before answering the unseal: a lone node becomes active
        # at once; a cluster member waits briefly for a leader and may stay standby.
        active = await self.cluster.wait_lease(self.cluster.first_role_wait())
        if active:
            await self._become_active()
        else:
            await self._become_standby()
        self._loop = asyncio.get_running_loop()
        self._invalidations = asyncio.Queue()
        self._u.invalidation_task = self._loop.create_task(self._invalidation_loop(), name="invalidation")
        self._u.role_task = self._loop.create_task(self._role_loop(active), name="ha_role")
        await self.replication.start()

    async def _new_unsealed(self) -> _Unsealed:
        """Fresh stores over the barrier (nothing cached from earlier data: a DR secondary
        that is promoted serves its primary's tokens, salts and tables)."""
        core_view = BarrierView(self.barrier, "core/", local=False)
        core_local = BarrierView(self.barrier, "core/", local=True)
        try:
            cluster_raw = await core_view.get("cluster")
        except BarrierDecryptError:
            # a replication activation under way: the primary's copy arrived, its keyring
            # not yet (this node runs on its own keys until the activation's switch)
            if not self.replication.activating:
                raise
            cluster_raw = None
        cluster = json.loads(cluster_raw.value) if cluster_raw else {"id": "", "name": ""}
        audit_table = AuditTable(core_view, core_local, self.audit)
        return _Unsealed(
            cluster_id=cluster["id"], cluster_name=cluster["name"],
            mounts=MountTable("mounts", core_view, core_local),
            auth=MountTable("auth", core_view, core_local),
            policies=PolicyStore(BarrierView(self.barrier, "sys/policy/", local=False)),
            tokens=TokenStore(
                BarrierView(self.barrier, "sys/token/", local=True),
                now=time.time,
                default_ttl=self.settings.default_lease_ttl,
                max_ttl=self.settings.max_lease_ttl,
                on_revoke=self._on_token_revoked,
            ),
            audit_table=audit_table, sys_view=core_view,
        )

    async def _load_tables(self, *, create: bool) -> None:
        """(Re)read the mount, auth and audit tables and rebuild the router from them.

        Only the active node (or init) may ``create`` missing tables.
        """
        from vaultraft.core.sys import build_sys_backend

        u = self.unsealed
        self.audit.close()
        u.policies.invalidate()
        if not await u.mounts.load() and create:
            u.mounts.update(new_entry("cubbyhole/", "cubbyhole", local=True, description="per-token private secret storage"))
            u.mounts.update(new_entry("sys/", "system", description="system endpoints used for control, policy and debugging"))
            await u.mounts.save()
        if not await u.auth.load() and create:
            u.auth.update(new_entry("token/", "token", prefix_for_accessor="auth_token", description="token based credentials"))
            await u.auth.save()
        if create:
            await u.policies.setup()
        await u.audit_table.load()
        # no await from here on: requests never see a half-built router
        self.router.clear()
        self.router.mount(Route("sys/", u.mounts.entries["sys/"], build_sys_backend(self), None))
        for entry in u.mounts.entries.values():
            if entry.type != "system":
                self.mount_backend(entry)
        self.router.mount(Route("auth/token/", u.auth.entries["token/"], u.tokens.backend(), None))

    async def _teardown(self) -> None:
        await self.replication.close()
        self.replication = ReplicationManager(self)
        u, self._u = self._u, None
        self._active = False
        self.router.clear()
        self.audit.close()
        if u is not None:
            for task in (u.role_task, u.tidy_task, u.invalidation_task):
                if task is not None:
                    await _cancel(task)

    def engine_view(self, entry: MountEntry) -> BarrierView:
        """The barrier view a secret-engine mount sees."""
        return BarrierView(self.barrier, f"logical/{entry.uuid}/", local=entry.local or entry.type == "cubbyhole",
                           wrapper=self.seals if entry.seal_wrap else None)

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
                from vaultraft.core.sys.keys import maybe_auto_rotate

                if not self.replication.perf_secondary:  # the keyring is the primary's to rotate
                    await maybe_auto_rotate(self)
            except Exception as e:  # a failed tidy must not kill the node
                log.warning("token_tidy_failed", error=type(e).__name__)
