"""Tokens, ACL policies and the file audit device through hvac against a dev node."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import hvac
import pytest

from cluster.node import Node

# one module-scoped server per module: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("test_tokens_policies_audit")

POLICY = """
path "secret/data/app/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/app/forbidden" {
  capabilities = ["deny"]
}
"""


@pytest.fixture(scope="module")
def root(dev_node: Node) -> hvac.Client:
    return hvac.Client(url=dev_node.addr, token="root")


def test_limited_token_is_denied_outside_its_policy(root: hvac.Client, dev_node: Node) -> None:
    root.sys.create_or_update_policy("app-rw", POLICY)
    assert "app-rw" in root.sys.list_acl_policies()["data"]["keys"]
    assert root.sys.read_acl_policy("app-rw")["data"]["policy"] == POLICY
    tok = root.auth.token.create(policies=["app-rw"], ttl="1h")["auth"]
    assert tok["policies"] == ["app-rw", "default"]
    limited = hvac.Client(url=dev_node.addr, token=tok["client_token"])
    limited.secrets.kv.v2.create_or_update_secret("app/config", {"k": "v"})
    assert limited.secrets.kv.v2.read_secret_version("app/config", raise_on_deleted_version=True)["data"]["data"] == {"k": "v"}
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.create_or_update_secret("other/x", {"k": "v"})
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.secrets.kv.v2.create_or_update_secret("app/forbidden", {"k": "v"})
    with pytest.raises(hvac.exceptions.Forbidden):
        limited.sys.list_mounted_secrets_engines()
    caps = root.sys.get_capabilities(["secret/data/app/x", "secret/data/app/forbidden"], token=tok["client_token"])
    assert caps["secret/data/app/x"] == ["create", "read", "update"]
    assert caps["secret/data/app/forbidden"] == ["deny"]
    self_caps = limited.sys.get_capabilities(["secret/data/app/x"])
    assert self_caps["capabilities"] == ["create", "read", "update"]
    # Authorization: Bearer works like X-Vault-Token
    import urllib.request
    req = urllib.request.Request(f"{dev_node.addr}/v1/auth/token/lookup-self",
                                 headers={"Authorization": f"Bearer {tok['client_token']}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["data"]["accessor"] == tok["accessor"]


CREATE_UPDATE_POLICY = """
path "secret/data/cu/create-only/*" {
  capabilities = ["create"]
}
path "secret/data/cu/update-only/*" {
  capabilities = ["update"]
}
path "secret/data/cu/both/*" {
  capabilities = ["create", "update"]
}
"""


def test_create_and_update_capabilities_follow_existence(root: hvac.Client, dev_node: Node, tmp_path: Path) -> None:
    """A write is a create when the secret does not exist yet and an update otherwise
    (Vault's existence check), whether or not the caller holds both capabilities and
    whether or not an audit device records the operation."""
    root.sys.create_or_update_policy("cu", CREATE_UPDATE_POLICY)
    tok = root.auth.token.create(policies=["cu"], ttl="1h")["auth"]["client_token"]
    c = hvac.Client(url=dev_node.addr, token=tok)
    kv = c.secrets.kv.v2
    for run in ("plain", "audited"):
        if run == "audited":
            log = tmp_path / "cu-audit.log"
            root.sys.enable_audit_device("file", path="cu", options={"file_path": str(log)})
        kv.create_or_update_secret(f"cu/create-only/{run}", {"v": "1"})  # new: create
        with pytest.raises(hvac.exceptions.Forbidden):  # exists now: an update
            kv.create_or_update_secret(f"cu/create-only/{run}", {"v": "2"})
        with pytest.raises(hvac.exceptions.Forbidden):  # new: a create, not held
            kv.create_or_update_secret(f"cu/update-only/{run}", {"v": "1"})
        root.secrets.kv.v2.create_or_update_secret(f"cu/update-only/{run}", {"v": "1"})
        kv.create_or_update_secret(f"cu/update-only/{run}", {"v": "2"})  # exists: update
        kv.create_or_update_secret(f"cu/both/{run}", {"v": "1"})
        kv.create_or_update_secret(f"cu/both/{run}", {"v": "2"})
        got = root.secrets.kv.v2.read_secret_version(f"cu/both/{run}", raise_on_deleted_version=True)
        assert got["data"]["data"] == {"v": "2"} and got["data"]["metadata"]["version"] == 2
    root.sys.disable_audit_device("cu")
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    ops = [x["request"]["operation"] for x in lines
           if x["type"] == "request" and x["request"]["path"] == "secret/data/cu/both/audited"]
    assert ops == ["create", "update", "read"]  # the two writes, then root's read


def test_token_lifecycle(root: hvac.Client, dev_node: Node) -> None:
    root.sys.create_or_update_policy("creator", 'path "auth/token/create" { capabilities = ["create", "update"] }')
    parent = root.auth.token.create(policies=["creator"], ttl="1h")["auth"]
    pc = hvac.Client(url=dev_node.addr, token=parent["client_token"])
    child = pc.auth.token.create(policies=["default"], ttl="30m")["auth"]
    looked = root.auth.token.lookup(child["client_token"])["data"]
    assert looked["policies"] == ["default"] and 0 < looked["ttl"] <= 1800
    assert root.auth.token.lookup_accessor(child["accessor"])["data"]["display_name"] == "token-token"  # hvac sends display_name="token"
    renewed = root.auth.token.renew(child["client_token"], increment="20m")["auth"]
    assert renewed["lease_duration"] <= 1200
    # a non-root parent cannot grant policies it does not hold
    with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
        pc.auth.token.create(policies=["app-rw-not-held"])
    root.auth.token.revoke(parent["client_token"])
    assert dev_node.request("GET", "auth/token/lookup-self", token=child["client_token"])[0] == 403
    # num_uses
    once = root.auth.token.create(policies=["default"], num_uses=2)["auth"]["client_token"]
    assert dev_node.request("GET", "auth/token/lookup-self", token=once)[0] == 200
    assert dev_node.request("GET", "auth/token/lookup-self", token=once)[0] == 200
    assert dev_node.request("GET", "auth/token/lookup-self", token=once)[0] == 403
    # expiry
    short = root.auth.token.create(policies=["default"], ttl="2s")["auth"]["client_token"]
    assert dev_node.request("GET", "auth/token/lookup-self", token=short)[0] == 200
    time.sleep(2.5)
    assert dev_node.request("GET", "auth/token/lookup-self", token=short)[0] == 403


def test_file_audit_device_hashes_secrets(root: hvac.Client, dev_node: Node, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    root.sys.enable_audit_device("file", options={"file_path": str(log)})
    assert "file/" in root.sys.list_enabled_audit_devices()["data"]
    root.secrets.kv.v2.create_or_update_secret("audited/thing", {"password": "hunter2-audit"})
    text = log.read_text()
    assert "hunter2-audit" not in text
    assert '"client_token":"root"' not in text
    lines = [json.loads(x) for x in text.splitlines()]
    reqs = [x for x in lines if x["type"] == "request" and x["request"]["path"] == "secret/data/audited/thing"]
    resps = [x for x in lines if x["type"] == "response" and x["request"]["path"] == "secret/data/audited/thing"]
    assert len(reqs) == 1 and len(resps) == 1
    hashed = reqs[0]["request"]["data"]["data"]["password"]
    assert hashed.startswith("hmac-sha256:")
    assert root.sys.calculate_hash("file", "hunter2-audit")["data"]["hash"] == hashed
    assert reqs[0]["auth"]["client_token"] == root.sys.calculate_hash("file", "root")["data"]["hash"]
    root.sys.disable_audit_device("file")
    assert "file/" not in root.sys.list_enabled_audit_devices()["data"]


def test_audit_fails_closed(root: hvac.Client, dev_node: Node, tmp_path: Path) -> None:
    d = tmp_path / "auditdir"
    d.mkdir()
    root.sys.enable_audit_device("file", path="closed", options={"file_path": str(d / "a.log")})
    try:
        (d / "a.log").unlink()
        d.rmdir()
        d.write_text("now a file, so the device cannot reopen its log")
        # force the device to reopen (as on SIGHUP) so it finds its path unusable
        assert dev_node.proc is not None
        os.kill(dev_node.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        code, body = dev_node.request("GET", "secret/data/audited/thing", token="root")
        assert code == 500 and body["errors"]
    finally:
        if d.is_file():
            d.unlink()
        d.mkdir(exist_ok=True)
        os.kill(dev_node.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        root.sys.disable_audit_device("closed")
    assert dev_node.request("GET", "auth/token/lookup-self", token="root")[0] == 200
