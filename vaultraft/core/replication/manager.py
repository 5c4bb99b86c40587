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
import time
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import structlog

from vaultraft.barrier import KEYRING_PATH, Barrier, BarrierInvalidKey
from vaultraft.core.key_ops import KeyOps
from vaultraft.core.replication import staging
from vaultraft.core.replication.key_sync import KEY_HOLDERS_MARK, RECOVERY_BACKUP_KEY, KeyHolderSync
from vaultraft.core.replication.merkle import MerkleRoots
from vaultraft.core.replication.records import (
    EPOCH_KEY,
    RECORD_PREFIX,
    ReplicationRecord,
    SecondaryEntry,
    load_record,
    save_record,
)
from vaultraft.core.replication.seal_stream import UnwrappingSource, normalized_digest
from vaultraft.core.tasks import cancel_and_wait
from vaultraft.core.tokens.entry import new_token_id
from vaultraft.core.seal_replica import adoption_records, log_adopted
from vaultraft.core.seal_state import RAW_SEAL_RECORDS
from vaultraft.logical import InternalError, InvalidRequest, Unavailable
from vaultraft.raft.replica import RaftReplicaSink, RaftWalSource
from vaultraft.raft.tls import ClusterCA, NodeCert, address_ips
from vaultraft.replication.client import ReplicationClient
from vaultraft.replication.interfaces import ReplicaPosition
from vaultraft.replication.registry import PrimaryState, SecondaryContact
from vaultraft.replication.server import ReplicationServer
from vaultraft.storage import Batch, Op
from vaultraft.storage.wal import CLUSTER_OWN_PREFIXES

if TYPE_CHECKING:
    from vaultraft.core.core import Core

log = structlog.get_logger("vaultraft.replication")

RECONCILE_PERIOD = 0.25


