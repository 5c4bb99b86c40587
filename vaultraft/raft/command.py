"""Raft log commands: versioned msgpack, never pickle.

A log entry carries one command. ``BATCHES`` holds the storage batches of one group
commit (several clients' writes, applied in one LMDB transaction) and the active node's
timestamp (for WAL retention by age; the state machine never reads a clock); ``NOOP`` is
written by a new leader to commit entries of earlier terms and to prove it holds a quorum.
The ``REPL_*`` kinds are written only by a replication secondary's active node: they apply
what its primary shipped (a bulk sync's reset, chunks and end; WAL entries).

Wire format::

    v1: [1, kind, [batch_bytes, ...], nonce]
    v2: [2, kind, [batch_bytes, ...], nonce, {"ts": int, "lineage": str, "remote": int,
                                              "items": [[key, value], ...], "wal": [wal_bytes, ...]}]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack

from vaultraft.storage import Batch, BatchDecodeError
from vaultraft.storage.wal import WalDecodeError, WalEntry

COMMAND_VERSION = 2
_V1 = 1


class CommandDecodeError(ValueError):
    """Bytes that are not a command this version understands."""


class CommandKind(enum.IntEnum):
    """What a log entry does."""

    BATCHES = 1
    NOOP = 2
    REPL_RESET = 3  # a bulk sync starts: drop every key but cluster-own ones
    REPL_PUT = 4  # one chunk of a bulk sync's (key, ciphertext) pairs
    REPL_END = 5  # a bulk sync completed at remote index ``remote``
    REPL_WAL = 6  # shipped WAL entries, applied in order


@dataclass(frozen=True)
class Command:
    """One log entry's payload. ``raw_batches`` are the encoded ``batches`` as received
    (kept by :meth:`decode` so the WAL records them without re-encoding)."""

    kind: CommandKind
    batches: tuple[Batch, ...] = ()
    nonce: bytes = b""
    ts_ms: int = 0
    lineage: str = ""
    remote_index: int = 0
    items: tuple[tuple[str, bytes], ...] = ()
    wal: tuple[WalEntry, ...] = ()
    keep: tuple[str, ...] = ()  # REPL_RESET: key prefixes that survive (a performance secondary's local state)
    raw_batches: tuple[bytes, ...] = field(default=(), compare=False, repr=False)

    def encode(self) -> bytes:
        """Versioned msgpack bytes."""
        return self._pack([b.encode() for b in self.batches])

    def encode_known(self) -> tuple[bytes, "Command | None"]:
        """:meth:`encode`, and the command :meth:`decode` returns for those bytes (with
        ``raw_batches``), built without decoding them; None instead when a batch would not
        decode as itself (see ``Batch.decodes_as_itself``): then decoding must decide. The
        active node applies the entries it proposed from this, so it does not parse its
        own batches back; every other member decodes the same bytes to an equal command."""
        raw_batches = tuple(b.encode() for b in self.batches)
        raw = self._pack(list(raw_batches))
        if self.kind is not CommandKind.BATCHES or self.items or self.wal or self.keep or self.lineage \
                or self.remote_index or type(self.nonce) is not bytes or type(self.ts_ms) is not int \
                or not all(b.decodes_as_itself() for b in self.batches):
            return raw, None
        return raw, Command(self.kind, self.batches, self.nonce, self.ts_ms, raw_batches=raw_batches)

    def _pack(self, raw_batches: list[bytes]) -> bytes:
        extra: dict[str, Any] = {"ts": self.ts_ms}
        if self.kind >= CommandKind.REPL_RESET:
            extra.update(lineage=self.lineage, remote=self.remote_index,
                         items=[[k, v] for k, v in self.items], wal=[e.encode() for e in self.wal])
            if self.keep:
                extra["keep"] = list(self.keep)
        packed: bytes = msgpack.packb([COMMAND_VERSION, int(self.kind), raw_batches, self.nonce, extra],
                                      use_bin_type=True)
        return packed

    @staticmethod
    def decode(raw: bytes) -> "Command":
        """Parse :meth:`encode` output (and version 1 entries); CommandDecodeError otherwise."""
        try:
            obj: Any = msgpack.unpackb(raw, raw=False)
        except Exception as e:  # msgpack raises several unrelated types
            raise CommandDecodeError(f"undecodable command: {type(e).__name__}") from None
        if not isinstance(obj, list) or not obj:
            raise CommandDecodeError("command is not a list")
        if obj[0] == _V1 and len(obj) == 4:
            extra: Any = {}
        elif obj[0] == COMMAND_VERSION and len(obj) == 5:
            extra = obj[4]
        else:
            raise CommandDecodeError(f"unknown command version {obj[0]!r}")
        kind, raw_batches, nonce = obj[1], obj[2], obj[3]
        try:
            k = CommandKind(kind)
        except ValueError:
            raise CommandDecodeError(f"unknown command kind {kind!r}") from None
        if not isinstance(raw_batches, list) or not isinstance(nonce, bytes) or not isinstance(extra, dict):
            raise CommandDecodeError("malformed command")
        if not all(isinstance(b, bytes) for b in raw_batches):
            raise CommandDecodeError("a batch is not bytes")
        try:
            batches = tuple(Batch.decode(b) for b in raw_batches)
        except BatchDecodeError as e:
            raise CommandDecodeError(str(e)) from None
        ts, lineage, remote = extra.get("ts", 0), extra.get("lineage", ""), extra.get("remote", 0)
        raw_items, raw_wal, keep = extra.get("items", []), extra.get("wal", []), extra.get("keep", [])
        if not (isinstance(keep, list) and all(isinstance(k, str) and k for k in keep)):
            raise CommandDecodeError("malformed keep prefixes")
        if not (isinstance(ts, int) and isinstance(lineage, str) and isinstance(remote, int)
                and isinstance(raw_items, list) and isinstance(raw_wal, list)):
            raise CommandDecodeError("malformed command fields")
        items: list[tuple[str, bytes]] = []
        for it in raw_items:
            if not (isinstance(it, list) and len(it) == 2 and isinstance(it[0], str) and it[0]
                    and isinstance(it[1], bytes)):
                raise CommandDecodeError("malformed replicated item")
            items.append((it[0], it[1]))
        try:
            wal = tuple(WalEntry.decode(w) for w in raw_wal if isinstance(w, bytes))
        except WalDecodeError as e:
            raise CommandDecodeError(str(e)) from None
        if len(wal) != len(raw_wal):
            raise CommandDecodeError("a wal entry is not bytes")
        return Command(k, batches, nonce, ts, lineage, remote, tuple(items), wal, tuple(keep), tuple(raw_batches))
