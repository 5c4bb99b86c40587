"""Abandoning a staged activation: the backup of the cluster's own data (``backup.py``) and
the staged record's metadata (``staging.py``), over a real in-memory store and barrier."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import pytest

from vaultraft.barrier import KEYRING_PATH, Barrier
from vaultraft.core.replication import backup, staging
from vaultraft.core.replication.records import ReplicationRecord
from vaultraft.core.seal_manager import SealManager
from vaultraft.core.seal_state import HSM_ROOT_KEY_NEXT_KEY
from vaultraft.logical import InternalError
from vaultraft.storage import Batch, Op
from vaultraft.storage.local import LocalPhysical
from vaultraft.storage.wal import is_cluster_own

OWN = {
    "core/mounts": b"own mounts",
    "core/cluster": b"own cluster",
    "logical/aaa/secret/one": b"one",
    "logical/aaa/secret/deep/two": b"two",
    "sys/token/id/abc": b"root token",
    "core/local-mounts": b"local",
}
CLUSTER_OWN = {
    "core/raft/ca": b"raft ca",
    "core/seal-config": b"own seal",
    "core/root-key": b"own root key",
    "core/replication/epoch": b"1",
}


@pytest.fixture
async def phys() -> AsyncIterator[LocalPhysical]:
    p = await LocalPhysical.open("inmem")
    yield p
    await p.close()


async def put(phys: LocalPhysical, items: dict[str, bytes]) -> None:
    await phys.apply(Batch(tuple(Op.put(k, v) for k, v in items.items())))


async def dump(phys: LocalPhysical, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key in await backup._walk(phys, prefix):
        value = await phys.get(key)
        assert value is not None
        out[key] = value
    return out


async def snapshot(phys: LocalPhysical) -> AsyncIterator[list[tuple[str, bytes]]]:
    """What the Raft snapshot gives the backup: every key that is not cluster-own, in order,
    in small chunks."""
    items = [(k, v) for k, v in sorted((await dump(phys)).items()) if not is_cluster_own(k)]
    for i in range(0, len(items), 2):
        yield items[i:i + 2]


async def bulk_sync_reset(phys: LocalPhysical, primary: dict[str, bytes]) -> None:
    """What an activation's first bulk sync does to the store before it is cut short: drop
    every replicated key but the keyring, then copy some of the primary's."""
    drop = [k for k in await dump(phys) if not is_cluster_own(k) and k != KEYRING_PATH]
    await phys.apply(Batch(tuple(Op.delete(k) for k in drop)))
    await put(phys, primary)


def test_records_round_trip_and_reject_garbage() -> None:
    items = [("a/b", b"\x00\xff"), ("c", b"")]
    assert backup.unpack_items(backup.pack_items(items)) == items
    assert backup.unpack_items(backup.pack_items(())) == []
    for raw in (b"", b"\x93\x01\x02\x03", backup.pack_items(items)[:-1], b"not msgpack at all \xc1"):
        with pytest.raises(InternalError, match="unreadable"):
            backup.unpack_items(raw)
    assert backup.record_key(3) < backup.record_key(12)  # sorted order is write order
    assert is_cluster_own(backup.record_key(0)) and is_cluster_own(backup.ABANDON_KEY)


def test_what_is_backed_up() -> None:
    assert backup.backed_up("logical/x/y") and backup.backed_up("core/mounts") and backup.backed_up("sys/token/a")
    assert not backup.backed_up(KEYRING_PATH)  # never replaced before the switch
    assert not backup.backed_up("core/raft/ca") and not backup.backed_up(staging.STAGED_KEY)


def test_abandon_marker() -> None:
    assert backup.marker_kind(backup.abandon_marker("dr")) == "dr"
    assert backup.marker_kind(backup.abandon_marker("performance")) == "performance"
    for raw in (None, b"", b"[]", b'{"kind": "other"}', b"\xff"):
        assert backup.marker_kind(raw) is None


async def test_restore_gives_the_own_data_back(phys: LocalPhysical) -> None:
    await put(phys, {**OWN, **CLUSTER_OWN, KEYRING_PATH: b"own keyring"})
    kept = await backup.write(phys, snapshot(phys))
    assert kept == len(OWN)
    assert await backup.exists(phys)
    before_own = {k: v for k, v in (await dump(phys)).items() if is_cluster_own(k)}
    await bulk_sync_reset(phys, {"logical/ppp/secret/x": b"primary", "core/mounts": b"primary mounts"})
    await put(phys, {KEYRING_PATH: b"own keyring, rotated later"})  # the live keyring is never older
    assert await backup.restore(phys) == len(OWN)
    after = await dump(phys)
    replicated = {k: v for k, v in after.items() if not is_cluster_own(k) and k != KEYRING_PATH}
    assert replicated == OWN  # the primary's partial copy is gone, the own data is back
    assert after[KEYRING_PATH] == b"own keyring, rotated later"
    assert {k: v for k, v in after.items() if is_cluster_own(k)} == before_own  # backup still there
    # idempotent: a crash after a restore redoes it
    assert await backup.restore(phys) == len(OWN)
    assert {k: v for k, v in (await dump(phys)).items() if not is_cluster_own(k) and k != KEYRING_PATH} == OWN


