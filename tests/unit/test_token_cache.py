"""The token store's decoded-entry cache over a real barrier and LMDB store: used while the
stored value is unchanged, never after a write, a revocation, a change applied by another
node (the replicated log), a snapshot install or a seal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vaultraft.barrier import Barrier
from vaultraft.core.tokens import TokenStore
from vaultraft.core.views import BarrierView
from vaultraft.logical import Sealed
from vaultraft.raft.snapshot import install_snapshot, write_snapshot
from vaultraft.storage.lmdb_store import LMDBStore
from vaultraft.storage.local import LocalPhysical

T0 = 1_700_000_000.0


@dataclass
class Env:
    phys: LocalPhysical
    barrier: Barrier
    view: BarrierView
    store: TokenStore

    @property
    def lmdb(self) -> LMDBStore:
        s = self.phys.store
        assert isinstance(s, LMDBStore)
        return s

    def other_node(self) -> TokenStore:
        """A second token store on the same storage: what another node's writes look like
        here once the log applied them (nothing tells this node's TokenStore)."""
        return TokenStore(BarrierView(self.barrier, "sys/token/", local=True), now=lambda: T0,
                          default_ttl=3600, max_ttl=86400)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    phys = await LocalPhysical.open("raft", str(tmp_path / "db"), map_size=1 << 22)
    barrier = Barrier(phys)
    root_key = os.urandom(32)
    await barrier.initialize(root_key)
    await barrier.unseal(root_key)
    view = BarrierView(barrier, "sys/token/", local=True)
    store = TokenStore(view, now=lambda: T0, default_ttl=3600, max_ttl=86400)
    yield Env(phys, barrier, view, store)
    await phys.close()


async def test_repeated_lookups_are_served_from_the_cache(env: Env) -> None:
    root = await env.store.create_root_token()
    first = await env.store.lookup(root.id)
    assert first == root
    hits = env.store.cache_hits
    assert await env.store.lookup(root.id) == root
    assert env.store.cache_hits == hits + 1
    # the physical entry was evicted: the stamp no longer matches, the entry is reloaded
    env.lmdb.cache.clear()
    assert await env.store.lookup(root.id) == root
    assert env.store.cache_hits == hits + 1


async def test_a_use_is_seen_by_the_next_lookup(env: Env) -> None:
    root = await env.store.create_root_token()
    limited = await env.store.create(root, policies=["app"], num_uses=3)
    assert (await env.store.lookup(limited.id)).num_uses == 3  # type: ignore[union-attr]
    hits = env.store.cache_hits
    assert (await env.store.lookup(limited.id)).num_uses == 3  # type: ignore[union-attr]
    assert env.store.cache_hits == hits + 2  # the token and its parent
    await env.store.use(limited)
    assert (await env.store.lookup(limited.id)).num_uses == 2  # type: ignore[union-attr]


async def test_revocation_is_seen_at_once(env: Env) -> None:
    root = await env.store.create_root_token()
    child = await env.store.create(root, policies=["app"])
    assert await env.store.lookup(child.id) is not None
    hits = env.store.cache_hits
    assert await env.store.lookup(child.id) is not None
    assert env.store.cache_hits > hits
    await env.store.revoke_tree(root.id)
    assert await env.store.lookup(child.id) is None
    assert await env.store.lookup(root.id) is None


async def test_changes_applied_by_another_node_invalidate(env: Env) -> None:
    """A standby's TokenStore is never told about the active node's writes: the stamp
    check against the physical cache (kept exact by the applies) is what keeps it right."""
    root = await env.store.create_root_token()
    limited = await env.store.create(root, policies=["app"], num_uses=5)
    assert (await env.store.lookup(limited.id)).num_uses == 5  # type: ignore[union-attr]
    hits = env.store.cache_hits
    assert (await env.store.lookup(limited.id)).num_uses == 5  # type: ignore[union-attr]
    assert env.store.cache_hits > hits
    active = env.other_node()
    await active.use(limited)
    assert (await env.store.lookup(limited.id)).num_uses == 4  # type: ignore[union-attr]
    await active.revoke_tree(limited.id)
    assert await env.store.lookup(limited.id) is None


async def test_snapshot_install_invalidates(env: Env, tmp_path: Path) -> None:
    before = tmp_path / "before.snap"
    write_snapshot(str(before), env.lmdb, {"last": [b"", 0, 0], "prev": [b"", 0, 0], "cluster": []})
    root = await env.store.create_root_token()
    assert await env.store.lookup(root.id) == root
    hits = env.store.cache_hits
    assert await env.store.lookup(root.id) == root
    assert env.store.cache_hits == hits + 1
    assert install_snapshot(str(before), env.lmdb, force=True)  # a state without this token
    assert await env.store.lookup(root.id) is None


async def test_stamps_follow_the_seal(env: Env) -> None:
    root = await env.store.create_root_token()
    h = await env.store.hash_id(root.id)
    entry, stamp = await env.view.get_stamped("id/" + h)
    assert entry is not None and stamp is not None
    assert env.view.stamp_current("id/" + h, stamp)
    missing, none_stamp = await env.view.get_stamped("id/nothing")
    assert missing is None and none_stamp is None
    env.barrier.seal()
    assert not env.view.stamp_current("id/" + h, stamp)
    with pytest.raises(Sealed):
        await env.view.get_stamped("id/" + h)