@dataclass
class PendingActivation:
    """A secondary between activation and the end of its first bulk sync: the record to
    store and the primary's root key. Both are also staged durably in this cluster's own
    log (``staging.py``), so whichever node is active finishes the activation."""

    record: ReplicationRecord
    root_key: bytes = field(repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _KeyringOverlay:
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


class _Registry:
    """The server's view of this primary (``replication.server.SecondaryRegistry``)."""

    def __init__(self, manager: "ReplicationManager") -> None:
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


class _ActivatingSink(RaftReplicaSink):
    """The replica sink, finishing a pending activation after the first complete bulk sync,
    reloading the keyring when the primary's keyring changes, following the primary's key
    holders, and digesting the normalized keyspace (``seal_stream``)."""

    def __init__(self, manager: "ReplicationManager") -> None:
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
        keep: Any = lambda key: True  # noqa: E731
        if mode != "dr" and self.local_filter is not None:
            is_local = self.local_filter
            keep = lambda key: not is_local(key)  # noqa: E731
        core = self._m.core
        return await normalized_digest(self.store, keep, core.barrier, core.seals, remote_index=True)


class ReplicationManager:
    """Replication for one node; created at unseal, closed at seal."""

    def __init__(self, core: "Core") -> None:
        self.core = core
        self.records: dict[str, ReplicationRecord] = {}
        self.pending: PendingActivation | None = None
        self.staged_kind: str | None = None  # the kind of an activation staged in storage
        self._staged_unreadable = False
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

    async def forward_to_primary(self, req: Any) -> Any:
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
            try:
                await asyncio.wait_for(self._durable.wait(), remaining)
            except TimeoutError:
                pass

    # ---- DR operation tokens -------------------------------------------------------------

    def operation_ops(self) -> KeyOps:
        """The generate-operation-token attempt (a generate-root that mints DR operation tokens)."""
        if self._operation_ops is None:
            self._operation_ops = KeyOps(self.core, mint=self._mint_operation_token)
        return self._operation_ops

    async def _mint_operation_token(self) -> str:
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
        self.staged_kind = staging.staged_kind(await self.core.barrier.raw_get(staging.STAGED_KEY))
        for kind in ("dr", "performance"):
            self.set_record(kind, await load_record(self._view(), kind))

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
            try:
                await asyncio.wait_for(self._wake.wait(), RECONCILE_PERIOD)
            except TimeoutError:
                pass
            self._wake.clear()

    async def reconcile(self) -> None:
        """Start or stop the server and client to match the records and this node's role."""
        if not self.core.active:
            was, was_perf = self.dr_secondary, self.perf_secondary
            await self.load()
            if was and not self.dr_secondary:  # the active node promoted or disabled the cluster
                await self.core.leave_dr_secondary()
            elif self.dr_secondary and not was:  # the active node demoted the cluster
                await self.core.enter_dr_secondary()
            elif was_perf != self.perf_secondary:  # a performance role changed: fresh stores
                await self.core.leave_dr_secondary()
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
        server = ReplicationServer(source, _Registry(self), cert, host.strip("[]"), int(port))
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
        client = ReplicationClient(_ActivatingSink(self), cert, list(rec.primary_cluster_addrs), mode,
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

    # ---- secondary activation ---------------------------------------------------------------

    async def _sync_staged(self) -> None:
        """The active node: follow the activation staged in storage. Resume one this node
        does not hold in memory (it became active, or was restarted and unsealed, while an
        activation was under way); forget one that is no longer staged (another node
        finished it)."""
        raw = await self.core.barrier.raw_get(staging.STAGED_KEY)
        self.staged_kind = staging.staged_kind(raw)
        if raw is None:
            self._staged_unreadable = False
            p, self.pending = self.pending, None
            if p is not None:
                p.done.set()
                await self._stop_client()
                self.set_record(p.record.kind, self.records.get(p.record.kind))
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

    async def _own_plaintexts(self) -> dict[str, bytes]:
        """This cluster's own barrier-encrypted entries (plaintext, read with its own keys
        right before the switch). The seal records and the staged activation are stored
        unencrypted and the replication records are replaced: they are left out."""
        barrier = self.core.barrier
        out: dict[str, bytes] = {}
        skip = {staging.STAGED_KEY, "core/" + RECORD_PREFIX + "dr", "core/" + RECORD_PREFIX + "performance"}
        stack = [p for p in CLUSTER_OWN_PREFIXES if p.endswith("/") and p != "core/hsm/"]
        for key in (p for p in CLUSTER_OWN_PREFIXES if not p.endswith("/") and p not in RAW_SEAL_RECORDS):
            v = await barrier.get(key)
            if v is not None:
                out[key] = v
        while stack:
            prefix = stack.pop()
            for child in await barrier.list(prefix):
                path = prefix + child
                if child.endswith("/"):
                    stack.append(path)
                elif path not in skip:
                    v = await barrier.get(path)
                    if v is not None:
                        out[path] = v
        return out

    async def finish_activation(self, keyring_blob: bytes) -> None:
        """After the first complete bulk sync (the primary's keyring held back by the sink):
        switch to the primary's keyring in ONE storage batch that also re-encrypts this
        cluster's own entries under it, stores the secondary record, makes the seal records
        protect the primary's root key (they follow the primary's key holders) and deletes
        the staged activation. A crash leaves either the old state (the staged activation
        is resumed) or the finished one, never a keyring its seal records do not open.
        Raises on failure: the activation is retried with the next bulk sync."""
        p = self.pending
        if p is None:
            return
        core = self.core
        scratch = Barrier(_KeyringOverlay(core.barrier.physical, keyring_blob))  # type: ignore[arg-type]
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
        self.staged_kind = None
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

    # ---- status ------------------------------------------------------------------------------

    def _applied_index(self) -> int:
        raft = self.core.cluster.raft
        return raft.applied_index() if raft is not None else 0

    async def _digest_for_status(self, kind: str) -> tuple[int, str]:
        """What merkle-check compares: the primary's shipped keyspace for ``kind``, or this
        secondary's replicated keyspace."""
        raft = self.core.cluster.raft
        rec = self.records.get(kind)
        if raft is None or rec is None:
            return 0, ""
        if rec.mode == "primary":
            return await UnwrappingSource(RaftWalSource(raft), self.core.barrier, self.core.seals).digest(kind)
        sink = _ActivatingSink(self)
        if kind != "dr":
            sink.local_filter = self.core.is_local_key
        return await sink.digest(kind)

    def status(self, kind: str) -> dict[str, Any]:
        """Vault's ``sys/replication/<kind>/status`` data for this node."""
        rec = self.records.get(kind)
        if self._pending_kind(kind):
            assert self.pending is not None
            rec = self.pending.record
        if rec is None:
            return {"mode": "disabled"}
        source = self.core.cluster.raft
        merkle = self.merkle.root(kind) if rec.mode in ("primary", "secondary") and not self._pending_kind(kind) else ""
        if rec.mode == "primary":
            secondaries: list[dict[str, Any]] = []
            for s in rec.secondaries:
                if s.revoked or not s.activated:
                    continue
                c = self.contacts.get(s.id)
                secondaries.append({
                    "node_id": s.id,
                    "api_address": s.api_address,
                    "cluster_address": c.peer if c else s.cluster_address,
                    "connection_status": "connected" if c and c.connected else "disconnected",
                    "last_heartbeat": _rfc3339(c.last_heartbeat) if c and c.last_heartbeat else "",
                    "last_remote_wal": c.remote_index if c else 0,
                })
            last = source.store.wal_bounds()[1] if source is not None else 0
            return {
                "mode": "primary", "cluster_id": rec.cluster_id, "state": "running",
                "last_wal": last, f"last_{kind}_wal": last,
                "known_secondaries": [s["node_id"] for s in secondaries],
                "secondaries": secondaries, "primary_cluster_addr": rec.primary_cluster_addr,
                "merkle_root": merkle, "corrupted_merkle_tree": False, "epoch": rec.epoch,
            }
        st = self.client.status() if self.client is not None else None
        pos = source.store.replica_state() if source is not None else None
        connected = st is not None and st.connection_state == "connected"
        return {
            "mode": "secondary", "cluster_id": rec.cluster_id,
            "state": st.state if st is not None else "idle",
            "secondary_id": rec.secondary_id,
            "last_remote_wal": pos.remote_index if pos else 0,
            "known_primary_cluster_addrs": list(rec.primary_cluster_addrs),
            "primary_cluster_addr": st.primary_cluster_addr if st is not None else "",
            "primaries": [{
                "api_address": rec.primary_api_addr,
                "cluster_address": st.primary_cluster_addr if st is not None else "",
                "connection_status": "connected" if connected else "disconnected",
                "last_heartbeat": _rfc3339(st.last_heartbeat) if st is not None and st.last_heartbeat else "",
            }] if rec.secondary_id else [],
            "merkle_root": merkle, "corrupted_merkle_tree": False,
            "epoch": max(rec.epoch, st.primary_epoch if st is not None else 0),
        }

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


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
