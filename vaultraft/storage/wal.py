"""The replication WAL: committed batches (ciphertext) retained by log index for shipping.

Every committed log entry that changed storage is recorded, in the same LMDB transaction that
applied it, as a :class:`WalEntry`: the primary's log index, the active node's timestamp for
that entry, and the encoded batches that were actually applied (a batch the state machine
rejected or skipped as a duplicate request is not recorded, so a secondary replaying the WAL
reaches exactly the primary's state without knowing the primary's request-id history).

Keys under :data:`CLUSTER_OWN_PREFIXES` describe one cluster's own machinery (its Raft CA and
members, its active node, its replication role) and are never shipped, never overwritten by a
bulk sync and never counted in a replication digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

WAL_VERSION = 1

#: Physical key prefixes that belong to one cluster and never cross a replication link: its
#: Raft CA and members, its active node, its replication role, and its seal records (each
#: cluster keeps its own seal; a secondary re-wraps its primary's root key with it, see
#: core/replication/DESIGN.md). Prefix match: ``core/recovery-key`` also covers the
#: rekey backup ``core/recovery-keys-backup``.
CLUSTER_OWN_PREFIXES: tuple[str, ...] = ("core/raft/", "core/leader", "core/replication/",
                                         "core/seal-config", "core/root-key", "core/hsm/",
                                         "core/recovery-key", "core/recovery-config")


def is_cluster_own(key: str) -> bool:
    """Whether ``key`` is cluster-own state (never shipped, never replaced by a bulk sync)."""
    return key.startswith(CLUSTER_OWN_PREFIXES)


class WalDecodeError(ValueError):
    """Bytes that are not a WAL entry of a known version."""


@dataclass(frozen=True)
class WalEntry:
    """One shipped log entry: primary log ``index``, leader time ``ts_ms``, encoded batches."""

    index: int
    ts_ms: int
    batches: tuple[bytes, ...]

    def encode(self) -> bytes:
        """Versioned msgpack bytes."""
        packed: bytes = msgpack.packb([WAL_VERSION, self.index, self.ts_ms, list(self.batches)], use_bin_type=True)
        return packed

    @staticmethod
    def decode(raw: bytes) -> "WalEntry":
        """Parse :meth:`encode` output; WalDecodeError for anything else."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False)
        except Exception as e:  # msgpack raises several unrelated types
            raise WalDecodeError(f"undecodable wal entry: {type(e).__name__}") from None
        if not (isinstance(obj, list) and len(obj) == 4 and obj[0] == WAL_VERSION):
            raise WalDecodeError("not a wal entry of a known version")
        _, index, ts_ms, batches = obj
        if not (isinstance(index, int) and index > 0 and isinstance(ts_ms, int) and isinstance(batches, list)
                and all(isinstance(b, bytes) for b in batches)):
            raise WalDecodeError("malformed wal entry")
        return WalEntry(index, ts_ms, tuple(batches))
