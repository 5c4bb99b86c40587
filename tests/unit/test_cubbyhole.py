"""Cubbyhole: per-token isolation, pass-through semantics and destruction on revocation."""

from __future__ import annotations

from typing import Any

import pytest

from vaultraft.engines import BUILTIN_ENGINES, destroy_cubbyhole
from vaultraft.framework import Backend
from vaultraft.logical import InternalError, InvalidRequest, NotFound, Operation, PermissionDenied, Request, Response, TokenInfo
from vaultraft.logical.storage import MemoryView


def make() -> tuple[Backend, MemoryView]:
    return BUILTIN_ENGINES["cubbyhole"]({}, lambda: 0.0), MemoryView()


async def call(b: Backend, view: MemoryView, cid: str, op: Operation, path: str,
               data: dict[str, Any] | None = None) -> Response | None:
    token = TokenInfo(cubbyhole_id=cid) if cid else None
    return await b.handle(Request(op, path, data=data or {}, storage=view, token=token,
                                  mount_point="cubbyhole/"))


async def test_tokens_see_only_their_own_cubbyhole() -> None:
    b, view = make()
    await call(b, view, "alice", Operation.CREATE, "secret", {"v": "a"})
    await call(b, view, "bob", Operation.CREATE, "secret", {"v": "b"})
    ra = await call(b, view, "alice", Operation.READ, "secret")
    rb = await call(b, view, "bob", Operation.READ, "secret")
    assert ra is not None and ra.data == {"v": "a"}
    assert rb is not None and rb.data == {"v": "b"}
    assert ra.lease_duration == 0
    await call(b, view, "alice", Operation.CREATE, "only-alice", {"v": 1})
    with pytest.raises(NotFound):
        await call(b, view, "bob", Operation.READ, "only-alice")
    la = await call(b, view, "alice", Operation.LIST, "")
    assert la is not None and la.data == {"keys": ["only-alice", "secret"]}
    lb = await call(b, view, "bob", Operation.LIST, "")
    assert lb is not None and lb.data == {"keys": ["secret"]}
    assert set(view.data) == {"alice/secret", "alice/only-alice", "bob/secret"}


async def test_delete_affects_only_the_caller() -> None:
    b, view = make()
    await call(b, view, "alice", Operation.UPDATE, "k", {"v": 1})
    await call(b, view, "bob", Operation.UPDATE, "k", {"v": 2})
    await call(b, view, "bob", Operation.DELETE, "k")
    with pytest.raises(NotFound):
        await call(b, view, "bob", Operation.READ, "k")
    assert await call(b, view, "alice", Operation.READ, "k") is not None


async def test_no_cubbyhole_id_is_permission_denied() -> None:
    b, view = make()
    for op in (Operation.READ, Operation.UPDATE, Operation.LIST, Operation.DELETE):
        with pytest.raises(PermissionDenied):
            await call(b, view, "", op, "k", {"v": 1})
    assert view.data == {}


async def test_validation_messages() -> None:
    b, view = make()
    with pytest.raises(InvalidRequest) as e:
        await call(b, view, "alice", Operation.UPDATE, "k", {})
    assert e.value.messages == ["missing data fields"]
    with pytest.raises(InvalidRequest) as e:
        await call(b, view, "alice", Operation.READ, "")
    assert e.value.messages == ["missing path"]
    with pytest.raises(NotFound):
        await call(b, view, "alice", Operation.LIST, "")


async def test_exists_is_per_token() -> None:
    b, view = make()
    await call(b, view, "alice", Operation.UPDATE, "k", {"v": 1})
    r_alice = Request(Operation.UPDATE, "k", storage=view, token=TokenInfo(cubbyhole_id="alice"))
    r_bob = Request(Operation.UPDATE, "k", storage=view, token=TokenInfo(cubbyhole_id="bob"))
    assert await b.exists(r_alice) is True
    assert await b.exists(r_bob) is False


async def test_destroy_cubbyhole_removes_one_token_only() -> None:
    b, view = make()
    for i in range(300):
        await call(b, view, "alice", Operation.UPDATE, f"d{i % 3}/k{i}", {"v": i})
    await call(b, view, "bob", Operation.UPDATE, "k", {"v": "b"})
    await call(b, view, "alice2", Operation.UPDATE, "k", {"v": "c"})
    await destroy_cubbyhole(view, "alice")
    assert set(view.data) == {"bob/k", "alice2/k"}
    await destroy_cubbyhole(view, "alice")  # idempotent
    with pytest.raises(InternalError):
        await destroy_cubbyhole(view, "")
