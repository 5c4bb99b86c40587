"""pysyncobj snapshots ("full dumps") without pickle: a msgpack header plus an LMDB copy.

File format::

    b"VRSNAP01" | u32 header length | msgpack header | LMDB data file (compacted copy)

The header records the two log entries pysyncobj keeps at the snapshot point, the cluster
membership (addresses), the applied index, and the length and SHA-256 of the LMDB copy
(verified before an install touches the live store). Writing fsyncs the file before pysyncobj
renames it into place; reading installs the LMDB copy only when it is newer than what
the store already holds (a restart keeps the live store; a follower that receives a
snapshot from the leader replaces its store).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import struct
import tempfile
from typing import Any, BinaryIO, Callable, Generator, Iterable, Iterator

import lmdb
import msgpack
import structlog

from vaultraft.storage.batch import Batch, Op
from vaultraft.storage.lmdb_store import LMDBStore

log = structlog.get_logger("vaultraft.raft")

MAGIC = b"VRSNAP01"
SNAPSHOT_VERSION = 1
_CHUNK = 1 << 20

Entry = tuple[bytes, int, int]


class SnapshotError(ValueError):
    """A file that is not a vaultraft snapshot of a known version."""


def _entry(e: Any) -> list[Any]:
    return [bytes(e[0]), int(e[1]), int(e[2])]


def _digest(path: str) -> tuple[int, bytes]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.digest()


def write_snapshot(path: str, store: LMDBStore, header: dict[str, Any]) -> None:
    """Write ``header`` and a compacted copy of ``store`` to ``path``, fsynced.

    The header also records the copy's length and SHA-256, checked before any install.
    """
    tmpdir = tempfile.mkdtemp(prefix=".snap-", dir=os.path.dirname(os.path.abspath(path)) or ".")
    try:
        store.snapshot_to(tmpdir)
        data = os.path.join(tmpdir, "data.mdb")
        size, digest = _digest(data)
        copy = LMDBStore(tmpdir, map_size=max(1 << 20, 2 * size))
        try:
            applied = copy.applied_index()  # read from the copy itself: exact even under concurrent applies
        finally:
            copy.close()
        head: bytes = msgpack.packb({**header, "v": SNAPSHOT_VERSION, "applied_index": applied,
                                     "data_len": size, "sha256": digest}, use_bin_type=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, open(data, "rb") as src:
            out.write(MAGIC + struct.pack(">I", len(head)) + head)
            while chunk := src.read(_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    finally:
        for name in os.listdir(tmpdir):
            os.unlink(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)


def read_header(path: str) -> tuple[dict[str, Any], int]:
    """The header of a snapshot file and the offset where its LMDB copy starts."""
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise SnapshotError("not a vaultraft snapshot")
        raw_len = f.read(4)
        if len(raw_len) != 4:
            raise SnapshotError("truncated snapshot header")
        (n,) = struct.unpack(">I", raw_len)
        if n > 16 << 20:
            raise SnapshotError("snapshot header too large")
        raw = f.read(n)
    try:
        header = msgpack.unpackb(raw, raw=False)
    except Exception:
        raise SnapshotError("undecodable snapshot header") from None
    if not isinstance(header, dict) or header.get("v") != SNAPSHOT_VERSION:
        raise SnapshotError("unknown snapshot version")
    if not isinstance(header.get("applied_index"), int):
        raise SnapshotError("malformed snapshot header")
    return header, len(MAGIC) + 4 + n


def _copy_verified(path: str, offset: int, header: dict[str, Any], out: BinaryIO | None) -> None:
    """Stream the LMDB copy of ``path`` (from ``offset``) into ``out`` (None: only check),
    fsynced; SnapshotError when its length or SHA-256 differs from the header's."""
    want_len, want_digest = header.get("data_len"), header.get("sha256")
    if not isinstance(want_len, int) or not isinstance(want_digest, bytes):
        raise SnapshotError("snapshot header lacks the data checksum")
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        src.seek(offset)
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            if out is not None:
                out.write(chunk)
    if out is not None:
        out.flush()
        os.fsync(out.fileno())
    if size != want_len or not hmac.compare_digest(h.digest(), want_digest):
        raise SnapshotError("snapshot data does not match its checksum")


