"""One node's replication machinery: role records, the shipper's server and client, status.

The manager follows the records under ``core/replication/`` and the node's HA role:

* on every unsealed node of a *primary* cluster a :class:`ReplicationServer` listens on the
  replication address; only the active node streams, standbys redirect secondaries to it;
* on the active node of a *secondary* cluster a :class:`ReplicationClient` pulls the
  primary's stream and applies it through this cluster's own Raft log;
* a reconcile loop starts and stops both as records and roles change (no callbacks from
  the Raft thread, no fire-and-forget tasks: everything is owned and cancelled on seal).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from vaultraft.aio import wait_event
from vaultraft.core.key_ops import KeyOps
from vaultraft.core.replication import backup, staging
from vaultraft.core.replication.activating import ActivationMixin, PendingActivation
from vaultraft.core.replication.adapters import ActivatingSink, Registry
from vaultraft.core.replication.key_sync import (
    KeyHolderSync,
)
from vaultraft.core.replication.merkle import MerkleRoots
from vaultraft.core.replication.records import (
    ReplicationRecord,
    SecondaryEntry,
    load_record,
    save_record,
)
from vaultraft.core.replication.seal_stream import UnwrappingSource
from vaultraft.core.replication.status_view import StatusMixin
from vaultraft.core.tasks import cancel_and_wait
from vaultraft.core.tokens.entry import new_token_id
from vaultraft.logical import InternalError, InvalidRequest, Request, Response, Unavailable
from vaultraft.raft.replica import RaftWalSource
from vaultraft.raft.tls import ClusterCA, NodeCert, address_ips
from vaultraft.replication.client import ReplicationClient
from vaultraft.replication.registry import SecondaryContact
from vaultraft.replication.server import ReplicationServer, ServerConfig
from vaultraft.storage import Batch, Op

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.replication")
#: Wal frame interval under a steady stream with ``dr_sync`` (the default is 25 ms).
_SYNC_STREAM_INTERVAL = 0.004

RECONCILE_PERIOD = 0.25
#: Pipeline paths that a cluster with a staged activation serves before anything else (its
#: tokens are unusable then): authorized by an operation token (``secondary_ops.staged_request``).
STAGED_PATHS = frozenset(f"sys/replication/{kind}/secondary/{op}" for kind in ("dr", "performance")
                         for op in ("enable", "update-primary", "disable", "generate-public-key"))


async def store_staged_operation_token(core: Core, sha256_hex: str) -> None:
    """Store the hash of the operation token minted while an activation is staged (raw,
    cluster-own, deleted with the staged activation)."""
    result = await core.barrier.physical.apply(Batch((Op.put(backup.OPERATION_TOKEN_KEY, sha256_hex.encode()),)))
    if result.error is not None:
        raise InternalError(f"failed to store the operation token: {result.error}")


class ReplicationManager(ActivationMixin, StatusMixin):
    """Replication for one node; created at unseal, closed at seal."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.records: dict[str, ReplicationRecord] = {}
        self.pending: PendingActivation | None = None
        self.staged_kind: str | None = None  # the kind of an activation staged in storage
        self.staged_since = 0  # when it was staged (unix seconds)
        self.activation_error = ""  # why the staged activation last failed to finish
        self.activation_lock = asyncio.Lock()  # switch, abandon and replacement never overlap
        self._staged_unreadable = False
        self._leftovers_checked = False
        # the staged record's writes and deletions this node applied (counted on the Raft thread)
        # and how many of them it had applied when it last read the record
        self._staged_applied = 0
        self._staged_read = 0
        self.contacts: dict[str, SecondaryContact] = {}
        self.active_replication_addr: str | None = None
        self.server: ReplicationServer | None = None
        self.client: ReplicationClient | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._client_key: tuple[str, tuple[str, ...]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        from vaultraft.core.replication.fencing import Fencing

        self.fencing = Fencing(self)
        self._durable = asyncio.Event()  # set (and replaced) whenever a secondary acknowledges
        self.bundle_private_key: bytes | None = None  # from generate-public-key
        self.force_resync = False  # reindex: the next connection bulk-syncs
        self._operation_ops: KeyOps | None = None
        self.key_sync = KeyHolderSync(core)
        self.merkle = MerkleRoots(self._digest_for_status, self._applied_index)

    async def request_resync(self) -> None:
        """Reindex: reconnect and rebuild this secondary's copy with a full bulk sync."""
        self.force_resync = True
        await self._stop_client()
        self.poke()

    async def staged_request(self, req: Request) -> Response:
        """Enable, update-primary or disable while an activation is staged (see secondary_ops)."""
        from vaultraft.core.replication.secondary_ops import staged_request

        return await staged_request(self.core, req)

    async def forward_to_primary(self, req: Request) -> Response | None:
        """A performance secondary: run ``req`` on the primary (see secondary_ops)."""
        from vaultraft.core.replication.secondary_ops import forward_to_primary

        return await forward_to_primary(self.core, req)

    # ---- synchronous DR ------------------------------------------------------------------

    def wake_durable(self) -> None:
        """A secondary acknowledged something: wake writes waiting in sync mode."""
        event, self._durable = self._durable, asyncio.Event()
        event.set()

    def secondary_durable_index(self) -> int:
        """The highest primary index a connected DR secondary has applied (0 if none)."""
        return max((c.remote_index for c in self.contacts.values() if c.connected and c.mode == "dr"), default=0)

    async def wait_if_sync(self, timeout: float) -> None:
        """Sync mode, after a write: wait until a DR secondary holds every WAL entry this
        node has applied so far (which includes the write). A no-op unless this cluster is
        a DR primary with at least one activated secondary."""
        rec, raft = self.dr, self.core.cluster.raft
        if rec is None or rec.mode != "primary" or raft is None:
            return
        if not any(s.activated and not s.revoked for s in rec.secondaries):
            return
        await self.wait_secondary_durable(raft.store.wal_last(), timeout)

    async def wait_secondary_durable(self, index: int, timeout: float) -> None:
        """Sync mode: return once a DR secondary has applied ``index`` (its own Raft log
        committed it); Unavailable after ``timeout`` (the write is on the primary but was
        not acknowledged, so no promotion can lose an acknowledged write)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.secondary_durable_index() < index:
            remaining = end - loop.time()
            if remaining <= 0:
                raise Unavailable("write not acknowledged: no DR secondary confirmed it within dr_sync_timeout "
                                  "(replication dr_sync = true)")
            await wait_event(self._durable, remaining)

    # ---- DR operation tokens -------------------------------------------------------------

    def operation_ops(self) -> KeyOps:
        """The generate-operation-token attempt (a generate-root that mints DR operation tokens)."""
        if self._operation_ops is None:
            self._operation_ops = KeyOps(self.core, mint=self._mint_operation_token)
        return self._operation_ops

    async def _mint_operation_token(self) -> str:
        if self.activating:
            # an activation that has not switched keys: the shares were this cluster's own (its
            # seal still holds its own root key); the token only disables or replaces it
            token = new_token_id()
            await store_staged_operation_token(self.core, hashlib.sha256(token.encode()).hexdigest())
            log.info("replication_operation_token_generated", staged_activation=True)
            return token
        if self.dr is None or self.dr.mode != "secondary":
            raise InvalidRequest("this cluster is not a DR secondary")
        token = new_token_id()  # same length as a root token, so the same OTPs encode it
        rec = replace(self.dr, operation_token_sha256=hashlib.sha256(token.encode()).hexdigest())
        await save_record(self._view(), rec)
        self.dr = rec
        log.info("replication_operation_token_generated")
        return token

    def operation_token_valid(self, token: str) -> bool:
        """Whether ``token`` is the current DR operation token (constant-time)."""
        want = self.dr.operation_token_sha256 if self.dr is not None else ""
        return bool(want) and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), want)

    async def staged_operation_token_valid(self, token: str) -> bool:
        """Whether ``token`` authorizes disabling or replacing the staged activation: the
        operation token minted while it is staged, or the DR secondary's current one (an
        update-primary that has not finished)."""
        if not token:
            return False
        if self.operation_token_valid(token):
            return True
        want = await self.core.barrier.raw_get(backup.OPERATION_TOKEN_KEY)
        return want is not None and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest().encode(), want)

    def forget_operation_token(self) -> None:
        """Drop the operation token from the in-memory record (callers store a new record)."""
        if self.dr is not None:
            self.dr = replace(self.dr, operation_token_sha256="")

    async def delete_operation_token(self) -> None:
        """Revoke the DR operation token."""
        if self.dr is not None and self.dr.operation_token_sha256:
            self.forget_operation_token()
            await save_record(self._view(), self.dr)

    # ---- state --------------------------------------------------------------------------

    @property
    def dr(self) -> ReplicationRecord | None:
        """The DR record (None: DR replication is not enabled here)."""
        return self.records.get("dr")

    @dr.setter
    def dr(self, rec: ReplicationRecord | None) -> None:
        self.set_record("dr", rec)

    @property
    def perf(self) -> ReplicationRecord | None:
        """The performance replication record."""
        return self.records.get("performance")

    def set_record(self, kind: str, rec: ReplicationRecord | None) -> None:
        """Remember ``rec`` as this node's record of ``kind`` (None: forget it)."""
        if rec is None:
            self.records.pop(kind, None)
        else:
            self.records[kind] = rec
        self.core.barrier.replicated_read_only = self.perf_secondary
        self.core.seals.follows_primary = self.secondary_record() is not None

    def _pending_kind(self, kind: str) -> bool:
        return self.pending is not None and self.pending.record.kind == kind

    @property
    def activating(self) -> bool:
        """Whether an activation is under way (in memory here, or staged in storage)."""
        return self.pending is not None or self.staged_kind is not None

    @property
    def dr_secondary(self) -> bool:
        """Whether this cluster is (or is becoming) a DR secondary: it serves no clients."""
        return (self._pending_kind("dr") or self.staged_kind == "dr"
                or (self.dr is not None and self.dr.mode == "secondary"))

    @property
    def perf_secondary(self) -> bool:
        """Whether this cluster is (or is becoming) a performance secondary: it serves
        reads from its copy and forwards writes of replicated state to its primary."""
        return self._pending_kind("performance") or (self.perf is not None and self.perf.mode == "secondary")

    @property
    def dr_primary(self) -> bool:
        """Whether this cluster is a DR primary."""
        return self.dr is not None and self.dr.mode == "primary"

    def primary_record(self) -> ReplicationRecord | None:
        """The record this cluster serves secondaries from (DR first; both share a CA and lineage)."""
        for kind in ("dr", "performance"):
            rec = self.records.get(kind)
            if rec is not None and rec.mode == "primary":
                return rec
        return None

    def secondary_record(self) -> ReplicationRecord | None:
        """The record of the primary this cluster follows (pending activation first)."""
        if self.pending is not None:
            return self.pending.record
        for kind in ("dr", "performance"):
            rec = self.records.get(kind)
            if rec is not None and rec.mode == "secondary":
                return rec
        return None

    def _view(self) -> Any:
        view = self.core.unsealed.sys_view
        assert view is not None
        return view

    async def load(self) -> None:
        """Re-read this cluster's records (standbys follow the active node's changes)."""
        await self.read_staged()
        for kind in ("dr", "performance"):
            self.set_record(kind, await load_record(self._view(), kind))

    async def read_staged(self) -> bytes | None:
        """Read the staged activation's readable envelope (kind, time; no keys needed): on
        every node, at unseal before anything replicated is read, and whenever the records are
        followed. Returns the raw record."""
        applied = self._staged_applied
        raw = await self.core.barrier.raw_get(staging.STAGED_KEY)
        self.staged_kind, self.staged_since = staging.staged_kind(raw), staging.staged_at(raw)
        self._staged_read = applied
        return raw

    def staged_record_applied(self) -> None:
        """Called on the Raft thread when this node applied a write or deletion of the staged
        record: until the record is read again, client requests check it in storage first
        (``staged_unsettled``), so no request is served from a store that the bulk
        sync coming next in the log is about to drop."""
        self._staged_applied += 1
        loop = self.core._loop
        if loop is not None and not self.core._active:  # the active node wrote it and knows
            try:
                loop.call_soon_threadsafe(self.poke)  # a standby follows it now, not in 250 ms
            except RuntimeError:  # the loop is closing (shutdown)
                pass

    @property
    def staged_unsettled(self) -> bool:
        """Whether this node applied a change of the staged record that it has not read yet."""
        return self._staged_applied != self._staged_read

    async def staged_kind_in_storage(self) -> str | None:
        """The kind of the activation staged in storage right now (for client requests while
        ``staged_unsettled``: standbys learn it within a reconcile round; this closes that window)."""
        return staging.staged_kind(await self.core.barrier.raw_get(staging.STAGED_KEY))

    def replication_mode(self, kind: str) -> str:
        """This cluster's mode for ``kind`` as Vault's status and health report it: ``primary``,
        ``secondary`` (an activation staged or under way counts: the cluster is a secondary
        that has not finished its activation) or ``disabled``. The same on every node."""
        if self.staged_activation_kind() == kind:
            return "secondary"
        rec = self.records.get(kind)
        return rec.mode if rec is not None else "disabled"

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """After unseal: read the records and start following them."""
        if self.core.cluster.raft is None:
            return
        await self.load()
        self._task = asyncio.get_running_loop().create_task(self._reconcile_loop(), name="replication")

    async def close(self) -> None:
        """At seal: stop the server, the client and the loop."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self.merkle.close()
        await self.fencing.close()
        await self._stop_client()
        await self._stop_server()
        if self.pending is not None:
            self.pending.done.set()

    def poke(self) -> None:
        """Reconcile now (after a record changed on this node)."""
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # retried on the next round
                log.warning("replication_reconcile_failed", error=type(e).__name__, detail=str(e)[:200])
            await self.key_sync.safe_step(self)
            await wait_event(self._wake, RECONCILE_PERIOD)
            self._wake.clear()

    async def reconcile(self) -> None:
        """Start or stop the server and client to match the records and this node's role."""
        if not self.core.active:
            await self._forget_pending()  # before the role is compared: storage says it now
            was, was_perf, was_activating = self.dr_secondary, self.perf_secondary, self.activating
            await self.load()
            if was and not self.dr_secondary:  # the active node promoted or disabled the cluster
                await self.core.leave_dr_secondary()
            elif self.dr_secondary and not was:  # the active node demoted the cluster
                await self.core.enter_dr_secondary()
            elif was_perf != self.perf_secondary:  # a performance role changed: fresh stores
                await self.core.leave_dr_secondary()
            elif was_activating and not self.activating and self.secondary_record() is None:
                await self.core.leave_dr_secondary()  # an activation abandoned: its own data again
        if self.core.active:
            await self._sync_staged()
        await self._refresh_active_addr()
        rec = self.primary_record()
        if rec is not None:
            await self._ensure_server(rec)
        else:
            await self._stop_server()
        dr = self.dr
        if dr is not None and dr.mode == "primary":
            fenced = self.fencing.fenced_epoch()
            if fenced is not None and self.core.active:
                await self._step_down_fenced(fenced)
            else:
                await self.fencing.ensure_holder(dr)
        else:
            await self.fencing.stop_holder()
        target = self.secondary_record()
        if (target is not None and target.secondary_id and self.core.active):
            await self._ensure_client(target)
            if target.kind == "dr" and self.pending is None:
                await self.fencing.maybe_promote(target)
        else:
            await self._stop_client()

    async def _step_down_fenced(self, epoch: int) -> None:
        """A voter has seen a newer primary: demote this cluster (it refuses writes already)."""
        from vaultraft.core.replication.ops import demote_primary

        log.warning("replication_fenced_demoting", newer_epoch=epoch)
        await demote_primary(self.core, "dr")

    async def _refresh_active_addr(self) -> None:
        info = await self.core.leader_info()
        if info is not None and info.replication_addr:
            self.active_replication_addr = info.replication_addr
        elif self.core.active:
            self.active_replication_addr = self.core.settings.replication_addr or None

    async def _ensure_server(self, rec: ReplicationRecord) -> None:
        if self.server is not None:
            return
        bind = self.core.settings.replication_bind
        if not bind:
            return
        ca = ClusterCA.from_pem(rec.cluster_id, rec.ca_cert_pem.encode(), rec.ca_key_pem.encode())
        advertised = self.core.settings.replication_addr or bind
        cert = ca.issue("primary:" + rec.cluster_id, ips=address_ips(advertised))
        raft = self.core.cluster.raft
        assert raft is not None
        host, _, port = bind.rpartition(":")
        source = UnwrappingSource(RaftWalSource(raft, local_filter=self.core.is_local_key), self.core.barrier,
                                  self.core.seals)
        # In sync mode a write waits for the secondary's Ack: ship sooner, in smaller frames.
        config = ServerConfig(stream_interval=_SYNC_STREAM_INTERVAL) if self.core.settings.dr_sync else None
        server = ReplicationServer(source, Registry(self), cert, host.strip("[]"), int(port), config=config)
        await server.start()
        self.server = server

    async def _stop_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.aclose()
            self.contacts.clear()

    async def _ensure_client(self, rec: ReplicationRecord) -> None:
        key = (rec.secondary_id, rec.primary_cluster_addrs)
        if self.client is not None and self._client_key == key and self._client_task and not self._client_task.done():
            return
        await self._stop_client()
        cert = NodeCert(cert_pem=rec.cert_pem.encode(), key_pem=rec.key_pem.encode(), ca_pem=rec.ca_cert_pem.encode())
        mode: Any = rec.kind
        client = ReplicationClient(ActivatingSink(self), cert, list(rec.primary_cluster_addrs), mode,
                                   secondary_id=rec.secondary_id,
                                   accept_server_id=lambda cn: cn.startswith("primary:"),
                                   voter=self.fencing.voter_for(rec) if rec.kind == "dr" else None)
        self.client, self._client_key = client, key
        self._client_task = asyncio.get_running_loop().create_task(client.run(), name="replication_client")
        log.info("replication_client_started", kind=rec.kind, primaries=len(rec.primary_cluster_addrs))

    async def _stop_client(self) -> None:
        task, self._client_task = self._client_task, None
        self.client, self._client_key = None, None
        await cancel_and_wait(task)

    def with_secondary(self, entry: SecondaryEntry) -> ReplicationRecord:
        """The DR primary record with ``entry`` added or replaced."""
        assert self.dr is not None
        return self.dr.with_secondary(entry)

    def revoked(self, secondary_id: str) -> ReplicationRecord:
        """The DR primary record with ``secondary_id`` revoked."""
        assert self.dr is not None
        s = self.dr.secondary(secondary_id)
        assert s is not None
        return self.dr.with_secondary(replace(s, revoked=True))
