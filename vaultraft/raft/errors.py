"""The Raft layer's infrastructure errors (core maps them to Vault's)."""

from __future__ import annotations


class RaftError(Exception):
    """Base of the Raft layer's infrastructure errors (core maps them)."""


class NotLeaderError(RaftError):
    """This node cannot accept writes; ``leader_cluster_addr`` is the known leader or None."""

    def __init__(self, leader_cluster_addr: str | None) -> None:
        super().__init__("node is not the raft leader")
        self.leader_cluster_addr = leader_cluster_addr


class CommitTimeout(RaftError):
    """A write was not committed before its deadline (its outcome may still be applied)."""


class ConsensusStopped(RaftError):
    """The node is not participating in consensus (sealed, or shutting down)."""
