"""Work that must not run on pysyncobj's tick thread or hold the GIL: journal syncs; and the
pure lease arithmetic the tick thread precomputes for :meth:`RaftPhysical.has_lease`."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable

import structlog

log = structlog.get_logger("vaultraft.raft")


def lease_expiry(response_times: Iterable[float], cluster_size: int, lease: float) -> float:
    """Until when (raft clock) a leader that heard from followers at ``response_times``
    keeps a quorum lease: the ``cluster_size // 2``-th most recent response plus ``lease``.

    Equivalent to "1 + #(followers heard within ``lease``) > cluster_size / 2" evaluated at
    any instant before the returned time (``inf`` for a single-node cluster, ``-inf`` when
    too few followers ever answered).
    """
    need = cluster_size // 2
    if need <= 0:
        return math.inf
    times = sorted(response_times, reverse=True)
    if len(times) < need:
        return -math.inf
    return times[need - 1] + lease


class JournalSync:
    """fsyncs pysyncobj's journal file every ``interval`` seconds from its own thread.

    pysyncobj writes its journal through a shared mmap and never syncs it. ``mmap.flush``
    (msync) would do, but CPython holds the GIL for the whole msync, stalling the event
    loop and the Raft thread for the duration of a disk write. On Linux ``msync(MS_SYNC)``
    of a shared file mapping *is* ``fsync`` of that file range (mm/msync.c), and dirty
    mmap pages live in the same page cache that ``fsync`` writes back, so ``os.fsync`` on
    the journal (which releases the GIL) gives the same guarantee off every hot thread.
    """

    def __init__(self, path: str, interval: float) -> None:
        """Sync ``path`` every ``interval`` seconds once started."""
        self.path = path
        self.interval = interval
        self.syncs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vr-raft-journal-sync", daemon=True)

    def start(self) -> None:
        """Start the syncing thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last sync; blocks until it has exited."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sync_once(self) -> bool:
        """fsync the journal now; False (logged) if it could not be synced."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warning("raft_journal_flush_failed", error=type(e).__name__)
            return False
        try:
            os.fsync(fd)
            self.syncs += 1
            return True
        except OSError as e:
            log.warning("raft_journal_flush_failed", error=type(e).__name__)
            return False
        finally:
            os.close(fd)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync_once()
        self.sync_once()
