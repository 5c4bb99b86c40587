"""The replication WAL and a secondary's remote applies in the LMDB store and state machine."""

from __future__ import annotations

from pathlib import Path

from vaultraft.raft.command import Command, CommandKind
from vaultraft.raft.fsm import StateMachine
from vaultraft.storage import Batch, Op
from vaultraft.storage.lmdb_store import LMDBStore, ReplicaState, WalRetention
from vaultraft.storage.wal import WalEntry


def _put(key: str, value: bytes, rid: bytes = b"") -> Batch:
    return Batch((Op.put(key, value),), rid)


def test_wal_records_applied_batches_without_cluster_own_keys(tmp_path: Path) -> None:
    store = LMDBStore(str(tmp_path / "s"))
    dup = _put("a", b"1", b"rid-a")
    store.apply_entry(1, 1, [dup, Batch((Op.put("core/raft/nodes/x", b"own"), Op.put("b", b"2")))], ts_ms=1000)
    store.apply_entry(2, 1, [dup], ts_ms=1001)  # a retried request: applied nothing, ships nothing
    store.apply_entry(3, 1, [Batch((Op.put("core/leader", b"me"),))], ts_ms=1002)  # only own keys: nothing
    store.apply_entry(4, 1, [Batch((Op.delete("a", local=True),))], ts_ms=1003)
    assert store.wal_bounds() == (1, 4)
    entries = store.read_wal(0, 100, 1 << 20)
    assert [e.index for e in entries] == [1, 4]
    first = [Batch.decode(b) for b in entries[0].batches]
    assert first[0] == dup and [o.key for o in first[1].ops] == ["b"]
    assert entries[1].ts_ms == 1003 and Batch.decode(entries[1].batches[0]).ops[0].local is True
    assert [e.index for e in store.read_wal(1, 100, 1 << 20)] == [4]
    assert len(store.read_wal(0, 1, 1 << 20)) == 1
    store.close()
    reopened = LMDBStore(str(tmp_path / "s"))
    assert reopened.wal_bounds() == (1, 4)


def test_wal_retention_by_count_and_age(tmp_path: Path) -> None:
    store = LMDBStore(str(tmp_path / "s"), wal_retention=WalRetention(entries=10, age_ms=5000))
    for i in range(1, 31):
        store.apply_entry(i, 1, [_put(f"k{i}", b"v")], ts_ms=1000 + i)
    assert store.wal_bounds() == (21, 30)
    store.apply_entry(31, 1, [_put("late", b"v")], ts_ms=1000 + 31 + 5000 + 3)  # all older ones expired
    assert store.wal_bounds() == (31, 31)
    off = LMDBStore(str(tmp_path / "off"), wal_retention=WalRetention(entries=0))
    off.apply_entry(1, 1, [_put("k", b"v")], ts_ms=1)
    assert off.wal_bounds() == (2, 1)  # nothing retained: only a caught-up secondary may stream


def test_remote_bulk_sync_then_wal_keeps_own_keys(tmp_path: Path) -> None:
    store = LMDBStore(str(tmp_path / "s"))
    store.apply_entry(1, 1, [Batch((Op.put("core/raft/tls", b"mine"), Op.put("old", b"x")))])
    err, _ = store.apply_remote(2, 1, "reset", lineage="L1", remote=50)
    assert err is None and store.get("old") is None and store.get("core/raft/tls") == b"mine"
    assert store.replica_state() == ReplicaState("L1", 50, False)
    store.apply_remote(3, 1, "put", lineage="", remote=0, items=[("a", b"1"), ("core/leader", b"theirs")])
    assert store.get("core/leader") is None and store.get("a") == b"1"
    # a WAL before the sync completes is refused
    err, _ = store.apply_remote(4, 1, "wal", lineage="L1", remote=0, wal=[WalEntry(51, 0, (_put("b", b"2").encode(),))])
    assert err is not None and store.get("b") is None
    store.apply_remote(5, 1, "end", lineage="L1", remote=50)
    wal = [WalEntry(49, 0, (_put("stale", b"s").encode(),)), WalEntry(51, 0, (_put("b", b"2").encode(),)),
           WalEntry(53, 0, (Batch((Op.delete("a"), Op.put("core/raft/tls", b"theirs"))).encode(),))]
    err, keys = store.apply_remote(6, 1, "wal", lineage="L1", remote=0, wal=wal)
    assert err is None and sorted(keys) == ["a", "b"]
    assert store.get("stale") is None and store.get("a") is None and store.get("b") == b"2"
    assert store.get("core/raft/tls") == b"mine"
    assert store.replica_state() == ReplicaState("L1", 53, True)
    # another lineage's stream is refused; replaying an applied local index changes nothing
    err, _ = store.apply_remote(7, 1, "wal", lineage="L2", remote=0, wal=[WalEntry(60, 0, (_put("c", b"3").encode(),))])
    assert err is not None and store.get("c") is None
    assert store.apply_remote(6, 1, "reset", lineage="L9", remote=0) == (None, [])
    store.close()
    assert LMDBStore(str(tmp_path / "s")).replica_state() == ReplicaState("L1", 53, True)


