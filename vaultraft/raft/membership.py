"""Raft membership for :class:`vaultraft.raft.node.RaftPhysical` (a mixin): the locally
recorded peer list a node restarts with, and leader-only add/remove/transfer through
pysyncobj's membership changes, each with a timeout."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any, Sequence

from pysyncobj import FAIL_REASON

from vaultraft.aio import within
from vaultraft.raft.errors import (
    CommitTimeout,
    ConsensusStopped,
    NotLeaderError,
    RaftError,
)

if TYPE_CHECKING:
    from vaultraft.raft.node import RaftStatus, RaftTuning


def _settle(fut: asyncio.Future[int], err: int) -> None:
    if not fut.done():
        fut.set_result(err)


class MembershipMixin:
    """Peer bookkeeping and membership changes."""

    _obj: Any
    self_addr: str
    data_dir: str
    tuning: "RaftTuning"

    if TYPE_CHECKING:
        def status(self) -> RaftStatus: ...
        def leader_addr(self) -> str | None: ...

    def peers_file(self) -> str:
        return os.path.join(self.data_dir, "raft", "peers.json")

    def voter_file(self) -> str:
        return os.path.join(self.data_dir, "raft", "voter.json")

    def is_voter(self) -> bool:
        """Whether this node joined as a voter (True unless it joined with non_voter)."""
        try:
            with open(self.voter_file()) as f:
                return json.load(f) is not False
        except (OSError, ValueError):
            return True

    def record_voter(self, voter: bool) -> None:
        """Remember whether this node votes, for every later start (atomic, fsynced)."""
        path = self.voter_file()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(voter, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def known_peers(self) -> list[str]:
        """Other members' cluster addresses as last recorded locally."""
        try:
            with open(self.peers_file()) as f:
                peers = json.load(f)
            return [p for p in peers if isinstance(p, str) and p != self.self_addr]
        except (OSError, ValueError):
            return []

    def record_peers(self, peers: Sequence[str]) -> None:
        """Remember the membership for the next start (atomic, fsynced)."""
        path = self.peers_file()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(sorted(set(peers) - {self.self_addr}), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    # ---- membership ------------------------------------------------------------------------

    async def add_peer(self, addr: str, *, wait: bool = True) -> None:
        """Add a voter (leader only); with ``wait``, return once the change is committed.

        A joining node cannot acknowledge before it runs, and it runs only after it is
        admitted, so admission does not wait (the change commits once it catches up).
        """
        await self._membership("add", addr, wait=wait)

    async def transfer_leadership(self) -> None:
        """Ask pysyncobj to hand leadership to another member (leader only)."""
        obj = self._obj
        if obj is None:
            raise ConsensusStopped("consensus stopped")
        if not obj._isLeader():
            raise NotLeaderError(self.leader_addr())
        if obj._SyncObj__otherNodes:
            obj.transferLeadership()

    async def remove_peer(self, addr: str) -> None:
        """Remove a member (leader only); returns once the change is committed."""
        await self._membership("remove", addr)

    async def _membership(self, op: str, addr: str, *, wait: bool = True) -> None:
        obj = self._obj
        if obj is None:
            raise ConsensusStopped("consensus stopped")
        if not obj._isLeader():
            raise NotLeaderError(self.leader_addr())
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        def done(result: Any, err: int) -> None:
            loop.call_soon_threadsafe(_settle, fut, err)

        if op == "add":
            obj.addNodeToCluster(addr, callback=done)
        else:
            obj.removeNodeFromCluster(addr, callback=done)
        peers = set(self.status().peers)
        if not wait:
            self.record_peers(sorted(peers | {addr} if op == "add" else peers - {addr}))
            return
        try:
            err = await within(fut, self.tuning.commit_timeout)
        except TimeoutError:
            raise CommitTimeout(f"membership change {op} {addr} not committed in time") from None
        if err != FAIL_REASON.SUCCESS:
            raise RaftError(f"membership change {op} {addr} failed (reason {err})")
        peers = set(self.status().peers)
        peers = peers | {addr} if op == "add" else peers - {addr}
        self.record_peers(sorted(peers))

