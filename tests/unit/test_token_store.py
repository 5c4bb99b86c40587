"""Token store: storage layout, TTL rules, use counts, revocation trees and the auth/token/ API."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Sequence

import pytest

from vaultraft.core.tokens import REVOCATION_PENDING, TokenEntry, TokenStore
from vaultraft.core.tokens.store import ACCESSOR_PREFIX, ID_PREFIX, PARENT_PREFIX
from vaultraft.logical import (
    InvalidRequest,
    Operation,
    PermissionDenied,
    Request,
    Response,
    StorageEntry,
    UnsupportedPath,
    WriteOp,
)
from vaultraft.logical.storage import MemoryView

T0 = 1_700_000_000.0
DEFAULT_TTL = 3600
MAX_TTL = 86400


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class YieldingView(MemoryView):
    """A MemoryView that yields to the event loop on every call, so coroutines interleave."""

    async def get(self, key: str) -> StorageEntry | None:
        await asyncio.sleep(0)
        return await super().get(key)

    async def put(self, entry: StorageEntry) -> None:
        await asyncio.sleep(0)
        await super().put(entry)

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        await asyncio.sleep(0)
        await super().write_batch(ops)


class Env:
    def __init__(self, view: MemoryView | None = None) -> None:
        self.view = view or MemoryView()
        self.clock = Clock()
        self.revoked: list[str] = []  # accessors, in revocation order
        self.fail_revoke = False
        self.store = TokenStore(self.view, now=self.clock, default_ttl=DEFAULT_TTL,
                                max_ttl=MAX_TTL, on_revoke=self._on_revoke)

    async def _on_revoke(self, entry: TokenEntry) -> None:
        if self.fail_revoke:
            raise RuntimeError("leases could not be revoked")
        self.revoked.append(entry.accessor)

    async def child(self, parent: TokenEntry | None, **kw: Any) -> TokenEntry:
        kw.setdefault("policies", ["app"])
        return await self.store.create(parent, **kw)

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.view.data if k.startswith(prefix))

    async def call(self, op: Operation, path: str, token: TokenEntry | str, data: dict[str, Any] | None = None,
                   *, sudo: bool | None = None) -> Response | None:
        tid = token if isinstance(token, str) else token.id
        entry = await self.store.lookup(tid)
        is_root = entry is not None and entry.is_root
        req = Request(operation=op, path=path, data=dict(data or {}), client_token=tid,
                      mount_point="auth/token/", is_root=is_root,
                      sudo=is_root if sudo is None else sudo)
        return await self.store.backend().handle(req)


@pytest.fixture
def env() -> Env:
    return Env()


# ---- creation, lookup and storage layout ---------------------------------------------------


async def test_root_token_shape(env: Env) -> None:
    root = await env.store.create_root_token()
    assert re.fullmatch(r"hvs\.[A-Za-z0-9]{24}", root.id)
    assert re.fullmatch(r"[A-Za-z0-9]{24}", root.accessor)
    assert root.policies == ("root",)
    assert root.expire_time == 0 and root.ttl == 0
    assert root.orphan and root.parent_hash == ""
    assert not root.renewable
    assert root.display_name == "root" and root.path == "auth/token/root"
    assert root.cubbyhole_id and root.cubbyhole_id != root.accessor
    assert await env.store.lookup(root.id) == root
    assert await env.store.lookup_accessor(root.accessor) == root
    assert await env.store.lookup("hvs.nope") is None
    assert await env.store.lookup("") is None
    assert root.id not in repr(root)


async def test_explicit_root_id_and_custom_id_rules(env: Env) -> None:
    root = await env.store.create_root_token("devroot")
    assert root.id == "devroot"
    assert (await env.store.lookup("devroot")) == root
    for bad, msg in [("hvs.abc", "'hvs.' prefix"), ("s.abc", "'s.' prefix"), ("a.b", "'.' in the value")]:
        with pytest.raises(InvalidRequest, match=re.escape(msg)):
            await env.child(root, token_id=bad)
    with pytest.raises(InvalidRequest, match="duplicate ID"):
        await env.child(root, token_id="devroot")


async def test_child_policies_ttl_and_indexes(env: Env) -> None:
    root = await env.store.create_root_token()
    child = await env.child(root, policies=["B", "a", " a "], display_name="my app!")
    assert child.policies == ("a", "b", "default")
    assert child.display_name == "token-my-app"
    assert child.ttl == DEFAULT_TTL and child.expire_time == T0 + DEFAULT_TTL
    assert not child.orphan and child.renewable and child.type == "service"
    assert child.entity_id == ""
    nodef = await env.child(root, policies=["a", "default"], no_default_policy=True)
    assert nodef.policies == ("a",)
    rootish = await env.child(root, policies=["x", "root"])
    assert rootish.policies == ("root",)
    h_root = await env.store.hash_id(root.id)
    h_child = await env.store.hash_id(child.id)
    assert f"{PARENT_PREFIX}{h_root}/{h_child}" in env.view.data
    assert env.view.data[ACCESSOR_PREFIX + child.accessor] == h_child.encode()
    assert TokenEntry.decode(env.view.data[ID_PREFIX + h_child]) == child
    orphan = await env.child(root, no_parent=True)
    assert orphan.orphan and orphan.parent_hash == ""
    with pytest.raises(InvalidRequest, match='cannot assign policy "response-wrapping"'):
        await env.child(root, policies=["response-wrapping"])
    with pytest.raises(InvalidRequest, match="number of uses cannot be negative"):
        await env.child(root, num_uses=-1)


async def test_stored_keys_never_contain_raw_token_ids(env: Env) -> None:
    root = await env.store.create_root_token("plainroot")
    ids = [root.id]
    parent = root
    for i in range(4):
        parent = await env.child(parent, token_id=f"custom{i}" if i % 2 else None)
        ids.append(parent.id)
    await env.store.use(await env.child(root, num_uses=2))
    await env.store.renew(parent, 100)
    for key in env.view.data:
        for tid in ids:
            assert tid not in key
    entries = [TokenEntry.decode(v) for k, v in env.view.data.items() if k.startswith(ID_PREFIX)]
    assert len(entries) == len(env.keys(ID_PREFIX)) and all(e.id for e in entries)  # msgpack, not pickle


async def test_ttl_caps(env: Env) -> None:
    root = await env.store.create_root_token()
    long = await env.child(root, ttl=10 * MAX_TTL)
    assert long.ttl == MAX_TTL
    capped = await env.child(root, ttl=3600, explicit_max_ttl=100)
    assert capped.ttl == 100 and capped.explicit_max_ttl == 100
    # A root-policy token with an explicit max still expires.
    bounded_root = await env.child(root, policies=["root"], explicit_max_ttl=500)
    assert bounded_root.ttl == 500 and bounded_root.expire_time == T0 + 500
    # An expiring root token cannot mint a non-expiring one.
    with pytest.raises(InvalidRequest, match="expiring root tokens cannot create non-expiring root tokens"):
        await env.child(bounded_root, policies=["root"])


# ---- expiry, use counts ---------------------------------------------------------------------


async def test_expired_token_is_revoked_with_its_tree_on_lookup(env: Env) -> None:
    root = await env.store.create_root_token()
    short = await env.child(root, ttl=60)
    grandchild = await env.child(short, ttl=3600)
    env.clock.advance(60)
    assert await env.store.lookup(short.id) == short  # valid through its expire time
    env.clock.advance(1)
    assert await env.store.lookup(grandchild.id) is None  # the ancestor expired
    assert await env.store.lookup(short.id) is None
    assert env.keys(ACCESSOR_PREFIX) == [ACCESSOR_PREFIX + root.accessor]
    assert env.keys(PARENT_PREFIX) == []
    assert len(env.keys(ID_PREFIX)) == 1
    assert env.revoked == [grandchild.accessor, short.accessor]
    assert await env.store.lookup(root.id) == root


async def test_num_uses_countdown(env: Env) -> None:
    root = await env.store.create_root_token()
    assert await env.store.use(root) is root  # unlimited: unchanged, nothing written
    limited = await env.child(root, num_uses=3)
    kid = await env.child(root, no_parent=True)
    first = await env.store.use(limited)
    assert first is not None and first.num_uses == 2
    assert (await env.store.lookup(limited.id)).num_uses == 2  # type: ignore[union-attr]
    second = await env.store.use(limited)
    assert second is not None and second.num_uses == 1
    last = await env.store.use(limited)
    assert last is not None and last.num_uses == REVOCATION_PENDING and last.policies == limited.policies
    # spent: no other request may use it, but the request that spent it still sees it
    assert await env.store.lookup(limited.id) is None
    assert await env.store.lookup(limited.id, allow_pending=True) is not None
    assert await env.store.use(limited) is None
    assert env.revoked == []
    await env.store.revoke_tree(limited.id)  # what core does when that request ends
    assert await env.store.lookup(limited.id, allow_pending=True) is None
    assert env.revoked == [limited.accessor]
    assert await env.store.lookup(kid.id) is not None


async def test_concurrent_uses_never_exceed_the_limit() -> None:
    env = Env(YieldingView())
    root = await env.store.create_root_token()
    limited = await env.child(root, num_uses=3)
    results = await asyncio.gather(*(env.store.use(limited) for _ in range(8)))
    assert sum(r is not None for r in results) == 3
    assert await env.store.lookup(limited.id) is None


# ---- renewal --------------------------------------------------------------------------------


async def test_renew_extends_and_caps_at_explicit_max(env: Env) -> None:
    root = await env.store.create_root_token()
    tok = await env.child(root, ttl=60, explicit_max_ttl=100)
    env.clock.advance(30)
    again = await env.store.renew(tok, 0)  # no increment: the last TTL again
    assert again.expire_time == T0 + 90 and again.last_renewal_time == T0 + 30
    env.clock.advance(20)
    capped = await env.store.renew(tok, 3600)
    assert capped.expire_time == T0 + 100
    assert capped.ttl == 60  # creation TTL is kept
    env.clock.advance(51)
    assert await env.store.lookup(tok.id) is None
    with pytest.raises(InvalidRequest, match="lease not found"):
        await env.store.renew(tok, 10)


async def test_renew_caps_at_system_max_and_refuses_non_renewable(env: Env) -> None:
    root = await env.store.create_root_token()
    tok = await env.child(root, ttl=3600)
    env.clock.advance(3000)
    renewed = await env.store.renew(tok, 10 * MAX_TTL)
    assert renewed.expire_time == T0 + MAX_TTL
    fixed = await env.child(root, renewable=False)
    with pytest.raises(InvalidRequest, match="lease is not renewable"):
        await env.store.renew(fixed, 60)
    with pytest.raises(InvalidRequest, match="lease is not renewable"):
        await env.store.renew(root, 60)


async def test_periodic_tokens(env: Env) -> None:
    root = await env.store.create_root_token()
    per = await env.child(root, period=300, ttl=3600)
    assert per.ttl == 300 and per.period == 300
    for _ in range(500):  # far past the system max TTL: periodic tokens live on
        env.clock.advance(250)
        renewed = await env.store.renew(per, 10_000)
        assert renewed.expire_time == env.clock.t + 300
    assert await env.store.lookup(per.id) is not None
    bounded = await env.child(root, period=300, explicit_max_ttl=500)
    env.clock.advance(250)
    assert (await env.store.renew(bounded, 0)).expire_time == bounded.creation_time + 500
    env.clock.advance(251)
    assert await env.store.lookup(bounded.id) is None
    huge = await env.child(root, period=10 * MAX_TTL)
    assert huge.ttl == MAX_TTL


# ---- revocation -------------------------------------------------------------------------------


async def _tree(env: Env) -> dict[str, TokenEntry]:
    root = await env.store.create_root_token()
    a = await env.child(root)
    b = await env.child(a)
    c = await env.child(b)
    d = await env.child(a)
    other = await env.child(root)
    return {"root": root, "a": a, "b": b, "c": c, "d": d, "other": other}


async def test_revoke_tree_takes_grandchildren_and_accessors(env: Env) -> None:
    t = await _tree(env)
    await env.store.revoke_tree(t["a"].id)
    for name in "abcd":
        assert await env.store.lookup(t[name].id) is None
        assert await env.store.lookup_accessor(t[name].accessor) is None
    assert await env.store.lookup(t["root"].id) is not None
    assert await env.store.lookup(t["other"].id) is not None
    assert sorted(env.revoked) == sorted(t[n].accessor for n in "abcd")
    assert env.revoked.index(t["c"].accessor) < env.revoked.index(t["b"].accessor) < env.revoked.index(t["a"].accessor)
    assert env.keys(ACCESSOR_PREFIX) == sorted(ACCESSOR_PREFIX + t[n].accessor for n in ("root", "other"))
    h_root = await env.store.hash_id(t["root"].id)
    assert env.keys(PARENT_PREFIX) == [f"{PARENT_PREFIX}{h_root}/{await env.store.hash_id(t['other'].id)}"]
    await env.store.revoke_tree(t["a"].id)  # revoking again is a no-op
    await env.store.revoke_tree("hvs.unknown")


async def test_revoke_orphan_keeps_children_as_orphans(env: Env) -> None:
    t = await _tree(env)
    await env.store.revoke_orphan(t["a"].id)
    assert await env.store.lookup(t["a"].id) is None
    assert env.revoked == [t["a"].accessor]
    b = await env.store.lookup(t["b"].id)
    d = await env.store.lookup(t["d"].id)
    assert b is not None and b.orphan and b.parent_hash == ""
    assert d is not None and d.orphan
    c = await env.store.lookup(t["c"].id)
    assert c is not None and not c.orphan
    h_a = await env.store.hash_id(t["a"].id)
    assert not any(k.startswith(f"{PARENT_PREFIX}{h_a}/") for k in env.view.data)
    await env.store.revoke_tree(t["b"].id)
    assert await env.store.lookup(t["c"].id) is None


async def test_failed_revocation_leaves_token_unusable_and_tidy_finishes_it(env: Env) -> None:
    t = await _tree(env)
    env.fail_revoke = True
    with pytest.raises(RuntimeError):
        await env.store.revoke_tree(t["a"].id)
    for name in "abcd":  # the tainted top makes the whole subtree unusable at once
        assert await env.store.lookup(t[name].id) is None
    short = await env.child(t["root"], ttl=60)
    env.clock.advance(61)
    assert await env.store.lookup(short.id) is None  # expired: the failed revocation is not an error
    env.fail_revoke = False
    assert await env.store.tidy() == 5
    assert await env.store.lookup(t["other"].id) is not None
    assert len(env.keys(ID_PREFIX)) == 2


async def test_child_whose_parent_vanished_is_revoked(env: Env) -> None:
    t = await _tree(env)
    h_a = await env.store.hash_id(t["a"].id)
    del env.view.data[ID_PREFIX + h_a]  # as if a child escaped its parent's revocation
    assert await env.store.lookup(t["c"].id) is None
    assert await env.store.lookup(t["b"].id) is None
    assert await env.store.lookup(t["d"].id) is None  # a sibling is caught on its own lookup
    assert sorted(env.revoked) == sorted(t[n].accessor for n in "bcd")
    assert await env.store.lookup(t["other"].id) is not None


async def test_tidy_revokes_expired_and_cleans_dangling_indexes(env: Env) -> None:
    root = await env.store.create_root_token()
    short = [await env.child(root, ttl=60) for _ in range(3)]
    await env.child(short[0], ttl=3600)
    keep = await env.child(root, ttl=3600)
    env.view.data[ACCESSOR_PREFIX + "danglingaccessor"] = b"0" * 64
    env.view.data[f"{PARENT_PREFIX}{'1' * 64}/{'2' * 64}"] = b"1"
    env.clock.advance(61)
    assert await env.store.tidy() == 4
    assert await env.store.lookup(keep.id) is not None
    assert len(env.keys(ID_PREFIX)) == 2
    assert env.keys(ACCESSOR_PREFIX) == sorted(ACCESSOR_PREFIX + e.accessor for e in (root, keep))
    assert len(env.keys(PARENT_PREFIX)) == 1
    assert await env.store.tidy() == 0


# ---- the auth/token/ backend ------------------------------------------------------------------


async def test_backend_create_and_lookup_fields(env: Env) -> None:
    root = await env.store.create_root_token()
    resp = await env.call(Operation.UPDATE, "create", root, {
        "policies": ["a", "b"], "ttl": "1h", "meta": {"team": "x"}, "display_name": "ci",
        "explicit_max_ttl": "2h", "num_uses": 0})
    assert resp is not None and resp.auth is not None
    auth = resp.auth.to_json()
    assert auth["policies"] == ["a", "b", "default"] and auth["token_policies"] == auth["policies"]
    assert auth["lease_duration"] == 3600 and auth["renewable"] is True
    assert auth["metadata"] == {"team": "x"} and auth["orphan"] is False
    assert auth["client_token"].startswith("hvs.")
    env.clock.advance(10)
    look = await env.call(Operation.READ, "lookup-self", auth["client_token"])
    assert look is not None and look.data is not None
    data = look.data
    assert {"accessor", "creation_time", "creation_ttl", "display_name", "entity_id", "expire_time",
            "explicit_max_ttl", "id", "issue_time", "meta", "num_uses", "orphan", "path", "policies",
            "renewable", "ttl", "type"} <= set(data)
    assert data["id"] == auth["client_token"] and data["accessor"] == auth["accessor"]
    assert data["creation_time"] == int(T0) and data["creation_ttl"] == 3600 and data["ttl"] == 3590
    assert data["display_name"] == "token-ci" and data["path"] == "auth/token/create"
    assert data["explicit_max_ttl"] == 7200 and data["type"] == "service" and data["renewable"] is True
    assert data["expire_time"] == "2023-11-14T23:13:20Z" and data["issue_time"] == "2023-11-14T22:13:20Z"
    root_look = await env.call(Operation.UPDATE, "lookup", root, {"token": root.id})
    assert root_look is not None and root_look.data is not None
    assert root_look.data["expire_time"] is None and root_look.data["renewable"] is False
    assert root_look.data["policies"] == ["root"] and root_look.data["orphan"] is True
    by_acc = await env.call(Operation.UPDATE, "lookup-accessor", root, {"accessor": auth["accessor"]})
    assert by_acc is not None and by_acc.data is not None and by_acc.data["id"] == ""
    with pytest.raises(PermissionDenied, match="bad token"):
        await env.call(Operation.UPDATE, "lookup", root, {"token": "hvs.missing"})
    with pytest.raises(InvalidRequest, match="invalid accessor"):
        await env.call(Operation.UPDATE, "lookup-accessor", root, {"accessor": "nope"})


async def test_backend_policy_subset_and_privileges(env: Env) -> None:
    root = await env.store.create_root_token()
    parent = await env.child(root, policies=["a", "b"])
    with pytest.raises(InvalidRequest, match="child policies must be subset of parent"):
        await env.call(Operation.UPDATE, "create", parent, {"policies": ["c"]})
    resp = await env.call(Operation.UPDATE, "create", parent, {"policies": "a"})
    assert resp is not None and resp.auth is not None and resp.auth.policies == ["a", "default"]
    inherit = await env.call(Operation.UPDATE, "create", parent, {})
    assert inherit is not None and inherit.auth is not None and inherit.auth.policies == ["a", "b", "default"]
    bare = await env.call(Operation.UPDATE, "create", parent, {"no_default_policy": True})
    assert bare is not None and bare.auth is not None and bare.auth.policies == ["a", "b"]
    with pytest.raises(InvalidRequest, match="root or sudo privileges required to create orphan token"):
        await env.call(Operation.UPDATE, "create", parent, {"no_parent": True})
    with pytest.raises(InvalidRequest, match="root or sudo privileges required to specify token id"):
        await env.call(Operation.UPDATE, "create", parent, {"id": "mine"})
    with pytest.raises(InvalidRequest, match="root or sudo privileges required to create periodic token"):
        await env.call(Operation.UPDATE, "create", parent, {"period": "1h"})
    sudo = await env.call(Operation.UPDATE, "create", parent, {"policies": ["c"], "no_parent": True}, sudo=True)
    assert sudo is not None and sudo.auth is not None
    assert sudo.auth.policies == ["c", "default"] and sudo.auth.orphan is True
    with pytest.raises(InvalidRequest, match="root tokens may not be created without parent token being root"):
        await env.call(Operation.UPDATE, "create", parent, {"policies": ["root"]}, sudo=True)
    orphan = await env.call(Operation.UPDATE, "create-orphan", parent, {"policies": ["a"]})
    assert orphan is not None and orphan.auth is not None and orphan.auth.orphan is True
    custom = await env.call(Operation.UPDATE, "create", root, {"id": "chosen", "policies": ["x"]})
    assert custom is not None and custom.auth is not None and custom.auth.client_token == "chosen"
    child_root = await env.call(Operation.UPDATE, "create", root, {})
    assert child_root is not None and child_root.auth is not None
    assert child_root.auth.policies == ["root"] and child_root.auth.lease_duration == 0
    assert child_root.auth.renewable is False
    with pytest.raises(InvalidRequest, match="batch tokens are not supported"):
        await env.call(Operation.UPDATE, "create", root, {"type": "batch"})
    with pytest.raises(InvalidRequest, match="invalid 'token_type' value"):
        await env.call(Operation.UPDATE, "create", root, {"type": "weird"})
    with pytest.raises(InvalidRequest, match="ttl must be positive"):
        await env.call(Operation.UPDATE, "create", root, {"ttl": "-5"})
    with pytest.raises(InvalidRequest, match="unknown role web"):
        await env.call(Operation.UPDATE, "create/web", root, {})
    limited = await env.child(root, num_uses=5)
    with pytest.raises(InvalidRequest, match="restricted use token cannot generate child tokens"):
        await env.call(Operation.UPDATE, "create", limited, {})


async def test_backend_renew_and_revoke(env: Env) -> None:
    root = await env.store.create_root_token()
    tok = await env.child(root, ttl=600)
    env.clock.advance(100)
    resp = await env.call(Operation.UPDATE, "renew-self", tok, {"increment": "20m"})
    assert resp is not None and resp.auth is not None
    assert resp.auth.lease_duration == 1200 and resp.auth.client_token == tok.id
    by_acc = await env.call(Operation.UPDATE, "renew-accessor", root, {"accessor": tok.accessor, "increment": 60})
    assert by_acc is not None and by_acc.auth is not None
    assert by_acc.auth.client_token == "" and by_acc.auth.lease_duration == 60
    with pytest.raises(InvalidRequest, match="lease is not renewable"):
        await env.call(Operation.UPDATE, "renew", root, {"token": root.id})
    with pytest.raises(InvalidRequest, match="token not found"):
        await env.call(Operation.UPDATE, "renew", root, {"token": "hvs.gone"})
    with pytest.raises(InvalidRequest, match="missing token ID"):
        await env.call(Operation.UPDATE, "revoke", root, {})

    a = await env.child(root)
    b = await env.child(a)
    with pytest.raises(InvalidRequest, match="root or sudo privileges required to revoke and orphan"):
        await env.call(Operation.UPDATE, "revoke-orphan", a, {"token": a.id})
    assert await env.call(Operation.UPDATE, "revoke-orphan", root, {"token": a.id}) is None
    assert (await env.store.lookup(b.id)).orphan  # type: ignore[union-attr]
    with pytest.raises(InvalidRequest, match="token to revoke not found"):
        await env.call(Operation.UPDATE, "revoke-orphan", root, {"token": a.id})
    assert await env.call(Operation.UPDATE, "revoke-accessor", root, {"accessor": b.accessor}) is None
    assert await env.store.lookup(b.id) is None
    gone = await env.call(Operation.UPDATE, "revoke-accessor", root, {"accessor": b.accessor})
    assert gone is not None and gone.warnings == ["No token found with this accessor"]
    c = await env.child(root)
    d = await env.child(c)
    assert await env.call(Operation.UPDATE, "revoke", root, {"token": c.id}) is None
    assert await env.store.lookup(d.id) is None
    assert await env.call(Operation.UPDATE, "revoke", root, {"token": c.id}) is None  # unknown: still 204
    assert await env.call(Operation.UPDATE, "revoke-self", tok) is None
    assert await env.store.lookup(tok.id) is None


async def test_backend_accessors_list_and_tidy(env: Env) -> None:
    root = await env.store.create_root_token()
    kid = await env.child(root, ttl=60)
    with pytest.raises(PermissionDenied):
        await env.call(Operation.LIST, "accessors/", kid)
    listed = await env.call(Operation.LIST, "accessors/", root)
    assert listed is not None and listed.data == {"keys": sorted([root.accessor, kid.accessor])}
    env.clock.advance(61)
    tidy = await env.call(Operation.UPDATE, "tidy", root)
    assert tidy is not None and tidy.status == 202 and tidy.warnings
    assert env.keys(ACCESSOR_PREFIX) == [ACCESSOR_PREFIX + root.accessor]
    with pytest.raises(UnsupportedPath):
        await env.call(Operation.UPDATE, "lookup/extra", root)
    paths = env.store.backend().openapi("auth/token/")["paths"]
    assert "/auth/token/create" in paths and "/auth/token/create/{role_name}" in paths
