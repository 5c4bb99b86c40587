"""Rebuild a node's store from its own Raft snapshot and journal, before it unseals.

A Raft node's store is written without fsync (``storage/os_crash.py``); after an OS crash
it is set aside and starts empty. The node cannot wait for its peers to refill it: the
seal configuration, the keyring and the cluster's TLS material live in that store, and
a node joins consensus only after it has unsealed. So at startup the node replays what
it has locally: its snapshot (pysyncobj's full dump, our own fsynced format), then every
journal entry up to the commit index the journal recorded. Entries after that index may
be uncommitted and are left to consensus, which also brings whatever the node missed.

The journal is the node's own file, read with pysyncobj's own reader, as pysyncobj does
at every start. Each entry is the call of our one replicated method, pickled by pysyncobj;
it is never unpickled here: ``pickletools.genops`` walks its opcodes (it imports, calls and
builds nothing), and only the exact shape ``(method id, (command bytes,))`` is accepted.
"""

from __future__ import annotations

import os
import pickletools
from dataclasses import dataclass

import structlog
from pysyncobj.journal import FileJournal

from vaultraft.raft import layout
from vaultraft.raft.fsm import StateMachine
from vaultraft.raft.snapshot import SnapshotError, install_snapshot
from vaultraft.storage.lmdb_store import LMDBStore

log = structlog.get_logger("vaultraft.raft")

_REGULAR = 0  # pysyncobj's _COMMAND_TYPE.REGULAR: a call of a replicated method


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild replayed: the snapshot's index (0: none) and the entries applied."""

    snapshot_index: int
    entries: int
    applied_index: int


def rebuild_from_local_log(store: LMDBStore, raft_dir: str) -> Rebuilt:
    """Replay ``raft_dir``'s snapshot and committed journal entries into ``store``.

    Blocking (call off the event loop). Entries at or below the store's applied index
    change nothing, so it is safe on a store that is already current.
    """
    snapshot_index = 0
    dump = layout.snapshot_path(raft_dir)
    if os.path.exists(dump):
        try:
            if install_snapshot(dump, store):
                snapshot_index = store.applied_index()
        except SnapshotError as e:  # the journal and the peers still hold the log
            log.warning("raft_rebuild_snapshot_unusable", error=str(e))
    applied = 0
    journal_path = layout.journal_path(raft_dir)
    if os.path.exists(journal_path):
        journal = FileJournal(journal_path)
        try:
            commit = int(journal.getRaftCommitIndex())
            fsm = StateMachine(store)
            for n in range(len(journal)):
                command, index, term = journal[n]
                if index > commit:
                    break
                if index <= store.applied_index():
                    continue
                try:
                    raw = _our_command(command)
                except ValueError as e:  # not a call this version wrote: consensus brings the rest
                    log.warning("raft_rebuild_stopped", index=index, reason=str(e))
                    break
                if raw is None:  # pysyncobj's own entry (no-op, membership): nothing stored
                    continue
                fsm.apply(raw, index, term)
                if fsm.failed is not None:
                    break
                applied += 1
        finally:
            journal._destroy()
    log.info("raft_store_rebuilt", snapshot_index=snapshot_index, entries=applied,
             applied_index=store.applied_index())
    return Rebuilt(snapshot_index, applied, store.applied_index())


#: Opcodes of an int (the method id), of bytes (the command), and the framing ones ignored.
_INT_OPS = {"BININT1", "BININT2", "BININT", "LONG1"}
_BYTES_OPS = {"SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}
_IGNORED_OPS = {"PROTO", "FRAME", "MEMOIZE"}


def _our_command(command: bytes) -> bytes | None:
    """The argument of the replicated ``apply_command`` call in a journal entry; None for
    pysyncobj's own entries. Raises ValueError for a call of any other shape."""
    if not command or command[0] != _REGULAR:
        return None
    ops: list[str] = []
    values: list[object] = []
    try:
        for op, arg, _ in pickletools.genops(command[1:]):
            if op.name in _IGNORED_OPS:
                continue
            ops.append(op.name)
            values.append(arg)
    except Exception as e:  # noqa: BLE001 - a torn or foreign record
        raise ValueError(f"unreadable journal record ({type(e).__name__})") from None
    if (len(ops) != 5 or ops[0] not in _INT_OPS or ops[1] not in _BYTES_OPS
            or ops[2:] != ["TUPLE1", "TUPLE2", "STOP"] or not isinstance(values[1], bytes)):
        raise ValueError("journal record is not a call of the replicated method with one bytes argument")
    return values[1]
