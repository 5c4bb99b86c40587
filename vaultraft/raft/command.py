"""Raft log commands: versioned msgpack, never pickle.

A log entry carries one command. ``BATCHES`` holds the storage batches of one group
commit (several clients' writes, applied in one LMDB transaction); ``NOOP`` is written by
a new leader to commit entries of earlier terms and to prove it holds a quorum.

Wire format::

    [COMMAND_VERSION, kind, [batch_bytes, ...], nonce]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgpack

from vaultraft.storage import Batch, BatchDecodeError

COMMAND_VERSION = 1


class CommandDecodeError(ValueError):
    """Bytes that are not a command this version understands."""


class CommandKind(enum.IntEnum):
    """What a log entry does."""

    BATCHES = 1
    NOOP = 2


@dataclass(frozen=True)
class Command:
    """One log entry's payload."""

    kind: CommandKind
    batches: tuple[Batch, ...] = ()
    nonce: bytes = b""

    def encode(self) -> bytes:
        """Versioned msgpack bytes."""
        packed: bytes = msgpack.packb(
            [COMMAND_VERSION, int(self.kind), [b.encode() for b in self.batches], self.nonce], use_bin_type=True)
        return packed

    @staticmethod
    def decode(raw: bytes) -> "Command":
        """Parse :meth:`encode` output; CommandDecodeError for anything else."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False)
        except Exception as e:  # msgpack raises several unrelated types
            raise CommandDecodeError(f"undecodable command: {type(e).__name__}") from None
        if not (isinstance(obj, list) and len(obj) == 4):
            raise CommandDecodeError("command is not a 4-element list")
        version, kind, raw_batches, nonce = obj
        if version != COMMAND_VERSION:
            raise CommandDecodeError(f"unknown command version {version!r}")
        try:
            k = CommandKind(kind)
        except ValueError:
            raise CommandDecodeError(f"unknown command kind {kind!r}") from None
        if not isinstance(raw_batches, list) or not isinstance(nonce, bytes):
            raise CommandDecodeError("malformed command")
        try:
            batches = tuple(Batch.decode(b) for b in raw_batches if isinstance(b, bytes))
        except BatchDecodeError as e:
            raise CommandDecodeError(str(e)) from None
        if len(batches) != len(raw_batches):
            raise CommandDecodeError("a batch is not bytes")
        return Command(k, batches, nonce)
