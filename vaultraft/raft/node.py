"""RaftPhysical: the Physical interface over pysyncobj + the LMDB state machine.

Reads are served from the local LMDB copy. Writes become log entries: concurrent
``apply`` calls are coalesced (group commit) into one BATCHES command, submitted to
pysyncobj, and acknowledged only after the entry is committed by a quorum and applied
locally (pysyncobj calls back after its own apply). Every submission has a timeout and is
retried with the same request ids, so a lost callback or a leader change never applies a
batch twice.

Consensus runs only while the node is unsealed (as in Vault: the cluster TLS key lives
behind the barrier): :meth:`start_consensus` / :meth:`stop_consensus`.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import (
    monotonic as raft_clock,  # pysyncobj's clock (CLOCK_MONOTONIC_RAW)
)
import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.node import TCPNode

from vaultraft.aio import wait_event, within
from vaultraft.raft import layout
from vaultraft.raft.background import JournalSync
from vaultraft.raft.command import Command, CommandKind
from vaultraft.raft.errors import (
    CommitTimeout,
    ConsensusStopped,
    NotLeaderError,
    RaftError,
)
from vaultraft.raft.fsm import ApplyObserver, StateMachine
from vaultraft.raft.leadership import LeadershipMixin
from vaultraft.raft.membership import MembershipMixin
from vaultraft.raft.snapshot import pysyncobj_hooks
from vaultraft.storage import ApplyResult, Batch
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.reader import BatchReader

__all__ = ["CommitTimeout", "ConsensusStopped", "NotLeaderError", "RaftError", "RaftPhysical", "RaftStatus",
           "RaftTuning"]

log = structlog.get_logger("vaultraft.raft")

MAX_GROUP_BATCHES = 512
MAX_GROUP_BYTES = 1 << 20
#: Group commits in flight at once, and when a second one may start. Every entry costs the
#: active node about 2 ms of CPU (journal append, frames to and answers from each follower,
#: an fsynced LMDB transaction, the wake-ups) and each follower about 1 ms, so a group is cut
#: only when the previous one has landed: the writes that arrived meanwhile form the next
#: entry (3 nodes, 2 cores, 32 clients: ~9.5 writes per entry and 11 % less CPU per write on
#: the active node than with two groups always in flight, ~4–6.5 per entry). A group still
#: in flight after STALL_AFTER (a slow disk, or a lost callback waiting for its retry) lets
#: a second one start, so one stuck entry never holds up every other write.
MAX_INFLIGHT = 2
STALL_AFTER = 0.05
ATTEMPT_TIMEOUT = 3.0
JOURNAL_FLUSH_INTERVAL = 0.05
#: pysyncobj's tick: the longest its thread sleeps in poll() when no socket or command wakes it.
AUTO_TICK_PERIOD = 0.01
#: How long a leader lets followers go without hearing a new commit index before it sends
#: one on its own (see _ReplicatedLog.notify_commit): under load the next entry carries it
#: sooner; idle, followers apply within about this plus one tick.
COMMIT_NOTICE_DELAY = 0.015
SNAPSHOT_INVALIDATES = ("core/keyring", "core/mounts", "core/auth", "core/audit", "sys/policy/")
_RETRYABLE = {FAIL_REASON.QUEUE_FULL, FAIL_REASON.MISSING_LEADER, FAIL_REASON.DISCARDED,
              FAIL_REASON.NOT_LEADER, FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME}


@dataclass(frozen=True)
class RaftTuning:
    """Timing knobs (seconds). Failover time lives in the election timeouts."""

    election_min: float = 0.4
    election_max: float = 1.0
    heartbeat: float = 0.05
    commit_timeout: float = 10.0
    log_compaction_entries: int = 20_000
    log_compaction_seconds: int = 300

    @property
    def lease(self) -> float:
        """How long a quorum's acknowledgement keeps a leader safe to serve reads."""
        return self.election_min / 2


@dataclass
class _Pending:
    batch: Batch
    future: asyncio.Future[ApplyResult]
    size: int = 0


