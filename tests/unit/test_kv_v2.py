"""KV v2 driven through its Backend: versions, CAS, deletes, pruning, patch, metadata."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Sequence

import pytest

from vaultraft.engines import BUILTIN_ENGINES
from vaultraft.engines.kv.common import format_time, go_duration, merge_patch, to_nanos
from vaultraft.framework import Backend
from vaultraft.logical import (
    CheckAndSetMismatch,
    InvalidRequest,
    NotFound,
    Operation,
    Request,
    Response,
    StorageEntry,
    UnsupportedOperation,
    WriteOp,
)
from vaultraft.logical.storage import MemoryView

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
T0 = 1_521_685_446.945319


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class BatchView(MemoryView):
    """A MemoryView that records batches, forbids single puts, and yields on every read
    so concurrent handlers interleave."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[WriteOp]] = []

    async def get(self, key: str) -> StorageEntry | None:
        await asyncio.sleep(0)
        return await super().get(key)

    async def put(self, entry: StorageEntry) -> None:
        raise AssertionError("KV v2 must write through write_batch")

    async def write_batch(self, ops: Sequence[WriteOp]) -> None:
        self.batches.append(list(ops))
        await super().write_batch(ops)


class KV:
    def __init__(self) -> None:
        self.clock = Clock()
        self.backend: Backend = BUILTIN_ENGINES["kv"]({"version": "2"}, self.clock)
        self.view = BatchView()

    async def __call__(self, op: Operation, path: str, data: dict[str, Any] | None = None) -> Response | None:
        return await self.backend.handle(Request(op, path, data=data or {}, storage=self.view,
                                                 mount_point="secret/"))

    async def ok(self, op: Operation, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = await self(op, path, data)
        assert resp is not None and resp.status is None and resp.data is not None
        return resp.data

    async def put(self, path: str, data: dict[str, Any], **options: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"data": data}
        if options:
            body["options"] = options
        return await self.ok(Operation.UPDATE, "data/" + path, body)


@pytest.fixture
def kv() -> KV:
    return KV()


def version_keys(kv: KV) -> list[str]:
    return sorted(k for k in kv.view.data if k.startswith("versions/"))


async def test_write_and_read_versions(kv: KV) -> None:
    w1 = await kv.put("app", {"password": "one"})
    assert set(w1) == {"created_time", "custom_metadata", "deletion_time", "destroyed", "version"}
    assert w1["version"] == 1 and w1["destroyed"] is False and w1["deletion_time"] == ""
    assert w1["custom_metadata"] is None
    assert w1["created_time"] == "2018-03-22T02:24:06.945319Z"
    kv.clock.advance(1)
    w2 = await kv.put("app", {"password": "two"})
    assert w2["version"] == 2
    latest = await kv.ok(Operation.READ, "data/app")
    assert latest["data"] == {"password": "two"}
    assert latest["metadata"] == {"created_time": w2["created_time"], "custom_metadata": None,
                                  "deletion_time": "", "destroyed": False, "version": 2}
    first = await kv.ok(Operation.READ, "data/app", {"version": "1"})
    assert first["data"] == {"password": "one"} and first["metadata"]["version"] == 1
    with pytest.raises(NotFound):
        await kv(Operation.READ, "data/app", {"version": "3"})
    with pytest.raises(NotFound):
        await kv(Operation.READ, "data/missing")


async def test_each_write_is_one_atomic_batch(kv: KV) -> None:
    await kv.put("a/b", {"k": "v"})
    assert len(kv.view.batches) == 1
    keys = {op.key for op in kv.view.batches[0]}
    assert "metadata/a/b" in keys and any(k.startswith("versions/") for k in keys)


async def test_timestamps_are_rfc3339_nano_utc() -> None:
    assert format_time(1_521_685_446_945_319_214) == "2018-03-22T02:24:06.945319214Z"
    assert format_time(1_521_685_446_000_000_000) == "2018-03-22T02:24:06Z"
    assert format_time(None) == ""
    assert RFC3339_NANO.match(format_time(1_521_685_446_100_000_000))
    assert go_duration(0) == "0s" and go_duration(3600) == "1h0m0s"
    assert go_duration(12319) == "3h25m19s" and go_duration(90) == "1m30s" and go_duration(-1) == "-1s"


async def test_exists_check_decides_create_vs_update(kv: KV) -> None:
    req = Request(Operation.UPDATE, "data/x", data={"data": {"a": 1}}, storage=kv.view)
    assert await kv.backend.exists(req) is False
    await kv.backend.handle(req)
    assert await kv.backend.exists(req) is True
    meta_req = Request(Operation.UPDATE, "metadata/x", storage=kv.view)
    assert await kv.backend.exists(meta_req) is True


async def test_write_requires_data(kv: KV) -> None:
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.UPDATE, "data/x", {"options": {}})
    assert e.value.messages == ["no data provided"]
    with pytest.raises(InvalidRequest):
        await kv(Operation.UPDATE, "data/x", {"data": "not-a-map"})


