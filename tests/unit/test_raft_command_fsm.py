"""Raft log commands (versioned msgpack) and the state machine that applies them."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultraft.raft.command import (
    COMMAND_VERSION,
    Command,
    CommandDecodeError,
    CommandKind,
)
from vaultraft.raft.fsm import StateMachine
from vaultraft.storage import ApplyResult, Batch, Op
from vaultraft.storage.batch import OpKind
from vaultraft.storage.lmdb_store import LMDBStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LMDBStore]:
    s = LMDBStore(str(tmp_path / "db"), map_size=1 << 24)
    yield s
    s.close()


def put(key: str, value: bytes, rid: bytes = b"") -> Batch:
    return Batch((Op.put(key, value),), rid)


def entry(*batches: Batch) -> bytes:
    return Command(CommandKind.BATCHES, tuple(batches)).encode()


def snapshot_of(store: LMDBStore) -> list[tuple[str, bytes]]:
    return list(store.all_items())


# -- commands ------------------------------------------------------------------------------


def test_command_round_trip() -> None:
    batches = (
        Batch((Op.put("a", b"1"), Op.delete("b", local=True)), b"rid-1"),
        Batch((), b""),
        Batch((Op.put("c/d", b"\x00\xff" * 10, local=True),)),
    )
    cmd = Command(CommandKind.BATCHES, batches, b"nonce")
    raw = cmd.encode()
    assert isinstance(raw, bytes)
    back = Command.decode(raw)
    assert back == cmd
    assert back.batches[0].ops[1].local is True and back.batches[0].request_id == b"rid-1"
    noop = Command(CommandKind.NOOP, nonce=os.urandom(8))
    assert Command.decode(noop.encode()) == noop
    # the wire format is exactly [version, kind, [batch bytes], nonce, {"ts": leader time}]
    assert msgpack.unpackb(raw, raw=False) == [COMMAND_VERSION, 1, [b.encode() for b in batches], b"nonce", {"ts": 0}]
    # version 1 entries (written before replication existed) still decode
    v1 = msgpack.packb([1, 1, [b.encode() for b in batches], b"nonce"], use_bin_type=True)
    assert Command.decode(v1) == cmd


@pytest.mark.parametrize("raw", [
    b"",
    b"\xc1",  # msgpack's never-used byte
    b"\x80\x03",
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00.",  # a pickle stream is not a command
    msgpack.packb([COMMAND_VERSION, 1, []]),  # 3 elements
    msgpack.packb({"v": 1}),
    msgpack.packb([COMMAND_VERSION, 1, "not a list", b""]),
    msgpack.packb([COMMAND_VERSION, 1, [], "nonce as str"]),
    msgpack.packb([COMMAND_VERSION, 1, ["a batch as str"], b""]),
    msgpack.packb([COMMAND_VERSION, 1, [b"\x93garbage"], b""]),
    msgpack.packb([COMMAND_VERSION, 1, [msgpack.packb([99, b"", []])], b""]),  # unknown batch version
    msgpack.packb([COMMAND_VERSION, 1, [msgpack.packb([1, b"", [[1, "k", None, False]]])], b""]),  # put w/o value
    b"\xa3\xff\xfe\xfd",  # invalid UTF-8 string
])
def test_garbage_is_a_decode_error(raw: bytes) -> None:
    with pytest.raises(CommandDecodeError):
        Command.decode(raw)


def test_unknown_version_and_kind() -> None:
    with pytest.raises(CommandDecodeError, match="unknown command version 3"):
        Command.decode(msgpack.packb([COMMAND_VERSION + 1, 1, [], b"", {}], use_bin_type=True))
    with pytest.raises(CommandDecodeError, match="unknown command version"):
        Command.decode(msgpack.packb(["1", 1, [], b""], use_bin_type=True))
    with pytest.raises(CommandDecodeError, match="unknown command kind 9"):
        Command.decode(msgpack.packb([COMMAND_VERSION, 9, [], b"", {}], use_bin_type=True))
    with pytest.raises(CommandDecodeError, match="unknown command kind"):
        Command.decode(msgpack.packb([COMMAND_VERSION, None, [], b"", {}], use_bin_type=True))


# -- the state machine ---------------------------------------------------------------------


def test_apply_batches_in_one_entry(store: LMDBStore) -> None:
    fsm = StateMachine(store)
    results = fsm.apply(entry(put("a", b"1"), put("b", b"2"), Batch((Op.delete("a"),))), 5, term=3)
    assert results == [ApplyResult(5), ApplyResult(5), ApplyResult(5)]
    assert store.get("a") is None and store.get("b") == b"2"
    assert store.applied_index() == 5 and store.applied_term() == 3
    assert fsm.failed is None


def test_invalid_batch_is_recorded_not_applied(store: LMDBStore) -> None:
    fsm = StateMachine(store)
    too_long = "k" * 600  # allowed by Batch (4096) but over LMDB's 511-byte limit
    results = fsm.apply(entry(put("ok", b"1"), Batch((Op.put("x", b"2"), Op.put(too_long, b"3")))), 2)
    assert results[0] == ApplyResult(2)
    assert results[1].index == 2 and results[1].error is not None and "too long" in results[1].error
    assert store.get("ok") == b"1" and store.get("x") is None  # the failing batch is atomic
    assert store.applied_index() == 2


def test_noop_advances_index_only(store: LMDBStore) -> None:
    fsm = StateMachine(store)
    before = snapshot_of(store)
    assert fsm.apply(Command(CommandKind.NOOP, nonce=b"n").encode(), 7, 2) == []
    assert store.applied_index() == 7 and snapshot_of(store) == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raws=st.lists(st.binary(max_size=64) | st.builds(
    lambda items: msgpack.packb(items, use_bin_type=True),
    st.lists(st.integers(-3, 3) | st.binary(max_size=8) | st.text(max_size=4) | st.none(), max_size=5)),
    min_size=1, max_size=6))
def test_apply_never_raises_for_garbage(store: LMDBStore, raws: list[bytes]) -> None:
    # one store across examples: each example continues the log where the last one stopped
    fsm = StateMachine(store)
    for raw in raws:
        i = store.applied_index() + 1
        results = fsm.apply(raw, i, term=1)
        try:
            cmd = Command.decode(raw)
        except CommandDecodeError:
            assert len(results) == 1 and results[0].index == i and results[0].error
        else:  # hypothesis found a well-formed command: it applies normally
            assert len(results) == (len(cmd.batches) if cmd.kind is CommandKind.BATCHES else 0)
        assert store.applied_index() == i
    assert fsm.failed is None


def test_request_id_dedup(store: LMDBStore) -> None:
    fsm = StateMachine(store)
    assert fsm.apply(entry(put("k", b"v1", b"req-A")), 1) == [ApplyResult(1)]
    # the same request id arriving again (a client retry landing in a later entry) is skipped
    # and reports the index of the entry that applied it
    store_before = snapshot_of(store)
    results = fsm.apply(entry(put("k", b"v2", b"req-A"), put("other", b"x", b"req-B")), 2)
    assert results == [ApplyResult(1), ApplyResult(2)]
    assert store.get("k") == b"v1" and store.get("other") == b"x"
    assert [kv for kv in snapshot_of(store) if kv[0] != "other"] == store_before
    # an empty request id is never deduplicated
    fsm.apply(entry(put("k", b"v3")), 3)
    fsm.apply(entry(put("k", b"v4")), 4)
    assert store.get("k") == b"v4"
    # a batch that failed does not consume its request id: a corrected retry applies
    bad = fsm.apply(entry(put("x" * 600, b"", b"req-C")), 5)
    assert bad[0].error is not None
    assert fsm.apply(entry(put("c", b"ok", b"req-C")), 6) == [ApplyResult(6)]
    assert store.get("c") == b"ok"


def test_replay_of_an_index_changes_nothing(store: LMDBStore) -> None:
    seen: list[tuple[int, list[str]]] = []
    fsm = StateMachine(store, observer=lambda i, keys: seen.append((i, list(keys))))
    fsm.apply(entry(put("a", b"1")), 1)
    fsm.apply(entry(put("a", b"2")), 2)
    before = snapshot_of(store)
    seen.clear()
    for idx in (1, 2):  # pysyncobj re-applies its journal after a restart
        fsm.apply(entry(put("a", b"replayed"), put("new", b"x")), idx)
    fsm.apply(b"garbage", 2)
    assert snapshot_of(store) == before
    assert store.applied_index() == 2
    assert seen == []  # nothing was written, so nothing is reported


def test_observer_receives_written_keys(store: LMDBStore) -> None:
    seen: list[tuple[int, list[str]]] = []
    fsm = StateMachine(store, observer=lambda i, keys: seen.append((i, list(keys))))
    fsm.apply(entry(put("a", b"1", b"r1"), Batch((Op.put("b", b"2"), Op.delete("c")))), 1)
    fsm.apply(entry(put("a", b"again", b"r1"), put("z" * 600, b"bad")), 2)  # deduped + failed
    fsm.apply(Command(CommandKind.NOOP).encode(), 3)
    fsm.apply(b"\x00junk", 4)
    assert seen == [(1, ["a", "b", "c"])]


def test_raising_observer_does_not_break_apply(store: LMDBStore) -> None:
    calls: list[int] = []

    def observer(index: int, keys: Sequence[str]) -> None:
        calls.append(index)
        raise RuntimeError("cache exploded")

    fsm = StateMachine(store, observer=observer)
    assert fsm.apply(entry(put("a", b"1")), 1) == [ApplyResult(1)]
    assert fsm.apply(entry(put("b", b"2")), 2) == [ApplyResult(2)]
    assert calls == [1, 2]
    assert store.get("a") == b"1" and store.get("b") == b"2" and store.applied_index() == 2
    assert fsm.failed is None


@pytest.mark.parametrize("rebuildable", [False, True], ids=["synced", "write-map"])
def test_map_full_grows_the_store(tmp_path: Path, rebuildable: bool) -> None:
    s = LMDBStore(str(tmp_path / "small"), map_size=1 << 16, rebuildable=rebuildable)
    try:
        fsm = StateMachine(s)
        big = [put(f"k{i}", os.urandom(2000)) for i in range(40)]  # ~80 KB > 64 KB map
        results = fsm.apply(entry(*big), 1)
        assert all(r == ApplyResult(1) for r in results)
        assert s.get("k39") is not None and fsm.failed is None
        more = [put(f"m{i}", os.urandom(2000)) for i in range(80)]
        assert all(r == ApplyResult(2) for r in fsm.apply(entry(*more), 2))
        assert s.get("k0") is not None and s.get("m79") is not None and s.applied_index() == 2
    finally:
        s.close()


def test_storage_failure_stops_applying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LMDBStore(str(tmp_path / "db"), map_size=1 << 20)
    try:
        fsm = StateMachine(s)
        fsm.apply(entry(put("a", b"1")), 1)
        real = s.apply_entry

        def disk_error(index: int, term: int, batches: Sequence[Batch]) -> list[ApplyResult]:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(s, "apply_entry", disk_error)
        failed = fsm.apply(entry(put("b", b"2")), 2)
        assert failed[0].error == "storage failure on this node" and fsm.failed is not None
        monkeypatch.setattr(s, "apply_entry", real)  # the disk recovers...
        # ...but entry 2 was never stored: applying 3 on top would silently skip it
        assert fsm.apply(entry(put("c", b"3")), 3)[0].error == "storage failure on this node"
        assert s.applied_index() == 1 and s.get("b") is None and s.get("c") is None
        # a restart (fresh state machine) replays the log from entry 2
        fresh = StateMachine(s)
        fresh.apply(entry(put("b", b"2")), 2)
        fresh.apply(entry(put("c", b"3")), 3)
        assert s.get("b") == b"2" and s.get("c") == b"3" and s.applied_index() == 3
    finally:
        s.close()


def test_log_commands_carry_ciphertext_bytes_unexpanded() -> None:
    """pysyncobj pickles each command; vaultraft makes it use protocol 5, where bytes are
    stored as they are (protocol 2 stored them as latin-1 text in UTF-8: ~1.5x for
    ciphertext). A command pickled with protocol 2 by an older node still loads."""
    import pickle

    import pysyncobj.pickle as pysyncobj_pickle

    import vaultraft.raft.node  # noqa: F401  (sets the protocol)

    payload = os.urandom(15_000)
    call = (0, (payload,), {})
    pickled = pysyncobj_pickle.dumps(call)
    assert len(pickled) < len(payload) + 64
    assert pysyncobj_pickle.loads(pickled) == call
    old = pickle.dumps(call, 2)
    assert len(old) > len(payload) * 1.3
    assert pysyncobj_pickle.loads(old) == call


# -- the active node applies what it proposed without decoding it (Command.encode_known) --------

_any_key = st.one_of(st.text(max_size=8), st.text(min_size=1100, max_size=1100), st.integers(), st.none())
_any_value = st.one_of(st.binary(max_size=8), st.builds(bytearray, st.binary(max_size=8)), st.none(), st.text(max_size=4))
_any_op = st.builds(Op, st.sampled_from(list(OpKind)), _any_key, _any_value,
                    st.one_of(st.booleans(), st.integers(0, 2)))
_any_batch = st.builds(Batch, st.lists(_any_op, max_size=4).map(tuple), st.one_of(st.binary(max_size=8), st.text(max_size=2)))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(_any_batch, max_size=4), ts=st.integers(0, 2**40))
def test_encode_known_is_exactly_what_decode_returns_or_none(batches: list[Batch], ts: int) -> None:
    """The active node's shortcut may never apply anything a follower would not: when
    ``encode_known`` offers a command it equals ``decode`` of the same bytes (values and
    their types too); for anything decode rejects or converts it offers None."""
    try:
        raw, known = Command(CommandKind.BATCHES, tuple(batches), ts_ms=ts).encode_known()
    except (TypeError, ValueError, OverflowError):  # msgpack cannot encode it: nobody proposes that
        return
    assert raw == Command(CommandKind.BATCHES, tuple(batches), ts_ms=ts).encode()
    try:
        decoded = Command.decode(raw)
    except CommandDecodeError:
        assert known is None
        return
    if known is None:  # only a conversion (bytearray -> bytes, 2 -> True) may withhold it
        assert decoded.batches != tuple(batches) or any(
            type(o.value) is bytearray or type(o.local) is not bool for b in batches for o in b.ops)
        return
    assert known == decoded and known.raw_batches == decoded.raw_batches
    for kb, db in zip(known.batches, decoded.batches):
        assert [(type(o.key), type(o.value), type(o.local)) for o in kb.ops] == \
            [(type(o.key), type(o.value), type(o.local)) for o in db.ops]


def test_the_active_node_applies_its_own_command_like_a_follower_decoding_it(tmp_path: Path) -> None:
    leader, follower = LMDBStore(str(tmp_path / "l")), LMDBStore(str(tmp_path / "f"))
    try:
        cmd = Command(CommandKind.BATCHES, (put("a", b"1", b"r1"), Batch((Op.delete("zz"), Op.put("b", b"2"))),
                                            put("a", b"again", b"r1")), ts_ms=5)
        raw, known = cmd.encode_known()
        assert known is not None
        mine = StateMachine(leader).apply(raw, 1, 1, known)
        theirs = StateMachine(follower).apply(raw, 1, 1)
        assert mine == theirs and mine[2] == ApplyResult(1)  # the retried request id: skipped
        assert snapshot_of(leader) == snapshot_of(follower)
        assert leader.read_wal(0, 10, 1 << 20) == follower.read_wal(0, 10, 1 << 20)
    finally:
        leader.close()
        follower.close()
