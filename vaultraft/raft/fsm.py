"""The Raft state machine: a pure function of (store, entry, index).

``apply`` uses no clock, no randomness and no I/O other than the LMDB transaction that
records the entry together with its index; it never raises (a raising apply would stop
pysyncobj's thread and wedge the node), so every failure becomes an ApplyResult error.
Timestamps and ids are filled in by the active node before a batch enters the log.
"""

from __future__ import annotations

from typing import Callable, Sequence

import lmdb
import structlog

from vaultraft.raft.command import Command, CommandDecodeError, CommandKind
from vaultraft.storage import ApplyResult, Batch
from vaultraft.storage.lmdb_store import LMDBStore

log = structlog.get_logger("vaultraft.raft")

#: Called after an entry is applied with the keys it wrote (for cache invalidation).
ApplyObserver = Callable[[int, Sequence[str]], None]


class StateMachine:
    """Applies log entries to an :class:`LMDBStore`."""

    def __init__(self, store: LMDBStore, observer: ApplyObserver | None = None) -> None:
        self.store = store
        self.observer = observer
        self.failed: str | None = None  # set when the store itself can no longer apply

    def apply(self, raw: bytes, index: int, term: int = 0, known: Command | None = None) -> list[ApplyResult]:
        """Apply the command ``raw`` as log entry ``index``; never raises.

        ``known`` is what ``Command.decode(raw)`` returns, when the caller has it already
        (``Command.encode_known``: the entries the active node proposed itself).

        After a storage failure nothing more is applied (the stored index stays before the
        failed entry, so a restart replays from there instead of silently skipping it).
        """
        if self.failed is not None:
            return [ApplyResult(index, "storage failure on this node")]
        if known is not None:
            cmd = known
        else:
            try:
                cmd = Command.decode(raw)
            except CommandDecodeError as e:
                return self._record_failure(index, term, str(e))
        replay = index <= self.store.applied_index()  # journal replay after a restart: writes nothing
        if cmd.kind >= CommandKind.REPL_RESET:
            return self._apply_remote(cmd, index, term, replay)
        batches: Sequence[Batch] = cmd.batches if cmd.kind is CommandKind.BATCHES else ()
        try:
            results = self._apply_with_growth(index, term, cmd, batches)
        except Exception as e:  # disk full, I/O error: this node can no longer follow the log
            self.failed = f"{type(e).__name__}: {e}"
            log.critical("raft_apply_failed", index=index, error=type(e).__name__)
            return [ApplyResult(index, "storage failure on this node") for _ in batches]
        if self.observer is not None and batches and not replay:
            keys = [op.key for b, r in zip(batches, results) if r.error is None and r.index == index for op in b.ops]
            if not keys:
                return results
            try:
                self.observer(index, keys)
            except Exception as e:  # an observer must never break the state machine
                log.error("raft_observer_failed", error=type(e).__name__)
        return results

    def _apply_with_growth(self, index: int, term: int, cmd: Command, batches: Sequence[Batch]) -> list[ApplyResult]:
        for _ in range(8):
            try:
                return self.store.apply_entry(index, term, batches, raw_batches=cmd.raw_batches, ts_ms=cmd.ts_ms)
            except lmdb.MapFullError:
                self.store.grow()
        return self.store.apply_entry(index, term, batches, raw_batches=cmd.raw_batches, ts_ms=cmd.ts_ms)

    def _apply_remote(self, cmd: Command, index: int, term: int, replay: bool) -> list[ApplyResult]:
        """A replication secondary's entry: what the primary shipped (see LMDBStore.apply_remote)."""
        op = {CommandKind.REPL_RESET: "reset", CommandKind.REPL_PUT: "put",
              CommandKind.REPL_END: "end", CommandKind.REPL_WAL: "wal"}[cmd.kind]
        try:
            for attempt in range(9):
                try:
                    err, keys = self.store.apply_remote(index, term, op, lineage=cmd.lineage, remote=cmd.remote_index,
                                                        items=cmd.items, wal=cmd.wal, keep=cmd.keep)
                    break
                except lmdb.MapFullError:
                    if attempt == 8:
                        raise
                    self.store.grow()
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.critical("raft_apply_failed", index=index, error=type(e).__name__)
            return [ApplyResult(index, "storage failure on this node")]
        if self.observer is not None and keys and not replay:
            try:
                self.observer(index, keys)
            except Exception as e:  # an observer must never break the state machine
                log.error("raft_observer_failed", error=type(e).__name__)
        return [ApplyResult(index, err)]

    def _record_failure(self, index: int, term: int, error: str) -> list[ApplyResult]:
        try:
            self.store.apply_entry(index, term, ())
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
        return [ApplyResult(index, error)]
