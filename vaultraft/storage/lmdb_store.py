"""The blocking LMDB core of local storage: one environment, a data and a meta database.

Every write is a batch applied together with the ``applied_index`` meta key in the same
write transaction, so the stored index always names exactly the batches that are on disk
and a replayed log (Raft restart, snapshot install followed by log tail) applies nothing
twice. This class is synchronous on purpose: :class:`vaultraft.storage.local.LocalPhysical`
runs it on dedicated threads, never on the event loop.
"""

from __future__ import annotations

import builtins
import os
import shutil
import threading
from contextlib import contextmanager
from typing import Hashable, Iterator, Sequence

import lmdb
import structlog

from vaultraft.storage import os_crash
from vaultraft.storage.batch import Batch, OpKind
from vaultraft.storage.cache import ReadCache
from vaultraft.storage.physical import ApplyResult
from vaultraft.storage.lmdb_replica import (  # ReplicaState, WalRetention: re-exported
    ReplicaMixin,
    ReplicaState,  # noqa: F401
    WalRetention,
    _BatchRejected,
    retry_refused,
    _read_replica_state,
    _shipped_form,
    encode_index,
)
from vaultraft.storage.wal import WalEntry

log = structlog.get_logger("vaultraft.storage")

#: LMDB's compiled-in key limit (``mdb_env_get_maxkeysize``); the in-memory store mirrors it.
STORE_MAX_KEY_BYTES = 511

_DATA_DB = b"data"
_META_DB = b"meta"
_WAL_DB = b"wal"  # index(8) + leader ts_ms(8) -> WalEntry bytes
_APPLIED_KEY = b"applied_index"
_APPLIED_TERM_KEY = b"applied_term"
_REQ_PREFIX = b"req/"  # request_id -> index of the entry that applied it
_REQIDX_PREFIX = b"reqidx/"  # index(8) + request_id -> b"" (for pruning in index order)
#: How many log indexes a request id is remembered for (retries land well within this).
REQUEST_ID_WINDOW = 100_000
_SLASH_SUCCESSOR = b"0"  # the byte after b"/": seeking here skips a whole folder


def batch_error(batch: Batch, max_key_bytes: int = STORE_MAX_KEY_BYTES) -> str | None:
    """Why ``batch`` cannot be applied (a short message naming no key), or None if it can."""
    for n, op in enumerate(batch.ops):
        if not isinstance(op.key, str) or not op.key:
            return f"operation {n}: empty key"
        try:
            size = len(op.key.encode("utf-8"))
        except UnicodeEncodeError:
            return f"operation {n}: key is not valid UTF-8"
        if size > max_key_bytes:
            return f"operation {n}: key too long ({size} bytes, max {max_key_bytes})"
        if op.kind is OpKind.PUT and not isinstance(op.value, (bytes, bytearray)):
            return f"operation {n}: put without a bytes value"
        if op.kind not in (OpKind.PUT, OpKind.DELETE):
            return f"operation {n}: unknown operation kind"
    return None


