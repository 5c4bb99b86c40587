"""Physical storage: LMDB and in-memory stores, and the async group-committing LocalPhysical."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultraft.logical.storage import list_children
from vaultraft.storage import ApplyResult, Batch, Op, Physical
from vaultraft.storage.inmem import InmemStore
from vaultraft.storage.lmdb_store import STORE_MAX_KEY_BYTES, LMDBStore
from vaultraft.storage.local import LocalPhysical, StorageError, StoreClosed

Store = LMDBStore | InmemStore


@pytest.fixture(params=["lmdb", "inmem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = LMDBStore(str(tmp_path / "db"), map_size=1 << 24) if request.param == "lmdb" else InmemStore()
    yield s
    s.close()


def put(*pairs: tuple[str, bytes]) -> Batch:
    return Batch(tuple(Op.put(k, v) for k, v in pairs))


# -- the synchronous stores ----------------------------------------------------------------


def test_apply_get_delete(store: Store) -> None:
    assert store.applied_index() == 0
    r = store.apply(put(("a", b"1"), ("b/c", b"2")), 1)
    assert r == ApplyResult(1)
    assert store.get("a") == b"1" and store.get("b/c") == b"2" and store.get("zzz") is None
    store.apply(Batch((Op.delete("a"), Op.delete("missing"))), 2)
    assert store.get("a") is None
    assert store.applied_index() == 2


def test_replay_is_idempotent_by_index(store: Store) -> None:
    store.apply(put(("k", b"first")), 1)
    store.apply(put(("k", b"second")), 2)
    # a replayed log entry (same or lower index) must change nothing
    assert store.apply(put(("k", b"replayed")), 1) == ApplyResult(1)
    assert store.apply(put(("k", b"replayed")), 2) == ApplyResult(2)
    assert store.get("k") == b"second"
    assert store.applied_index() == 2
    results = store.apply_many([(put(("k", b"old")), 2), (put(("k", b"third")), 3)])
    assert [r.index for r in results] == [2, 3]
    assert store.get("k") == b"third" and store.applied_index() == 3


def test_bad_batch_records_error_and_applies_nothing(store: Store) -> None:
    long_key = "x" * (STORE_MAX_KEY_BYTES + 1)
    r = store.apply(put(("good", b"v"), (long_key, b"v")), 1)
    assert r.index == 1 and r.error is not None and "key too long" in r.error
    assert store.get("good") is None  # the valid op of the failed batch is not applied
    assert store.applied_index() == 1  # the index is consumed, like a Raft entry
    r2 = store.apply(put(("\ud800bad", b"v")), 2)
    assert r2.error is not None and "UTF-8" in r2.error
    # a group with one bad batch leaves the others applied
    res = store.apply_many([(put(("a", b"1")), 3), (put(("", b"x")), 4), (put(("b", b"2")), 5)])
    assert [r.error is None for r in res] == [True, False, True]
    assert store.get("a") == b"1" and store.get("b") == b"2"


def test_list_immediate_children(store: Store) -> None:
    keys = ["a", "a/", "a/b", "a/b/c", "a/b/d", "a/c", "a0", "ab", "b/x/y/z", "c", "sys/policy/acl/default"]
    store.apply(put(*[(k, b"v") for k in keys]), 1)
    assert store.list("") == ["a", "a/", "a0", "ab", "b/", "c", "sys/"]
    assert store.list("a/") == ["b", "b/", "c"]
    assert store.list("a/b/") == ["c", "d"]
    assert store.list("b/") == ["x/"]
    assert store.list("nope/") == []
    assert store.list("sys/policy/") == ["acl/"]


keys_strategy = st.lists(
    st.text(alphabet=st.sampled_from("ab/0.é"), min_size=1, max_size=8), min_size=0, max_size=30, unique=True
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=keys_strategy, prefix=st.sampled_from(["", "a/", "a", "b/", "a/b/", "é/"]))
def test_list_matches_reference_for_any_keys(keys: list[str], prefix: str) -> None:
    expected = list_children(keys, prefix)
    mem = InmemStore()
    mem.apply(put(*[(k, b"") for k in keys]), 1)
    assert mem.list(prefix) == expected
    with tempfile.TemporaryDirectory() as d:
        db = LMDBStore(os.path.join(d, "db"), map_size=1 << 22)
        try:
            db.apply(put(*[(k, b"") for k in keys]), 1)
            assert db.list(prefix) == expected
            assert [k for k, _ in db.all_items()] == [k for k, _ in mem.all_items()] == sorted(keys)
        finally:
            db.close()


def test_lmdb_dir_mode_and_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "data")
    db = LMDBStore(path, map_size=1 << 24)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    db.apply(put(("x/y", b"\x00\xff"), ("z", b"zz")), 7)
    db.close()
    db.close()  # idempotent
    again = LMDBStore(path, map_size=1 << 24)
    try:
        assert again.applied_index() == 7
        assert again.get("x/y") == b"\x00\xff"
        assert again.apply(put(("z", b"replay")), 7) == ApplyResult(7)
        assert again.get("z") == b"zz"
    finally:
        again.close()


def test_lmdb_snapshot_copy(tmp_path: Path) -> None:
    db = LMDBStore(str(tmp_path / "src"), map_size=1 << 24)
    db.apply(put(*[(f"k/{i:03}", bytes([i])) for i in range(100)]), 3)
    db.apply(Batch(tuple(Op.delete(f"k/{i:03}") for i in range(50))), 4)
    db.snapshot_to(str(tmp_path / "snap"))
    items = list(db.all_items())
    db.close()
    copy = LMDBStore(str(tmp_path / "snap"), map_size=1 << 24)
    try:
        assert list(copy.all_items()) == items and len(items) == 50
        assert copy.applied_index() == 4
    finally:
        copy.close()


# -- LocalPhysical ---------------------------------------------------------------------------


class ThreadRecordingStore(InmemStore):
    """An in-memory store that remembers which threads it was called on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def get(self, key: str) -> bytes | None:
        self.threads.add(threading.current_thread().name)
        return super().get(key)

    def apply_many(self, batches):  # type: ignore[no-untyped-def]
        self.threads.add(threading.current_thread().name)
        return super().apply_many(batches)


