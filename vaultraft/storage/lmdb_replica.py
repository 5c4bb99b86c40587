"""The replication half of the LMDB store (a mixin of :class:`LMDBStore`).

Primary side: the WAL recorded with every applied entry (see ``storage/wal.py``), its
retention, bounded reads and consistent reads of the replicated keyspace for bulk syncs and
digests. Secondary side: applying what a primary shipped (reset, chunks, end of a bulk sync;
WAL entries) deterministically, with the secondary's position stored in the same
transaction. Kept apart from ``lmdb_store.py`` so that file stays about local storage.
"""

from __future__ import annotations

import builtins
import collections
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Hashable, Iterator, Sequence, TypeVar

import lmdb

from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.cache import ReadCache
from vaultraft.storage.wal import WalEntry, is_cluster_own

if TYPE_CHECKING:
    from vaultraft.storage.lmdb_store import RWLock

_APPLIED_KEY = b"applied_index"
_APPLIED_TERM_KEY = b"applied_term"
_REPL_LINEAGE = b"repl_lineage"  # a secondary's position in its primary's log
_REPL_REMOTE = b"repl_remote"
_REPL_COMPLETE = b"repl_complete"
#: WAL entries pruned at most per applied entry (amortizes pruning after a config change).
_WAL_PRUNE_STEP = 64
#: The newest WAL entries kept in memory too, so a streaming secondary's reads need neither
#: a transaction nor a thread hop (bounded by count and by encoded bytes).
_TAIL_ENTRIES = 512
_TAIL_BYTES = 16 << 20


def encode_index(index: int) -> bytes:
    """The 8-byte big-endian form of a log index."""
    return index.to_bytes(8, "big")


@dataclass(frozen=True)
class WalRetention:
    """How much replication WAL a store keeps: entries within ``entries`` log indexes of the
    newest and younger than ``age_ms`` by the leader's clock (0 entries: keep none)."""

    entries: int = 100_000
    age_ms: int = 3_600_000


@dataclass(frozen=True)
class ReplicaState:
    """A secondary's persisted position in its primary's log."""

    lineage: str = ""
    remote_index: int = 0
    complete: bool = False


T = TypeVar("T")


class _BatchRejected(Exception):
    """LMDB refused an operation of batch ``n`` (a position chosen by the caller): the write
    transaction is aborted and applied again with that batch left out. LMDB's write map
    (see ``LMDBStore``) allows no nested transaction that could roll back one batch alone."""

    def __init__(self, n: Hashable, reason: str) -> None:
        super().__init__(reason)
        self.n, self.reason = n, reason


def retry_refused(attempt: Callable[[dict[Hashable, str]], T]) -> T:
    """Run ``attempt(rejected)`` until no batch is refused: each :class:`_BatchRejected`
    (its transaction aborted) adds that batch's position and reason to ``rejected``, which
    the next attempt leaves out. Ends: every round leaves out one more batch."""
    rejected: dict[Hashable, str] = {}
    while True:
        try:
            return attempt(rejected)
        except _BatchRejected as r:
            rejected[r.n] = r.reason


