"""The physical read cache: bounds, the fill/invalidate race, and that every write path of
LMDBStore (applies, group commits, snapshot install, wipe) keeps it exact."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_get_fills_and_apply_entry_writes_through(store: LMDBStore) -> None:
    store.apply_entry(1, 1, [put(("k", b"v1"))])
    assert store.peek("k") == (True, b"v1")  # what the write stored, cached as it committed
    assert store.get("missing") is None and store.peek("missing") == (True, None)
    store.apply_entry(2, 1, [put(("k", b"v2"), ("missing", b"now"))])
    assert store.peek("k") == (True, b"v2") and store.peek("missing") == (True, b"now")
    store.apply_entry(3, 1, [delete("k")])
    assert store.peek("k") == (True, None) and store.get("k") is None


def test_rejected_duplicate_and_oversized_values_are_not_written_through(store: LMDBStore) -> None:
    store.apply_entry(1, 1, [put(("a", b"1")), Batch((Op.put("a", b"rejected"), Op.put("", b"bad")), b"r1")])
    assert store.peek("a") == (True, b"1")  # the rejected batch was rolled back
    first = Batch((Op.put("d", b"first"),), b"dup-id")
    store.apply_entry(2, 1, [first])
    store.apply_entry(3, 1, [put(("d", b"second"))])
    store.apply_entry(4, 1, [Batch((Op.put("d", b"retry"),), b"dup-id")])  # a client retry: skipped
    assert store.get("d") == b"second" and store.peek("d") in ((True, b"second"), (False, None))
    big = b"x" * (MAX_VALUE_BYTES + 1)
    store.apply_entry(5, 1, [put(("big", big), ("small", b"s"))])
    assert store.peek("big") == (False, None) and store.peek("small") == (True, b"s")
    assert store.get("big") == big


def test_a_write_that_fails_to_commit_caches_nothing(tmp_path: Path) -> None:
    import lmdb

    s = LMDBStore(str(tmp_path / "tiny"), map_size=1 << 20)
    try:
        s.apply_entry(1, 1, [put(("k", b"old"))])
        with pytest.raises(lmdb.MapFullError):
            s.apply_entry(2, 1, [put(("k", b"new"), *((f"fill{i}", os.urandom(4000)) for i in range(400)))])
        assert s.peek("k") == (False, None)
        assert s.get("k") == b"old"
    finally:
        s.close()


_keys = st.sampled_from(["a", "b", "c", ""])  # "" is refused by storage: its whole batch is rejected
_ops = st.lists(st.tuples(_keys, st.none() | st.binary(max_size=8)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_ops, min_size=1, max_size=3), min_size=1, max_size=12))
def test_cache_always_agrees_with_what_was_committed(tmp_path_factory: pytest.TempPathFactory,
                                                      entries: list[list[list[tuple[str, bytes | None]]]]) -> None:
    s = LMDBStore(str(tmp_path_factory.mktemp("model") / "db"), map_size=1 << 22)
    model: dict[str, bytes] = {}
    try:
        index = 0
        for n, entry in enumerate(entries):
            batches = [Batch(tuple(Op.put(k, v) if v is not None else Op.delete(k) for k, v in ops), os.urandom(8))
                       for ops in entry]
            if n % 2:  # a Raft log entry: all batches at one index
                index += 1
                s.apply_entry(index, 1, batches)
            else:  # a group commit: one index per batch
                s.apply_many([(b, index + 1 + i) for i, b in enumerate(batches)])
                index += len(batches)
            for ops in entry:
                if all(k for k, _ in ops):
                    for k, v in ops:
                        if v is None:
                            model.pop(k, None)
                        else:
                            model[k] = v
            for k in ("a", "b", "c"):
                hit, cached = s.peek(k)
                assert not hit or cached == model.get(k)
                assert s.get(k) == model.get(k)
    finally:
        s.close()


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
        reads = phys._reader.reads
        assert phys.peek("k") == (True, b"v1") and await phys.get("k") == b"v1"  # written through
        assert await phys.get("other") is None  # miss: read on the reader thread
        assert phys._reader.reads == reads + 1
        assert await phys.get("other") is None and phys._reader.reads == reads + 1  # hit: no hop
        await phys.apply(put(("k", b"v2")))
        assert phys.peek("k") == (True, b"v2")
        assert await phys.get("k") == b"v2" and phys._reader.reads == reads + 1
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
