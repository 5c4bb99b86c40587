"""KV v1 ("kv" without version, "generic"): CRUD, list, leases, existence, factories."""

from __future__ import annotations

from typing import Any

import pytest

from vaultraft.engines import BUILTIN_ENGINES
from vaultraft.engines.kv import DEFAULT_LEASE_TTL
from vaultraft.framework import Backend
from vaultraft.logical import InvalidRequest, NotFound, Operation, Request, Response
from vaultraft.logical.storage import MemoryView


def clock() -> float:
    return 1_700_000_000.0


def v1() -> tuple[Backend, MemoryView]:
    return BUILTIN_ENGINES["kv"]({}, clock), MemoryView()


async def call(b: Backend, view: MemoryView, op: Operation, path: str,
               data: dict[str, Any] | None = None) -> Response | None:
    return await b.handle(Request(op, path, data=data or {}, storage=view, mount_point="kv/"))


async def test_write_then_read_roundtrips_arbitrary_json() -> None:
    b, view = v1()
    body = {"user": "admin", "n": 3, "nested": {"a": [1, 2, None]}, "ok": True}
    assert await call(b, view, Operation.CREATE, "app/db", body) is None
    resp = await call(b, view, Operation.READ, "app/db")
    assert resp is not None and resp.data == body
    assert resp.warnings == []
    assert resp.lease_duration == DEFAULT_LEASE_TTL == 2764800


async def test_ttl_field_sets_lease_duration() -> None:
    b, view = v1()
    await call(b, view, Operation.UPDATE, "s", {"v": "x", "ttl": "1h"})
    resp = await call(b, view, Operation.READ, "s")
    assert resp is not None and resp.lease_duration == 3600
    await call(b, view, Operation.UPDATE, "s", {"v": "x", "ttl": 90})
    resp = await call(b, view, Operation.READ, "s")
    assert resp is not None and resp.lease_duration == 90


async def test_update_replaces_whole_object() -> None:
    b, view = v1()
    await call(b, view, Operation.UPDATE, "s", {"a": "1", "b": "2"})
    await call(b, view, Operation.UPDATE, "s", {"c": "3"})
    resp = await call(b, view, Operation.READ, "s")
    assert resp is not None and resp.data == {"c": "3"}


async def test_read_missing_is_not_found() -> None:
    b, view = v1()
    with pytest.raises(NotFound):
        await call(b, view, Operation.READ, "nope")


async def test_write_without_data_is_rejected() -> None:
    b, view = v1()
    with pytest.raises(InvalidRequest) as e:
        await call(b, view, Operation.UPDATE, "s", {})
    assert e.value.messages == ["missing data fields"]
    with pytest.raises(InvalidRequest) as e:
        await call(b, view, Operation.UPDATE, "", {"a": 1})
    assert e.value.messages == ["missing path"]


async def test_delete_is_idempotent() -> None:
    b, view = v1()
    await call(b, view, Operation.UPDATE, "s", {"a": 1})
    assert await call(b, view, Operation.DELETE, "s") is None
    assert await call(b, view, Operation.DELETE, "s") is None
    with pytest.raises(NotFound):
        await call(b, view, Operation.READ, "s")


async def test_list_root_and_folders() -> None:
    b, view = v1()
    for p in ("a", "dir/x", "dir/y", "dir/sub/z"):
        await call(b, view, Operation.UPDATE, p, {"v": p})
    root = await call(b, view, Operation.LIST, "")
    assert root is not None and root.data == {"keys": ["a", "dir/"]}
    sub = await call(b, view, Operation.LIST, "dir/")
    assert sub is not None and sub.data == {"keys": ["sub/", "x", "y"]}
    no_slash = await call(b, view, Operation.LIST, "dir")
    assert no_slash is not None and no_slash.data == sub.data


async def test_list_of_nothing_is_not_found() -> None:
    b, view = v1()
    with pytest.raises(NotFound):
        await call(b, view, Operation.LIST, "")
    await call(b, view, Operation.UPDATE, "a", {"v": 1})
    with pytest.raises(NotFound):
        await call(b, view, Operation.LIST, "a/")


async def test_exists_tracks_storage() -> None:
    b, view = v1()
    req = Request(Operation.UPDATE, "s", data={"a": 1}, storage=view)
    assert await b.exists(req) is False
    await b.handle(req)
    assert await b.exists(req) is True


async def test_factories_select_engine_by_type_and_version() -> None:
    view = MemoryView()
    for mount_type, options in (("kv", {}), ("kv", {"version": "1"}), ("generic", {})):
        b = BUILTIN_ENGINES[mount_type](options, clock)
        await b.handle(Request(Operation.UPDATE, "x", data={"v": 1}, storage=view))
        resp = await b.handle(Request(Operation.READ, "x", storage=view))
        assert resp is not None and resp.data == {"v": 1}
    for mount_type, options in (("kv", {"version": "2"}), ("kv-v2", {})):
        b = BUILTIN_ENGINES[mount_type](options, clock)
        resp = await b.handle(Request(Operation.UPDATE, "data/x", data={"data": {"v": 2}}, storage=MemoryView()))
        assert resp is not None and resp.data is not None and resp.data["version"] == 1