class RWLock:
    """Many readers or one exclusive holder (used to swap or resize the environment)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the lock shared (normal reads and writes)."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the lock alone (no transaction of this process is open meanwhile)."""
        with self._cond:
            while self._exclusive or self._readers:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LMDBStore(ReplicaMixin):
    """Synchronous ordered key/value store on one LMDB environment (the blocking core).

    Thread use: any number of reader threads and one writer thread at a time (LMDB's
    MVCC lets reads proceed during a commit).
    """

    def __init__(self, path: str, map_size: int = 1 << 30, *, cache: ReadCache | None = None,
                 wal_retention: WalRetention = WalRetention(), metasync: bool = True,
                 rebuildable: bool = False) -> None:
        """Open (creating with mode 0700 if needed) the environment directory ``path``.

        ``cache`` (default: a new bounded :class:`ReadCache`) remembers what :meth:`get`
        read; every write path of this class keeps it exact (see ``storage/cache.py``).
        ``metasync=False`` saves the second fsync of every commit: LMDB stays consistent,
        but an OS crash may undo the *last* committed transaction.
        ``rebuildable=True`` (a Raft node's store: its journal and snapshots hold every
        entry) commits without any fsync, and after an OS crash starts empty so that the
        log rebuilds it (see ``storage/os_crash.py``; ``rebuilt`` tells). Close it
        (:meth:`close`) for the next open to trust it.
        """
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        self.path = path
        self._map_size = map_size
        self._guard = RWLock()
        self._closed = False
        self.cache = cache if cache is not None else ReadCache()
        self.wal_retention = wal_retention
        self._metasync = metasync
        #: The boot id recorded before unsynced commits (None: every commit is fsynced).
        self._unsynced_boot = os_crash.current_boot_id() if rebuildable else None
        #: Whether an open found the environment torn by an OS crash and set it aside.
        self.rebuilt = False
        self._tail_lock = threading.Lock()  # the in-memory WAL tail (lmdb_replica)
        self._open()

    def _open(self) -> None:
        unsynced = self._unsynced_boot is not None
        if self._unsynced_boot is not None and os_crash.guard(self.path, self._unsynced_boot):
            self.rebuilt = True
            log.warning("storage_set_aside_after_os_crash", path=self.path, moved_to=os_crash.UNTRUSTED)
        self._env = lmdb.open(
            self.path,
            map_size=self._map_size,
            max_dbs=4,
            subdir=True,
            sync=not unsynced,
            metasync=self._metasync and not unsynced,
            mode=0o600,
            readahead=False,
            # A rebuildable store commits without fsync and is rebuilt from the log after an
            # OS crash, so writing pages in place in the map (no pwrite of a copy of every
            # dirty page per commit) changes nothing it relies on; a process crash still
            # leaves the last committed transaction (LMDB never overwrites live pages).
            writemap=unsynced,
        )
        self._data = self._env.open_db(_DATA_DB)
        self._meta = self._env.open_db(_META_DB)
        self._wal = self._env.open_db(_WAL_DB)
        self._max_key = min(STORE_MAX_KEY_BYTES, self._env.max_key_size())
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(_APPLIED_KEY)
            raw_term = txn.get(_APPLIED_TERM_KEY)
            self._replica = _read_replica_state(txn, self._meta)
            cur = txn.cursor(db=self._wal)
            self._wal_last = int.from_bytes(bytes(cur.key())[:8], "big") if cur.last() else 0
        self._applied = 0 if raw is None else int.from_bytes(raw, "big")
        self._applied_term = 0 if raw_term is None else int.from_bytes(raw_term, "big")
        self._tail_reset()

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None (also for a key too long to be stored).

        Served from the read cache when it holds ``key``; otherwise read (blocking) and
        remembered unless a write invalidated anything meanwhile.
        """
        hit, cached = self.cache.lookup(key)
        if hit:
            return cached
        k = key.encode("utf-8")
        if not k or len(k) > self._max_key:
            return None
        gen = self.cache.generation()
        with self._guard.shared(), self._env.begin(db=self._data) as txn:
            raw = txn.get(k)
            v = None if raw is None else bytes(raw)
        self.cache.fill(key, v, gen)
        return v

    def peek(self, key: str) -> tuple[bool, bytes | None]:
        """Non-blocking: ``(True, value)`` when the read cache holds ``key`` (None: known
        absent), else ``(False, None)``. Safe to call on an event loop."""
        return self.cache.lookup(key)

    def list(self, prefix: str) -> builtins.list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted.

        A cursor range scan that jumps over each folder's subtree, so the cost is the
        number of children, not the number of keys below ``prefix``.
        """
        p = prefix.encode("utf-8")
        out: builtins.list[str] = []
        if len(p) > self._max_key:
            return out
        with self._guard.shared(), self._env.begin(db=self._data) as txn:
            cur = txn.cursor()
            found = cur.set_range(p)
            while found:
                k = bytes(cur.key())
                if not k.startswith(p):
                    break
                rest = k[len(p):]
                if not rest:  # the prefix itself is a key: not its own child
                    found = cur.next()
                    continue
                slash = rest.find(b"/")
                if slash < 0:
                    out.append(rest.decode("utf-8"))
                    found = cur.next()
                else:
                    out.append(rest[: slash + 1].decode("utf-8"))
                    found = cur.set_range(p + rest[:slash] + _SLASH_SUCCESSOR)
        return out

    def applied_index(self) -> int:
        """The index of the last batch applied (0 for a new store)."""
        return self._applied

    def all_items(self) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) in key order, read from one consistent snapshot."""
        with self._guard.shared(), self._env.begin(db=self._data) as txn:
            for k, v in txn.cursor():
                yield bytes(k).decode("utf-8"), bytes(v)

    # -- writes --------------------------------------------------------------------------

    def apply(self, batch: Batch, index: int) -> ApplyResult:
        """Apply ``batch`` as log entry ``index`` in one durable transaction.

        An index at or below the stored applied index is a replay and changes nothing. A
        batch that cannot be applied changes no key, still advances the applied index,
        and comes back with ``error`` set. Raises only for infrastructure faults (disk
        full, map full, I/O error), in which case nothing was written.
        """
        return self.apply_many([(batch, index)])[0]

    def apply_many(self, batches: Sequence[tuple[Batch, int]]) -> builtins.list[ApplyResult]:
        """Apply several (batch, index) pairs in ONE write transaction (group commit).

        Indexes must increase along the sequence; each batch behaves as in :meth:`apply`
        (a batch LMDB refuses is left out: the transaction is applied again without it).
        """
        return retry_refused(lambda rejected: self._apply_many_once(batches, rejected))

    def _apply_many_once(self, batches: Sequence[tuple[Batch, int]],
                         rejected: dict[Hashable, str]) -> builtins.list[ApplyResult]:
        results: builtins.list[ApplyResult] = []
        applied = self._applied
        stored: builtins.list[Batch] = []  # the batches this transaction wrote
        committed = False
        self.cache.begin_write()
        try:
            with self._guard.shared(), self._env.begin(write=True) as txn:
                for n, (batch, index) in enumerate(batches):
                    if index <= applied:
                        results.append(ApplyResult(index))
                        continue
                    err = rejected.get(n) or batch_error(batch, self._max_key)
                    if err is None:
                        self._write_ops(txn, batch, n)
                    if err is None:
                        stored.append(batch)
                    results.append(ApplyResult(index, err))
                    applied = index
                if applied != self._applied:
                    txn.put(_APPLIED_KEY, encode_index(applied), db=self._meta)
            committed = True
        finally:  # after the commit (or a failure): drop what may have changed, before publishing
            self.cache.end_write([op.key for batch, _ in batches for op in batch.ops],
                                 committed=_stored_pairs(stored) if committed else ())
        self._applied = applied
        return results

    def _write_ops(self, txn: lmdb.Transaction, batch: Batch, n: Hashable) -> None:
        """Write batch ``n``'s operations in ``txn``; _BatchRejected if LMDB refuses one
        (``batch_error`` checks what LMDB checks, so this is a safety net)."""
        data = self._data
        try:
            for op in batch.ops:
                k = op.key.encode("utf-8")
                if op.kind is OpKind.PUT:
                    assert op.value is not None
                    txn.put(k, bytes(op.value), db=data)
                else:
                    txn.delete(k, db=data)
        except (lmdb.BadValsizeError, ValueError) as e:
            raise _BatchRejected(n, f"batch rejected by storage: {type(e).__name__}") from None

    def apply_entry(self, index: int, term: int, batches: Sequence[Batch], *, raw_batches: Sequence[bytes] = (),
                    ts_ms: int = 0) -> builtins.list[ApplyResult]:
        """Apply every batch of Raft log entry ``index`` in ONE write transaction.

        Deterministic and idempotent: an index at or below the stored applied index is a
        replay and changes nothing; a batch whose non-empty request id was already
        applied (a client retry) is skipped and reports the index that applied it. The
        applied index and term are stored in the same transaction. Raises only for
        infrastructure faults, in which case nothing was written.

        The batches that were applied (not rejected, not duplicates) are also recorded as
        this index's replication WAL entry (``raw_batches``, the batches' encodings when
        given, avoid re-encoding; ``ts_ms`` is the leader's timestamp for age pruning).
        """
        return retry_refused(lambda rejected: self._apply_entry_once(index, term, batches, raw_batches, ts_ms,
                                                                    rejected))

    def _apply_entry_once(self, index: int, term: int, batches: Sequence[Batch], raw_batches: Sequence[bytes],
                          ts_ms: int, rejected: dict[Hashable, str]) -> builtins.list[ApplyResult]:
        if index <= self._applied:
            return [ApplyResult(index) for _ in batches]
        results: builtins.list[ApplyResult] = []
        shipped: builtins.list[bytes] = []
        stored: builtins.list[Batch] = []  # the batches this transaction wrote
        committed = False
        self.cache.begin_write()
        try:
            with self._guard.shared(), self._env.begin(write=True) as txn:
                for n, batch in enumerate(batches):
                    rid = batch.request_id
                    if rid:
                        seen = txn.get(_REQ_PREFIX + rid, db=self._meta)
                        if seen is not None:
                            results.append(ApplyResult(int.from_bytes(seen, "big")))
                            continue
                    err = rejected.get(n) or batch_error(batch, self._max_key)
                    if err is None:
                        self._write_ops(txn, batch, n)
                    if err is None:
                        stored.append(batch)
                    if rid and err is None:
                        txn.put(_REQ_PREFIX + rid, encode_index(index), db=self._meta)
                        txn.put(_REQIDX_PREFIX + encode_index(index) + rid, b"", db=self._meta)
                    if err is None and self.wal_retention.entries > 0:
                        form = _shipped_form(batch, raw_batches[n] if n < len(raw_batches) else None)
                        if form is not None:
                            shipped.append(form)
                    results.append(ApplyResult(index, err))
                self._prune_request_ids(txn, index)
                if shipped:
                    wal_entry = WalEntry(index, ts_ms, tuple(shipped))
                    wal_raw = wal_entry.encode()
                    txn.put(encode_index(index) + encode_index(ts_ms), wal_raw, db=self._wal)
                if self.wal_retention.entries > 0 or self._wal_last:
                    self._prune_wal(txn, index, ts_ms)
                txn.put(_APPLIED_KEY, encode_index(index), db=self._meta)
                txn.put(_APPLIED_TERM_KEY, encode_index(term), db=self._meta)
            committed = True
        finally:  # after the commit (or a failure): drop what may have changed, before publishing
            self.cache.end_write([op.key for batch in batches for op in batch.ops],
                                 committed=_stored_pairs(stored) if committed else ())
        if shipped:  # into the in-memory tail before the new applied index is visible
            self._tail_append(wal_entry, len(wal_raw))
        self._applied = index
        self._applied_term = term
        if shipped:
            self._wal_last = index
        return results

    def _prune_request_ids(self, txn: lmdb.Transaction, index: int) -> None:
        horizon = index - REQUEST_ID_WINDOW
        if horizon <= 0:
            return
        cur = txn.cursor(db=self._meta)
        stop = _REQIDX_PREFIX + encode_index(horizon)
        found = cur.set_range(_REQIDX_PREFIX)
        while found:
            k = bytes(cur.key())
            if not k.startswith(_REQIDX_PREFIX) or k >= stop:
                break
            txn.delete(_REQ_PREFIX + k[len(_REQIDX_PREFIX) + 8:], db=self._meta)
            found = cur.delete()
            if found and not bytes(cur.key()).startswith(_REQIDX_PREFIX):
                break

    def applied_term(self) -> int:
        """The Raft term of the last applied entry (0 when written without Raft)."""
        return self._applied_term

    # -- maintenance ---------------------------------------------------------------------

    def snapshot_to(self, path: str) -> None:
        """Write a compacted, consistent copy of the environment into the new dir ``path``."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        with self._guard.shared():
            self._env.copy(path, compact=True)

    def copy_to_fd(self, fd: int) -> None:
        """Write a compacted, consistent copy of the data file to the open file ``fd``."""
        with self._guard.shared():
            self._env.copyfd(fd, compact=True)

    def grow(self) -> None:
        """Double the map size (after a MapFullError); waits for open transactions."""
        with self._guard.exclusive():
            self._map_size *= 2
            self._env.set_mapsize(self._map_size)

    def replace_with(self, data_file: str) -> None:
        """Replace the whole store by the LMDB data file ``data_file`` (a snapshot).

        Waits for open transactions, swaps the file in atomically (rename), reopens,
        and reloads the applied index. ``data_file`` is consumed.
        """
        with self._guard.exclusive():
            self._env.close()
            # Before _open publishes the new applied index: nothing cached from the old store
            # may be served to a reader that waited for that index.
            self.cache.clear()
            target = os.path.join(self.path, "data.mdb")
            os.replace(data_file, target)
            lock = os.path.join(self.path, "lock.mdb")
            if os.path.exists(lock):
                os.unlink(lock)
            size = os.path.getsize(target)
            while self._map_size < size * 2:
                self._map_size *= 2
            self._open()

    def wipe(self) -> None:
        """Delete every key and the applied index (a node joining another cluster)."""
        with self._guard.exclusive():
            self._env.close()
            self.cache.clear()
            shutil.rmtree(self.path, ignore_errors=True)
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self._open()

    def sync(self) -> None:
        """Force a flush to disk (commits sync unless the store is rebuildable)."""
        with self._guard.shared():
            self._env.sync(True)

    def close(self) -> None:
        """Close the environment (synced to disk first); idempotent."""
        if not self._closed:
            self._closed = True
            if self._unsynced_boot is not None:
                self._env.sync(True)
            self._env.close()
            self.cache.clear()
            if self._unsynced_boot is not None:
                os_crash.clear(self.path)


def _stored_pairs(batches: Sequence[Batch]) -> builtins.list[tuple[str, bytes | None]]:
    """(key, stored bytes or None) of every op of ``batches``, in order: the later wins."""
    return [(op.key, None if op.kind is not OpKind.PUT else bytes(op.value or b"")) for b in batches for op in b.ops]