def test_state_machine_applies_replication_commands_and_digests_match(tmp_path: Path) -> None:
    primary = LMDBStore(str(tmp_path / "p"))
    primary.apply_entry(1, 1, [_put("x", b"1"), _put("core/raft/tls", b"p-ca")])
    primary.apply_entry(2, 1, [_put("y", b"2")])
    secondary = LMDBStore(str(tmp_path / "s"))
    secondary.apply_entry(1, 1, [_put("core/raft/tls", b"s-ca")])
    fsm = StateMachine(secondary)
    with primary.replicated_items(lambda k: True) as (index, items):
        pairs = list(items)
    assert index == 2 and [k for k, _ in pairs] == ["x", "y"]
    assert fsm.apply(Command(CommandKind.REPL_RESET, lineage="L", remote_index=index).encode(), 2)[0].error is None
    fsm.apply(Command(CommandKind.REPL_PUT, items=tuple(pairs)).encode(), 3)
    fsm.apply(Command(CommandKind.REPL_END, lineage="L", remote_index=index).encode(), 4)
    primary.apply_entry(3, 1, [Batch((Op.delete("x"), Op.put("z", b"3")))])
    res = fsm.apply(Command(CommandKind.REPL_WAL, lineage="L", wal=tuple(primary.read_wal(2, 10, 1 << 20))).encode(), 5)
    assert res[0].error is None

    def digest(store: LMDBStore) -> list[tuple[str, bytes]]:
        with store.replicated_items(lambda k: True) as (_, items):
            return list(items)

    assert digest(primary) == digest(secondary) == [("y", b"2"), ("z", b"3")]
    assert secondary.get("core/raft/tls") == b"s-ca"


def test_the_in_memory_tail_answers_what_the_store_would(tmp_path: Path) -> None:
    """read_wal_cached is read_wal without a transaction for a secondary that is close
    behind; it declines (None) for a position older than the tail, after a reopen, and after
    a secondary-side apply, where only the store knows."""
    import random

    from vaultraft.storage import lmdb_replica

    store = LMDBStore(str(tmp_path / "s"), wal_retention=WalRetention(entries=700))
    assert store.read_wal_cached(0, 10, 1 << 20) == []  # a new store: nothing after 0
    rnd = random.Random(5)
    for i in range(1, 801):
        if i % 7 == 0:  # only cluster-own keys: this index has no WAL entry
            store.apply_entry(i, 1, [Batch((Op.put("core/leader", b"me"),))], ts_ms=i)
        else:
            store.apply_entry(i, 1, [_put(f"k{i}", rnd.randbytes(rnd.randint(1, 300)))], ts_ms=i)
    assert store.read_wal_cached(100, 10, 1 << 20) is None  # older than the tail (512 entries)
    floor = 800 - lmdb_replica._TAIL_ENTRIES
    for after in (floor + 200, 750, 790, 799, 800):
        for max_entries, max_bytes in ((1, 1 << 20), (5, 1 << 20), (100, 600), (100, 1 << 20)):
            cached = store.read_wal_cached(after, max_entries, max_bytes)
            assert cached == store.read_wal(after, max_entries, max_bytes), (after, max_entries, max_bytes)
    store.close()
    reopened = LMDBStore(str(tmp_path / "s"), wal_retention=WalRetention(entries=700))
    assert reopened.read_wal_cached(790, 10, 1 << 20) is None  # below the applied index at open
    assert reopened.read_wal_cached(800, 10, 1 << 20) == []
    reopened.apply_entry(801, 1, [_put("x", b"1")], ts_ms=801)
    assert reopened.read_wal_cached(800, 10, 1 << 20) == reopened.read_wal(800, 10, 1 << 20)
    reopened.apply_remote(802, 1, "reset", lineage="L", remote=5)
    assert reopened.read_wal_cached(800, 10, 1 << 20) is None


def test_a_shipped_batch_lmdb_refuses_is_left_out_whole(tmp_path: Path) -> None:
    store = LMDBStore(str(tmp_path / "s"), rebuildable=True)
    store.apply_remote(1, 1, "reset", lineage="L1", remote=10)
    store.apply_remote(2, 1, "end", lineage="L1", remote=10)
    store._max_key = 4096  # past the pre-check: LMDB itself refuses the key
    bad = Batch((Op.put("half", b"x"), Op.put("k" * 600, b"y"))).encode()
    wal = [WalEntry(11, 0, (_put("a", b"1").encode(), bad)), WalEntry(12, 0, (_put("b", b"2").encode(),))]
    err, keys = store.apply_remote(3, 1, "wal", lineage="L1", remote=0, wal=wal)
    assert err is None and sorted(keys) == ["a", "b"]
    assert (store.get("a"), store.get("half"), store.get("b")) == (b"1", None, b"2")
    assert store.replica_state() == ReplicaState("L1", 12, True) and store.applied_index() == 3
