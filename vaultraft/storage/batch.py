"""Storage batches: the unit of every write, of the Raft log and of replication.

Wire format (versioned msgpack, never pickle)::

    [BATCH_VERSION, request_id: bytes, [[kind, key, value|None, local: bool], ...]]

``local`` marks entries that a performance secondary must not receive (tokens, leases,
local mounts); it is decided by core from the mount and path, never by a secondary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack

BATCH_VERSION = 1
MAX_KEY_BYTES = 4096


class BatchDecodeError(ValueError):
    """Bytes that are not a valid batch of a known version."""


class OpKind(enum.IntEnum):
    """What an operation does to its key."""

    PUT = 1
    DELETE = 2


_KINDS = {int(k): k for k in OpKind}  # a dict lookup, not the enum's (slow) call


@dataclass(frozen=True)
class Op:
    """One put or delete. ``value`` is None exactly for deletes."""

    kind: OpKind
    key: str
    value: bytes | None = None
    local: bool = False

    @staticmethod
    def put(key: str, value: bytes, *, local: bool = False) -> "Op":
        """A put of ``value`` at ``key``."""
        return Op(OpKind.PUT, key, value, local)

    @staticmethod
    def delete(key: str, *, local: bool = False) -> "Op":
        """A delete of ``key``."""
        return Op(OpKind.DELETE, key, None, local)


@dataclass(frozen=True)
class Batch:
    """An ordered, atomic list of operations with an idempotency id (may be empty bytes)."""

    ops: tuple[Op, ...]
    request_id: bytes = field(default=b"")

    def encode(self) -> bytes:
        """Versioned msgpack bytes of this batch."""
        packed: bytes = msgpack.packb(
            [BATCH_VERSION, self.request_id, [[int(o.kind), o.key, o.value, o.local] for o in self.ops]],
            use_bin_type=True,
        )
        return packed

    def decodes_as_itself(self) -> bool:
        """Whether :meth:`decode` of :meth:`encode` returns a batch equal to this one and
        holding the same values (exact types throughout: ``bytes`` values, ``bool`` flags),
        rather than raising or converting. Checks what ``decode`` checks, without encoding."""
        if type(self.request_id) is not bytes:
            return False
        for o in self.ops:
            key, value = o.key, o.value
            if type(key) is not str or not key or (len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES):
                return False
            if type(o.local) is not bool or _KINDS.get(o.kind) is None:
                return False
            if o.kind is OpKind.PUT:
                if type(value) is not bytes:
                    return False
            elif value is not None:
                return False
        return True

    @staticmethod
    def decode(raw: bytes) -> "Batch":
        """Parse bytes from :meth:`encode`; raises BatchDecodeError for anything else."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types
            raise BatchDecodeError(f"undecodable batch: {type(e).__name__}") from None
        if not (isinstance(obj, list) and len(obj) == 3):
            raise BatchDecodeError("batch is not a 3-element list")
        version, request_id, raw_ops = obj
        if version != BATCH_VERSION:
            raise BatchDecodeError(f"unknown batch version {version!r}")
        if not isinstance(request_id, bytes) or not isinstance(raw_ops, list):
            raise BatchDecodeError("malformed batch header")
        ops: list[Op] = []
        for item in raw_ops:
            if not (isinstance(item, list) and len(item) == 4):
                raise BatchDecodeError("malformed operation")
            kind, key, value, local = item
            k = _KINDS.get(kind) if type(kind) is int else None
            if k is None:
                raise BatchDecodeError(f"unknown operation kind {kind!r}")
            if not isinstance(key, str) or not key or (len(key) * 4 > MAX_KEY_BYTES
                                                       and len(key.encode()) > MAX_KEY_BYTES):
                raise BatchDecodeError("malformed key")
            if k is OpKind.PUT and not isinstance(value, bytes):
                raise BatchDecodeError("put without bytes value")
            if k is OpKind.DELETE and value is not None:
                raise BatchDecodeError("delete with a value")
            ops.append(Op(k, key, value, bool(local)))
        return Batch(tuple(ops), request_id)