async def test_check_and_set(kv: KV) -> None:
    assert (await kv.put("c", {"v": 1}, cas=0))["version"] == 1
    with pytest.raises(CheckAndSetMismatch) as e:
        await kv.put("c", {"v": 2}, cas=0)
    assert e.value.messages == ["check-and-set parameter did not match the current version"]
    with pytest.raises(CheckAndSetMismatch):
        await kv.put("c", {"v": 2}, cas=5)
    assert (await kv.put("c", {"v": 2}, cas="1"))["version"] == 2
    with pytest.raises(InvalidRequest) as bad:
        await kv.put("c", {"v": 3}, cas="abc")
    assert bad.value.messages == ["error parsing check-and-set parameter"]
    assert (await kv.put("c", {"v": 3}))["version"] == 3


async def test_cas_required_on_mount(kv: KV) -> None:
    assert await kv(Operation.UPDATE, "config", {"cas_required": True}) is None
    with pytest.raises(InvalidRequest) as e:
        await kv.put("m", {"v": 1})
    assert e.value.messages == ["check-and-set parameter required for this call"]
    assert (await kv.put("m", {"v": 1}, cas=0))["version"] == 1
    # a key cannot opt out of the mount's requirement; Vault warns
    resp = await kv(Operation.UPDATE, "metadata/m", {"cas_required": False})
    assert resp is not None and resp.warnings == [
        '"cas_required" set to false, but is mandated by backend config. This value will be ignored.']
    with pytest.raises(InvalidRequest):
        await kv.put("m", {"v": 2})


async def test_cas_required_on_key(kv: KV) -> None:
    await kv.put("k", {"v": 1})
    assert await kv(Operation.UPDATE, "metadata/k", {"cas_required": True}) is None
    with pytest.raises(InvalidRequest) as e:
        await kv.put("k", {"v": 2})
    assert e.value.messages == ["check-and-set parameter required for this call"]
    with pytest.raises(InvalidRequest):
        await kv(Operation.PATCH, "data/k", {"data": {"v": 2}})
    assert (await kv.put("k", {"v": 2}, cas=1))["version"] == 2
    await kv.put("other", {"v": 1})  # other keys unaffected


async def test_soft_delete_latest_and_undelete(kv: KV) -> None:
    await kv.put("d", {"v": 1})
    await kv.put("d", {"v": 2})
    kv.clock.advance(5)
    assert await kv(Operation.DELETE, "data/d") is None
    kv.clock.advance(1)
    resp = await kv(Operation.READ, "data/d")
    assert resp is not None and resp.status == 404 and resp.data is not None
    assert resp.data["data"] is None
    md = resp.data["metadata"]
    assert md["version"] == 2 and md["destroyed"] is False and RFC3339_NANO.match(md["deletion_time"])
    older = await kv.ok(Operation.READ, "data/d", {"version": 1})
    assert older["data"] == {"v": 1}
    assert await kv(Operation.DELETE, "data/d") is None  # idempotent
    assert await kv(Operation.UPDATE, "undelete/d", {"versions": [2]}) is None
    back = await kv.ok(Operation.READ, "data/d")
    assert back["data"] == {"v": 2} and back["metadata"]["deletion_time"] == ""


