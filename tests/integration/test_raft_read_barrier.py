"""The read barrier on three in-process Raft nodes: one no-op in flight at a time, shared by
every caller that arrived before it was submitted, and still a proof of leadership."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.test_raft_nodes import FAST, Cluster
from vaultraft.raft.node import NotLeaderError
from vaultraft.storage import Batch, Op


async def test_barrier_noops_are_shared_and_serialised(tmp_path: Path) -> None:
    c = Cluster(tmp_path, FAST)
    await c.start()
    try:
        leader = await c.leader()
        await leader.p.noop()
        start = leader.p.applied_index()
        await asyncio.gather(*(leader.p.read_barrier() for _ in range(50)))
        assert leader.p.applied_index() == start + 1  # one burst, one no-op

        first = asyncio.ensure_future(leader.p.read_barrier())
        while leader.p._barrier_next is None:  # first caller registered ...
            await asyncio.sleep(0)
        while leader.p._barrier_next is not None:  # ... and its no-op submitted
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(leader.p.read_barrier()) for _ in range(10)]
        await asyncio.gather(first, *later)
        # the later callers arrived after the first no-op was submitted: they needed a new one,
        # and only one more
        assert leader.p.applied_index() == start + 3

        await leader.p.apply(Batch((Op.put("k", b"v"),)))
        await leader.p.read_barrier()
        assert await leader.p.get("k") == b"v"

        follower = next(m for m in c.members if m is not leader)
        with pytest.raises(NotLeaderError):
            await follower.p.read_barrier()
    finally:
        await c.close()
