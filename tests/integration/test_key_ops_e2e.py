"""Key operations end to end against real server processes: generate-root, rekey (with and
without verification), encryption-key rotation and its config, through hvac and the CLI;
recovery-key flows on a real SoftHSM2 token.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from hsm_fixtures import SoftHSM, Token, softhsm, token  # noqa: F401  (fixtures)

from cluster.node import Node, vaultraft_exe


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def rows(self) -> dict[str, str]:
        """``Key    Value`` lines of stdout as a dict."""
        rows: dict[str, str] = {}
        for line in self.out.splitlines():
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            if len(parts) == 2 and not line.startswith("---") and parts != ["Key", "Value"]:
                rows[parts[0]] = parts[1].strip()
        return rows


def cli(node: Node, home: Path, *args: str, token: str | None = None, stdin: str = "") -> Run:
    """Run ``vaultraft`` against ``node`` with a private HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(HOME=str(home), VAULT_ADDR=node.addr)
    if token:
        env["VAULT_TOKEN"] = token
    p = subprocess.run([vaultraft_exe(), *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
    return Run(p.returncode, p.stdout, p.stderr)


def ok(node: Node, home: Path, *args: str, **kw: Any) -> Run:
    res = cli(node, home, *args, **kw)
    assert res.code == 0, f"{args}: exit {res.code}: {res.err}"
    return res


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node")
    n.start()
    yield n
    n.stop()
    shutil.rmtree(tmp_path / "node", ignore_errors=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def init_unsealed(node: Node, shares: int = 3, threshold: int = 2) -> tuple[hvac.Client, list[str], str]:
    client = hvac.Client(url=node.addr)
    r = client.sys.initialize(shares, threshold)
    client.sys.submit_unseal_keys(r["keys"][:threshold])
    node.wait_health({200})
    return client, r["keys"], r["root_token"]


def unseals_with(node: Node, client: hvac.Client, keys: list[str]) -> bool:
    """Reset progress, then submit ``keys``: True when the node unseals."""
    client.sys.submit_unseal_key(reset=True)
    try:
        for k in keys:
            status = client.sys.submit_unseal_key(k)
    except hvac.exceptions.InvalidRequest:
        return False
    return status["sealed"] is False


def restart(node: Node) -> None:
    node.stop()
    node.start()


# ---- generate-root -----------------------------------------------------------------------------


def test_generate_root_through_hvac_and_the_cli(node: Node, home: Path) -> None:
    client, keys, _ = init_unsealed(node)
    anon = hvac.Client(url=node.addr)  # the shares are the authorization: no token
    started = anon.sys.start_root_token_generation()
    otp, nonce = started["otp"], started["nonce"]
    assert len(otp) == started["otp_length"] == 28
    assert anon.sys.generate_root(keys[0], nonce)["progress"] == 1
    with pytest.raises(hvac.exceptions.InvalidRequest, match="already been provided"):
        anon.sys.generate_root(keys[0], nonce)
    done = anon.sys.generate_root(keys[2], nonce)
    assert done["complete"] is True
    token = ok(node, home, "operator", "generate-root", f"-decode={done['encoded_token']}", f"-otp={otp}").out
    assert token.startswith("hvs.") and len(token) == 28
    assert hvac.Client(url=node.addr, token=token).auth.token.lookup_self()["data"]["policies"] == ["root"]
    decoded = hvac.Client(url=node.addr, token=token).write("sys/decode-token", encoded_token=done["encoded_token"],
                                                            otp=otp)
    assert decoded["data"] == {"token": token}

    # the CLI way: own OTP, keys as arguments with the nonce
    my_otp = ok(node, home, "operator", "generate-root", "-generate-otp").out
    assert len(my_otp) == 28 and my_otp.isalnum()
    rows = ok(node, home, "operator", "generate-root", "-init", f"-otp={my_otp}").rows()
    assert rows["Started"] == "true" and rows["Progress"] == "0/2" and rows["OTP Length"] == "28"
    assert "OTP" not in rows  # the caller's own OTP is not echoed
    cli_nonce = rows["Nonce"]
    bad = cli(node, home, "operator", "generate-root", keys[1])
    assert bad.code == 1 and "Missing nonce value" in bad.err
    rows = ok(node, home, "operator", "generate-root", f"-nonce={cli_nonce}", keys[1]).rows()
    assert rows["Progress"] == "1/2" and rows["Complete"] == "false"
    rows = ok(node, home, "operator", "generate-root", f"-nonce={cli_nonce}", "-", stdin=keys[2] + "\n").rows()
    assert rows["Complete"] == "true"
    token2 = ok(node, home, "operator", "generate-root", "-decode=-", f"-otp={my_otp}",
                stdin=rows["Encoded Token"]).out
    assert token2 != token and hvac.Client(url=node.addr, token=token2).is_authenticated()

    # status and cancel
    ok(node, home, "operator", "generate-root", "-init")
    assert ok(node, home, "operator", "generate-root", "-status").rows()["Started"] == "true"
    assert "canceled" in ok(node, home, "operator", "generate-root", "-cancel").out
    assert anon.sys.read_root_generation_progress()["started"] is False
    res = cli(node, home, "operator", "generate-root", keys[0])
    assert res.code == 1 and "No root generation is in progress" in res.err


def test_generate_root_refuses_wrong_keys_and_sealed_nodes(node: Node, tmp_path: Path) -> None:
    client, keys, root = init_unsealed(node)
    other = Node(tmp_path / "other")
    other.start()
    try:
        _, other_keys, _ = init_unsealed(other)
    finally:
        other.stop()
    st = client.sys.start_root_token_generation()
    client.sys.generate_root(other_keys[0], st["nonce"])
    code, body = node.request("PUT", "sys/generate-root/update", {"key": other_keys[1], "nonce": st["nonce"]})
    assert code == 400 and body["errors"][0].startswith("root generation aborted: unable to authenticate")
    code, body = node.request("PUT", "sys/generate-root/update", {"key": keys[0], "nonce": "nope"})
    assert code == 400 and "incorrect nonce supplied" in body["errors"][0]
    code, body = node.request("PUT", "sys/generate-root/attempt", {"otp": "short"})
    assert code == 400 and body == {"errors": ["OTP string is wrong length"]}
    code, body = node.request("PUT", "sys/generate-root/attempt", {})
    assert code == 400 and body == {"errors": ["root generation already in progress"]}
    client.token = root
    client.sys.seal()
    code, body = node.request("GET", "sys/generate-root/attempt")
    assert code == 503 and body == {"errors": ["Vault is sealed"]}
    code, body = node.request("PUT", "sys/rekey/init", {"secret_shares": 1, "secret_threshold": 1})
    assert code == 503


# ---- rekey --------------------------------------------------------------------------------------


def test_rekey_with_verification_through_hvac_survives_restart(node: Node) -> None:
    client, keys, root = init_unsealed(node)
    client.token = root
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret("app", {"v": "before rekey"})
    anon = hvac.Client(url=node.addr)
    st = anon.sys.start_rekey(secret_shares=5, secret_threshold=3, require_verification=True)
    assert st["started"] and (st["n"], st["t"], st["required"]) == (5, 3, 2) and st["verification_required"]
    done = anon.sys.rekey_multi(keys[:2], nonce=st["nonce"])
    assert done["complete"] is True and len(done["keys"]) == 5 and done["verification_nonce"]
    new = done["keys"]
    vstat = anon.sys.read_rekey_verify_progress()
    assert (vstat["n"], vstat["t"], vstat["progress"]) == (5, 3, 0)
    # the verification must come from the NEW shares; until then nothing changed
    assert client.sys.read_seal_status()["n"] == 3
    verified = anon.sys.rekey_verify_multi(new[1:4], done["verification_nonce"])
    assert verified == {"nonce": done["verification_nonce"], "complete": True}
    assert client.sys.read_seal_status()["n"] == 5 and client.sys.read_seal_status()["t"] == 3

    restart(node)
    assert node.wait_health({503}) == 503
    assert not unseals_with(node, client, keys[:3])
    assert unseals_with(node, client, new[2:5])
    assert client.secrets.kv.v2.read_secret_version("app", raise_on_deleted_version=True)["data"]["data"] == {"v": "before rekey"}


def test_rekey_through_the_cli(node: Node, home: Path) -> None:
    client, keys, root = init_unsealed(node)
    res = ok(node, home, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2")
    rows = res.rows()
    assert rows["Started"] == "true" and rows["Rekey Progress"] == "0/2" and rows["New Shares"] == "3"
    assert "WARNING! If you lose the keys" in res.err
    nonce = rows["Nonce"]
    assert ok(node, home, "operator", "rekey", "-status").rows()["Nonce"] == nonce
    rows = ok(node, home, "operator", "rekey", f"-nonce={nonce}", keys[0]).rows()
    assert rows["Rekey Progress"] == "1/2"
    res = ok(node, home, "operator", "rekey", f"-nonce={nonce}", keys[1])
    new = re.findall(r"^Key \d: (\S+)$", res.out, re.M)
    assert len(new) == 3 and f"Operation nonce: {nonce}" in res.out
    assert "Vault rekeyed with 3 key shares and a key threshold of 2" in res.out

    # rotate the encryption key (CLI), then seal and come back with the NEW shares (CLI)
    status_before = ok(node, home, "operator", "key-status", token=root).rows()
    res = ok(node, home, "operator", "rotate", token=root)
    assert res.out.startswith("Success! Rotated key")
    assert int(res.rows()["Key Term"]) == int(status_before["Key Term"]) + 1
    ok(node, home, "operator", "seal", token=root)
    assert ok(node, home, "operator", "unseal", keys[0]).rows()["Unseal Progress"] == "1/2"
    bad = cli(node, home, "operator", "unseal", keys[1])  # the old shares no longer combine to the key
    assert bad.code == 2 and "invalid key or key combination" in bad.err
    ok(node, home, "operator", "unseal", new[0])
    assert ok(node, home, "operator", "unseal", new[2]).rows()["Sealed"] == "false"

    # a rekey cancelled before completion leaves the shares as they were
    ok(node, home, "operator", "rekey", "-init", "-key-shares=1", "-key-threshold=1")
    assert "Canceled" in ok(node, home, "operator", "rekey", "-cancel").out
    assert hvac.Client(url=node.addr).sys.read_rekey_progress()["started"] is False
    res = cli(node, home, "operator", "rekey", "-nonce=x", new[0])
    assert res.code == 1 and "No rekey is in progress" in res.err


def test_rekey_cli_with_verification(node: Node, home: Path) -> None:
    client, keys, _ = init_unsealed(node, 1, 1)
    nonce = ok(node, home, "operator", "rekey", "-init", "-key-shares=2", "-key-threshold=2", "-verify").rows()["Nonce"]
    res = ok(node, home, "operator", "rekey", f"-nonce={nonce}", keys[0])
    new = re.findall(r"^Key \d: (\S+)$", res.out, re.M)
    assert len(new) == 2 and "_not_ valid until verification" in res.err
    vnonce = res.rows()["Nonce"]
    assert vnonce != nonce and res.rows()["Verification Progress"] == "0/2"
    rows = ok(node, home, "operator", "rekey", "-verify", f"-nonce={vnonce}", new[0]).rows()
    assert rows["Verification Progress"] == "1/2"
    res = ok(node, home, "operator", "rekey", "-verify", f"-nonce={vnonce}", new[1])
    assert res.out.strip() == "Rekey verification successful."
    assert client.sys.read_seal_status()["n"] == 2


# ---- rotation config ---------------------------------------------------------------------------------


def test_rotate_config_and_key_status(node: Node, home: Path) -> None:
    client, _, root = init_unsealed(node)
    client.token = root
    assert client.read("sys/rotate/config")["data"] == {"max_operations": 3865470566, "interval": "0s", "enabled": True}
    code, body = node.request("PUT", "sys/rotate/config", {"interval": "1h"}, token=root)
    assert code == 400 and body == {"errors": ["interval must be greater or equal to 24h0m0s"]}
    code, body = node.request("PUT", "sys/rotate/config", {"max_operations": 10}, token=root)
    assert code == 400 and body == {"errors": ["max_operations must be in the range [1000000,3865470566]"]}
    code, _ = node.request("PUT", "sys/rotate/config", {"max_operations": 2_000_000, "interval": "4320h"}, token=root)
    assert code == 204
    assert client.read("sys/rotate/config")["data"] == {"max_operations": 2_000_000, "interval": "4320h0m0s",
                                                        "enabled": True}
    code, _ = node.request("PUT", "sys/rotate/config", {"enabled": False}, token=root)
    assert client.read("sys/rotate/config")["data"]["enabled"] is False
    term = client.sys.get_encryption_key_status()["data"]["term"]
    client.sys.rotate_encryption_key()
    assert client.sys.get_encryption_key_status()["data"]["term"] == term + 1
    res = ok(node, home, "operator", "key-status", "-format=json", token=root)
    assert '"term": ' + str(term + 1) in res.out
    code, _ = node.request("GET", "sys/rotate/config")  # needs a token
    assert code == 403
    code, _ = node.request("GET", "sys/rekey/backup", token=root)
    assert code == 404


# ---- recovery keys on a real SoftHSM2 token ----------------------------------------------------------


def test_recovery_key_rekey_and_generate_root(tmp_path: Path, token: Token, home: Path) -> None:
    hsm_node = Node(tmp_path / "hsm", extra_config=token.stanza())
    hsm_node.start()
    try:
        client = hvac.Client(url=hsm_node.addr)
        r = client.sys.initialize(recovery_shares=3, recovery_threshold=2)
        recovery, root = r["recovery_keys"], r["root_token"]
        hsm_node.wait_health({200})
        # the barrier key is the HSM's: there are no unseal shares to rekey
        code, body = hsm_node.request("PUT", "sys/rekey/init", {"secret_shares": 1, "secret_threshold": 1})
        assert code == 400 and "pkcs11 seal protects the root key" in body["errors"][0]
        # generate-root authorized by recovery keys
        st = client.sys.start_root_token_generation()
        assert st["required"] == 2
        client.sys.generate_root(recovery[0], st["nonce"])
        done = client.sys.generate_root(recovery[1], st["nonce"])
        new_root = ok(hsm_node, home, "operator", "generate-root", f"-decode={done['encoded_token']}",
                      f"-otp={st['otp']}").out
        assert hvac.Client(url=hsm_node.addr, token=new_root).auth.token.lookup_self()["data"]["policies"] == ["root"]

        # rekey the recovery key through the CLI, with verification
        res = ok(hsm_node, home, "operator", "rekey", "-target=recovery", "-init", "-key-shares=2",
                 "-key-threshold=2", "-verify")
        nonce = res.rows()["Nonce"]
        ok(hsm_node, home, "operator", "rekey", "-target=recovery", f"-nonce={nonce}", recovery[2])
        res = ok(hsm_node, home, "operator", "rekey", "-target=recovery", f"-nonce={nonce}", recovery[0])
        new = re.findall(r"^Key \d: (\S+)$", res.out, re.M)
        vnonce = res.rows()["Nonce"]
        assert len(new) == 2
        ok(hsm_node, home, "operator", "rekey", "-target=recovery", "-verify", f"-nonce={vnonce}", new[0])
        res = ok(hsm_node, home, "operator", "rekey", "-target=recovery", "-verify", f"-nonce={vnonce}", new[1])
        assert "Rekey verification successful." in res.out
        status = client.sys.read_seal_status()
        assert (status["n"], status["t"], status["recovery_seal"]) == (2, 2, True)

        # the new recovery keys authorize, the old ones do not (a manual seal needs them)
        client.token = root
        client.sys.seal()
        assert not unseals_with(hsm_node, client, recovery[:2])
        assert unseals_with(hsm_node, client, new)
        st = client.sys.start_root_token_generation()
        client.sys.generate_root(recovery[0], st["nonce"])
        with pytest.raises(hvac.exceptions.InvalidRequest, match="recovery key does not match"):
            client.sys.generate_root(recovery[1], st["nonce"])
        client.sys.cancel_root_generation()
        # and after a restart the node auto-unseals with the new recovery config in place
        restart(hsm_node)
        assert hsm_node.wait_health({200}) == 200
        assert client.sys.read_seal_status()["n"] == 2
    finally:
        hsm_node.stop()


# ---- a three-node cluster: standbys forward, a restarted node needs the new shares -----------


def test_key_ceremonies_through_a_standby(tmp_path: Path, home: Path) -> None:
    from cluster.local import LocalCluster

    lc = LocalCluster(tmp_path / "cluster", size=3)
    try:
        lc.up()
        assert lc.init is not None
        keys = lc.init.keys
        active = lc.wait_active()
        standby = next(n for n in lc.nodes if n is not active)
        via_standby = hvac.Client(url=standby.addr)  # the attempt lives on the active node
        st = via_standby.sys.start_root_token_generation()
        assert hvac.Client(url=active.addr).sys.read_root_generation_progress()["nonce"] == st["nonce"]
        via_standby.sys.generate_root(keys[0], st["nonce"])
        done = via_standby.sys.generate_root(keys[1], st["nonce"])
        token = ok(standby, home, "operator", "generate-root", f"-decode={done['encoded_token']}", f"-otp={st['otp']}").out
        assert hvac.Client(url=standby.addr, token=token).auth.token.lookup_self()["data"]["policies"] == ["root"]
        # rotate through the standby: every node keeps reading data written before and after
        client = hvac.Client(url=standby.addr, token=token)
        client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
        client.secrets.kv.v2.create_or_update_secret("a", {"v": "1"})
        term = client.sys.get_encryption_key_status()["data"]["term"]
        client.sys.rotate_encryption_key()
        assert client.sys.get_encryption_key_status()["data"]["term"] == term + 1
        client.secrets.kv.v2.create_or_update_secret("b", {"v": "2"})

        # rekey through the standby; then a restarted node needs the NEW shares
        rk = via_standby.sys.start_rekey(secret_shares=2, secret_threshold=2)
        done = via_standby.sys.rekey_multi(keys[:2], nonce=rk["nonce"])
        new = done["keys"]
        # let the standby apply the rekey before it goes down (replication is asynchronous
        # to the standby; the quorum may have been the other two nodes)
        lc.wait_caught_up(standby, timeout=30)
        standby.stop()
        standby.start()
        restarted = hvac.Client(url=standby.addr)
        assert not unseals_with(standby, restarted, keys[:2])
        assert unseals_with(standby, restarted, new)
        standby.wait_health({200, 429, 473}, timeout=30)
        for path, want in (("a", {"v": "1"}), ("b", {"v": "2"})):
            got = hvac.Client(url=standby.addr, token=token).secrets.kv.v2.read_secret_version(
                path, raise_on_deleted_version=True)
            assert got["data"]["data"] == want
    finally:
        lc.stop()