async def test_delete_and_undelete_version_lists(kv: KV) -> None:
    for i in range(3):
        await kv.put("v", {"i": i})
    kv.clock.advance(1)
    await kv(Operation.UPDATE, "delete/v", {"versions": "1,3"})
    kv.clock.advance(1)
    for n, hidden in ((1, True), (2, False), (3, True)):
        resp = await kv(Operation.READ, "data/v", {"version": str(n)})
        assert resp is not None and (resp.status == 404) is hidden
    meta = await kv.ok(Operation.READ, "metadata/v")
    assert meta["versions"]["1"]["deletion_time"] != "" and meta["versions"]["2"]["deletion_time"] == ""
    await kv(Operation.UPDATE, "undelete/v", {"versions": [1, 3, 99]})
    assert (await kv.ok(Operation.READ, "data/v"))["data"] == {"i": 2}
    for path, msg in (("delete/v", "No version number provided"), ("undelete/v", "No version number provided"),
                      ("destroy/v", "no version number provided")):
        with pytest.raises(InvalidRequest) as e:
            await kv(Operation.UPDATE, path, {})
        assert e.value.messages == [msg]
    # unknown keys are a silent no-op, as in Vault
    assert await kv(Operation.UPDATE, "delete/none", {"versions": [1]}) is None


async def test_destroy_removes_data_permanently(kv: KV) -> None:
    await kv.put("x", {"secret": "s1"})
    await kv.put("x", {"secret": "s2"})
    assert len(version_keys(kv)) == 2
    assert await kv(Operation.UPDATE, "destroy/x", {"versions": [1]}) is None
    assert len(version_keys(kv)) == 1
    assert all(b"s1" not in v for v in kv.view.data.values())
    resp = await kv(Operation.READ, "data/x", {"version": 1})
    assert resp is not None and resp.status == 404 and resp.data is not None
    assert resp.data["data"] is None and resp.data["metadata"]["destroyed"] is True
    await kv(Operation.UPDATE, "undelete/x", {"versions": [1]})
    resp = await kv(Operation.READ, "data/x", {"version": 1})
    assert resp is not None and resp.status == 404
    assert (await kv.ok(Operation.READ, "metadata/x"))["versions"]["1"]["destroyed"] is True


async def test_max_versions_pruning_on_mount(kv: KV) -> None:
    await kv(Operation.UPDATE, "config", {"max_versions": 3})
    for i in range(5):
        await kv.put("p", {"i": i})
    meta = await kv.ok(Operation.READ, "metadata/p")
    assert sorted(meta["versions"], key=int) == ["3", "4", "5"]
    assert meta["current_version"] == 5 and meta["oldest_version"] == 3
    assert len(version_keys(kv)) == 3
    with pytest.raises(NotFound):
        await kv(Operation.READ, "data/p", {"version": 1})
    assert (await kv.ok(Operation.READ, "data/p", {"version": 3}))["data"] == {"i": 2}


async def test_default_max_versions_is_ten(kv: KV) -> None:
    for i in range(12):
        await kv.put("p", {"i": i})
    meta = await kv.ok(Operation.READ, "metadata/p")
    assert len(meta["versions"]) == 10 and meta["oldest_version"] == 3
    assert meta["max_versions"] == 0
    assert len(version_keys(kv)) == 10


async def test_key_max_versions_shrinks_window_on_next_write(kv: KV) -> None:
    for i in range(6):
        await kv.put("p", {"i": i})
    await kv(Operation.UPDATE, "metadata/p", {"max_versions": 2})
    await kv.put("p", {"i": 6})
    meta = await kv.ok(Operation.READ, "metadata/p")
    assert sorted(meta["versions"], key=int) == ["6", "7"] and meta["oldest_version"] == 6
    assert len(version_keys(kv)) == 2
    # Vault keeps the larger of the key's and the mount's max_versions
    await kv(Operation.UPDATE, "config", {"max_versions": 4})
    for i in range(3):
        await kv.put("p", {"i": i})
    assert len((await kv.ok(Operation.READ, "metadata/p"))["versions"]) == 4


async def test_patch_merges_and_null_removes(kv: KV) -> None:
    await kv.put("pa", {"a": "1", "b": "2", "nested": {"x": 1, "y": 2}})
    resp = await kv.ok(Operation.PATCH, "data/pa", {"data": {"b": None, "c": "3", "nested": {"y": None, "z": 3}}})
    assert resp["version"] == 2
    got = await kv.ok(Operation.READ, "data/pa")
    assert got["data"] == {"a": "1", "c": "3", "nested": {"x": 1, "z": 3}}
    with pytest.raises(CheckAndSetMismatch):
        await kv(Operation.PATCH, "data/pa", {"data": {"a": "x"}, "options": {"cas": 1}})
    await kv(Operation.PATCH, "data/pa", {"data": {"a": "x"}, "options": {"cas": 2}})
    assert (await kv.ok(Operation.READ, "data/pa"))["data"]["a"] == "x"


