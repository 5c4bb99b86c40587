"""Init, unseal progress, seal, health codes and restart persistence against a real node."""

from __future__ import annotations

import hvac
import pytest

from cluster.node import Node


def test_init_unseal_seal_cycle_and_health_codes(fresh_node: Node) -> None:
    client = hvac.Client(url=fresh_node.addr)
    assert client.sys.is_initialized() is False
    assert fresh_node.request("GET", "sys/health")[0] == 501
    assert fresh_node.request("GET", "sys/health?uninitcode=299")[0] == 299
    status = client.sys.read_seal_status()
    assert status["initialized"] is False and status["sealed"] is True
    assert status["storage_type"] == "raft"

    result = client.sys.initialize(secret_shares=5, secret_threshold=3)
    keys, root = result["keys"], result["root_token"]
    assert len(keys) == 5 and len(result["keys_base64"]) == 5
    assert root.startswith("hvs.")
    assert client.sys.is_initialized() is True
    code, body = fresh_node.request("GET", "sys/health")
    assert code == 503 and body["sealed"] is True and body["initialized"] is True
    assert fresh_node.request("GET", "sys/health?sealedcode=200")[0] == 200

    # a second init is refused with Vault's message
    code, body = fresh_node.request("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
    assert code == 400 and body == {"errors": ["Vault is already initialized"]}

    s1 = client.sys.submit_unseal_key(keys[0])
    assert s1["sealed"] is True and s1["progress"] == 1 and s1["t"] == 3 and s1["n"] == 5
    nonce = s1["nonce"]
    assert nonce
    # resubmitting the same share does not advance progress
    s1b = client.sys.submit_unseal_key(keys[0])
    assert s1b["progress"] == 1 and s1b["nonce"] == nonce
    reset = client.sys.submit_unseal_key(reset=True)
    assert reset["progress"] == 0
    s = client.sys.submit_unseal_keys(keys[2:5])
    assert s["sealed"] is False and s["progress"] == 0
    assert s["cluster_id"]

    code, body = fresh_node.request("GET", "sys/health")
    assert code == 200 and body["sealed"] is False and body["standby"] is False
    assert fresh_node.request("HEAD", "sys/health")[0] == 200
    assert fresh_node.request("GET", "sys/health?activecode=218")[0] == 218
    assert fresh_node.request("GET", "sys/health?activecode=nope")[0] == 400

    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("app/db", {"password": "s3cr3t-one"})

    client.sys.seal()
    assert client.sys.is_sealed() is True
    with pytest.raises(hvac.exceptions.VaultDown):
        client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)

    # a wrong combination leaves it sealed with a clear error
    import os
    bogus = [(os.urandom(32) + bytes([x])).hex() for x in (1, 2, 3)]
    assert fresh_node.request("PUT", "sys/unseal", {"key": bogus[0]})[0] == 200
    assert fresh_node.request("PUT", "sys/unseal", {"key": bogus[1]})[0] == 200
    code, body = fresh_node.request("PUT", "sys/unseal", {"key": bogus[2]})
    assert code == 400 and "unseal" in body["errors"][0].lower()
    assert client.sys.is_sealed() is True
    assert client.sys.read_seal_status()["progress"] == 0
    client.sys.submit_unseal_keys(keys[1:4])
    assert client.sys.is_sealed() is False

    # restart: comes back sealed, data intact after unsealing
    fresh_node.stop()
    fresh_node.start()
    assert client.sys.is_sealed() is True
    assert fresh_node.request("GET", "sys/health")[0] == 503
    client.sys.submit_unseal_keys(keys[1:4])
    got = client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"password": "s3cr3t-one"}


def test_bad_unseal_key_is_rejected(fresh_node: Node) -> None:
    client = hvac.Client(url=fresh_node.addr)
    client.sys.initialize(secret_shares=3, secret_threshold=2)
    code, body = fresh_node.request("PUT", "sys/unseal", {"key": "not-hex-or-base64!"})
    assert code == 400 and "valid hex or base64" in body["errors"][0]
    code, body = fresh_node.request("PUT", "sys/unseal", {})
    assert code == 400
    code, body = fresh_node.request("PUT", "sys/init", {"secret_shares": 3, "secret_threshold": 5})
    assert code == 400


def test_plaintext_never_reaches_disk(fresh_node: Node) -> None:
    client = hvac.Client(url=fresh_node.addr)
    init = client.sys.initialize(secret_shares=1, secret_threshold=1)
    client.sys.submit_unseal_key(init["keys"][0])
    client.token = init["root_token"]
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    marker = "PLAINTEXT-MARKER-7f3a9c"
    client.secrets.kv.v2.create_or_update_secret("leak/check", {"value": marker})
    client.sys.create_or_update_policy("marker-policy", 'path "x/*" { capabilities = ["read"] } # ' + marker)
    fresh_node.stop()
    found = []
    for f in fresh_node.data_dir.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            if marker.encode() in blob or init["root_token"].encode() in blob:
                found.append(str(f))
    assert found == []
    assert any(f.is_file() for f in fresh_node.data_dir.rglob("*"))
    # pysyncobj's own journal is pickle on disk (hazard 6): only the node may reach it
    import stat
    for d in (fresh_node.data_dir / "raft", fresh_node.data_dir / "vault.db"):
        assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert (fresh_node.data_dir / "raft" / "journal").exists()