async def test_large_backups_span_records_in_order(phys: LocalPhysical, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup, "CHUNK_BYTES", 64)
    data = {f"logical/aaa/k{i:03d}": os.urandom(40) for i in range(30)}
    data["logical/aaa/big"] = os.urandom(500)  # larger than a record: alone in its own
    await put(phys, data)
    assert await backup.write(phys, snapshot(phys)) == len(data)
    records = await phys.list(backup.BACKUP_PREFIX)
    assert len(records) > 10 and records == sorted(records)
    await bulk_sync_reset(phys, {})
    assert not [k for k in await dump(phys) if not is_cluster_own(k)]
    await backup.restore(phys)
    assert {k: v for k, v in (await dump(phys)).items() if not is_cluster_own(k)} == data


async def test_an_empty_cluster_has_a_complete_backup(phys: LocalPhysical) -> None:
    await put(phys, CLUSTER_OWN)
    assert await backup.write(phys, snapshot(phys)) == 0
    assert await backup.exists(phys)
    await put(phys, {"logical/ppp/x": b"primary"})
    assert await backup.restore(phys) == 0
    assert {k for k in await dump(phys) if not is_cluster_own(k)} == set()


async def test_restore_without_a_backup_drops_nothing(phys: LocalPhysical) -> None:
    await put(phys, OWN)
    with pytest.raises(InternalError, match="no backup"):
        await backup.restore(phys)
    assert await dump(phys) == OWN


async def test_a_new_backup_replaces_leftovers_and_cleanup_ends_the_activation(phys: LocalPhysical) -> None:
    await put(phys, {**OWN, **CLUSTER_OWN})
    await put(phys, {backup.record_key(7): backup.pack_items([("logical/old", b"stale")]),
                     backup.OPERATION_TOKEN_KEY: b"ab" * 32})
    await backup.write(phys, snapshot(phys))
    assert await phys.list(backup.BACKUP_PREFIX) == ["00000000"]  # the leftover record is gone
    assert await phys.get(backup.OPERATION_TOKEN_KEY) is None
    await put(phys, {staging.STAGED_KEY: b"{}", HSM_ROOT_KEY_NEXT_KEY: b"hsm blob", "core/replication/dr": b"rec",
                     backup.ABANDON_KEY: backup.abandon_marker("dr"), backup.OPERATION_TOKEN_KEY: b"cd" * 32})
    ops = await backup.cleanup_ops(phys, staging.STAGED_KEY, "core/replication/dr")
    await phys.apply(Batch(tuple(ops)))
    assert await backup.staged_keys(phys) == []
    for key in (staging.STAGED_KEY, HSM_ROOT_KEY_NEXT_KEY, "core/replication/dr"):
        assert await phys.get(key) is None
    assert await phys.get("core/replication/epoch") == b"1"  # the rest of the role's state stays
    assert (await backup.cleanup_ops(phys, staging.STAGED_KEY, None)) == []
    await backup.clear(phys)  # nothing left: a no-op


async def test_staged_record_metadata_is_readable_without_keys(phys: LocalPhysical) -> None:
    barrier = Barrier(phys)
    seals = SealManager(barrier, None)
    root = os.urandom(32)
    await seals.prepare_init()
    await barrier.initialize(root)
    keys = await seals.wrap_new_root_key(root, 3, 2)
    await seals.store_config(keys.config)
    await barrier.unseal(root)
    rec = ReplicationRecord(kind="dr", mode="secondary", cluster_id="c1", secondary_id="s1")
    primary_root = os.urandom(32)
    await staging.stage(seals, barrier, rec, primary_root)
    raw = await barrier.raw_get(staging.STAGED_KEY)
    assert staging.staged_kind(raw) == "dr"
    assert abs(staging.staged_at(raw) - time.time()) < 60
    assert staging.staged_at(None) == 0 and staging.staged_at(b"garbage") == 0
    staged = await staging.load(seals, barrier)
    assert staged is not None and staged.record == rec and staged.root_key == primary_root
    # staging again replaces it (a new activation in place of one that cannot finish)
    rec2 = ReplicationRecord(kind="dr", mode="secondary", cluster_id="c2", secondary_id="s2")
    await staging.stage(seals, barrier, rec2, os.urandom(32))
    staged = await staging.load(seals, barrier)
    assert staged is not None and staged.record == rec2
    await seals.shutdown()
