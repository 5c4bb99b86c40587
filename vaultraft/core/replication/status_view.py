"""Vault's ``sys/replication/<kind>/status`` for the manager (a mixin)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from vaultraft.core.replication.adapters import ActivatingSink
from vaultraft.core.replication.merkle import MerkleRoots
from vaultraft.core.replication.records import ReplicationRecord
from vaultraft.core.replication.seal_stream import UnwrappingSource
from vaultraft.raft.replica import RaftWalSource
from vaultraft.replication.client import ReplicationClient
from vaultraft.replication.registry import SecondaryContact

if TYPE_CHECKING:
    from vaultraft.core.core import Core
    from vaultraft.core.replication.activating import PendingActivation


class StatusMixin:
    """Status of :class:`vaultraft.core.replication.manager.ReplicationManager`."""

    core: Core
    records: dict[str, ReplicationRecord]
    pending: PendingActivation | None
    staged_since: int
    activation_error: str
    _staged_unreadable: bool
    contacts: dict[str, SecondaryContact]
    client: ReplicationClient | None
    merkle: MerkleRoots

    if TYPE_CHECKING:
        def _pending_kind(self, kind: str) -> bool: ...
        def staged_activation_kind(self) -> str | None: ...

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
        sink = ActivatingSink(self)  # type: ignore[arg-type]
        if kind != "dr":
            sink.local_filter = self.core.is_local_key
        return await sink.digest(kind)

    def status(self, kind: str) -> dict[str, Any]:
        """Vault's ``sys/replication/<kind>/status`` data for this node."""
        rec = self.records.get(kind)
        if self._pending_kind(kind):
            assert self.pending is not None
            rec = self.pending.record
        staged = self.staged_activation_kind() == kind
        if rec is None and staged:  # a standby, or a record this node cannot open
            rec = ReplicationRecord(kind=kind, mode="secondary", cluster_id="")
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
        extra: dict[str, Any] = {"last_error": st.last_error if st is not None else ""}
        if staged:
            # an activation that has not switched to the primary's keys yet: until it does,
            # disable abandons it and update-primary (or enable) replaces it (see DESIGN.md)
            if self._staged_unreadable:
                extra["last_error"] = "the staged activation does not open with this node's root key"
            elif self.activation_error:
                extra["last_error"] = self.activation_error
            extra["activation_staged"] = True
            extra["activation_staged_at"] = _rfc3339(self.staged_since) if self.staged_since else ""
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
        } | extra


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
