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

import hashlib
import hmac
import os
import struct
import tempfile
from typing import Any, Callable, Iterable

import msgpack
import structlog

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


def install_snapshot(path: str, store: LMDBStore, *, force: bool = False) -> bool:
    """Replace ``store`` by the snapshot's LMDB copy when the snapshot is newer (or
    ``force``); True when it was installed."""
    header, offset = read_header(path)
    if not force and int(header.get("applied_index", 0)) <= store.applied_index():
        return False
    want_len, want_digest = header.get("data_len"), header.get("sha256")
    if not isinstance(want_len, int) or not isinstance(want_digest, bytes):
        raise SnapshotError("snapshot header lacks the data checksum")
    fd, tmp = tempfile.mkstemp(prefix=".install-", dir=os.path.dirname(os.path.abspath(store.path)))
    try:
        h = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            src.seek(offset)
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        # a truncated or altered copy must never replace the live store (LMDB would
        # SIGBUS on a short file and serve garbage from a corrupted one)
        if size != want_len or not hmac.compare_digest(h.digest(), want_digest):
            raise SnapshotError("snapshot data does not match its checksum")
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
            "cluster": sorted(getattr(n, "address", str(n)) for n in cluster),
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
