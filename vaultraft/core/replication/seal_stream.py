"""Seal wrapping stays below replication: a primary ships values without its HSM's layer.

As in Vault, each cluster seal-wraps with its own seal, so clusters with different HSMs (or a
Shamir cluster and an HSM one) replicate to each other. A primary with an HSM seal stores the
keyring record and the values of ``seal_wrap`` mounts wrapped by its HSM; a secondary has
another HSM (or none) and could not open them. :class:`UnwrappingSource` wraps the node's
WAL source and ships those values without that layer:

* ``core/keyring`` (raw, outside the barrier): the keyring sealed by the root key only;
* values under a ``seal_wrap`` mount's ``logical/<uuid>/``: barrier-decrypted, unwrapped by
  the HSM and barrier-encrypted again (still ciphertext: the stream never carries plaintext).

A secondary stores them as shipped (its log holds exactly what the primary sent); it wraps
nothing it did not write itself, and a promoted cluster re-wraps the keyring with its own HSM
(``seal_replica.reclaim_keyring``). Re-encryption makes a shipped value differ from what a
fresh snapshot would ship, so both sides digest (merkle-check) a normalized keyspace: the
keyring unwrapped, a ``seal_wrap`` mount value as the SHA-256 of its plaintext
(:func:`normalized_digest`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgpack

from vaultraft.barrier import KEYRING_PATH, Barrier, BarrierError
from vaultraft.core.seal_state import SEAL_WRAP_MAGIC, SealState
from vaultraft.raft.replica import RaftWalSource
from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.wal import WalEntry

#: Mount tables whose rows say which mounts are seal-wrapped.
MOUNT_TABLE_KEYS = ("core/mounts", "core/local-mounts")
_TABLE_MARK = b"core/mounts"  # also found inside b"core/local-mounts"
#: How long the digest thread waits for one HSM unwrap on the event loop.
BRIDGE_TIMEOUT = 30.0
_PLAIN_DIGEST = b"\x00plaintext-sha256:"
KeyFilter = Callable[[str], bool]


def wrapped_prefixes_of(tables: list[bytes]) -> tuple[str, ...]:
    """The storage prefixes (``logical/<uuid>/``) of the ``seal_wrap`` mounts listed in the
    given stored mount tables (JSON lists of rows); rows that do not parse are skipped."""
    out: set[str] = set()
    for raw in tables:
        try:
            rows: Any = json.loads(raw)
        except ValueError:
            continue
        for row in rows if isinstance(rows, list) else ():
            if isinstance(row, dict) and row.get("seal_wrap") and isinstance(row.get("uuid"), str) and row["uuid"]:
                out.add(f"logical/{row['uuid']}/")
    return tuple(sorted(out))


async def wrapped_prefixes(barrier: Barrier) -> tuple[str, ...]:
    """:func:`wrapped_prefixes_of` the mount tables in this cluster's storage."""
    tables = [raw for raw in [await barrier.get(k) for k in MOUNT_TABLE_KEYS] if raw is not None]
    return wrapped_prefixes_of(tables)


def digest_items(items: Iterator[tuple[str, bytes]], normalize: Callable[[str, bytes], bytes]) -> str:
    """Hex SHA-256 over msgpack ``[key, normalize(key, value)]`` for each pair, in order."""
    h = hashlib.sha256()
    for k, v in items:
        h.update(msgpack.packb([k, normalize(k, v)], use_bin_type=True))
    return h.hexdigest()


