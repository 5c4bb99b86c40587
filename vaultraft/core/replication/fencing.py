"""Fenced automatic DR promotion, as core runs it (the protocol is in replication/fence.py).

Configured by ``replication { auto_promote = true, failover_timeout, witness_address,
witness_tls_bundle }`` on the nodes of both clusters.

* On a DR primary's active node a :class:`LeaseHolder` (holder = the primary's lineage, epoch =
  its record's epoch) renews a lease of ``failover_timeout`` with the witness and the first
  activated DR secondary; core acknowledges a write only while the lease is valid, checked
  after the write too, so nothing is acknowledged once it may have run out. A voter that has
  seen a newer epoch fences the holder: the cluster demotes itself.
* On a DR secondary's active node a :class:`LeaseVoter` (its state file in the node's data
  dir, never below the cluster's committed epoch) answers the primary's renewals over the
  replication stream. When the primary has been silent for half of ``failover_timeout``, the
  node asks its own voter and the witness to promote it to the next epoch; both grant only
  once every lease they gave the primary has expired. A won promotion is committed to the
  secondary's Raft log before the cluster serves a write.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from vaultraft.aio import within
from vaultraft.core.tasks import cancel_and_wait
from vaultraft.logical import Unavailable
from vaultraft.raft.tls import NodeCert
from vaultraft.replication.fence import (
    LeaseHolder,
    LeaseVoter,
    LocalVoter,
    StreamVoter,
    request_promotion,
)
from vaultraft.replication.witness import WitnessClient

if TYPE_CHECKING:
    from vaultraft.core.replication.manager import ReplicationManager
    from vaultraft.core.replication.records import ReplicationRecord

log = structlog.get_logger("vaultraft.replication")

PROMOTION_RETRY = 1.0


class Fencing:
    """The lease holder (primary) or voter and promotion watcher (DR secondary) of one node."""

    def __init__(self, manager: "ReplicationManager") -> None:
        self._m = manager
        st = manager.core.settings
        self.enabled = bool(st.auto_promote and st.witness_address and st.witness_tls_bundle)
        self.duration = float(st.failover_timeout)
        self._witness: WitnessClient | None = None
        self.holder: LeaseHolder | None = None
        self._holder_key: tuple[str, int, str] | None = None
        self._holder_task: asyncio.Task[None] | None = None
        self.voter: LeaseVoter | None = None
        self._lost_since: float | None = None
        self._last_attempt = 0.0
        self.last_promotion: dict[str, Any] | None = None

    def witness(self) -> WitnessClient:
        """The witness client (its bundle file is read once)."""
        if self._witness is None:
            st = self._m.core.settings
            with open(st.witness_tls_bundle, "rb") as f:
                bundle = NodeCert.from_bundle(f.read())
            self._witness = WitnessClient(st.witness_address, bundle, timeout=min(2.0, self.duration / 4))
        return self._witness

    # ---- primary -----------------------------------------------------------------------------

    def check_writes(self) -> None:
        """Unavailable unless this node may acknowledge a write now (lease held, or no fencing)."""
        if not self.enabled or not self._m.dr_primary:
            return
        h = self.holder
        if h is None or not h.valid():
            raise Unavailable("this primary cannot confirm its replication lease (witness and DR secondary "
                              "unreachable, or a newer primary exists); writes are refused to prevent a split brain")

    async def ensure_holder(self, rec: "ReplicationRecord") -> None:
        """Run the lease holder for ``rec`` (restarted when the designated secondary changes)."""
        if not self.enabled or not self._m.core.active or self._m.server is None:
            await self.stop_holder()
            return
        designated = sorted(s.id for s in rec.secondaries if s.mode == "dr" and s.activated and not s.revoked)
        key = (rec.lineage, rec.epoch, designated[0] if designated else "")
        if self._holder_key == key and self._holder_task is not None and not self._holder_task.done():
            return
        if self.holder is not None and self.holder.fenced_epoch is not None:
            return  # fenced: never renew again; the manager steps this cluster down
        voters: list[Any] = [self.witness()]
        if designated:
            voters.append(StreamVoter(self._m.server, designated[0]))
        holder = LeaseHolder(rec.lineage, rec.epoch, self.duration, voters)
        # Win the new lease before dropping the old one, so writes see no gap when the
        # participants change (a secondary was activated or revoked).
        try:
            await within(holder.renew_once(), self.duration / 3)
        except Exception as e:  # the run loop retries
            log.info("replication_lease_first_round_failed", error=type(e).__name__)
        await self.stop_holder()
        self.holder, self._holder_key = holder, key
        self._holder_task = asyncio.get_running_loop().create_task(holder.run(), name="replication_lease")
        log.info("replication_lease_holder_started", epoch=rec.epoch, participants=len(voters) + 1)

    async def stop_holder(self) -> None:
        """Stop renewing (writes are refused until a holder is valid again)."""
        task, self._holder_task = self._holder_task, None
        self.holder, self._holder_key = None, None
        await cancel_and_wait(task)

    def fenced_epoch(self) -> int | None:
        """A newer epoch some voter reported (this primary must step down), or None."""
        return self.holder.fenced_epoch if self.holder is not None else None

    # ---- DR secondary --------------------------------------------------------------------------

    def voter_for(self, rec: "ReplicationRecord") -> LeaseVoter | None:
        """This node's voter (None without fencing); never below the cluster's epoch."""
        if not self.enabled:
            return None
        if self.voter is None:
            raft = self._m.core.cluster.raft
            assert raft is not None
            path = os.path.join(raft.data_dir, "fence-state.json")
            self.voter = LeaseVoter(path, max_lease=self.duration * 2, min_epoch=rec.epoch)
        return self.voter

    async def maybe_promote(self, rec: "ReplicationRecord") -> None:
        """On a DR secondary's active node: promote when the primary has been silent for half
        of ``failover_timeout`` and the witness agrees (see the module docstring)."""
        m = self._m
        if not self.enabled or self.voter is None or m.client is None or not m.core.active:
            self._lost_since = None
            return
        st = m.client.status()
        now = time.monotonic()
        heard = st.connection_state == "connected" and st.last_heartbeat is not None \
            and time.time() - st.last_heartbeat < self.duration / 2
        if heard:
            self._lost_since = None
            return
        if self._lost_since is None:
            self._lost_since = now
            return
        if now - self._lost_since < self.duration / 2 or now - self._last_attempt < PROMOTION_RETRY:
            return
        self._last_attempt = now
        epoch = max(rec.epoch, st.primary_epoch, self.voter.epoch) + 1
        lineage = str(uuid.uuid4())
        result = await request_promotion(lineage, epoch, [LocalVoter(self.voter), self.witness()], participants=3,
                                         timeout=min(2.0, self.duration / 4))
        if not result.promoted:
            log.info("replication_auto_promotion_refused", epoch=epoch, votes=result.votes, needed=result.needed)
            return
        from vaultraft.core.replication.secondary_ops import promote_fenced

        started = now - self._lost_since
        await promote_fenced(m.core, lineage, epoch)
        self.last_promotion = {"epoch": epoch, "silent_for_s": round(started, 2)}
        log.info("replication_auto_promoted", epoch=epoch, primary_silent_s=round(started, 2))

    async def close(self) -> None:
        """Stop everything; close the witness connection."""
        await self.stop_holder()
        w, self._witness = self._witness, None
        if w is not None:
            await w.aclose()