async def test_local_physical_is_a_physical_and_runs_off_loop() -> None:
    store = ThreadRecordingStore()
    phys: Physical = LocalPhysical(store, "inmem")
    assert isinstance(phys, LocalPhysical)
    await phys.start()
    r = await phys.apply(put(("a/b", b"v")))
    assert r == ApplyResult(1) and phys.applied_index() == 1
    assert await phys.get("a/b") == b"v"
    assert await phys.list("a/") == ["b"]
    await phys.close()
    assert threading.current_thread().name not in store.threads
    assert any(t.startswith("vr-store-read") for t in store.threads)
    assert any(t.startswith("vr-store-write") for t in store.threads)


async def test_group_commit_batches_concurrent_applies(tmp_path: Path) -> None:
    phys = await LocalPhysical.open("raft", str(tmp_path / "raft"), map_size=1 << 24)
    n = 64
    results = await asyncio.gather(*(phys.apply(put((f"k/{i}", str(i).encode()))) for i in range(n)))
    assert sorted(r.index for r in results) == list(range(1, n + 1))
    assert all(r.error is None for r in results)
    assert phys.batch_count == n
    assert phys.commit_count < n  # several callers shared one LMDB transaction
    assert phys.applied_index() == n
    for i in range(n):
        assert await phys.get(f"k/{i}") == str(i).encode()
    await phys.close()
    # and the committed data is on disk
    db = LMDBStore(str(tmp_path / "raft"), map_size=1 << 24)
    try:
        assert db.applied_index() == n and db.get("k/63") == b"63"
    finally:
        db.close()


async def test_sequential_applies_each_commit() -> None:
    phys = await LocalPhysical.open("inmem")
    for i in range(5):
        assert (await phys.apply(put(("k", bytes([i]))))).index == i + 1
    assert phys.commit_count == 5
    bad = await phys.apply(put(("x" * 600, b"")))
    assert bad.index == 6 and bad.error is not None
    await phys.close()


async def test_wait_applied() -> None:
    phys = await LocalPhysical.open("inmem")
    assert await phys.wait_applied(0, 0.01)
    assert not await phys.wait_applied(1, 0.05)
    waiter = asyncio.create_task(phys.wait_applied(2, 5))
    await phys.apply(put(("a", b"1")))
    await asyncio.sleep(0)
    assert not waiter.done()
    await phys.apply(put(("a", b"2")))
    assert await waiter
    await phys.close()


async def test_close_commits_queued_and_refuses_more(tmp_path: Path) -> None:
    phys = await LocalPhysical.open("raft", str(tmp_path / "d"), map_size=1 << 24)
    pending = [asyncio.create_task(phys.apply(put((f"q{i}", b"v")))) for i in range(10)]
    await asyncio.sleep(0)  # the applies are queued
    await phys.close()
    assert all(t.result().error is None for t in pending)
    await phys.close()  # idempotent
    with pytest.raises(StoreClosed):
        await phys.get("q1")
    with pytest.raises(StoreClosed):
        await phys.apply(put(("x", b"y")))


async def test_apply_before_start_is_refused() -> None:
    phys = LocalPhysical(InmemStore(), "inmem")
    with pytest.raises(StoreClosed):
        await phys.apply(put(("x", b"y")))
    with pytest.raises(ValueError):
        LocalPhysical(InmemStore(), "consul")
    await phys.close()


