"""Pickle-free Raft snapshots: msgpack header + LMDB copy, and the pysyncobj hooks."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from pysyncobj.node import TCPNode

from vaultraft.raft.snapshot import (
    MAGIC,
    SNAPSHOT_VERSION,
    SnapshotError,
    install_snapshot,
    pysyncobj_hooks,
    read_header,
    write_snapshot,
)
from vaultraft.storage import Batch, Op
from vaultraft.storage.lmdb_store import LMDBStore


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LMDBStore]:
    s = LMDBStore(str(tmp_path / "src"), map_size=1 << 24)
    s.apply_entry(40, 2, [Batch((Op.put(f"k/{i:03d}", os.urandom(300)),), f"rid-{i}".encode()) for i in range(1, 41)])
    s.apply_entry(41, 3, [Batch((Op.delete("k/001"), Op.put("z", b"last")))])
    yield s
    s.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[LMDBStore]:
    s = LMDBStore(str(tmp_path / "dst"), map_size=1 << 20)
    s.apply_entry(1, 1, [Batch((Op.put("stale", b"old"),))])
    yield s
    s.close()


def items(store: LMDBStore) -> list[tuple[str, bytes]]:
    return list(store.all_items())


def test_round_trip_between_two_stores(tmp_path: Path, source: LMDBStore, target: LMDBStore) -> None:
    path = str(tmp_path / "snap")
    write_snapshot(path, source, {"last": [b"\x00", 41, 3], "note": "x"})
    assert os.stat(path).st_mode & 0o777 == 0o600
    raw = Path(path).read_bytes()
    assert raw.startswith(MAGIC)
    header, offset = read_header(path)
    assert header["v"] == SNAPSHOT_VERSION and header["applied_index"] == 41
    assert header["last"] == [b"\x00", 41, 3] and header["note"] == "x"
    assert offset == len(MAGIC) + 4 + struct.unpack(">I", raw[8:12])[0]
    assert offset + header["data_len"] == os.path.getsize(path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".snap-")]  # temp dir cleaned

    assert install_snapshot(path, target) is True
    assert items(target) == items(source) and len(items(target)) == 40
    assert target.get("stale") is None
    assert target.applied_index() == 41 and target.applied_term() == 3
    # request-id dedup state travels with the data: a retried batch is still skipped
    results = target.apply_entry(42, 3, [Batch((Op.put("k/005", b"dup"),), b"rid-5")])
    assert results[0].index == 40 and target.get("k/005") == source.get("k/005")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".install-")]


def test_install_skipped_when_store_is_newer(tmp_path: Path, source: LMDBStore, target: LMDBStore) -> None:
    path = str(tmp_path / "snap")
    write_snapshot(path, source, {})
    target.apply_entry(41, 4, [Batch((Op.put("newer", b"1"),))])  # same index: not newer
    before = items(target)
    assert install_snapshot(path, target) is False
    target.apply_entry(50, 4, [Batch((Op.put("newest", b"1"),))])
    assert install_snapshot(path, target) is False
    assert items(target) == sorted(before + [("newest", b"1")]) and target.applied_index() == 50
    assert install_snapshot(path, target, force=True) is True  # forced: replaced even if older
    assert items(target) == items(source) and target.applied_index() == 41


def _corrupt(path: str, out: str, how: str) -> None:
    data = bytearray(Path(path).read_bytes())
    _, offset = read_header(path)
    if how == "truncated-body":
        data = data[: offset + (len(data) - offset) // 2]
    elif how == "flipped-body":
        for j in range(offset + 8192, len(data), 101):
            data[j] ^= 0xFF
    elif how == "no-body":
        data = data[:offset]
    elif how == "truncated-header":
        data = data[: len(MAGIC) + 4 + 3]
    Path(out).write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated-body", "flipped-body", "no-body", "truncated-header"])
def test_corrupt_snapshot_never_replaces_the_store(tmp_path: Path, source: LMDBStore, target: LMDBStore,
                                                   how: str) -> None:
    good = str(tmp_path / "snap")
    write_snapshot(good, source, {})
    bad = str(tmp_path / "bad")
    _corrupt(good, bad, how)
    before = items(target)
    with pytest.raises(SnapshotError):
        install_snapshot(bad, target)
    assert items(target) == before and target.applied_index() == 1  # live store untouched
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".install-")]


def _header_file(path: Path, header: object, body: bytes = b"") -> str:
    head = msgpack.packb(header, use_bin_type=True)
    path.write_bytes(MAGIC + struct.pack(">I", len(head)) + head + body)
    return str(path)


def test_non_snapshot_files_are_rejected(tmp_path: Path, target: LMDBStore) -> None:
    cases = {
        "empty": b"",
        "pickle": pickle.dumps(({"x": 1}, (b"", 1, 1))),  # pysyncobj's own full-dump format
        "magic-only": MAGIC,
        "huge-header-length": MAGIC + struct.pack(">I", 1 << 30) + b"\x80",
        "garbage-header": MAGIC + struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1",
    }
    for name, raw in cases.items():
        p = tmp_path / name
        p.write_bytes(raw)
        with pytest.raises(SnapshotError):
            read_header(str(p))
        with pytest.raises(SnapshotError):
            install_snapshot(str(p), target)
    for header in ({"v": SNAPSHOT_VERSION + 1, "applied_index": 5}, [1, 2], {"v": SNAPSHOT_VERSION},
                   {"v": SNAPSHOT_VERSION, "applied_index": "5"}):
        with pytest.raises(SnapshotError):
            read_header(_header_file(tmp_path / "h", header))
    # a well-formed header without the data checksum is not installed
    nosum = _header_file(tmp_path / "nosum", {"v": SNAPSHOT_VERSION, "applied_index": 99}, b"\x00" * 4096)
    with pytest.raises(SnapshotError, match="checksum"):
        install_snapshot(nosum, target)
    assert target.get("stale") == b"old" and target.applied_index() == 1


def test_pysyncobj_hooks_contract(tmp_path: Path, source: LMDBStore, target: LMDBStore) -> None:
    """pysyncobj calls ``serializer(tmp, (last, prev, cluster))`` and expects
    ``deserializer(path) -> (last, prev, nodes)`` with entries as (bytes, index, term)."""
    serializer, _ = pysyncobj_hooks(source, TCPNode)
    _, deserializer = pysyncobj_hooks(target, TCPNode)
    last, prev = (b"\x00\x80pickled-cmd", 41, 3), (b"\x01", 40, 2)
    cluster = {TCPNode("127.0.0.1:7001"), TCPNode("127.0.0.1:7002"), TCPNode("127.0.0.1:7003")}
    path = str(tmp_path / "dump.tmp")
    serializer(path, (last, prev, cluster))
    header, _ = read_header(path)
    assert header["cluster"] == ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    assert header["last"] == list(last) and header["prev"] == list(prev)

    got_last, got_prev, nodes = deserializer(path)
    assert got_last == last and got_prev == prev
    assert isinstance(got_last, tuple) and isinstance(got_last[0], bytes) and isinstance(got_last[1], int)
    assert isinstance(nodes, set) and nodes == cluster
    assert all(isinstance(n, TCPNode) for n in nodes)
    assert {n.address for n in nodes} == {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"}
    assert items(target) == items(source) and target.applied_index() == 41
    # pysyncobj wraps the result as (None,) + result: no pickled object state
    assert ((None,) + deserializer(path))[1:] == (last, prev, cluster)

    # the deserializer surfaces a broken file as SnapshotError (pysyncobj logs and keeps its state)
    with open(path, "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\xff" * 10)
    fresh = LMDBStore(str(tmp_path / "fresh"), map_size=1 << 20)
    try:
        _, deser_fresh = pysyncobj_hooks(fresh, TCPNode)
        with pytest.raises(SnapshotError):
            deser_fresh(path)
        assert fresh.applied_index() == 0
    finally:
        fresh.close()
    bad = _header_file(tmp_path / "nolast", {"v": SNAPSHOT_VERSION, "applied_index": 1})
    with pytest.raises(SnapshotError):
        deserializer(bad)
