"""MerkleRoots: status reads the last digest; a refresh runs in the background, one at a time."""

from __future__ import annotations

import asyncio

import pytest

from vaultraft.core.replication import merkle
from vaultraft.core.replication.merkle import MerkleRoots


async def test_root_is_computed_in_the_background_and_refreshed_only_when_the_store_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merkle, "REFRESH_S", 0.0)
    applied = [10]
    calls: list[str] = []
    gate = asyncio.Event()

    async def compute(kind: str) -> tuple[int, str]:
        calls.append(kind)
        await gate.wait()
        return applied[0], f"root-{applied[0]}"

    roots = MerkleRoots(compute, lambda: applied[0])
    assert roots.root("dr") == ""          # nothing yet: one computation starts
    assert roots.root("dr") == ""          # still running: no second one
    await asyncio.sleep(0)
    assert calls == ["dr"]
    gate.set()
    await roots.wait_idle()
    assert roots.root("dr") == "root-10"
    await roots.wait_idle()
    assert calls == ["dr"]                 # the store did not move: no refresh
    applied[0] = 12
    assert roots.root("dr") == "root-10"   # stale answer now, refresh in the background
    await roots.wait_idle()
    assert roots.root("dr") == "root-12" and calls == ["dr", "dr"]
    await roots.close()


async def test_a_failed_computation_keeps_the_last_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merkle, "REFRESH_S", 0.0)
    applied = [1]
    fail = [False]

    async def compute(kind: str) -> tuple[int, str]:
        if fail[0]:
            raise OSError("disk")
        return applied[0], "r1"

    roots = MerkleRoots(compute, lambda: applied[0])
    roots.root("performance")
    await roots.wait_idle()
    fail[0], applied[0] = True, 2
    assert roots.root("performance") == "r1"
    await roots.wait_idle()
    assert roots.root("performance") == "r1"
    await roots.close()


async def test_close_cancels_a_running_computation() -> None:
    started = asyncio.Event()

    async def compute(kind: str) -> tuple[int, str]:
        started.set()
        await asyncio.sleep(3600)
        return 0, ""

    roots = MerkleRoots(compute, lambda: 0)
    roots.root("dr")
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(roots.close(), 5)
    assert roots.root("dr") == ""
    await roots.close()
