"""A secondary's activation, staged durably in its own Raft log until it is finished.

At activation the secondary's active node stores, at :data:`STAGED_KEY` (cluster-own: kept
across bulk syncs, never shipped), what it needs to finish the activation: the new
replication record (with its client key) and, for a Shamir seal, the primary's root key.
The record is stored unencrypted by the barrier but sealed (AES-256-GCM) under a key derived
(HKDF-SHA256) from this cluster's **own current root key**, i.e. what its own unseal shares
(or its HSM) open: a disk reveals nothing it did not reveal before. An HSM secondary keeps
the primary's root key in its existing staged form (``core/hsm/root-key-next``, encrypted
by its HSM) and the record holds only the replication record.

Any node of the secondary that is active while the record exists resumes the activation
(``ActivationMixin._sync_staged``); the switch to the primary's keyring deletes the
record in the same storage batch (``activating.finish_activation``), so it never outlives the
activation. An activation that cannot finish is abandoned by ``disable`` (the cluster's own data
comes back from ``backup.py``) or replaced by a new one (``stage`` again). Nothing here logs key
material.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultraft.barrier import Barrier
from vaultraft.core.replication.records import ReplicationRecord
from vaultraft.core.seal_lifecycle import write_seal_records
from vaultraft.core.seal_manager import SealManager
from vaultraft.core.seal_state import HSM_ROOT_KEY_NEXT_KEY
from vaultraft.logical import InternalError

#: Cluster-own (``core/replication/``), raw (not barrier-encrypted: see the module doc).
STAGED_KEY = "core/replication/activation"
STAGED_VERSION = 1
_INFO = b"vaultraft staged replication activation v1"


class StagedUnreadable(Exception):
    """The staged record does not open with this node's root key."""


@dataclass(frozen=True)
class StagedActivation:
    """An activation to finish: the record to store and the primary's root key."""

    record: ReplicationRecord
    root_key: bytes = field(repr=False)


def _key(own_root: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(own_root)


def _envelope(kind: str, seal: str, own_root: bytes, payload: bytes) -> bytes:
    nonce = os.urandom(12)
    ct = AESGCM(_key(own_root)).encrypt(nonce, payload, STAGED_KEY.encode())
    return json.dumps({"v": STAGED_VERSION, "kind": kind, "seal": seal, "staged_at": int(time.time()),
                       "nonce": base64.b64encode(nonce).decode(), "ct": base64.b64encode(ct).decode()}).encode()


def staged_kind(raw: bytes | None) -> str | None:
    """The replication kind of a staged record (readable without keys), or None."""
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        return str(d["kind"]) if isinstance(d, dict) and d.get("v") == STAGED_VERSION else None
    except (ValueError, KeyError):
        return None


def staged_at(raw: bytes | None) -> int:
    """When a staged record was written (unix seconds, readable without keys; 0 if unknown)."""
    if raw is None:
        return 0
    try:
        d = json.loads(raw)
        return int(d.get("staged_at") or 0) if isinstance(d, dict) else 0
    except (ValueError, TypeError):
        return 0


async def stage(mgr: SealManager, barrier: Barrier, record: ReplicationRecord, root_key: bytes) -> None:
    """At activation (unsealed barrier, still on this cluster's own root key): store the
    staged record; with an HSM seal also the primary's root key encrypted by the HSM at
    ``core/hsm/root-key-next``, in the same batch. Replaces a staged activation (both
    records) when there is one. InternalError when the HSM or storage fails."""
    own_root = barrier.root_key()
    mode = await mgr.mode()
    seal = mgr.seal
    records: dict[str, bytes | None] = {}
    if mode.kind == "auto" and seal is not None:
        records[HSM_ROOT_KEY_NEXT_KEY] = await mgr.encrypt_with(seal, root_key, HSM_ROOT_KEY_NEXT_KEY)
        payload = json.dumps({"record": record.encode().decode()}).encode()
        records[STAGED_KEY] = _envelope(record.kind, "auto", own_root, payload)
    else:
        payload = json.dumps({"record": record.encode().decode(),
                              "root_key": base64.b64encode(root_key).decode()}).encode()
        records[STAGED_KEY] = _envelope(record.kind, "shamir", own_root, payload)
    await write_seal_records(barrier, records)


async def load(mgr: SealManager, barrier: Barrier) -> StagedActivation | None:
    """The staged activation, opened with the unsealed barrier's root key (this cluster's
    own, as long as the activation has not switched keys); None when there is none.
    StagedUnreadable when it does not open with that key; InternalError when the HSM does
    not give back the primary's root key (retried by the caller)."""
    raw = await barrier.raw_get(STAGED_KEY)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        nonce, ct = base64.b64decode(d["nonce"]), base64.b64decode(d["ct"])
        payload = json.loads(AESGCM(_key(barrier.root_key())).decrypt(nonce, ct, STAGED_KEY.encode()))
        record = ReplicationRecord.decode(payload["record"].encode())
        seal_kind = str(d["seal"])
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise StagedUnreadable() from None
    if seal_kind == "shamir":
        return StagedActivation(record, base64.b64decode(payload["root_key"]))
    root = await mgr.staged_root()
    if root is None:
        raise InternalError("the HSM did not open the primary's staged root key; retrying")
    return StagedActivation(record, root)
