"""An in-memory store with exactly the interface and limits of :class:`LMDBStore`.

Used for ``storage "inmem"`` (dev servers) and tests. It mirrors LMDB's key-size limit and
its apply/replay semantics so that code proven on it behaves the same on disk.
"""

from __future__ import annotations

import bisect
import builtins
import threading
from typing import Iterator, Sequence

from vaultraft.storage.batch import Batch, OpKind
from vaultraft.storage.lmdb_store import STORE_MAX_KEY_BYTES, batch_error
from vaultraft.storage.physical import ApplyResult


class InmemStore:
    """A dict plus a sorted key list; thread-safe behind one lock."""

    def __init__(self) -> None:
        """An empty store at applied index 0."""
        self._data: dict[str, bytes] = {}
        self._keys: builtins.list[str] = []
        self._applied = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The bytes stored at ``key``, or None."""
        with self._lock:
            return self._data.get(key)

    def peek(self, key: str) -> tuple[bool, bytes | None]:
        """Always a miss: this store keeps no separate read cache (it is all memory), so
        reads keep going through LocalPhysical's reader thread like any other store's."""
        return False, None

    def list(self, prefix: str) -> builtins.list[str]:
        """Immediate children of ``prefix`` (folders end in ``/``), sorted.

        Bisects into the sorted keys and jumps over each folder's subtree.
        """
        out: builtins.list[str] = []
        with self._lock:
            keys = self._keys
            i = bisect.bisect_left(keys, prefix)
            while i < len(keys):
                k = keys[i]
                if not k.startswith(prefix):
                    break
                rest = k[len(prefix):]
                if not rest:
                    i += 1
                    continue
                slash = rest.find("/")
                if slash < 0:
                    out.append(rest)
                    i += 1
                else:
                    out.append(rest[: slash + 1])
                    i = bisect.bisect_left(keys, prefix + rest[:slash] + "0", i)
        return out

    def applied_index(self) -> int:
        """The index of the last batch applied (0 for a new store)."""
        return self._applied

    def all_items(self) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) in key order, from a copy taken at call time."""
        with self._lock:
            items = [(k, self._data[k]) for k in self._keys]
        return iter(items)

    def apply(self, batch: Batch, index: int) -> ApplyResult:
        """Apply ``batch`` as log entry ``index``; same contract as ``LMDBStore.apply``."""
        return self.apply_many([(batch, index)])[0]

    def apply_many(self, batches: Sequence[tuple[Batch, int]]) -> builtins.list[ApplyResult]:
        """Apply several (batch, index) pairs atomically with respect to readers."""
        results: builtins.list[ApplyResult] = []
        with self._lock:
            for batch, index in batches:
                if index <= self._applied:
                    results.append(ApplyResult(index))
                    continue
                err = batch_error(batch, STORE_MAX_KEY_BYTES)
                if err is None:
                    for op in batch.ops:
                        if op.kind is OpKind.PUT:
                            assert op.value is not None
                            self._put(op.key, bytes(op.value))
                        else:
                            self._delete(op.key)
                results.append(ApplyResult(index, err))
                self._applied = index
        return results

    def _put(self, key: str, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def _delete(self, key: str) -> None:
        if self._data.pop(key, None) is not None:
            i = bisect.bisect_left(self._keys, key)
            del self._keys[i]

    def snapshot_to(self, path: str) -> None:
        """Write the same LMDB environment an LMDBStore snapshot would contain (new dir
        ``path``): every key and the applied index, in one transaction."""
        from vaultraft.storage.batch import Batch, Op
        from vaultraft.storage.lmdb_store import LMDBStore

        target = LMDBStore(path)
        try:
            target.apply(Batch(tuple(Op.put(k, v) for k, v in self.all_items())), max(self.applied_index(), 1))
        finally:
            target.close()

    def close(self) -> None:
        """Nothing to release; idempotent."""