async def test_patch_missing_or_deleted_is_404(kv: KV) -> None:
    with pytest.raises(NotFound):
        await kv(Operation.PATCH, "data/none", {"data": {"a": 1}})
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.PATCH, "data/none", {})
    assert e.value.messages == ["no data provided"]
    await kv.put("gone", {"a": 1})
    await kv(Operation.DELETE, "data/gone")
    kv.clock.advance(1)
    resp = await kv(Operation.PATCH, "data/gone", {"data": {"a": 2}})
    assert resp is not None and resp.status == 404 and resp.data is not None
    assert resp.data["version"] == 1 and resp.data["deletion_time"] != ""


def test_merge_patch_rfc7386_examples() -> None:
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    assert merge_patch(["a"], {"a": "b"}) == {"a": "b"}


async def test_subkeys_with_depth(kv: KV) -> None:
    await kv.put("s", {"foo": "abc", "bar": {"baz": "def", "deep": {"x": 1}}, "empty": {}, "list": [1, 2]})
    full = await kv.ok(Operation.READ, "subkeys/s")
    assert full["subkeys"] == {"foo": None, "bar": {"baz": None, "deep": {"x": None}}, "empty": None, "list": None}
    assert full["metadata"]["version"] == 1
    one = await kv.ok(Operation.READ, "subkeys/s", {"depth": "1"})
    assert one["subkeys"] == {"foo": None, "bar": None, "empty": None, "list": None}
    two = await kv.ok(Operation.READ, "subkeys/s", {"depth": 2})
    assert two["subkeys"]["bar"] == {"baz": None, "deep": None}
    await kv.put("s", {"only": "v2"})
    old = await kv.ok(Operation.READ, "subkeys/s", {"version": 1, "depth": 1})
    assert set(old["subkeys"]) == {"foo", "bar", "empty", "list"}
    await kv(Operation.DELETE, "data/s")
    kv.clock.advance(1)
    resp = await kv(Operation.READ, "subkeys/s")
    assert resp is not None and resp.status == 404 and resp.data is not None and resp.data["subkeys"] is None
    with pytest.raises(NotFound):
        await kv(Operation.READ, "subkeys/none")


async def test_metadata_read_shape(kv: KV) -> None:
    await kv.put("m", {"v": 1})
    kv.clock.advance(2)
    await kv.put("m", {"v": 2})
    meta = await kv.ok(Operation.READ, "metadata/m")
    assert set(meta) == {"cas_required", "created_time", "current_version", "custom_metadata",
                         "delete_version_after", "max_versions", "oldest_version", "updated_time", "versions"}
    assert meta["current_version"] == 2 and meta["oldest_version"] == 0
    assert meta["delete_version_after"] == "0s" and meta["custom_metadata"] is None
    assert meta["created_time"] == meta["versions"]["1"]["created_time"]
    assert meta["updated_time"] == meta["versions"]["2"]["created_time"] != meta["created_time"]
    with pytest.raises(NotFound):
        await kv(Operation.READ, "metadata/none")


async def test_metadata_list(kv: KV) -> None:
    with pytest.raises(NotFound):
        await kv(Operation.LIST, "metadata/")
    for p in ("a", "dir/one", "dir/two", "dir/sub/three"):
        await kv.put(p, {"v": p})
    await kv(Operation.UPDATE, "metadata/meta-only", {"max_versions": 5})
    root = await kv.ok(Operation.LIST, "metadata/")
    assert root["keys"] == ["a", "dir/", "meta-only"]
    assert (await kv.ok(Operation.LIST, "metadata/dir/"))["keys"] == ["one", "sub/", "two"]
    assert (await kv.ok(Operation.LIST, "metadata/dir"))["keys"] == ["one", "sub/", "two"]
    with pytest.raises(NotFound):
        await kv(Operation.LIST, "metadata/nothing/")
    with pytest.raises(InvalidRequest):
        await kv(Operation.UPDATE, "metadata/dir/", {"max_versions": 1})
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.UPDATE, "metadata/", {"max_versions": 1})
    assert e.value.messages == ["missing path"]
    with pytest.raises(UnsupportedOperation):
        await kv(Operation.LIST, "data/a")


