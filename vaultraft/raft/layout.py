"""Where a Raft node keeps pysyncobj's files under its storage path.

One definition for the node that writes them (``node.py``), the rebuild that replays them
after an OS crash (``rebuild.py``) and the join that discards them (``core/raft_ops.py``).
"""

from __future__ import annotations

import os


def raft_dir(data_dir: str) -> str:
    """pysyncobj's directory under a node's storage path."""
    return os.path.join(data_dir, "raft")


def journal_path(raft_directory: str) -> str:
    """pysyncobj's journal file in ``raft_directory``."""
    return os.path.join(raft_directory, "journal")


def snapshot_path(raft_directory: str) -> str:
    """pysyncobj's full-dump (snapshot) file in ``raft_directory``."""
    return os.path.join(raft_directory, "snapshot")