class ReplicaMixin:
    """Replication methods of :class:`vaultraft.storage.lmdb_store.LMDBStore`."""

    _env: lmdb.Environment
    _data: lmdb._Database
    _meta: lmdb._Database
    _wal: lmdb._Database
    _guard: "RWLock"
    _applied: int
    _applied_term: int
    _max_key: int
    _replica: ReplicaState
    _wal_last: int
    wal_retention: WalRetention
    cache: ReadCache

    _tail: collections.deque[tuple[WalEntry, int]]
    _tail_bytes: int
    _tail_floor: int  # every WAL entry with an index above this is in the tail
    _tail_lock: threading.Lock

    if TYPE_CHECKING:  # provided by LMDBStore
        def _write_ops(self, txn: lmdb.Transaction, batch: Batch, n: Hashable) -> None: ...

    # -- the in-memory WAL tail ----------------------------------------------------------

    def _tail_reset(self) -> None:
        """Start the tail afresh at the applied index (after anything but apply_entry
        changed the WAL, and when the store opens)."""
        with self._tail_lock:
            self._tail = collections.deque()
            self._tail_bytes = 0
            self._tail_floor = self._applied

    def _tail_append(self, entry: WalEntry, size: int) -> None:
        """Record a committed WAL entry (before the applied index that includes it is published)."""
        with self._tail_lock:
            self._tail.append((entry, size))
            self._tail_bytes += size
            cap = min(_TAIL_ENTRIES, self.wal_retention.entries)
            while self._tail and (len(self._tail) > cap or self._tail_bytes > _TAIL_BYTES):
                old, n = self._tail.popleft()
                self._tail_bytes -= n
                self._tail_floor = old.index

    def read_wal_cached(self, after: int, max_entries: int, max_bytes: int) -> builtins.list[WalEntry] | None:
        """:meth:`read_wal`'s answer from memory, or None when the in-memory tail does not
        reach back to ``after`` (then read the store). Never blocks on I/O."""
        with self._tail_lock:
            if after < self._tail_floor:
                return None
            tail = self._tail
            start = len(tail)
            while start and tail[start - 1][0].index > after:
                start -= 1
            out: builtins.list[WalEntry] = []
            size = 0
            for i in range(start, len(tail)):
                if len(out) >= max_entries or (out and size >= max_bytes):
                    break
                entry, n = tail[i]
                out.append(entry)
                size += n
            return out

    def _prune_wal(self, txn: lmdb.Transaction, index: int, ts_ms: int) -> None:
        """Drop a bounded number of the oldest WAL entries outside the retention window."""
        keep = self.wal_retention
        cur = txn.cursor(db=self._wal)
        found = cur.first()
        for _ in range(_WAL_PRUNE_STEP):
            if not found:
                self._wal_last = 0 if keep.entries <= 0 else self._wal_last
                return
            k = bytes(cur.key())
            idx, ts = int.from_bytes(k[:8], "big"), int.from_bytes(k[8:16], "big")
            too_old = ts_ms > 0 and ts + keep.age_ms < ts_ms
            if not (keep.entries <= 0 or idx <= index - keep.entries or too_old):
                return
            found = cur.delete()

    # -- replication (secondary side) ----------------------------------------------------

    def replica_state(self) -> ReplicaState:
        """This store's position in a primary's log (defaults when never a secondary)."""
        return self._replica

    def apply_remote(self, index: int, term: int, op: str, *, lineage: str, remote: int,
                     items: Sequence[tuple[str, bytes]] = (), wal: Sequence[WalEntry] = (),
                     keep: Sequence[str] = ()) -> tuple[str | None, builtins.list[str]]:
        """Apply one replication command as local log entry ``index``; returns (error, keys
        changed). ``op`` is "reset" (drop every key but cluster-own ones and those under the
        ``keep`` prefixes, drop the WAL, start
        an incomplete sync of ``lineage`` at ``remote``), "put" (store ``items`` verbatim),
        "end" (the sync of ``lineage`` is complete at ``remote``) or "wal" (apply ``wal``
        entries above the stored remote index; refused unless the stored lineage matches and
        is complete). Deterministic; cluster-own keys are never written. Raises only for
        infrastructure faults.
        """
        if index <= self._applied:
            return None, []
        return retry_refused(lambda skip: self._apply_remote_once(index, term, op, lineage, remote, items, wal,
                                                                   keep, skip))

    def _apply_remote_once(self, index: int, term: int, op: str, lineage: str, remote: int,
                           items: Sequence[tuple[str, bytes]], wal: Sequence[WalEntry], keep: Sequence[str],
                           skip: dict[Hashable, str]) -> tuple[str | None, builtins.list[str]]:
        state, err, keys = self._replica, None, []
        self.cache.begin_write()
        try:
            with self._guard.shared(), self._env.begin(write=True) as txn:
                if op == "reset":
                    keys = self._drop_replicated(txn, tuple(keep))
                    txn.drop(self._wal, delete=False)
                    state = ReplicaState(lineage, remote, False)
                elif op == "put":
                    for k, v in items:
                        if not is_cluster_own(k) and len(k.encode()) <= self._max_key:
                            txn.put(k.encode(), v, db=self._data)
                            keys.append(k)
                elif op == "end":
                    state = ReplicaState(lineage, remote, True)
                elif op == "wal":
                    if state.lineage != lineage or not state.complete:
                        err = "replication stream does not continue the stored position"
                    else:
                        err, keys, state = self._apply_wal(txn, state, wal, skip)
                else:
                    err = f"unknown replication operation {op!r}"
                if state != self._replica:
                    txn.put(_REPL_LINEAGE, state.lineage.encode(), db=self._meta)
                    txn.put(_REPL_REMOTE, encode_index(state.remote_index), db=self._meta)
                    txn.put(_REPL_COMPLETE, b"\x01" if state.complete else b"\x00", db=self._meta)
                txn.put(_APPLIED_KEY, encode_index(index), db=self._meta)
                txn.put(_APPLIED_TERM_KEY, encode_index(term), db=self._meta)
        finally:
            self.cache.end_write(keys, everything=(op == "reset"))
        self._applied, self._applied_term, self._replica = index, term, state
        if op == "reset":
            self._wal_last = 0
        self._tail_reset()
        return err, keys

    def _drop_replicated(self, txn: lmdb.Transaction, keep: tuple[str, ...]) -> builtins.list[str]:
        dropped: builtins.list[str] = []
        cur = txn.cursor(db=self._data)
        found = cur.first()
        while found:
            k = bytes(cur.key()).decode("utf-8")
            if is_cluster_own(k) or (keep and k.startswith(keep)):
                found = cur.next()
            else:
                dropped.append(k)
                found = cur.delete()
        return dropped

    def _apply_wal(self, txn: lmdb.Transaction, state: ReplicaState, wal: Sequence[WalEntry],
                   skip: dict[Hashable, str]) -> tuple[str | None, builtins.list[str], ReplicaState]:
        keys: builtins.list[str] = []
        remote = state.remote_index
        for entry in wal:
            if entry.index <= remote:
                continue
            for pos, raw in enumerate(entry.batches):
                if (entry.index, pos) in skip:  # LMDB refused it before: left out, as _batch_ok would
                    continue
                try:
                    batch = Batch.decode(raw)
                except ValueError:
                    return "undecodable shipped batch", keys, ReplicaState(state.lineage, remote, True)
                ops = tuple(o for o in batch.ops if not is_cluster_own(o.key))
                if ops and _batch_ok(ops, self._max_key):
                    self._write_ops(txn, Batch(ops), (entry.index, pos))
                    keys.extend(o.key for o in ops)
            remote = entry.index
        return None, keys, ReplicaState(state.lineage, remote, True)

    # -- replication (primary side) ------------------------------------------------------

    def wal_last(self) -> int:
        """The index of the newest WAL entry (0 if none); cheap, no transaction."""
        return self._wal_last

    def wal_bounds(self) -> tuple[int, int]:
        """(first, last) retained WAL index. With nothing retained: (applied + 1, applied),
        so only a secondary that already holds everything may stream (0, 0 on a new store)."""
        empty = (self._applied + 1, self._applied) if self._applied else (0, 0)
        if not self._wal_last:
            return empty
        with self._guard.shared(), self._env.begin(db=self._wal) as txn:
            cur = txn.cursor()
            if not cur.first():
                return empty
            first = int.from_bytes(bytes(cur.key())[:8], "big")
            cur.last()
            return first, int.from_bytes(bytes(cur.key())[:8], "big")

    def read_wal(self, after: int, max_entries: int, max_bytes: int) -> builtins.list[WalEntry]:
        """Retained WAL entries with index > ``after`` in order (at least one if any exists,
        then up to ``max_entries`` / about ``max_bytes``)."""
        out: builtins.list[WalEntry] = []
        size = 0
        with self._guard.shared(), self._env.begin(db=self._wal) as txn:
            cur = txn.cursor()
            found = cur.set_range(encode_index(after + 1))
            while found and len(out) < max_entries and (not out or size < max_bytes):
                raw = bytes(cur.value())
                out.append(WalEntry.decode(raw))
                size += len(raw)
                found = cur.next()
        return out

    @contextmanager
    def replicated_items(self, keep: Callable[[str], bool]) -> Iterator[tuple[int, Iterator[tuple[str, bytes]]]]:
        """One consistent read: (applied index, iterator of the (key, value) pairs, in key
        order, that are not cluster-own and for which ``keep(key)``). Use the iterator only
        inside the ``with`` block, from one thread at a time; a long read delays a map
        resize (``grow``) until it ends."""
        with self._guard.shared(), self._env.begin() as txn:
            raw = txn.get(_APPLIED_KEY, db=self._meta)
            index = 0 if raw is None else int.from_bytes(raw, "big")

            def items() -> Iterator[tuple[str, bytes]]:
                for k, v in txn.cursor(db=self._data):
                    key = bytes(k).decode("utf-8")
                    if not is_cluster_own(key) and keep(key):
                        yield key, bytes(v)

            yield index, items()

