"""A cluster's replication role, persisted behind the barrier under ``core/replication/``.

These keys are cluster-own (``storage.wal.CLUSTER_OWN_PREFIXES``): every node of the cluster
reads them through its own Raft log, but they never cross a replication link, so a primary's
CA key and a secondary's client key stay where they were made.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from vaultraft.logical import StorageEntry, StorageView

Kind = Literal["dr", "performance"]
RECORD_PREFIX = "replication/"  # under core/


@dataclass(frozen=True)
class SecondaryEntry:
    """A secondary known to a primary: its activation secret (hashed), expiry and state."""

    id: str
    mode: str
    secret_sha256: str
    expires_at: float
    activated: bool = False
    revoked: bool = False
    api_address: str = ""
    cluster_address: str = ""
    filter_mode: str = ""  # performance secondaries: "allow" | "deny" | "" (no filter)
    filter_paths: tuple[str, ...] = ()

    def secret_matches(self, secret: bytes) -> bool:
        """Constant-time check of an activation secret."""
        return hmac.compare_digest(hashlib.sha256(secret).hexdigest(), self.secret_sha256)


@dataclass(frozen=True)
class ReplicationRecord:
    """One replication kind's role on this cluster ("primary" or "secondary").

    A primary holds its replication CA, lineage (changes whenever the shipped history may
    fork: enable, promote) and epoch (grows with every promotion), and its secondaries.
    A secondary holds its client identity and where its primary is; a demoted primary is
    a secondary with no primary yet (``secondary_id`` empty).
    """

    kind: str
    mode: str
    cluster_id: str
    lineage: str = ""
    epoch: int = 1
    primary_cluster_addr: str = ""
    ca_cert_pem: str = ""
    ca_key_pem: str = field(default="", repr=False)
    secondaries: tuple[SecondaryEntry, ...] = ()
    secondary_id: str = ""
    cert_pem: str = ""
    key_pem: str = field(default="", repr=False)
    primary_api_addr: str = ""
    primary_cluster_addrs: tuple[str, ...] = ()
    operation_token_sha256: str = ""
    primary_ca_file: str = ""  # verifies the primary's API certificate (activation, forwarding)

    def secondary(self, secondary_id: str) -> SecondaryEntry | None:
        """The entry for ``secondary_id`` or None."""
        for s in self.secondaries:
            if s.id == secondary_id:
                return s
        return None

    def with_secondary(self, entry: SecondaryEntry) -> "ReplicationRecord":
        """A copy with ``entry`` added or replacing the one with its id."""
        rest = tuple(s for s in self.secondaries if s.id != entry.id)
        return replace(self, secondaries=rest + (entry,))

    def encode(self) -> bytes:
        """JSON bytes."""
        return json.dumps(asdict(self)).encode()

    @staticmethod
    def decode(raw: bytes) -> "ReplicationRecord":
        """Parse :meth:`encode` output."""
        d: dict[str, Any] = json.loads(raw)
        d["secondaries"] = tuple(SecondaryEntry(**{**s, "filter_paths": tuple(s.get("filter_paths", ()))})
                                 for s in d.get("secondaries", ()))
        d["primary_cluster_addrs"] = tuple(d.get("primary_cluster_addrs", ()))
        return ReplicationRecord(**d)


async def load_record(core_view: StorageView, kind: str) -> ReplicationRecord | None:
    """The stored record of ``kind`` or None."""
    e = await core_view.get(RECORD_PREFIX + kind)
    return None if e is None else ReplicationRecord.decode(e.value)


EPOCH_KEY = RECORD_PREFIX + "epoch"


async def stored_epoch(core_view: StorageView) -> int:
    """The highest replication epoch this cluster ever recorded (0 if none). Epochs never go
    back: a primary enabled again after ``disable`` continues above it, or a witness would
    (rightly) fence it as stale."""
    e = await core_view.get(EPOCH_KEY)
    return 0 if e is None else int(e.value)


async def save_record(core_view: StorageView, record: ReplicationRecord) -> None:
    """Store ``record`` (through the cluster's log), raising the epoch floor to its epoch."""
    await core_view.put(StorageEntry(RECORD_PREFIX + record.kind, record.encode()))
    if record.epoch > await stored_epoch(core_view):
        await core_view.put(StorageEntry(EPOCH_KEY, str(record.epoch).encode()))


async def delete_record(core_view: StorageView, kind: str) -> None:
    """Forget the role of ``kind``."""
    await core_view.delete(RECORD_PREFIX + kind)
