"""Leadership for :class:`vaultraft.raft.node.RaftPhysical` (a mixin): whether this node
may act as active (the quorum lease), what the tick thread recomputes for that, and a
sealed leader handing leadership on."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

import structlog
from pysyncobj.monotonic import (
    monotonic as raft_clock,  # pysyncobj's clock (CLOCK_MONOTONIC_RAW)
)

from vaultraft.raft.background import lease_expiry

if TYPE_CHECKING:
    from vaultraft.raft.fsm import StateMachine
    from vaultraft.raft.node import RaftTuning

log = structlog.get_logger("vaultraft.raft")

#: How often a sealed leader tries to hand leadership on.
YIELD_INTERVAL = 1.0


class LeadershipMixin:
    """Lease, roles and yielding; the node provides the attributes declared here."""

    _obj: Any
    tuning: RaftTuning
    fsm: StateMachine
    non_voters: frozenset[str]
    yield_leadership: bool
    _lease: tuple[int, float]
    _last_yield: float

    def _on_tick(self) -> None:
        """Runs on pysyncobj's thread after every tick, before it polls for events.

        * Recomputes the quorum lease expiry that :meth:`has_lease` compares against (from
          the same followers' last response times it used to read on every call).
        * A single-node leader commits an entry only on the tick after it was added, and
          nothing else wakes that tick's poll: wake it at once instead of after a full
          AUTO_TICK_PERIOD (with followers, their answers wake it).
        * Tells followers a commit index no AppendEntries carried yet (``notify_commit``).
        """
        obj = self._obj
        if obj is None:
            return
        try:
            if not obj._isLeader():
                return
            if self.yield_leadership:
                self._yield(obj)
            others = obj._SyncObj__otherNodes
            last = obj._SyncObj__lastResponseTime
            self._lease = (int(obj._getTerm()),
                           lease_expiry([last.get(n, -math.inf) for n in others], len(others) + 1, self.tuning.lease))
            if not others and obj.raftCommitIndex < obj._SyncObj__raftLog[-1][1]:
                obj._SyncObj__pipeNotifier.notify()
            if others or obj._SyncObj__readonlyNodes:
                obj.notify_commit(raft_clock())
        except (RuntimeError, AttributeError, IndexError, OSError):  # never break pysyncobj's tick
            pass

    def _yield(self, obj: Any) -> None:
        """A sealed leader: every YIELD_INTERVAL, hand leadership to a caught-up member chosen
        at random (pysyncobj's own choice is deterministic, so two sealed members could pass
        it back and forth forever while an unsealed one waits)."""
        now = raft_clock()
        if now - self._last_yield < YIELD_INTERVAL:
            return
        self._last_yield = now
        last = obj._SyncObj__raftLog[-1][1]
        match = obj._SyncObj__raftMatchIndex
        ready = [n for n in obj._SyncObj__otherNodes if n in obj._SyncObj__connectedNodes and match.get(n, 0) == last]
        if ready:
            target = random.choice(ready)
            log.info("raft_leadership_yielded", to=str(target.address), reason="sealed")
            obj.transferLeadership(target)

    def accepts_non_voter(self, address: str) -> bool:
        """The transport's admission policy for non-voters (called on the Raft thread)."""
        return address in self.non_voters

    def is_leader(self) -> bool:
        """pysyncobj believes this node leads (may be stale: see :meth:`has_lease`)."""
        obj = self._obj
        return obj is not None and bool(obj._isLeader())

    def has_lease(self) -> bool:
        """Leader AND a quorum acknowledged it within the lease AND its no-op is applied.

        A node must not act as active on leadership alone (pysyncobj has no pre-vote and
        can briefly have two leaders): this is the check before serving as active.
        """
        obj = self._obj
        if obj is None or not obj._isLeader() or self.fsm.failed:
            return False
        try:
            noop = obj._SyncObj__noopIDx
            if noop is None or obj.raftLastApplied < noop:
                return False
            term, expiry = self._lease  # recomputed by the tick thread (see _on_tick)
            return bool(term == obj._getTerm() and raft_clock() < expiry)
        except AttributeError:
            return False

    def leader_addr(self) -> str | None:
        """The cluster address of the last known leader, or None."""
        obj = self._obj
        if obj is None:
            return None
        leader = obj._getLeader()
        return None if leader is None else str(leader.address)
