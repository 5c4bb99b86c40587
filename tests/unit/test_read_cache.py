"""The physical read cache: bounds, the fill/invalidate race, and that every write path of
LMDBStore (applies, group commits, snapshot install, wipe) keeps it exact."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultraft.raft.snapshot import install_snapshot, write_snapshot
from vaultraft.storage import Batch, Op
from vaultraft.storage.cache import MAX_VALUE_BYTES, ReadCache
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.local import LocalPhysical
from vaultraft.storage.reader import BatchReader, ReaderClosed


def put(*pairs: tuple[str, bytes]) -> Batch:
    return Batch(tuple(Op.put(k, v) for k, v in pairs), os.urandom(8))


def delete(*keys: str) -> Batch:
    return Batch(tuple(Op.delete(k) for k in keys), os.urandom(8))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LMDBStore]:
    s = LMDBStore(str(tmp_path / "db"), map_size=1 << 22)
    yield s
    s.close()


# ---- ReadCache ------------------------------------------------------------------------------


def test_lookup_fill_and_negative_entries() -> None:
    c = ReadCache()
    assert c.lookup("a") == (False, None)
    assert c.fill("a", b"1", c.generation())
    assert c.fill("gone", None, c.generation())
    assert c.lookup("a") == (True, b"1")
    assert c.lookup("gone") == (True, None)  # known absent is a hit too
    c.invalidate(["a", "gone"])
    assert c.lookup("a") == (False, None) and c.lookup("gone") == (False, None)


def test_fill_after_an_invalidation_is_refused() -> None:
    """A read that started before a write's invalidation may hold the old value: refused."""
    c = ReadCache()
    gen = c.generation()  # a reader starts ...
    c.invalidate(["other-key"])  # ... any write commits meanwhile ...
    assert not c.fill("a", b"old", gen)  # ... so what it read is not cached
    assert c.lookup("a") == (False, None)
    assert c.fill("a", b"new", c.generation())


def test_bounds_evict_oldest_first() -> None:
    c = ReadCache(max_entries=3, max_bytes=10)
    for k in "abc":
        c.fill(k, b"x", c.generation())
    c.fill("d", b"x", c.generation())
    assert [c.lookup(k)[0] for k in "abcd"] == [False, True, True, True]
    c.fill("big", b"y" * 9, c.generation())  # 3 + 9 bytes > 10: evicts until it fits
    assert c.size_bytes <= 10 and c.lookup("big") == (True, b"y" * 9)
    assert not c.fill("huge", b"z" * (MAX_VALUE_BYTES + 1), c.generation())
    off = ReadCache(max_entries=0)
    assert not off.fill("a", b"1", off.generation()) and off.lookup("a") == (False, None)


def test_refill_replaces_and_accounts_bytes() -> None:
    c = ReadCache()
    c.fill("a", b"12345", c.generation())
    c.fill("a", b"12", c.generation())
    assert c.size_bytes == 2 and len(c) == 1
    c.clear()
    assert c.size_bytes == 0 and len(c) == 0


# ---- LMDBStore keeps it exact ------------------------------------------------------------


def test_get_fills_and_apply_entry_invalidates(store: LMDBStore) -> None:
    store.apply_entry(1, 1, [put(("k", b"v1"))])
    assert store.peek("k") == (False, None)
    assert store.get("k") == b"v1"
    assert store.peek("k") == (True, b"v1")
    assert store.get("missing") is None and store.peek("missing") == (True, None)
    store.apply_entry(2, 1, [put(("k", b"v2"), ("missing", b"now"))])
    assert store.peek("k") == (False, None) and store.peek("missing") == (False, None)
    assert store.get("k") == b"v2" and store.get("missing") == b"now"
    store.apply_entry(3, 1, [delete("k")])
    assert store.get("k") is None


def test_group_commit_and_failed_batches_invalidate(store: LMDBStore) -> None:
    store.apply_many([(put(("a", b"1")), 1)])
    assert store.get("a") == b"1"
    store.apply_many([(put(("a", b"2")), 2), (Batch((Op.put("", b"x"),)), 3)])  # the 2nd batch is rejected
    assert store.get("a") == b"2"
    # a replayed index writes nothing and may keep the cache
    store.apply_many([(put(("a", b"stale")), 2)])
    assert store.get("a") == b"2"


