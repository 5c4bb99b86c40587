"""A three-node Raft cluster sealed by one SoftHSM2 token: nodes join and unseal
themselves without any key holder, and come back unsealed after a full restart."""

from __future__ import annotations

import time
from pathlib import Path

import hvac

from cluster.node import Node
from hsm_fixtures import Token, softhsm, token  # noqa: F401  (fixtures)


def wait_health(node: Node, codes: set[int], timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = node.request("GET", "sys/health", timeout=2)[0]
            if last in codes:
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"node {node.port} health {last}, wanted {codes}: {node.log_tail()}")


def test_hsm_cluster_joins_and_auto_unseals(tmp_path: Path, token: Token) -> None:
    nodes = [Node(tmp_path / f"n{i}", extra_config=token.stanza()) for i in range(3)]
    try:
        for n in nodes:
            n.start()
        first = nodes[0]
        client = hvac.Client(url=first.addr)
        init = client.sys.initialize(recovery_shares=3, recovery_threshold=2)
        assert len(init["recovery_keys"]) == 3 and init["keys"] == []
        wait_health(first, {200})
        client.token = init["root_token"]
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        client.secrets.kv.v2.create_or_update_secret("hsm/joined", {"v": "1"})
        # joining needs no unseal or recovery key: each joiner opens the root key with the HSM
        for n in nodes[1:]:
            code, body = n.request("PUT", "sys/storage/raft/join", {"leader_api_addr": first.addr}, timeout=90)
            assert code == 200, body
            assert wait_health(n, {429, 473}) in (429, 473)
            assert n.request("GET", "sys/seal-status")[1]["type"] == "pkcs11"
        peers = client.sys.read_raft_config()["data"]["config"]["servers"]
        assert len(peers) == 3
        for n in nodes:
            c = hvac.Client(url=n.addr, token=init["root_token"])
            assert c.secrets.kv.v2.read_secret_version("hsm/joined", raise_on_deleted_version=True)["data"]["data"] == {"v": "1"}
        # whole-cluster restart: every node unseals itself from the HSM
        for n in nodes:
            n.stop()
        for n in nodes:
            n.start()
        for n in nodes:  # every node unsealed itself (standby or active)
            wait_health(n, {200, 429, 473}, timeout=90)
        end = time.monotonic() + 60  # then the members elect exactly one active node
        while True:
            codes = [n.request("GET", "sys/health", timeout=2)[0] for n in nodes]
            if codes.count(200) == 1 or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert codes.count(200) == 1, codes
        active = nodes[codes.index(200)]
        c = hvac.Client(url=active.addr, token=init["root_token"])
        c.secrets.kv.v2.create_or_update_secret("hsm/after-restart", {"v": "2"})
        assert c.secrets.kv.v2.read_secret_version("hsm/joined", raise_on_deleted_version=True)["data"]["data"] == {"v": "1"}
    finally:
        for n in nodes:
            n.stop()


def test_cli_init_with_hsm_defaults_to_recovery_keys(tmp_path: Path, token: Token) -> None:
    import os
    import subprocess

    from cluster.node import vaultraft_exe

    node = Node(tmp_path / "n", extra_config=token.stanza())
    try:
        node.start()
        env = {**os.environ, "VAULT_ADDR": node.addr, "HOME": str(tmp_path)}
        env.pop("VAULT_TOKEN", None)
        out = subprocess.run([vaultraft_exe(), "operator", "init"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("Recovery Key ") == 5 and "Unseal Key" not in out.stdout
        assert wait_health(node, {200}) == 200
    finally:
        node.stop()