async def test_map_full_fails_the_group_and_storage_recovers(tmp_path: Path) -> None:
    phys = await LocalPhysical.open("raft", str(tmp_path / "tiny"), map_size=1 << 17)
    assert (await phys.apply(put(("small", b"v")))).index == 1
    with pytest.raises(StorageError, match="MapFull"):
        await phys.apply(put(("huge", b"x" * (1 << 20))))
    assert phys.applied_index() == 1  # nothing of the failed group was written
    assert await phys.get("huge") is None
    assert (await phys.apply(put(("after", b"ok")))).index == 2
    assert await phys.get("after") == b"ok"
    await phys.close()


def test_apply_entry_dedups_request_ids_and_replays(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vaultraft.storage import Batch, Op
    from vaultraft.storage.lmdb_store import LMDBStore

    store = LMDBStore(str(tmp_path / "db"))
    a = Batch((Op.put("k", b"1"),), b"req-a")
    b = Batch((Op.put("k", b"2"),), b"req-b")
    assert [r.index for r in store.apply_entry(5, 2, [a, b])] == [5, 5]
    assert store.get("k") == b"2" and store.applied_index() == 5 and store.applied_term() == 2
    # a retry of request a in a later entry is skipped and reports where it was applied
    res = store.apply_entry(6, 2, [a, Batch((Op.put("j", b"x"),), b"req-c")])
    assert res[0].index == 5 and res[1].index == 6
    assert store.get("k") == b"2" and store.get("j") == b"x"
    # replaying an old entry changes nothing
    store.apply_entry(6, 2, [Batch((Op.put("j", b"replayed"),), b"req-d")])
    assert store.get("j") == b"x"
    store.close()
    again = LMDBStore(str(tmp_path / "db"))
    assert again.applied_index() == 6 and again.applied_term() == 2
    again.close()


def test_request_id_window_is_pruned(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from vaultraft.storage import Batch, Op
    from vaultraft.storage import lmdb_store
    from vaultraft.storage.lmdb_store import LMDBStore

    monkeypatch.setattr(lmdb_store, "REQUEST_ID_WINDOW", 3)
    store = LMDBStore(str(tmp_path / "db"))
    for i in range(1, 10):
        store.apply_entry(i, 1, [Batch((Op.put(f"k{i}", b"v"),), f"r{i}".encode())])
    # r1 fell out of the window: the same id is applied again as a new request
    res = store.apply_entry(10, 1, [Batch((Op.put("k1", b"again"),), b"r1")])
    assert res[0].index == 10 and store.get("k1") == b"again"
    # r8 is still remembered
    res = store.apply_entry(11, 1, [Batch((Op.put("k8", b"again"),), b"r8")])
    assert res[0].index == 8 and store.get("k8") == b"v"
    store.close()


def test_inmem_snapshot_is_an_lmdb_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vaultraft.storage import Batch, Op
    from vaultraft.storage.inmem import InmemStore
    from vaultraft.storage.lmdb_store import LMDBStore

    mem = InmemStore()
    mem.apply(Batch((Op.put("a/b", b"1"), Op.put("c", b"2"))), 7)
    mem.snapshot_to(str(tmp_path / "snap"))
    copy = LMDBStore(str(tmp_path / "snap"))
    assert copy.get("a/b") == b"1" and copy.get("c") == b"2" and copy.applied_index() == 7
    copy.close()


@pytest.mark.parametrize("rebuildable", [False, True], ids=["synced", "write-map"])
def test_a_batch_lmdb_itself_refuses_is_left_out_whole(tmp_path: Path, rebuildable: bool) -> None:
    """``batch_error`` checks what LMDB checks; should LMDB still refuse an operation, the
    transaction is applied again without that batch: none of its operations land (not even
    the ones before the refused one), every other batch does, and the index is consumed."""
    store = LMDBStore(str(tmp_path / "db"), rebuildable=rebuildable)
    store._max_key = 4096  # let an over-long key past the pre-check, so that LMDB refuses it
    too_long = "k" * (STORE_MAX_KEY_BYTES + 1)
    res = store.apply_entry(1, 1, [put(("a", b"1")), put(("half", b"x"), (too_long, b"y")), put(("b", b"2"))])
    assert [r.index for r in res] == [1, 1, 1]
    assert res[0].error is None and res[2].error is None
    assert res[1].error == "batch rejected by storage: BadValsizeError"
    assert (store.get("a"), store.get("half"), store.get("b")) == (b"1", None, b"2")
    assert store.applied_index() == 1
    many = store.apply_many([(put(("c", b"3")), 2), (put(("half2", b"x"), (too_long, b"y")), 3)])
    assert [r.error is None for r in many] == [True, False]
    assert store.get("c") == b"3" and store.get("half2") is None and store.applied_index() == 3
    store.close()
    again = LMDBStore(str(tmp_path / "db"), rebuildable=rebuildable)
    assert (again.get("a"), again.get("half"), again.get("c"), again.applied_index()) == (b"1", None, b"3", 3)
    again.close()