def test_read_racing_a_commit_never_caches_the_old_value(store: LMDBStore) -> None:
    """Interleave by hand: generation taken, old value read, commit + invalidate, then fill."""
    store.apply_entry(1, 1, [put(("k", b"old"))])
    gen = store.cache.generation()  # the reader starts and reads b"old" from LMDB ...
    store.apply_entry(2, 1, [put(("k", b"new"))])  # ... the commit lands and invalidates ...
    assert not store.cache.fill("k", b"old", gen)  # ... so the old value is not cached
    assert store.get("k") == b"new"


def test_concurrent_readers_and_writer_stay_exact(store: LMDBStore) -> None:
    """Readers hammer one key while a writer bumps it: a reader that has seen version n
    never sees an older one afterwards, and the final cached value is the last write."""
    store.apply_entry(1, 1, [put(("k", b"0"))])
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        seen = 0
        while not stop.is_set():
            v = store.get("k")
            assert v is not None
            n = int(v)
            if n < seen:
                errors.append(f"went back from {seen} to {n}")
            seen = n

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(1, 150):
        store.apply_entry(i + 1, 1, [put(("k", str(i).encode()))])
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get("k") == b"149"


def test_snapshot_install_replaces_everything_cached(tmp_path: Path) -> None:
    src = LMDBStore(str(tmp_path / "src"), map_size=1 << 22)
    dst = LMDBStore(str(tmp_path / "dst"), map_size=1 << 22)
    try:
        src.apply_entry(5, 1, [put(("k", b"from-snapshot"), ("only-in-snap", b"s"))])
        write_snapshot(str(tmp_path / "snap"), src, {"last": [b"", 5, 1], "prev": [b"", 4, 1], "cluster": []})
        dst.apply_entry(1, 1, [put(("k", b"local"), ("only-local", b"l"))])
        assert dst.get("k") == b"local" and dst.get("only-local") == b"l"
        assert dst.get("only-in-snap") is None  # cached as absent
        assert install_snapshot(str(tmp_path / "snap"), dst)
        assert dst.peek("k") == (False, None)
        assert dst.get("k") == b"from-snapshot"
        assert dst.get("only-local") is None
        assert dst.get("only-in-snap") == b"s"
    finally:
        src.close()
        dst.close()


def test_wipe_and_close_clear_the_cache(store: LMDBStore) -> None:
    store.apply_entry(1, 1, [put(("k", b"v"))])
    assert store.get("k") == b"v"
    store.wipe()
    assert store.peek("k") == (False, None) and store.get("k") is None
    store.apply_entry(1, 1, [put(("k", b"v"))])
    assert store.get("k") == b"v"
    store.close()
    assert store.peek("k") == (False, None)


async def test_local_physical_serves_hits_without_a_thread_hop(tmp_path: Path) -> None:
    phys = await LocalPhysical.open("raft", str(tmp_path / "db"), map_size=1 << 22)
    try:
        await phys.apply(put(("k", b"v1")))
        assert await phys.get("k") == b"v1"  # miss: read on the reader thread
        reads = phys._reader.reads
        assert await phys.get("k") == b"v1" and phys.peek("k") == (True, b"v1")
        assert phys._reader.reads == reads  # hit: no hop
        await phys.apply(put(("k", b"v2")))
        assert phys.peek("k") == (False, None)
        assert await phys.get("k") == b"v2"
    finally:
        await phys.close()


# ---- BatchReader -----------------------------------------------------------------------------


async def test_batch_reader_batches_one_loop_iteration() -> None:
    reader = BatchReader("test-reader")
    try:
        results = await asyncio.gather(*(reader.run(lambda x: x * 2, i) for i in range(20)))
        assert results == [i * 2 for i in range(20)]
        assert reader.jobs == 1 and reader.reads == 20
        assert await reader.run(lambda x: x, "again") == "again"
        assert reader.jobs == 2

        def boom(_: object) -> None:
            raise KeyError("nope")

        with pytest.raises(KeyError):
            await reader.run(boom, None)
        task = asyncio.ensure_future(reader.run(lambda x: x, 1))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await reader.run(lambda x: x + 1, 1) == 2  # a cancelled waiter breaks nothing
    finally:
        await reader.aclose()
    with pytest.raises(ReaderClosed):
        await reader.run(lambda x: x, 1)
    await reader.aclose()  # idempotent