def _shipped_form(batch: Batch, raw: bytes | None) -> bytes | None:
    """The bytes a WAL records for an applied batch: without cluster-own ops (None if
    nothing is left), reusing ``raw`` when nothing had to be dropped."""
    if not any(is_cluster_own(o.key) for o in batch.ops):
        return raw if raw is not None else batch.encode()
    ops: tuple[Op, ...] = tuple(o for o in batch.ops if not is_cluster_own(o.key))
    return Batch(ops, batch.request_id).encode() if ops else None


def _read_replica_state(txn: lmdb.Transaction, meta: lmdb._Database) -> ReplicaState:
    lineage = txn.get(_REPL_LINEAGE, db=meta)
    if lineage is None:
        return ReplicaState()
    remote = txn.get(_REPL_REMOTE, db=meta)
    complete = txn.get(_REPL_COMPLETE, db=meta)
    return ReplicaState(bytes(lineage).decode("utf-8"), 0 if remote is None else int.from_bytes(remote, "big"),
                        complete == b"\x01")


def _batch_ok(ops: Sequence[Op], max_key: int) -> bool:
    """Whether shipped ops can be stored (keys present, short enough, puts with values)."""
    for op in ops:
        try:
            size = len(op.key.encode("utf-8"))
        except UnicodeEncodeError:
            return False
        if not op.key or size > max_key or (op.value is None and op.kind.name == "PUT"):
            return False
    return True
