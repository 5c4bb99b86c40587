"""PGP-encrypted shares with real gpg keys: init (``pgp_keys``, ``root_token_pgp_key``),
generate-root with ``pgp_key`` and rekey with ``pgp_keys`` + backup, through hvac and the CLI.

Each holder's key pair lives in a private GNUPGHOME made here with ``gpg --batch`` (no
passphrase); public keys go to the server as Vault takes them (base64 of the binary
export), and only that holder's ``gpg --decrypt`` turns a returned value into a share.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
from hsm_fixtures import SoftHSM, Token, softhsm, token  # noqa: F401  (fixtures)

from cluster.node import Node, vaultraft_exe


@dataclass(frozen=True)
class Holder:
    """One key holder: a private keyring and the public key in its three forms."""

    name: str
    home: Path
    public_b64: str
    key_file: Path  # binary export, as `gpg --export` writes it
    fingerprint: str

    def decrypt(self, b64: str) -> str:
        """What ``echo <b64> | base64 -d | gpg --decrypt`` prints for this holder."""
        env = dict(os.environ, GNUPGHOME=str(self.home))
        out = subprocess.run(["gpg", "--batch", "--quiet", "--decrypt"], input=base64.b64decode(b64),
                             capture_output=True, env=env, check=True)
        return out.stdout.decode()

    def cannot_decrypt(self, b64: str) -> bool:
        env = dict(os.environ, GNUPGHOME=str(self.home))
        out = subprocess.run(["gpg", "--batch", "--quiet", "--decrypt"], input=base64.b64decode(b64),
                             capture_output=True, env=env, check=False)
        return out.returncode != 0


def make_holder(root: Path, name: str) -> Holder:
    home = root / name
    home.mkdir(mode=0o700, parents=True)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>",
                    "future-default", "default", "never"], check=True, capture_output=True, env=env)
    pub = subprocess.run(["gpg", "--batch", "--export", f"{name}@example.com"], check=True, capture_output=True,
                         env=env).stdout
    listing = subprocess.run(["gpg", "--batch", "--with-colons", "--fingerprint", f"{name}@example.com"], check=True,
                             capture_output=True, env=env).stdout.decode()
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    key_file = root / f"{name}.gpg"
    key_file.write_bytes(pub)
    return Holder(name, home, base64.b64encode(pub).decode(), key_file, fpr.lower())


@pytest.fixture(scope="module")
def holders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Holder]]:
    root = tmp_path_factory.mktemp("gpg")
    made = [make_holder(root, f"holder{i}") for i in range(4)]
    yield made
    for h in made:  # stop the gpg-agent each private keyring started
        subprocess.run(["gpgconf", "--homedir", str(h.home), "--kill", "gpg-agent"], capture_output=True, check=False)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node")
    n.start()
    yield n
    n.stop()
    shutil.rmtree(tmp_path / "node", ignore_errors=True)


def run_cli(node: Node, home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(HOME=str(home), VAULT_ADDR=node.addr)
    if token:
        env["VAULT_TOKEN"] = token
    return subprocess.run([vaultraft_exe(), *args], capture_output=True, text=True, env=env, timeout=60)


def test_init_with_pgp_keys_through_hvac(node: Node, holders: list[Holder]) -> None:
    client = hvac.Client(url=node.addr)
    # a key that cannot encrypt is refused before anything is initialized
    code, body = node.request("PUT", "sys/init", {"secret_shares": 2, "secret_threshold": 2,
                                                  "pgp_keys": [holders[0].public_b64, "bm90IGEga2V5"]})
    assert code == 400 and body["errors"][0].startswith("invalid seal configuration: error parsing given PGP key 2")
    code, body = node.request("PUT", "sys/init", {"secret_shares": 3, "secret_threshold": 2,
                                                  "pgp_keys": [holders[0].public_b64]})
    assert code == 400 and "count mismatch" in body["errors"][0]
    assert client.sys.is_initialized() is False

    result = client.sys.initialize(3, 2, pgp_keys=[h.public_b64 for h in holders[:3]],
                                   root_token_pgp_key=holders[3].public_b64)
    enc = result["keys_base64"]
    assert len(enc) == 3 and result["keys"] == [base64.b64decode(k).hex() for k in enc]
    # each share opens only for its own holder, and is the hex unseal key
    shares = [h.decrypt(k) for h, k in zip(holders, enc)]
    assert all(re.fullmatch(r"[0-9a-f]{66}", s) for s in shares)
    assert holders[1].cannot_decrypt(enc[0]) and holders[0].cannot_decrypt(enc[1])
    assert not result["root_token"].startswith("hvs.")
    root = holders[3].decrypt(result["root_token"])
    assert root.startswith("hvs.")

    client.sys.submit_unseal_key(shares[2])
    assert client.sys.submit_unseal_key(shares[0])["sealed"] is False
    node.wait_health({200})
    client.token = root
    assert client.auth.token.lookup_self()["data"]["policies"] == ["root"]

    # generate-root with a PGP key: only that holder can read the new token
    st = client.sys.start_root_token_generation(pgp_key=holders[1].public_b64)
    assert st["pgp_fingerprint"] == holders[1].fingerprint and st["otp"] == ""
    client.sys.generate_root(shares[0], st["nonce"])
    done = client.sys.generate_root(shares[1], st["nonce"])
    assert done["pgp_fingerprint"] == holders[1].fingerprint
    assert holders[0].cannot_decrypt(done["encoded_token"])
    new_root = holders[1].decrypt(done["encoded_token"])
    assert hvac.Client(url=node.addr, token=new_root).auth.token.lookup_self()["data"]["policies"] == ["root"]


def test_init_and_rekey_with_pgp_keys_through_the_cli(node: Node, holders: list[Holder], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # one key file binary, one base64 text: the CLI accepts both, as Vault's does
    b64_file = tmp_path / "holder1.b64"
    b64_file.write_text(holders[1].public_b64 + "\n")
    res = run_cli(node, home, "operator", "init", "-key-shares=2", "-key-threshold=2",
                  f"-pgp-keys={holders[0].key_file},{b64_file}", f"-root-token-pgp-key={holders[2].key_file}")
    assert res.returncode == 0, res.stderr
    enc = re.findall(r"^Unseal Key \d: (\S+)$", res.stdout, re.M)
    enc_root = re.search(r"^Initial Root Token: (\S+)$", res.stdout, re.M)
    assert len(enc) == 2 and enc_root is not None
    shares = [holders[0].decrypt(enc[0]), holders[1].decrypt(enc[1])]
    root = holders[2].decrypt(enc_root.group(1))
    for s in shares:
        assert run_cli(node, home, "operator", "unseal", s).returncode == 0
    node.wait_health({200})

    # rekey to three holders, backed up
    files = ",".join(str(h.key_file) for h in holders[1:4])
    res = run_cli(node, home, "operator", "rekey", "-init", "-key-shares=3", "-key-threshold=2",
                  f"-pgp-keys={files}", "-backup")
    assert res.returncode == 0, res.stderr
    nonce = re.search(r"^Nonce\s+(\S+)$", res.stdout, re.M)
    assert nonce is not None and "PGP Fingerprints" in res.stdout
    assert run_cli(node, home, "operator", "rekey", f"-nonce={nonce.group(1)}", shares[0]).returncode == 0
    res = run_cli(node, home, "operator", "rekey", f"-nonce={nonce.group(1)}", shares[1])
    assert res.returncode == 0, res.stderr
    got = re.findall(r"^Key (\d) fingerprint: ([0-9a-f]+); value: (\S+)$", res.stdout, re.M)
    assert [fp for _, fp, _ in got] == [h.fingerprint for h in holders[1:4]]
    assert "core/unseal-keys-backup" in res.stdout
    new_shares = [h.decrypt(v) for h, (_, _, v) in zip(holders[1:4], got)]

    # the backup needs a token, and holds the same encrypted shares
    assert run_cli(node, home, "operator", "rekey", "-backup-retrieve").returncode == 2
    client = hvac.Client(url=node.addr, token=root)
    backup = client.sys.read_backup_keys()["data"]
    assert backup["nonce"] == nonce.group(1)
    assert backup["keys_base64"][holders[2].fingerprint] == [got[1][2]]
    res = run_cli(node, home, "operator", "rekey", "-backup-retrieve", "-format=json", token=root)
    assert res.returncode == 0 and holders[3].fingerprint in res.stdout
    res = run_cli(node, home, "operator", "rekey", "-backup-delete", token=root)
    assert res.returncode == 0 and "Success!" in res.stdout
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.sys.read_backup_keys()

    client.sys.seal()
    client.sys.submit_unseal_key(new_shares[2])
    assert client.sys.submit_unseal_key(new_shares[0])["sealed"] is False


def test_recovery_keys_encrypted_to_pgp_keys_on_an_hsm(tmp_path: Path, token: Token, holders: list[Holder]) -> None:
    node = Node(tmp_path / "hsm", extra_config=token.stanza())
    node.start()
    try:
        client = hvac.Client(url=node.addr)
        result = client.sys.initialize(recovery_shares=2, recovery_threshold=2,
                                       recovery_pgp_keys=[h.public_b64 for h in holders[:2]])
        assert result["keys"] == [] and len(result["recovery_keys_base64"]) == 2
        recovery = [h.decrypt(k) for h, k in zip(holders, result["recovery_keys_base64"])]
        assert holders[2].cannot_decrypt(result["recovery_keys_base64"][0])
        node.wait_health({200})
        st = client.sys.start_root_token_generation(pgp_key=holders[2].public_b64)
        client.sys.generate_root(recovery[1], st["nonce"])
        done = client.sys.generate_root(recovery[0], st["nonce"])
        new_root = holders[2].decrypt(done["encoded_token"])
        assert hvac.Client(url=node.addr, token=new_root).auth.token.lookup_self()["data"]["policies"] == ["root"]
    finally:
        node.stop()
