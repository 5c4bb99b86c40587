"""A real server process with ``seal "pkcs11"`` on a real SoftHSM2 token, driven by hvac.

Init with recovery keys, auto-unseal at start and after restarts, a wrong PIN, a token
pulled out while running, HSM key rotation, and seal migration Shamir → PKCS#11 → Shamir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from hsm_fixtures import SoftHSM, Token, destroy_key, softhsm, token  # noqa: F401  (fixtures)

from cluster.node import Node


@pytest.fixture
def node(tmp_path: Path, token: Token) -> Iterator[Node]:
    """A node whose configuration enables the test token as its seal (not started)."""
    n = Node(tmp_path / "node", extra_config=token.stanza())
    yield n
    n.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)


def events(node: Node, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``node`` whose event is ``name``."""
    out = []
    for line in node.log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == name:
            out.append(rec)
    return out


def wait_for(pred: Any, timeout: float = 15.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def read(client: hvac.Client, path: str) -> Any:
    """The data of the latest version of secret/<path> (KV v2)."""
    return client.secrets.kv.v2.read_secret_version(path, raise_on_deleted_version=True)["data"]["data"]


def restart(node: Node) -> None:
    node.stop()
    node.start()


def test_pkcs11_init_recovery_keys_auto_unseal_and_restart(node: Node) -> None:
    node.start()
    client = hvac.Client(url=node.addr)
    status = client.sys.read_seal_status()
    assert status["type"] == "pkcs11" and status["recovery_seal"] is True
    assert status["initialized"] is False and status["sealed"] is True
    code, body = node.request("PUT", "sys/init", {"secret_shares": 5, "secret_threshold": 3})
    msg = "parameters secret_shares,secret_threshold not applicable to seal type pkcs11"
    assert code == 400 and body == {"errors": [msg]}

    result = client.sys.initialize(recovery_shares=3, recovery_threshold=2)
    assert result["keys"] == [] and result["keys_base64"] == []
    assert len(result["recovery_keys"]) == 3 and len(result["recovery_keys_base64"]) == 3
    recovery, root = result["recovery_keys"], result["root_token"]
    assert root.startswith("hvs.")
    assert node.wait_health({200}) == 200  # unsealed without any key
    status = client.sys.read_seal_status()
    assert status["sealed"] is False and status["type"] == "pkcs11" and status["recovery_seal"] is True
    assert (status["t"], status["n"]) == (2, 3) and status["recovery_seal_type"] == "shamir"
    assert len(events(node, "seal_key_generated")) == 1

    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("app/db", {"password": "hsm-protected"})

    restart(node)  # unseals itself: no key from anyone
    assert node.wait_health({200}) == 200
    got = client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"password": "hsm-protected"}
    assert events(node, "seal_unavailable") == []

    # a manual seal stays sealed (as Vault: no auto-unseal until restart); recovery keys unseal
    client.sys.seal()
    time.sleep(0.5)
    assert client.sys.is_sealed() is True
    s = client.sys.submit_unseal_key(recovery[0])
    assert s["sealed"] is True and s["progress"] == 1
    s = client.sys.submit_unseal_key(recovery[2])
    assert s["sealed"] is False
    assert client.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)["data"]["data"]

    # hardening in the server process: no core dumps, memory locked (as root)
    assert node.proc is not None
    limits = Path(f"/proc/{node.proc.pid}/limits").read_text()
    core_limit = [line.split()[4:6] for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core_limit == [["0", "0"]]


def test_wrong_pin_keeps_it_sealed_with_one_clear_log_line(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.start()
    client = hvac.Client(url=node.addr)
    root = client.sys.initialize(recovery_shares=1, recovery_threshold=1)["root_token"]
    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("x", {"v": "1"})
    node.stop()

    monkeypatch.setenv("VAULT_HSM_PIN", "000000")  # overrides the stanza's PIN
    node.start()
    # a wrong PIN is not retried (an HSM may lock the user after a few failed logins)
    wait_for(lambda: bool(events(node, "auto_unseal_stopped")), what="auto-unseal to give up")
    lines = events(node, "seal_unavailable")
    assert len(lines) == 1 and "incorrect PIN" in lines[0]["error"]
    assert "000000" not in node.log_path.read_text()
    status = client.sys.read_seal_status()
    assert status["sealed"] is True and status["initialized"] is True
    assert any("incorrect PIN" in w for w in status["warnings"])
    code, body = node.request("GET", "sys/health")
    assert code == 503 and body["sealed"] is True
    code, body = node.request("GET", "secret/data/x", token=root)
    assert code == 503 and body == {"errors": ["Vault is sealed"]}

    node.stop()
    monkeypatch.delenv("VAULT_HSM_PIN")
    node.start()
    assert node.wait_health({200}) == 200
    assert client.secrets.kv.v2.read_secret_version("x", raise_on_deleted_version=True)["data"]["data"] == {"v": "1"}


def test_token_removed_while_running_seals_and_comes_back(node: Node, token: Token, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULTRAFT_SEAL_HEALTH_INTERVAL", "0.3")
    node.start()
    client = hvac.Client(url=node.addr)
    root = client.sys.initialize(recovery_shares=3, recovery_threshold=2)["root_token"]
    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("x", {"v": "still here"})

    parked = tmp_path / "parked-token"
    token.remove(parked)
    try:
        wait_for(lambda: node.request("GET", "sys/health")[0] == 503, what="the node to seal itself")
        code, body = node.request("GET", "secret/data/x", token=root)
        assert code == 503 and body == {"errors": ["Vault is sealed"]}
        status = client.sys.read_seal_status()
        assert status["sealed"] is True and status["warnings"]
        time.sleep(1)
        assert len(events(node, "seal_unavailable")) == 1
    finally:
        token.reinsert(parked)
    # the HSM is back: the node unseals itself (auto-unseal retries), and after a restart too
    assert node.wait_health({200}, timeout=20) == 200
    assert read(client, "x") == {"v": "still here"}
    restart(node)
    assert node.wait_health({200}) == 200


def test_hsm_key_rotation_rewraps_at_next_start(node: Node, token: Token) -> None:
    node.start()
    client = hvac.Client(url=node.addr)
    root = client.sys.initialize(recovery_shares=1, recovery_threshold=1)["root_token"]
    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("x", {"v": "rotated"})
    node.stop()

    node.extra_config = token.stanza(key_label="vault-key-2")
    node.write_config()
    node.start()
    assert node.wait_health({200}) == 200
    wait_for(lambda: bool(events(node, "seal_key_rotated")), what="the rotation log line")
    (line,) = events(node, "seal_key_rotated")
    assert line["key_label"] == "vault-key-2" and line["old_key_labels"] == ["vault-key"]
    assert {"core/hsm/root-key", "core/recovery-key", "core/keyring"} <= set(line["rewrapped"])
    node.stop()

    destroy_key(token, "vault-key")  # the old key is no longer needed
    node.start()
    assert node.wait_health({200}) == 200
    assert read(client, "x") == {"v": "rotated"}


def test_seal_migration_shamir_to_pkcs11_and_back(tmp_path: Path, token: Token) -> None:
    node = Node(tmp_path / "node")
    try:
        node.start()
        client = hvac.Client(url=node.addr)
        init = client.sys.initialize(secret_shares=3, secret_threshold=2)
        keys, root = init["keys"], init["root_token"]
        client.sys.submit_unseal_keys(keys[:2])
        client.token = root
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        client.secrets.kv.v2.create_or_update_secret("m", {"v": "migrated"})
        node.stop()

        # Shamir -> PKCS#11: add the seal stanza, unseal with -migrate and the unseal keys
        node.extra_config = token.stanza()
        node.write_config()
        node.start()
        status = client.sys.read_seal_status()
        assert status["sealed"] is True and status["migration"] is True
        code, body = node.request("PUT", "sys/unseal", {"key": keys[0]})
        assert code == 400 and body == {"errors": ["migrate option not provided and seal migration is pending"]}
        client.sys.submit_unseal_key(keys[0], migrate=True)
        s = client.sys.submit_unseal_key(keys[2], migrate=True)
        assert s["sealed"] is False and s["type"] == "pkcs11" and s["migration"] is False and s["recovery_seal"] is True
        assert read(client, "m") == {"v": "migrated"}
        assert events(node, "seal_migrated")
        restart(node)
        assert node.wait_health({200}) == 200  # auto-unseal from now on

        # PKCS#11 -> Shamir: disable the stanza, unseal with -migrate and the recovery keys
        # (the former unseal keys), which become the unseal keys again
        node.extra_config = token.stanza(disabled=True)
        node.write_config()
        restart(node)
        status = client.sys.read_seal_status()
        assert status["sealed"] is True and status["migration"] is True and status["type"] == "pkcs11"
        # this direction through the CLI, as an operator would type it
        from cluster.node import vaultraft_exe

        env = {**os.environ, "VAULT_ADDR": node.addr}
        env.pop("VAULT_TOKEN", None)
        for k in (keys[1], keys[2]):
            out = subprocess.run([vaultraft_exe(), "operator", "unseal", "-migrate", k], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        s = client.sys.read_seal_status()
        assert s["sealed"] is False and s["type"] == "shamir"
        node.extra_config = ""
        node.write_config()
        restart(node)
        assert client.sys.is_sealed() is True
        client.sys.submit_unseal_keys(keys[:2])
        assert read(client, "m") == {"v": "migrated"}
    finally:
        node.stop()


def test_deploy_script_token_copies_unseal_every_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/softhsm-init.sh makes one token; a copy of it on another node opens the same data."""
    script = Path(__file__).resolve().parents[2] / "deploy" / "softhsm-init.sh"
    hsm_dir, archive = tmp_path / "hsm", tmp_path / "token.tgz"
    env = {"PYTHON": sys.executable, "VAULT_HSM_PIN": "node-pin-1", "SOFTHSM_SO_PIN": "so-pin-1",
           "PATH": os.environ["PATH"]}
    out = subprocess.run(["bash", str(script), "--dir", str(hsm_dir), "--archive", str(archive)],
                         env=env, check=True, capture_output=True, text=True)
    assert 'seal "pkcs11"' in out.stdout and "node-pin-1" not in out.stdout + out.stderr
    stanza = out.stdout.split("# ... and")[0].split("\n", 1)[1]  # the printed seal block
    assert 'key_label      = "vault-hsm-key"' in stanza

    monkeypatch.setenv("SOFTHSM2_CONF", str(hsm_dir / "softhsm2.conf"))
    monkeypatch.setenv("VAULT_HSM_PIN", "node-pin-1")
    first = Node(tmp_path / "node1", extra_config=stanza)
    try:
        first.start()
        client = hvac.Client(url=first.addr)
        client.token = client.sys.initialize(recovery_shares=1, recovery_threshold=1)["root_token"]
        first.wait_health({200})
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        client.secrets.kv.v2.create_or_update_secret("c", {"v": "one token, many nodes"})
        assert events(first, "seal_key_generated") == []  # the script made the keys
    finally:
        first.stop()

    # "another node": the archive unpacked elsewhere, and a copy of the data
    other = tmp_path / "hsm-copy"
    other.mkdir()
    subprocess.run(["tar", "-C", str(other), "-xzf", str(archive)], check=True)
    (other / "softhsm2.conf").write_text(f"directories.tokendir = {other / 'tokens'}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(other / "softhsm2.conf"))
    second = Node(tmp_path / "node2", extra_config=stanza)
    second.workdir.mkdir(parents=True)
    shutil.copytree(first.data_dir, second.data_dir)
    try:
        second.start()
        assert second.wait_health({200}) == 200
        c2 = hvac.Client(url=second.addr, token=client.token)
        assert c2.secrets.kv.v2.read_secret_version("c", raise_on_deleted_version=True)["data"]["data"]["v"]
    finally:
        second.stop()
