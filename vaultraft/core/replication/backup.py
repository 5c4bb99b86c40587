"""The cluster's own data, kept aside while an activation is staged, so it can be abandoned.

A secondary's first bulk sync drops every replicated (not cluster-own) key before it copies the
primary's, long before the switch to the primary's keyring (``activating.finish_activation``).
Until the switch the cluster still runs on its own root key and keyring, so the only thing an
abandoned activation could not give back is its own data. At enable, before anything is
dropped, the active node therefore copies it, verbatim (barrier ciphertext, keys included), into
cluster-own records under :data:`BACKUP_PREFIX`: never shipped, never dropped by a bulk sync,
replicated to the cluster's standbys like the staged activation itself.

* The switching batch deletes everything under :data:`STAGED_PREFIX` (backup included).
* ``disable`` first stores :data:`ABANDON_KEY` (the decision is durable: no node resumes the
  activation any more), then drops every replicated key but the keyring and puts the backup back
  (:func:`restore`, idempotent: a crash or a change of active node redoes it), then deletes the
  staged activation, everything under :data:`STAGED_PREFIX` and the activation's staged root key
  in one batch (:func:`cleanup_ops`).
* A new activation that replaces a staged one keeps the backup: it stays the cluster's data from
  before the first of them.

``core/keyring`` is neither copied nor restored: an activation never replaces it before the switch
(``ActivatingSink`` holds the primary's back), and the live one is never older than a copy.
Nothing here decrypts anything: storage bytes in, the same bytes out.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgpack

from vaultraft.barrier import KEYRING_PATH
from vaultraft.core.seal_state import HSM_ROOT_KEY_NEXT_KEY
from vaultraft.logical import InternalError
from vaultraft.storage import Batch, Op
from vaultraft.storage.wal import is_cluster_own

#: Everything that belongs to a staged activation besides its record (``staging.STAGED_KEY``).
STAGED_PREFIX = "core/replication/staged/"
BACKUP_PREFIX = STAGED_PREFIX + "backup/"
#: Present while a ``disable`` gives the cluster its own data back (JSON: kind, time).
ABANDON_KEY = STAGED_PREFIX + "abandoning"
#: SHA-256 (hex) of the operation token minted while an activation is staged.
OPERATION_TOKEN_KEY = STAGED_PREFIX + "operation-token"
BACKUP_VERSION = 1
#: Payload bytes per backup record (one storage batch each; a larger single entry goes alone).
CHUNK_BYTES = 1 << 20
#: Keys deleted per storage batch while the backup is put back.
DELETE_BATCH = 1000


def record_key(seq: int) -> str:
    """The ``seq``-th backup record (sorted order is write order)."""
    return f"{BACKUP_PREFIX}{seq:08d}"


def pack_items(items: Iterable[tuple[str, bytes]]) -> bytes:
    """One backup record: versioned msgpack of (key, stored bytes) pairs."""
    packed: bytes = msgpack.packb([BACKUP_VERSION, [[k, bytes(v)] for k, v in items]], use_bin_type=True)
    return packed


def unpack_items(raw: bytes) -> list[tuple[str, bytes]]:
    """Parse :func:`pack_items` output; InternalError for anything else."""
    try:
        obj: Any = msgpack.unpackb(raw, raw=False)
        if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == BACKUP_VERSION):
            raise ValueError("not a backup record")
        out = [(str(k), bytes(v)) for k, v in obj[1]]
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise InternalError("a backup record of the staged activation is unreadable") from None
    return out


def backed_up(key: str) -> bool:
    """Whether the backup holds ``key`` (everything a bulk sync would drop but the keyring)."""
    return not is_cluster_own(key) and key != KEYRING_PATH


async def _apply(physical: Any, ops: list[Op], what: str) -> None:
    result = await physical.apply(Batch(tuple(ops), secrets.token_bytes(16)))
    if result.error is not None:
        raise InternalError(f"failed to {what}: {result.error}")


async def _walk(physical: Any, prefix: str) -> list[str]:
    """Every key under ``prefix`` (depth first, sorted within each folder)."""
    out: list[str] = []
    stack = [prefix]
    while stack:
        p = stack.pop()
        for child in reversed(await physical.list(p)):
            if child.endswith("/"):
                stack.append(p + child)
            else:
                out.append(p + child)
    return sorted(out)


async def staged_keys(physical: Any) -> list[str]:
    """Every key under :data:`STAGED_PREFIX` (backup records, markers)."""
    return await _walk(physical, STAGED_PREFIX)


async def exists(physical: Any) -> bool:
    """Whether any backup record is stored."""
    return bool(await physical.list(BACKUP_PREFIX))


async def clear(physical: Any) -> None:
    """Delete everything under :data:`STAGED_PREFIX` (leftovers of an enable that never
    staged its activation, e.g. a crash in the middle of the call)."""
    keys = await staged_keys(physical)
    for i in range(0, len(keys), DELETE_BATCH):
        await _apply(physical, [Op.delete(k) for k in keys[i:i + DELETE_BATCH]], "delete the activation backup")


async def write(physical: Any, chunks: AsyncIterator[list[tuple[str, bytes]]]) -> int:
    """Store the cluster's own replicated data (``chunks``: one consistent read of every
    key that is not cluster-own) as backup records; returns how many keys were kept.
    Any earlier backup is deleted first."""
    await clear(physical)
    seq = count = 0
    pending: list[tuple[str, bytes]] = []
    size = 0

    async def flush() -> None:
        nonlocal seq, pending, size
        if pending:
            await _apply(physical, [Op.put(record_key(seq), pack_items(pending))], "store the activation backup")
            seq, pending, size = seq + 1, [], 0

    async for chunk in chunks:
        for k, v in chunk:
            if not backed_up(k):
                continue
            if pending and size + len(k) + len(v) > CHUNK_BYTES:
                await flush()
            pending.append((k, v))
            size += len(k) + len(v)
            count += 1
    await flush()
    if seq == 0:  # an empty cluster: one empty record still says "the backup is complete"
        await _apply(physical, [Op.put(record_key(0), pack_items(()))], "store the activation backup")
    return count


async def _replicated_keys(physical: Any) -> list[str]:
    keys: list[str] = []
    for top in await physical.list(""):
        keys.extend(k for k in (await _walk(physical, top) if top.endswith("/") else [top]) if backed_up(k))
    return keys


async def restore(physical: Any) -> int:
    """Give the cluster its own data back: drop every replicated key but the keyring (what a
    bulk sync brought), then put the backup back verbatim. Idempotent. Returns how many keys
    were restored. InternalError when there is no backup (nothing is dropped then)."""
    records = [k for k in await physical.list(BACKUP_PREFIX) if not k.endswith("/")]
    if not records:
        raise InternalError("the staged activation has no backup of this cluster's data")
    keys = await _replicated_keys(physical)
    for i in range(0, len(keys), DELETE_BATCH):
        await _apply(physical, [Op.delete(k, local=True) for k in keys[i:i + DELETE_BATCH]],
                     "drop the primary's partial copy")
    restored = 0
    for name in sorted(records):
        raw = await physical.get(BACKUP_PREFIX + name)
        if raw is None:
            raise InternalError("a backup record of the staged activation is missing")
        items = unpack_items(raw)
        if items:
            # local: a WAL entry of this cluster that no performance secondary must receive
            await _apply(physical, [Op.put(k, v, local=True) for k, v in items], "restore this cluster's data")
        restored += len(items)
    return restored


def abandon_marker(kind: str) -> bytes:
    """The value of :data:`ABANDON_KEY` for a staged activation of ``kind``."""
    return json.dumps({"kind": kind, "at": int(time.time())}).encode()


def marker_kind(raw: bytes | None) -> str | None:
    """The kind recorded in an :data:`ABANDON_KEY` value (None: no usable marker)."""
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        kind = d.get("kind") if isinstance(d, dict) else None
    except ValueError:
        return None
    return kind if kind in ("dr", "performance") else None


async def cleanup_ops(physical: Any, staged_key: str, role_key: str | None) -> list[Op]:
    """The deletions that end a staged activation without switching: the staged record, every
    key under :data:`STAGED_PREFIX`, the activation's staged root key (``core/hsm/root-key-next``,
    only ever written for an activation) and, for ``disable``, the role's record."""
    ops = [Op.delete(k) for k in await staged_keys(physical)]
    for key in (staged_key, HSM_ROOT_KEY_NEXT_KEY, role_key):
        if key is not None and await physical.get(key) is not None:
            ops.append(Op.delete(key))
    return ops