async def test_metadata_only_secret_has_no_data(kv: KV) -> None:
    await kv(Operation.UPDATE, "metadata/pre", {"max_versions": 2, "delete_version_after": "1h"})
    meta = await kv.ok(Operation.READ, "metadata/pre")
    assert meta["current_version"] == 0 and meta["versions"] == {} and meta["max_versions"] == 2
    assert meta["delete_version_after"] == "1h0m0s" and meta["created_time"] != ""
    with pytest.raises(NotFound):
        await kv(Operation.READ, "data/pre")
    assert (await kv.put("pre", {"v": 1}, cas=0))["version"] == 1


async def test_custom_metadata(kv: KV) -> None:
    await kv.put("c", {"v": 1})
    await kv(Operation.UPDATE, "metadata/c", {"custom_metadata": {"owner": "ops", "tier": 1}})
    meta = await kv.ok(Operation.READ, "metadata/c")
    assert meta["custom_metadata"] == {"owner": "ops", "tier": "1"}
    assert (await kv.ok(Operation.READ, "data/c"))["metadata"]["custom_metadata"] == {"owner": "ops", "tier": "1"}
    assert (await kv.put("c", {"v": 2}))["custom_metadata"] == {"owner": "ops", "tier": "1"}
    await kv(Operation.PATCH, "metadata/c", {"custom_metadata": {"owner": None, "env": "prod"}})
    assert (await kv.ok(Operation.READ, "metadata/c"))["custom_metadata"] == {"tier": "1", "env": "prod"}
    # a plain write replaces the whole map
    await kv(Operation.UPDATE, "metadata/c", {"custom_metadata": {"only": "this"}})
    assert (await kv.ok(Operation.READ, "metadata/c"))["custom_metadata"] == {"only": "this"}
    with pytest.raises(NotFound):
        await kv(Operation.PATCH, "metadata/none", {"max_versions": 1})


async def test_custom_metadata_validation(kv: KV) -> None:
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.UPDATE, "metadata/c", {"custom_metadata": {"k": ""}})
    assert e.value.messages == ['1 error occurred:\n\t* custom_metadata validation failed: length of value '
                                'for key "k" is 0 but must be 0 < len(value) <= 512\n\n']
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.UPDATE, "metadata/c", {"custom_metadata": {f"k{i}": "v" for i in range(65)}})
    assert "payload must contain at most 64 keys, provided 65" in e.value.messages[0]
    with pytest.raises(InvalidRequest) as e:
        await kv(Operation.UPDATE, "metadata/c", {"custom_metadata": {"x" * 129: "v", "b": "\x00"}})
    assert e.value.messages[0].startswith("2 errors occurred:")
    assert "metadata/c" not in kv.view.data


async def test_metadata_delete_removes_everything(kv: KV) -> None:
    for i in range(3):
        await kv.put("gone", {"i": i})
    await kv.put("kept", {"v": 1})
    assert await kv(Operation.DELETE, "metadata/gone") is None
    assert not any(k == "metadata/gone" for k in kv.view.data)
    assert len(version_keys(kv)) == 1
    with pytest.raises(NotFound):
        await kv(Operation.READ, "metadata/gone")
    assert (await kv.put("gone", {"fresh": True}))["version"] == 1
    assert await kv(Operation.DELETE, "metadata/never") is None


async def test_config_read_write(kv: KV) -> None:
    assert await kv.ok(Operation.READ, "config") == {"cas_required": False, "delete_version_after": "0s",
                                                      "max_versions": 0}
    await kv(Operation.UPDATE, "config", {"max_versions": 5, "delete_version_after": "3h25m19s"})
    assert await kv.ok(Operation.READ, "config") == {"cas_required": False,
                                                      "delete_version_after": "3h25m19s", "max_versions": 5}
    await kv(Operation.UPDATE, "config", {"delete_version_after": "-5s"})
    assert (await kv.ok(Operation.READ, "config"))["delete_version_after"] == "-1s"
    await kv(Operation.UPDATE, "config", {"delete_version_after": 0})
    assert (await kv.ok(Operation.READ, "config"))["delete_version_after"] == "0s"
    with pytest.raises(InvalidRequest):
        await kv(Operation.UPDATE, "config", {"delete_version_after": "soon"})
    with pytest.raises(UnsupportedOperation):
        await kv(Operation.DELETE, "config")


