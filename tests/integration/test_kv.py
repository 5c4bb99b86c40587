"""KV v2 and v1 through hvac against a dev node (versions, CAS, delete/undelete/destroy)."""

from __future__ import annotations

import hvac
import pytest

from cluster.node import Node

# one module-scoped server per module: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("test_kv")


@pytest.fixture(scope="module")
def client(dev_node: Node) -> hvac.Client:
    return hvac.Client(url=dev_node.addr, token="root")


def test_versions_and_read_by_version(client: hvac.Client) -> None:
    kv = client.secrets.kv.v2
    r1 = kv.create_or_update_secret("app/versions", {"v": "one"})
    assert r1["data"]["version"] == 1
    kv.create_or_update_secret("app/versions", {"v": "two"})
    assert kv.read_secret_version("app/versions", raise_on_deleted_version=True)["data"]["data"] == {"v": "two"}
    old = kv.read_secret_version("app/versions", version=1, raise_on_deleted_version=True)
    assert old["data"]["data"] == {"v": "one"} and old["data"]["metadata"]["version"] == 1
    meta = kv.read_secret_metadata("app/versions")["data"]
    assert meta["current_version"] == 2 and set(meta["versions"]) == {"1", "2"}


def test_cas(client: hvac.Client) -> None:
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("app/cas", {"a": "1"}, cas=0)
    with pytest.raises(hvac.exceptions.InvalidRequest) as e:
        kv.create_or_update_secret("app/cas", {"a": "2"}, cas=0)
    assert "check-and-set" in str(e.value)
    kv.create_or_update_secret("app/cas", {"a": "2"}, cas=1)
    assert kv.read_secret_version("app/cas", raise_on_deleted_version=True)["data"]["metadata"]["version"] == 2


def test_delete_undelete_destroy(client: hvac.Client, dev_node: Node) -> None:
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("app/life", {"x": "1"})
    kv.create_or_update_secret("app/life", {"x": "2"})
    kv.delete_latest_version_of_secret("app/life")
    code, body = dev_node.request("GET", "secret/data/app/life", token="root")
    assert code == 404 and body["data"]["data"] is None
    assert body["data"]["metadata"]["deletion_time"] != ""
    kv.undelete_secret_versions("app/life", versions=[2])
    assert kv.read_secret_version("app/life", raise_on_deleted_version=True)["data"]["data"] == {"x": "2"}
    kv.destroy_secret_versions("app/life", versions=[1])
    meta = kv.read_secret_metadata("app/life")["data"]
    assert meta["versions"]["1"]["destroyed"] is True
    code, body = dev_node.request("GET", "secret/data/app/life?version=1", token="root")
    assert code == 404 and body["data"]["metadata"]["destroyed"] is True
    kv.delete_metadata_and_all_versions("app/life")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata("app/life")


def test_patch_list_and_subkeys(client: hvac.Client, dev_node: Node) -> None:
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("team/a", {"user": "u", "pass": "p", "nested": {"k": "v"}})
    # server-side JSON merge patch (hvac's kv.patch merges on the client instead)
    code, _ = dev_node.request("PATCH", "secret/data/team/a", {"data": {"pass": None, "extra": "e"}}, token="root",
                               headers={"Content-Type": "application/merge-patch+json"})
    assert code == 200
    assert dev_node.request("PATCH", "secret/data/team/a", {"data": {"x": "1"}}, token="root")[0] == 415
    data = kv.read_secret_version("team/a", raise_on_deleted_version=True)["data"]["data"]
    assert data == {"user": "u", "nested": {"k": "v"}, "extra": "e"}
    kv.create_or_update_secret("team/sub/b", {"z": "1"})
    keys = kv.list_secrets("team")["data"]["keys"]
    assert keys == ["a", "sub/"]
    code, body = dev_node.request("GET", "secret/subkeys/team/a", token="root")
    assert code == 200 and body["data"]["subkeys"] == {"user": None, "nested": {"k": None}, "extra": None}
    code, body = dev_node.request("LIST", "secret/metadata/team", token="root")
    assert code == 200 and body["data"]["keys"] == ["a", "sub/"]


def test_metadata_settings(client: hvac.Client) -> None:
    kv = client.secrets.kv.v2
    kv.create_or_update_secret("cfg/m", {"a": "1"})
    kv.update_metadata("cfg/m", max_versions=2, custom_metadata={"owner": "ops"})
    for i in range(4):
        kv.create_or_update_secret("cfg/m", {"a": str(i)})
    meta = kv.read_secret_metadata("cfg/m")["data"]
    assert meta["max_versions"] == 2 and meta["custom_metadata"] == {"owner": "ops"}
    assert sorted(meta["versions"]) == ["4", "5"]
    kv.configure(cas_required=True, mount_point="secret")
    try:
        with pytest.raises(hvac.exceptions.InvalidRequest):
            kv.create_or_update_secret("cfg/needs-cas", {"a": "1"})
    finally:
        kv.configure(cas_required=False, mount_point="secret")


def test_kv_v1_mount(client: hvac.Client) -> None:
    client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    kv1 = client.secrets.kv.v1
    kv1.create_or_update_secret("svc/x", {"k": "v"}, mount_point="kv1")
    assert kv1.read_secret("svc/x", mount_point="kv1")["data"] == {"k": "v"}
    assert kv1.list_secrets("svc", mount_point="kv1")["data"]["keys"] == ["x"]
    kv1.delete_secret("svc/x", mount_point="kv1")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv1.read_secret("svc/x", mount_point="kv1")
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert mounts["kv1/"]["type"] == "kv" and mounts["secret/"]["options"]["version"] == "2"
    client.sys.disable_secrets_engine("kv1")
    assert "kv1/" not in client.sys.list_mounted_secrets_engines()["data"]


def test_cubbyhole_is_per_token(client: hvac.Client, dev_node: Node) -> None:
    client.write("cubbyhole/mine", value="root-only")
    other = client.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    code, _ = dev_node.request("GET", "cubbyhole/mine", token=other)
    assert code == 404
    assert dev_node.request("POST", "cubbyhole/mine", {"value": "other"}, token=other)[0] == 204
    assert client.read("cubbyhole/mine")["data"] == {"value": "root-only"}


def test_error_shapes(dev_node: Node) -> None:
    assert dev_node.request("GET", "secret/data/x", token="nope") == (403, {"errors": ["permission denied"]})
    assert dev_node.request("GET", "secret/data/x")[0] == 403
    code, body = dev_node.request("GET", "nomount/x", token="root")
    assert code == 404 and body["errors"]
    code, body = dev_node.request("GET", "secret/data/does-not-exist", token="root")
    assert code == 404 and body == {"errors": []}
    import urllib.request
    req = urllib.request.Request(f"{dev_node.addr}/v1/secret/data/x", data=b"{not json", method="POST",
                                 headers={"X-Vault-Token": "root"})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and "failed to parse JSON input" in e.read().decode()
    code, body = dev_node.request("PUT", "sys/mounts/bad", {"type": "nosuchengine"}, token="root")
    assert code == 400