#: pysyncobj pickles each log command (our msgpack bytes inside its call tuple) with protocol 2,
#: which stores ``bytes`` as their latin-1 text in UTF-8: ciphertext grows ~1.5x in the log,
#: the journal and every AppendEntries, and each node pays a codec round trip to apply it.
#: Protocol 5 stores the bytes as they are. Entries written with protocol 2 still load (a
#: pickle names its own protocol), and every supported Python reads protocol 5.
setattr(pysyncobj_pickle, "__protocol", 5)


class _ReplicatedLog(SyncObj):  # type: ignore[misc]
    """pysyncobj node with exactly one replicated method taking one bytes argument."""

    def __init__(self, self_addr: str | None, peers: Sequence[str], conf: SyncObjConf, fsm: StateMachine,
                 transport_class: type | None) -> None:
        self._vr_fsm = fsm
        self._vr_known = {}
        kwargs: dict[str, Any] = {}
        if transport_class is not None:
            kwargs["transportClass"] = transport_class
        super().__init__(self_addr, list(peers), conf, **kwargs)

    _vr_on_applied: Any = None
    #: Commands this node proposed, by their bytes: applied without decoding them again
    #: (``Command.encode_known``). Written on the event loop, read on the Raft thread.
    _vr_known: dict[bytes, Command]
    _vr_told = 0  # the commit index the last AppendEntries carried
    _vr_untold_since: float | None = None  # when notify_commit first saw a newer one

    # pysyncobj sends every follower an AppendEntries right after each apply on the leader,
    # only to tell them the new commit index: per entry, two more frames out and two answers
    # in on the active node, and a wake-up on each follower. The next entry's AppendEntries
    # carries the commit index anyway, so the leader skips that send and notify_commit (its
    # tick callback) sends one only when no AppendEntries carried the index for a while.
    def _SyncObj__applyLogEntries(self) -> bool:
        SyncObj._SyncObj__applyLogEntries(self)
        return False

    def _SyncObj__sendAppendEntries(self) -> None:
        self._vr_told = self.raftCommitIndex
        SyncObj._SyncObj__sendAppendEntries(self)

    def notify_commit(self, now: float) -> None:
        """On the leader's Raft thread, once per tick: send followers the commit index if no
        AppendEntries has carried it for COMMIT_NOTICE_DELAY."""
        if self.raftCommitIndex <= self._vr_told:
            self._vr_untold_since = None
        elif self._vr_untold_since is None:
            self._vr_untold_since = now
        elif now - self._vr_untold_since >= COMMIT_NOTICE_DELAY:
            self._vr_untold_since = None
            self._SyncObj__sendAppendEntries()

    @replicated  # type: ignore[untyped-decorator]
    def apply_command(self, raw: bytes) -> list[tuple[int, str | None]]:
        index = self.raftLastApplied + 1
        known = self._vr_known.get(raw) if self._vr_known else None  # (a follower's is empty: no hashing)
        out = [(r.index, r.error) for r in self._vr_fsm.apply(raw, index, self._getTerm(), known)]
        if self._vr_on_applied is not None:
            self._vr_on_applied()
        return out


@dataclass
class RaftStatus:
    """A point-in-time view for sys/leader, autopilot and list-peers."""

    self_addr: str
    leader_addr: str | None
    is_leader: bool
    term: int
    commit_index: int
    applied_index: int
    peers: list[str] = field(default_factory=list)
    last_contact: dict[str, float] = field(default_factory=dict)
    match_index: dict[str, int] = field(default_factory=dict)
    connected: set[str] = field(default_factory=set)
    voter: bool = True  # this node votes
    non_voters: set[str] = field(default_factory=set)  # non-voters following this node now