async def test_delete_version_after_expires_versions(kv: KV) -> None:
    await kv(Operation.UPDATE, "config", {"delete_version_after": "1h"})
    w = await kv.put("t", {"v": 1})
    assert w["deletion_time"] == "2018-03-22T03:24:06.945319Z"
    kv.clock.advance(1800)
    assert (await kv.ok(Operation.READ, "data/t"))["data"] == {"v": 1}
    kv.clock.advance(3600)
    resp = await kv(Operation.READ, "data/t")
    assert resp is not None and resp.status == 404
    # the key's shorter setting wins
    await kv(Operation.UPDATE, "metadata/t2", {"delete_version_after": "10s"})
    w2 = await kv.put("t2", {"v": 1})
    assert w2["deletion_time"] == format_time(to_nanos(kv.clock.t) + 10 * 10**9)
    # a disabled mount setting switches every key's setting off
    await kv(Operation.UPDATE, "config", {"delete_version_after": "-1s"})
    assert (await kv.put("t2", {"v": 2}))["deletion_time"] == ""
    with pytest.raises(InvalidRequest):
        await kv(Operation.UPDATE, "metadata/t3", {"delete_version_after": "-1s"})


async def test_invalid_paths_hint_at_v2_api(kv: KV) -> None:
    resp = await kv(Operation.READ, "foo")
    assert resp is not None and resp.status == 404
    assert resp.warnings == ["Invalid path for a versioned K/V secrets engine. See the API docs for the "
                             "appropriate API endpoints to use. If using the Vault CLI, use 'vault kv get' "
                             "for this operation."]
    resp = await kv(Operation.UPDATE, "data", {"data": {}})
    assert resp is not None and resp.status == 404
    assert resp.warnings == ["Non-listing operations on the root of a K/V v2 mount are not supported."]
    resp = await kv(Operation.LIST, "data/")
    assert resp is not None and resp.status == 404 and "'vault kv list'" in resp.warnings[0]


async def test_unknown_fields_are_warned_about(kv: KV) -> None:
    resp = await kv(Operation.UPDATE, "data/w", {"data": {"a": 1}, "bogus": 1})
    assert resp is not None and resp.warnings == ["Endpoint ignored these unrecognized parameters: [bogus]"]


async def test_concurrent_writes_get_distinct_versions(kv: KV) -> None:
    results = await asyncio.gather(*(kv.put("race", {"i": i}) for i in range(12)))
    assert sorted(r["version"] for r in results) == list(range(1, 13))
    meta = await kv.ok(Operation.READ, "metadata/race")
    assert meta["current_version"] == 12 and len(meta["versions"]) == 10
    assert len(version_keys(kv)) == 10
    cas_results = await asyncio.gather(*(kv(Operation.UPDATE, "data/cas", {"data": {"i": i}, "options": {"cas": 0}})
                                         for i in range(5)), return_exceptions=True)
    assert sum(isinstance(r, Response) for r in cas_results) == 1
    assert sum(isinstance(r, CheckAndSetMismatch) for r in cas_results) == 4


def test_add_version_keeps_every_key_setting() -> None:
    """add_version builds the new KeyMeta field by field: every field it does not own must
    come through unchanged (a field added to KeyMeta later must be carried too)."""
    from dataclasses import fields

    from vaultraft.engines.kv.v2_store import KeyMeta, VersionMeta, add_version

    meta = KeyMeta(key="a/b", versions={1: VersionMeta(5, None, False)}, current_version=1,
                   oldest_version=1, created_ns=5, updated_ns=5, max_versions=7, cas_required=True,
                   delete_version_after=9, custom_metadata={"owner": "ops"})
    new, pruned = add_version(meta, VersionMeta(8, None, False), 0)
    assert pruned == []
    changed = {"versions": {1: VersionMeta(5, None, False), 2: VersionMeta(8, None, False)},
               "current_version": 2, "updated_ns": 8}
    for f in fields(KeyMeta):
        assert getattr(new, f.name) == changed.get(f.name, getattr(meta, f.name)), f.name
