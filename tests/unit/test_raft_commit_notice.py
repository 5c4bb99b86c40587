"""The leader's commit notice (``_ReplicatedLog.notify_commit``): followers hear a commit
index that no AppendEntries carried once COMMIT_NOTICE_DELAY has passed, and never twice."""

from __future__ import annotations

from vaultraft.raft.node import COMMIT_NOTICE_DELAY, _ReplicatedLog


class FakeLog:
    """The attributes notify_commit reads and the send it makes (pysyncobj's, recorded)."""

    notify_commit = _ReplicatedLog.notify_commit

    def __init__(self) -> None:
        self.raftCommitIndex = 0
        self._vr_told = 0
        self._vr_untold_since: float | None = None
        self.sent: list[int] = []

    def _SyncObj__sendAppendEntries(self) -> None:
        # as _ReplicatedLog's override: every AppendEntries carries the commit index
        self._vr_told = self.raftCommitIndex
        self.sent.append(self.raftCommitIndex)


def test_an_untold_commit_index_is_sent_once_after_the_delay() -> None:
    log = FakeLog()
    log.notify_commit(0.0)
    assert log.sent == []  # nothing new to tell
    log.raftCommitIndex = 5
    log.notify_commit(1.0)  # first tick that sees it untold
    log.notify_commit(1.0 + COMMIT_NOTICE_DELAY / 2)
    assert log.sent == []
    log.notify_commit(1.0 + 1.5 * COMMIT_NOTICE_DELAY)
    assert log.sent == [5]
    for t in (2.0, 3.0):
        log.notify_commit(t)
    assert log.sent == [5]  # told: no second notice


def test_an_appendentries_in_between_makes_the_notice_unnecessary() -> None:
    log = FakeLog()
    log.raftCommitIndex = 7
    log.notify_commit(1.0)
    log._SyncObj__sendAppendEntries()  # the next entry's AppendEntries carried index 7
    log.notify_commit(1.0 + 2 * COMMIT_NOTICE_DELAY)
    assert log.sent == [7]  # only the entry's own send
    log.raftCommitIndex = 8  # a newer commit restarts the wait from when it is first seen
    log.notify_commit(5.0)
    log.notify_commit(5.0 + COMMIT_NOTICE_DELAY / 2)
    assert log.sent == [7]
    log.notify_commit(5.0 + 1.5 * COMMIT_NOTICE_DELAY)
    assert log.sent == [7, 8]
