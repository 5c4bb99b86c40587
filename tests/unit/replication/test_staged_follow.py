"""How a node follows an activation staged in its cluster's log: the modes health reports, the
window between the Raft thread applying the staged record and the node reading it, and the
reconcile round that must not run in the middle of this node's own activation steps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from vaultraft.barrier import Barrier
from vaultraft.core.core import CoreSettings
from vaultraft.core.replication import staging
from vaultraft.core.replication.activating import PendingActivation
from vaultraft.core.replication.manager import ReplicationManager
from vaultraft.core.replication.records import ReplicationRecord
from vaultraft.storage import Batch, Op
from vaultraft.storage.local import LocalPhysical


@pytest.fixture
async def manager() -> AsyncIterator[ReplicationManager]:
    phys = await LocalPhysical.open("inmem")
    core: Any = SimpleNamespace(barrier=Barrier(phys), seals=SimpleNamespace(follows_primary=False),
                                settings=CoreSettings(), cluster=SimpleNamespace(raft=None), _loop=None,
                                _active=False)
    yield ReplicationManager(core)
    await phys.close()


async def stage_envelope(m: ReplicationManager, kind: str | None) -> None:
    """The staged record's readable envelope (what a standby reads; no keys involved)."""
    op = (Op.delete(staging.STAGED_KEY) if kind is None
          else Op.put(staging.STAGED_KEY, json.dumps({"v": staging.STAGED_VERSION, "kind": kind,
                                                      "staged_at": 1}).encode()))
    await m.core.barrier.physical.apply(Batch((op,)))


async def test_a_staged_activation_makes_the_cluster_a_secondary_of_its_kind(manager: ReplicationManager) -> None:
    m = manager
    assert (m.replication_mode("dr"), m.replication_mode("performance")) == ("disabled", "disabled")
    await stage_envelope(m, "performance")
    await m.read_staged()
    assert (m.replication_mode("dr"), m.replication_mode("performance")) == ("disabled", "secondary")
    assert m.status("performance")["mode"] == "secondary"  # status and health agree
    m.set_record("dr", ReplicationRecord(kind="dr", mode="primary", cluster_id="c"))
    assert m.replication_mode("dr") == "primary"


async def test_requests_read_the_log_until_the_node_has_read_the_staged_record(manager: ReplicationManager) -> None:
    m = manager
    assert not m.staged_unsettled
    await stage_envelope(m, "dr")
    m.staged_record_applied()  # the Raft thread applied it; no reconcile round yet
    assert m.staged_unsettled and m.staged_activation_kind() is None
    assert await m.staged_kind_in_storage() == "dr"
    await m.read_staged()
    assert not m.staged_unsettled and m.staged_activation_kind() == "dr" and m.dr_secondary


async def test_no_reconcile_round_in_the_middle_of_this_nodes_switch(manager: ReplicationManager) -> None:
    m = manager
    m.core._active = True
    rec = ReplicationRecord(kind="dr", mode="secondary", cluster_id="c", secondary_id="s")
    m.pending = PendingActivation(rec, b"k" * 32, asyncio.Event())
    m.staged_kind = "dr"
    # the switching batch has deleted the staged record; the switch still holds the lock
    async with m.activation_lock:
        await m._sync_staged()
        assert m.pending is not None and not m.pending.done.is_set()
    # once the lock is free, a round is the one that forgets an activation another node finished
    p = m.pending
    await m._sync_staged()
    assert m.pending is None and p.done.is_set() and m.staged_kind is None
