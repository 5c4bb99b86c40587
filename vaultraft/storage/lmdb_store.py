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
from typing import Iterator, Sequence

import lmdb

from vaultraft.storage.batch import Batch, OpKind
from vaultraft.storage.physical import ApplyResult

#: LMDB's compiled-in key limit (``mdb_env_get_maxkeysize``); the in-memory store mirrors it.
STORE_MAX_KEY_BYTES = 511

_DATA_DB = b"data"
_META_DB = b"meta"
_APPLIED_KEY = b"applied_index"
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


def encode_index(index: int) -> bytes:
    """The 8-byte big-endian form of a log index."""
    return index.to_bytes(8, "big")


class LMDBStore:
    """Synchronous ordered key/value store on one LMDB environment (the blocking core).

    Thread use: any number of reader threads and one writer thread at a time (LMDB's
    MVCC lets reads proceed during a commit).
    """

    def __init__(self, path: str, map_size: int = 1 << 30) -> None:
        """Open (creating with mode 0700 if needed) the environment directory ``path``."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        self.path = path
        self._env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=4,
            subdir=True,
            sync=True,
            metasync=True,
            mode=0o600,
            readahead=False,
        )
        self._data = self._env.open_db(_DATA_DB)
        self._meta = self._env.open_db(_META_DB)
        self._max_key = min(STORE_MAX_KEY_BYTES, self._env.max_key_size())
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(_APPLIED_KEY)
        self._applied = 0 if raw is None else int.from_bytes(raw, "big")
        self._closed = False

    # -- reads ---------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None (also for a key too long to be stored)."""
        k = key.encode("utf-8")
        if not k or len(k) > self._max_key:
            return None
        with self._env.begin(db=self._data) as txn:
            v = txn.get(k)
        return None if v is None else bytes(v)

    def list(self, prefix: str) -> builtins.list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted.

        A cursor range scan that jumps over each folder's subtree, so the cost is the
        number of children, not the number of keys below ``prefix``.
        """
        p = prefix.encode("utf-8")
        out: builtins.list[str] = []
        if len(p) > self._max_key:
            return out
        with self._env.begin(db=self._data) as txn:
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
        with self._env.begin(db=self._data) as txn:
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
        (a failed batch is rolled back on its own via a nested transaction).
        """
        results: builtins.list[ApplyResult] = []
        applied = self._applied
        with self._env.begin(write=True) as txn:
            for batch, index in batches:
                if index <= applied:
                    results.append(ApplyResult(index))
                    continue
                err = batch_error(batch, self._max_key)
                if err is None:
                    err = self._apply_nested(txn, batch)
                results.append(ApplyResult(index, err))
                applied = index
            if applied != self._applied:
                txn.put(_APPLIED_KEY, encode_index(applied), db=self._meta)
        self._applied = applied
        return results

    def _apply_nested(self, parent: lmdb.Transaction, batch: Batch) -> str | None:
        """Apply one validated batch in a child transaction; a value error aborts only it."""
        child = self._env.begin(write=True, parent=parent)
        try:
            for op in batch.ops:
                k = op.key.encode("utf-8")
                if op.kind is OpKind.PUT:
                    assert op.value is not None
                    child.put(k, bytes(op.value), db=self._data)
                else:
                    child.delete(k, db=self._data)
        except (lmdb.BadValsizeError, ValueError) as e:
            child.abort()
            return f"batch rejected by storage: {type(e).__name__}"
        except BaseException:
            child.abort()
            raise
        child.commit()
        return None

    # -- maintenance ---------------------------------------------------------------------

    def snapshot_to(self, path: str) -> None:
        """Write a compacted, consistent copy of the environment into the new dir ``path``."""
        os.makedirs(path, mode=0o700, exist_ok=True)
        self._env.copy(path, compact=True)

    def sync(self) -> None:
        """Force a flush to disk (commits already sync; this is for belt and braces)."""
        self._env.sync(True)

    def close(self) -> None:
        """Close the environment; idempotent."""
        if not self._closed:
            self._closed = True
            self._env.close()