class RaftPhysical(LeadershipMixin, MembershipMixin):
    """Implements :class:`vaultraft.storage.Physical` on a Raft-replicated LMDB."""

    storage_type = "raft"

    def __init__(self, store: LMDBStore, *, data_dir: str, self_addr: str, node_id: str,
                 tuning: RaftTuning = RaftTuning(), observer: ApplyObserver | None = None,
                 bind_addr: str | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.self_addr = self_addr
        # where the Raft port listens (the listener's cluster_address); defaults to self_addr
        self.bind_addr = bind_addr or self_addr
        self.node_id = node_id
        self.tuning = tuning
        self.fsm = StateMachine(store, observer)
        self._obj: _ReplicatedLog | None = None
        self._reads = BatchReader("vr-raft-read")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._groups_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._journal_sync: JournalSync | None = None
        # (term, raft-clock expiry) of the quorum lease, recomputed by the tick thread
        self._lease: tuple[int, float] = (-1, -math.inf)
        self._barrier_next: asyncio.Future[None] | None = None  # callers waiting for the next no-op
        self._barrier_runner: asyncio.Task[None] | None = None
        # wakes wait_applied / wait_for_index callers after applies (only while someone waits)
        self._applied_event = asyncio.Event()
        self._applied_waiters = 0
        self.voter = True  # as recorded; set again by start_consensus
        #: Set while this node follows the log sealed: it cannot serve as active, so when it
        #: wins an election it hands leadership on (see _on_tick).
        self.yield_leadership = False
        self._last_yield = -math.inf
        #: Addresses of the registered non-voters allowed to follow the log (kept by core).
        self.non_voters: frozenset[str] = frozenset()

    # ---- consensus lifecycle -------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether this node takes part in consensus now."""
        return self._obj is not None

    async def start_consensus(self, transport_class: type | None, peers: Sequence[str] | None = None, *,
                              voter: bool | None = None) -> None:
        """Join the Raft group with ``peers`` (default: the recorded membership). ``voter``
        (default: as recorded; True for a new node) False makes this node a non-voter: it
        follows the log from the voters ``peers`` and never votes or counts for a quorum."""
        if self._obj is not None:
            return
        self._loop = asyncio.get_running_loop()
        members = list(peers) if peers is not None else self.known_peers()
        self.record_peers(members)
        if voter is not None:
            self.record_voter(voter)
        self.voter = self.is_voter()
        raft_dir = self.raft_dir
        os.makedirs(raft_dir, mode=0o700, exist_ok=True)
        serializer, deserializer = pysyncobj_hooks(self.store, TCPNode, self._on_snapshot_installed)
        t = self.tuning
        conf = SyncObjConf(
            bindAddress=self.bind_addr,
            journalFile=layout.journal_path(raft_dir),
            fullDumpFile=layout.snapshot_path(raft_dir),
            serializer=serializer,
            deserializer=deserializer,
            useFork=False,
            dynamicMembershipChange=True,
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            appendEntriesPeriod=t.heartbeat,
            autoTickPeriod=AUTO_TICK_PERIOD,
            leaderFallbackTimeout=t.election_max,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=1 << 20,
            logCompactionMinEntries=t.log_compaction_entries,
            logCompactionMinTime=t.log_compaction_seconds,
            connectionTimeout=max(3.5, t.election_max * 3),
            connectionRetryTime=0.5,
            commandsWaitLeader=False,
            onStateChanged=self._on_state_changed,
        )
        self._applied_event = asyncio.Event()
        self_node = self.self_addr if self.voter else None  # None: a pysyncobj read-only node
        obj = await asyncio.to_thread(_ReplicatedLog, self_node, members, conf, self.fsm, transport_class)
        obj._vr_on_applied = self._notify_applied
        obj.addOnTickCallback(self._on_tick)
        self._obj = obj
        self._journal_sync = JournalSync(layout.journal_path(raft_dir), JOURNAL_FLUSH_INTERVAL)
        self._journal_sync.start()
        self._queue = asyncio.Queue()
        self._groups_in_flight = 0
        self._committer = self._loop.create_task(self._commit_loop(), name="vr-raft-commit")
        log.info("raft_started", self_addr=self.self_addr, peers=len(members))

    async def stop_consensus(self) -> None:
        """Leave consensus (seal, shutdown); pending writes fail with ConsensusStopped."""
        obj, self._obj = self._obj, None
        if self._committer is not None:
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                pass
            self._committer = None
        if self._queue is not None:
            while not self._queue.empty():
                p = self._queue.get_nowait()
                if not p.future.done():
                    p.future.set_exception(ConsensusStopped("consensus stopped"))
            self._queue = None
        if obj is not None:
            await asyncio.to_thread(obj.destroy_synchronous)
            log.info("raft_stopped")
        sync, self._journal_sync = self._journal_sync, None
        if sync is not None:
            await asyncio.to_thread(sync.stop)
        self._lease = (-1, -math.inf)

    # The journal is synced every JOURNAL_FLUSH_INTERVAL by a JournalSync thread (pysyncobj
    # never syncs it; hazard 5). Acknowledged writes survive a process crash on any number
    # of nodes (the page cache keeps them) and an OS crash of a minority; this bounds what
    # simultaneous power loss of a majority could lose to about one flush interval.

    def _on_snapshot_installed(self) -> None:
        """A snapshot replaced the store: every cache built on the old state is stale."""
        observer = self.fsm.observer
        if observer is not None:
            observer(self.store.applied_index(), SNAPSHOT_INVALIDATES)

    def _on_state_changed(self, old: int, new: int) -> None:
        log.info("raft_state_changed", old=old, new=new)

    def status(self) -> RaftStatus:
        """Membership and progress as this node sees them."""
        obj = self._obj
        st = RaftStatus(self.self_addr, self.leader_addr(), self.is_leader(), 0, 0, self.applied_index())
        st.voter = self.voter
        if obj is None:
            st.peers = self.known_peers()
            return st
        try:
            st.term = int(obj._getTerm())
            st.commit_index = int(obj.raftCommitIndex)
            others = list(obj._SyncObj__otherNodes)
            st.peers = [str(n.address) for n in others]
            now = raft_clock()
            if obj._isLeader():
                st.last_contact = {str(n.address): now - t for n, t in obj._SyncObj__lastResponseTime.items()}
                st.match_index = {str(n.address): int(i) for n, i in obj._SyncObj__raftMatchIndex.items()}
            st.connected = {str(n.address) for n in obj._SyncObj__connectedNodes}
            st.non_voters = {str(n.address) for n in obj._SyncObj__readonlyNodes}
        except (RuntimeError, AttributeError):
            pass
        return st

    # ---- Physical --------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The stored bytes at ``key``: from the store's read cache when it holds them (no
        thread hop; the cache is kept exact by the state machine's applies, see
        ``storage/cache.py``), else read from LMDB on the reader thread (batched with the
        other reads of this loop iteration)."""
        hit, value = self.store.peek(key)
        if hit:
            return value
        return await self._reads.run(self.store.get, key)

    def peek(self, key: str) -> tuple[bool, bytes | None]:
        """Non-blocking: ``(True, value)`` when the read cache knows ``key``'s stored bytes
        (None: absent), else ``(False, None)``."""
        return self.store.peek(key)

    async def list(self, prefix: str) -> list[str]:
        return await self._reads.run(self.store.list, prefix)

    def applied_index(self) -> int:
        return self.store.applied_index()

    @property
    def raft_dir(self) -> str:
        """Where pysyncobj's journal and snapshot live (see ``raft/layout.py``)."""
        return layout.raft_dir(self.data_dir)

    def commit_index(self) -> int:
        """The Raft commit index as this node knows it (0 while not in consensus)."""
        obj = self._obj
        return 0 if obj is None else int(obj.raftCommitIndex)

    async def wait_applied(self, index: int, timeout: float) -> bool:
        """Wait until the local store has applied ``index``; False on timeout."""
        return await self.wait_for_index(index - 1, timeout) >= index

    async def wait_for_index(self, after: int, timeout: float) -> int:
        """Wait until the applied index exceeds ``after`` or ``timeout`` passes; return the
        applied index. Woken by the state machine's applies (no polling)."""
        deadline = time.monotonic() + timeout
        while (applied := self.store.applied_index()) <= after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return applied
            event = self._applied_event
            self._applied_waiters += 1
            try:
                if self.store.applied_index() > after:
                    continue
                await wait_event(event, min(remaining, 0.5))
            finally:
                self._applied_waiters -= 1
        return applied

    def _notify_applied(self) -> None:
        """Runs on pysyncobj's thread after each apply: wake waiters on the event loop."""
        loop = self._loop
        if self._applied_waiters and loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_applied)
            except RuntimeError:  # the loop closed during shutdown
                pass

    def _wake_applied(self) -> None:
        event, self._applied_event = self._applied_event, asyncio.Event()
        event.set()

    async def submit_replicated(self, cmd: Command) -> ApplyResult:
        """Commit one replication command (a secondary's active node; leader only) as its
        own log entry, with the usual retries; returns its result once applied locally.
        Every replication command is idempotent, so a retried submission is harmless."""
        if self._obj is None:
            raise ConsensusStopped("consensus stopped")
        results = await self._submit(cmd.encode(), time.monotonic() + self.tuning.commit_timeout)
        return results[0] if results else ApplyResult(self.applied_index())

    async def apply(self, batch: Batch) -> ApplyResult:
        """Commit ``batch`` through the log (leader only) and return once applied locally."""
        if self._queue is None or self._obj is None:
            raise ConsensusStopped("this node is not part of the raft cluster (sealed?)")
        if not self._obj._isLeader():
            raise NotLeaderError(self.leader_addr())
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(batch, fut, sum(len(o.key) + len(o.value or b"") for o in batch.ops)))
        return await fut

    async def read_barrier(self) -> None:
        """Prove this node still leads before a linearizable read (Raft's read index).

        Waits for an empty entry submitted after this call began to be committed and
        applied. A deposed leader cannot commit, so a read served after this returns never
        reflects a stale leader's state. One no-op is in flight at a time and serves every
        caller that arrived before it was submitted; callers arriving meanwhile share the
        next one. Raises NotLeaderError / CommitTimeout like a write.
        """
        obj = self._obj
        if obj is None:
            raise ConsensusStopped("consensus stopped")
        if not obj._SyncObj__otherNodes:
            if not obj._isLeader():
                raise NotLeaderError(self.leader_addr())
            return
        waiter = self._barrier_next
        if waiter is None:
            waiter = self._barrier_next = asyncio.get_running_loop().create_future()
            waiter.add_done_callback(_consume)
            if self._barrier_runner is None or self._barrier_runner.done():
                self._barrier_runner = asyncio.ensure_future(self._run_barriers())
        await asyncio.shield(waiter)

    async def _run_barriers(self) -> None:
        while (waiter := self._barrier_next) is not None:
            self._barrier_next = None  # later callers wait for the next no-op: this one is
            try:                       # submitted now, after every caller it serves arrived
                await self.noop()
            except BaseException as e:
                if not waiter.done():
                    waiter.set_exception(e if isinstance(e, Exception) else ConsensusStopped("consensus stopped"))
                if not isinstance(e, Exception):
                    raise
            else:
                if not waiter.done():
                    waiter.set_result(None)

    async def noop(self) -> ApplyResult | None:
        """Commit an empty entry (proves a quorum; used by a new active node)."""
        cmd = Command(CommandKind.NOOP, nonce=os.urandom(8)).encode()
        results = await self._submit(cmd, time.monotonic() + self.tuning.commit_timeout)
        return results[0] if results else None

    async def close(self) -> None:
        await self.stop_consensus()
        await self._reads.aclose()
        self.store.close()

    # ---- group commit ----------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        inflight = asyncio.Semaphore(MAX_INFLIGHT)
        landed = asyncio.Event()  # set while no group is in flight
        landed.set()
        async with asyncio.TaskGroup() as tg:
            while True:
                first = await queue.get()
                try:
                    await inflight.acquire()
                    if not landed.is_set():  # coalesce behind the group in flight unless it stalls
                        await wait_event(landed, STALL_AFTER)
                except asyncio.CancelledError:  # stopped while this write waited for a slot
                    if not first.future.done():
                        first.future.set_exception(ConsensusStopped("consensus stopped"))
                    raise
                group = [first]
                size = first.size
                while not queue.empty() and len(group) < MAX_GROUP_BATCHES and size < MAX_GROUP_BYTES:
                    p = queue.get_nowait()
                    group.append(p)
                    size += p.size
                self._groups_in_flight += 1
                landed.clear()
                tg.create_task(self._commit_group(group, inflight, landed))

    async def _commit_group(self, group: builtins.list[_Pending], inflight: asyncio.Semaphore, landed: asyncio.Event) -> None:
        try:
            cmd, known = Command(CommandKind.BATCHES, tuple(p.batch for p in group),
                                 ts_ms=int(time.time() * 1000)).encode_known()
            results = await self._submit(cmd, time.monotonic() + self.tuning.commit_timeout, known)
            for p, r in zip(group, results):
                if not p.future.done():
                    p.future.set_result(r)
        except asyncio.CancelledError:  # stop_consensus: no waiter may hang (outcome unknown)
            for p in group:
                if not p.future.done():
                    p.future.set_exception(ConsensusStopped("consensus stopped before the write was acknowledged"))
            raise
        except Exception as e:
            for p in group:
                if not p.future.done():
                    p.future.set_exception(e)
        finally:
            inflight.release()
            self._groups_in_flight -= 1
            if not self._groups_in_flight:
                landed.set()

    async def _submit(self, cmd: bytes, deadline: float, known: Command | None = None) -> builtins.list[ApplyResult]:
        obj = self._obj
        if known is None or obj is None:
            return await self._submit_attempts(cmd, deadline)
        obj._vr_known[cmd] = known
        try:
            return await self._submit_attempts(cmd, deadline)
        finally:
            obj._vr_known.pop(cmd, None)

    async def _submit_attempts(self, cmd: bytes, deadline: float) -> builtins.list[ApplyResult]:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            obj = self._obj
            if obj is None:
                raise ConsensusStopped("consensus stopped")
            if not obj._isLeader():
                raise NotLeaderError(self.leader_addr())
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(result: Any, err: int, fut: asyncio.Future[tuple[Any, int]] = fut) -> None:
                loop.call_soon_threadsafe(_settle_pair, fut, result, err)

            obj.apply_command(cmd, callback=done)
            remaining = deadline - time.monotonic()
            try:
                result, err = await within(fut, min(ATTEMPT_TIMEOUT, max(remaining, 0.01)))
            except TimeoutError:
                err, result = -1, None
            if err == FAIL_REASON.SUCCESS:
                return [ApplyResult(int(i), e) for i, e in (result or [])]
            attempt += 1
            if err not in _RETRYABLE and err != -1:
                raise RaftError(f"raft rejected the write (reason {err})")
            if time.monotonic() >= deadline:
                raise CommitTimeout("write not committed before the deadline")
            log.warning("raft_submit_retry", attempt=attempt, reason=err)
            await asyncio.sleep(min(0.05 * attempt, 0.5))

    # ---- snapshots (API) ---------------------------------------------------------------------
    # For sys/storage/raft/snapshot restores (vaultraft.core.raft_snapshot): the active node
    # replaces every key through ordinary log entries while client writes are refused.

    async def begin_exclusive(self, reason: str) -> None:
        """Refuse new writes (RaftError(``reason``)) until :meth:`end_exclusive` (leader only).

        Queued and in-flight group commits fail with ConsensusStopped (their outcome is
        unknown, as after a leader change); a no-op is then committed so that everything
        submitted before is applied locally. Always pair with :meth:`end_exclusive`.
        """
        from vaultraft.raft.snapshot import WriteGate

        if self._obj is None or self._queue is None:
            raise ConsensusStopped("consensus stopped")
        if isinstance(self._queue, WriteGate):
            raise RaftError("another snapshot restore is in progress")
        queue, self._queue = self._queue, WriteGate(reason)
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.cancel()
            try:
                await committer
            except asyncio.CancelledError:
                pass
        while not queue.empty():
            p = queue.get_nowait()
            if not p.future.done():
                p.future.set_exception(ConsensusStopped("a snapshot restore started before the write was committed"))
        await self.noop()

    async def apply_exclusive(self, batch: Batch) -> ApplyResult:
        """Commit ``batch`` as one log entry of its own while :meth:`begin_exclusive` holds."""
        cmd = Command(CommandKind.BATCHES, (batch,), ts_ms=int(time.time() * 1000)).encode()
        return (await self._submit(cmd, time.monotonic() + self.tuning.commit_timeout))[0]

    async def end_exclusive(self) -> None:
        """Accept writes again (a no-op unless :meth:`begin_exclusive` refused them)."""
        from vaultraft.raft.snapshot import WriteGate

        if not isinstance(self._queue, WriteGate):
            return
        if self._obj is None or self._loop is None:
            self._queue = None
            return
        self._queue = asyncio.Queue()
        self._groups_in_flight = 0
        self._committer = self._loop.create_task(self._commit_loop(), name="vr-raft-commit")


def _consume(fut: asyncio.Future[None]) -> None:
    """Mark a barrier's failure as seen even when every caller stopped waiting."""
    if not fut.cancelled():
        fut.exception()


def _settle_pair(fut: asyncio.Future[tuple[Any, int]], result: Any, err: int) -> None:
    if not fut.done():
        fut.set_result((result, err))