def install_snapshot(path: str, store: LMDBStore, *, force: bool = False) -> bool:
    """Replace ``store`` by the snapshot's LMDB copy when the snapshot is newer (or
    ``force``); True when it was installed."""
    header, offset = read_header(path)
    if not force and int(header.get("applied_index", 0)) <= store.applied_index():
        return False
    fd, tmp = tempfile.mkstemp(prefix=".install-", dir=os.path.dirname(os.path.abspath(store.path)))
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_verified(path, offset, header, out)
        # a truncated or altered copy must never replace the live store (LMDB would
        # SIGBUS on a short file and serve garbage from a corrupted one)
        store.replace_with(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("raft_snapshot_installed", applied_index=store.applied_index())
    return True


def pysyncobj_hooks(store: LMDBStore, make_node: Callable[[str], Any],
                    on_install: Callable[[], None] | None = None) -> tuple[Callable[..., None], Callable[[str], Any]]:
    """The ``serializer`` / ``deserializer`` pair for ``SyncObjConf``.

    pysyncobj calls ``serializer(tmp_path, (last_entry, prev_entry, cluster_nodes))`` and
    ``deserializer(path) -> (last_entry, prev_entry, cluster_nodes)``. ``on_install`` runs
    after a snapshot replaced the store (caches built on the old state must be dropped).
    """

    def serializer(tmp_path: str, data: tuple[Entry, Entry, Iterable[Any]]) -> None:
        last, prev, cluster = data
        write_snapshot(tmp_path, store, {
            "last": _entry(last), "prev": _entry(prev),
            "cluster": sorted(getattr(n, "address", str(n)) for n in cluster if n is not None),  # None: a non-voter itself
        })
        log.info("raft_snapshot_written", index=int(last[1]))

    def deserializer(path: str) -> tuple[Entry, Entry, set[Any]]:
        header, _ = read_header(path)
        try:
            last, prev = _entry(header["last"]), _entry(header["prev"])
            addrs = [a for a in header.get("cluster", []) if isinstance(a, str)]
        except (KeyError, TypeError, ValueError, IndexError):
            raise SnapshotError("malformed snapshot header") from None
        if install_snapshot(path, store) and on_install is not None:
            on_install()
        nodes = {make_node(a) for a in addrs}
        return (last[0], last[1], last[2]), (prev[0], prev[1], prev[2]), nodes

    return serializer, deserializer


# ---- snapshots through the API (sys/storage/raft/snapshot) ------------------------------------
#
# An API snapshot is the same file as a pysyncobj full dump (header + verified LMDB copy).
# A restore does not swap LMDB files under pysyncobj: the active node turns the snapshot
# into ordinary storage batches (see :func:`plan_restore`) that go through the log, so every
# member applies the same change in the same order, journal and compaction included.

#: Largest restore batch (one log entry each): 1 MiB minus room for msgpack framing.
RESTORE_BATCH_BYTES = (1 << 20) - (64 << 10)
RESTORE_BATCH_OPS = 4096
_OP_OVERHEAD = 16  # msgpack bytes around one operation's key and value


def iter_file(path: str, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The bytes of ``path`` in chunks of at most ``chunk`` (for streaming a download)."""
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data


def verify_snapshot(path: str) -> dict[str, Any]:
    """The header of ``path`` once its LMDB copy matched the header's length and SHA-256.

    Raises SnapshotError for anything that is not an intact vaultraft snapshot.
    """
    header, offset = read_header(path)
    _copy_verified(path, offset, header, None)
    return header


def extract_data(path: str, dest_dir: str) -> dict[str, Any]:
    """Verify ``path`` and write its LMDB copy to ``dest_dir/data.mdb`` (0600); the header."""
    header, offset = read_header(path)
    os.makedirs(dest_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(dest_dir, "data.mdb"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        _copy_verified(path, offset, header, out)
    return header


class SnapshotData:
    """Read-only access to the key/value data of an extracted snapshot (ciphertext only).

    The LMDB file must come from :func:`extract_data` (checksum verified). LMDB trusts
    its file: a crafted one can crash the process, which is why only a sudo token may
    upload a snapshot (that token may replace all data anyway).
    """

    def __init__(self, directory: str) -> None:
        size = os.path.getsize(os.path.join(directory, "data.mdb"))
        try:
            self._env = lmdb.open(directory, readonly=True, lock=False, max_dbs=4, subdir=True,
                                  map_size=max(1 << 20, size), readahead=False)
        except lmdb.Error:
            raise SnapshotError("snapshot data is not an LMDB store") from None
        try:
            self._data = self._env.open_db(b"data", create=False)
        except lmdb.Error:
            self._env.close()
            raise SnapshotError("snapshot data holds no vaultraft key space") from None

    def get(self, key: str) -> bytes | None:
        """The stored (ciphertext or raw seal record) bytes at ``key``, or None."""
        k = key.encode("utf-8")
        if not k or len(k) > self._env.max_key_size():
            return None
        with self._env.begin(db=self._data) as txn:
            v = txn.get(k)
            return None if v is None else bytes(v)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) in key order, from one read transaction."""
        with self._env.begin(db=self._data) as txn:
            for k, v in txn.cursor():
                yield bytes(k).decode("utf-8"), bytes(v)

    def close(self) -> None:
        """Close the environment; idempotent."""
        self._env.close()


def plan_restore(snapshot: SnapshotData, live: LMDBStore, *, keep: Callable[[str], bool] = lambda _k: False,
                 exclude: Callable[[str], bool] = lambda _k: False, max_bytes: int = RESTORE_BATCH_BYTES,
                 max_ops: int = RESTORE_BATCH_OPS) -> Generator[Batch, None, None]:
    """Batches that turn ``live`` into ``snapshot``: puts of every key whose value differs,
    then deletes of every key the snapshot lacks. Keys for which ``keep`` is true are left
    alone; snapshot keys for which ``exclude`` is true are not restored (so live ones are
    deleted). A batch stays under ``max_bytes`` unless a single value is larger.

    The live keys are listed before the first batch is yielded, so no read transaction on
    ``live`` stays open while the caller applies the batches (writes must be held off
    meanwhile: the plan is only correct if nothing else changes ``live``).
    """
    live_keys = [k for k, _ in live.all_items() if not keep(k)]
    in_snapshot: set[str] = set()
    ops: list[Op] = []
    size = 0
    for key, value in snapshot.items():
        if keep(key) or exclude(key):
            continue
        in_snapshot.add(key)
        if live.get(key) == value:
            continue
        cost = len(key) + len(value) + _OP_OVERHEAD
        if ops and (size + cost > max_bytes or len(ops) >= max_ops):
            yield Batch(tuple(ops), secrets.token_bytes(16))
            ops, size = [], 0
        ops.append(Op.put(key, value))
        size += cost
    for key in live_keys:
        if key in in_snapshot:
            continue
        cost = len(key) + _OP_OVERHEAD
        if ops and (size + cost > max_bytes or len(ops) >= max_ops):
            yield Batch(tuple(ops), secrets.token_bytes(16))
            ops, size = [], 0
        ops.append(Op.delete(key))
        size += cost
    if ops:
        yield Batch(tuple(ops), secrets.token_bytes(16))


class WriteGate(asyncio.Queue[Any]):
    """Stands in for RaftPhysical's write queue while a restore runs: every write is
    refused with a RaftError carrying ``reason`` (core answers it as 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def put_nowait(self, item: Any) -> None:
        """Refuse the write."""
        from vaultraft.raft.node import RaftError  # node imports this module

        raise RaftError(self.reason)