class _Normalizer:
    """The digest's view of a value (runs on the digest thread; HSM calls hop to the loop)."""

    def __init__(self, barrier: Barrier, seals: SealState, prefixes: tuple[str, ...],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._barrier, self._seals, self._prefixes, self._loop = barrier, seals, prefixes, loop

    def _unwrap(self, key: str, value: bytes) -> bytes:
        fut = asyncio.run_coroutine_threadsafe(self._seals.seal_unwrap(key, value), self._loop)
        return fut.result(timeout=BRIDGE_TIMEOUT)

    def __call__(self, key: str, value: bytes) -> bytes:
        if key == KEYRING_PATH:
            return self._unwrap(key, value) if value.startswith(SEAL_WRAP_MAGIC) else value
        if self._prefixes and key.startswith(self._prefixes):
            try:
                plain = self._barrier.decrypt(key, value)
            except BarrierError:  # not barrier ciphertext (or sealed): digest it as stored
                return value
            if plain.startswith(SEAL_WRAP_MAGIC):
                plain = self._unwrap(key, plain)
            return _PLAIN_DIGEST + hashlib.sha256(plain).digest()
        return value


async def normalized_digest(store: Any, keep: KeyFilter, barrier: Barrier, seals: SealState, *,
                            remote_index: bool) -> tuple[int, str]:
    """(index, hex digest) of the replicated keyspace of ``store`` (an LMDB store) for which
    ``keep(key)``, normalized as the module docstring says, from one consistent read. The
    index is the applied index, or with ``remote_index`` the secondary's position in its
    primary's log."""
    prefixes = await wrapped_prefixes(barrier)
    normalize = _Normalizer(barrier, seals, prefixes, asyncio.get_running_loop())

    def run() -> tuple[int, str]:
        with store.replicated_items(keep) as (index, items):
            root = digest_items(items, normalize)
            return (store.replica_state().remote_index if remote_index else index), root

    return await asyncio.to_thread(run)


class _Snapshot:
    def __init__(self, inner: Any, transform: "ShippingTransform") -> None:
        self._inner, self._t = inner, transform
        self.index: int = inner.index

    async def _chunks(self, max_bytes: int) -> AsyncIterator[list[tuple[str, bytes]]]:
        async for chunk in self._inner.chunks(max_bytes):
            yield [(k, await self._t.value(k, v)) for k, v in chunk]

    def chunks(self, max_bytes: int) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The inner snapshot's chunks with seal-wrapped values unwrapped."""
        return self._chunks(max_bytes)


class ShippingTransform:
    """Removes this cluster's HSM layer from values about to be shipped (see module doc)."""

    def __init__(self, barrier: Barrier, seals: SealState) -> None:
        self._barrier, self._seals = barrier, seals
        self._prefixes: tuple[str, ...] | None = None
        self._marks: re.Pattern[bytes] | None = None  # any key whose batch may need a look

    async def refresh(self) -> None:
        """Re-read which mounts are seal-wrapped."""
        self._prefixes = await wrapped_prefixes(self._barrier)
        marks = (KEYRING_PATH.encode(), *(p.encode() for p in self._prefixes))
        # one C-level scan per batch instead of one substring search per mark
        self._marks = re.compile(b"|".join(re.escape(m) for m in marks))

    async def value(self, key: str, value: bytes) -> bytes:
        """``value`` as shipped: unchanged unless this cluster's HSM wrapped it."""
        if key == KEYRING_PATH:
            return await self._seals.seal_unwrap(key, value) if value.startswith(SEAL_WRAP_MAGIC) else value
        if self._prefixes is None:
            await self.refresh()
        assert self._prefixes is not None
        if not self._prefixes or not key.startswith(self._prefixes):
            return value
        plain = self._barrier.decrypt(key, value)
        if not plain.startswith(SEAL_WRAP_MAGIC):
            return value
        return self._barrier.encrypt(key, await self._seals.seal_unwrap(key, plain))

    async def batch(self, raw: bytes) -> bytes:
        """One encoded batch as shipped (decoded only when it may hold a wrapped value)."""
        if self._marks is None:
            await self.refresh()
        assert self._marks is not None
        if self._marks.search(raw) is None:
            return raw
        b = Batch.decode(raw)
        ops = [o if o.value is None else Op(o.kind, o.key, await self.value(o.key, o.value), o.local) for o in b.ops]
        if all(new.value is old.value for new, old in zip(ops, b.ops)):
            return raw
        return Batch(tuple(ops), b.request_id).encode()

    async def entry(self, e: WalEntry) -> WalEntry:
        """One WAL entry as shipped (the seal-wrapped mounts are re-read when it changes a
        mount table, before its own ops are looked at)."""
        for raw in e.batches:
            if _TABLE_MARK in raw:
                await self.refresh()
                break
        batches = tuple([await self.batch(raw) for raw in e.batches])
        return e if batches == e.batches else WalEntry(e.index, e.ts_ms, batches)


class UnwrappingSource:
    """``replication.interfaces.WalSource`` over a primary node's :class:`RaftWalSource`,
    shipping values without this cluster's HSM layer and digesting the normalized keyspace."""

    def __init__(self, inner: RaftWalSource, barrier: Barrier, seals: SealState) -> None:
        self._inner = inner
        self._barrier, self._seals = barrier, seals
        self._t = ShippingTransform(barrier, seals)

    def applied_index(self) -> int:
        """The last applied log index on this node."""
        return self._inner.applied_index()

    def wal_bounds(self) -> tuple[int, int]:
        """(first, last) retained WAL index."""
        return self._inner.wal_bounds()

    async def wait_for_index(self, after: int, timeout: float) -> int:
        """Wait for an apply beyond ``after``; the applied index."""
        return await self._inner.wait_for_index(after, timeout)

    async def read_wal(self, after: int, max_entries: int, max_bytes: int) -> list[WalEntry]:
        """Retained entries after ``after``, as shipped."""
        entries = await self._inner.read_wal(after, max_entries, max_bytes)
        return [await self._t.entry(e) for e in entries]

    @asynccontextmanager
    async def snapshot(self, mode: str) -> AsyncIterator[_Snapshot]:
        """A consistent snapshot of what a ``mode`` secondary receives, as shipped."""
        async with self._inner.snapshot(mode) as snap:
            await self._t.refresh()
            yield _Snapshot(snap, self._t)

    def keep(self, mode: str) -> KeyFilter:
        """What a ``mode`` secondary receives (all but local state for performance)."""
        is_local = self._inner.local_filter
        if mode == "dr" or is_local is None:
            return lambda key: True
        return lambda key: not is_local(key)

    async def digest(self, mode: str) -> tuple[int, str]:
        """(applied index, normalized digest) of what a ``mode`` secondary receives."""
        return await normalized_digest(self._inner.store, self.keep(mode), self._barrier, self._seals,
                                       remote_index=False)
