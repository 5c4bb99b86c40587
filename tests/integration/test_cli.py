"""The ``vaultraft`` CLI as a user types it, against real server processes.

Every command runs as a subprocess with ``VAULT_ADDR`` / ``VAULT_TOKEN`` and a private
``HOME`` (so ``~/.vault-token`` is isolated); stdout, stderr and exit codes are checked
against Vault's. One module-scoped dev server carries most of the file; the
init → unseal → login → seal flow gets its own fresh (uninitialized) node.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.node import Node, free_port, vaultraft_exe

# one module-scoped server per module: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("test_cli")

_UNSET = object()


@dataclass(frozen=True)
class Result:
    """One finished CLI process."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)

    def table(self) -> dict[str, str]:
        """A ``Key    Value`` table on stdout as a dict (columns are 2+ spaces apart)."""
        rows: dict[str, str] = {}
        for line in self.out.splitlines():
            parts = re.split(r"\s{2,}", line, maxsplit=1)
            if len(parts) == 2 and not line.startswith(("---", "==", "Key ")):
                rows[parts[0]] = parts[1].strip()
        return rows


@dataclass(frozen=True)
class Cli:
    """Runs ``vaultraft`` against one server with a private HOME and an optional token."""

    addr: str
    home: Path
    token: str | None = None
    pycache: Path | None = None

    def with_token(self, token: str) -> Cli:
        """The same CLI sending another token."""
        return Cli(self.addr, self.home, token, self.pycache)

    def __call__(self, *args: str, stdin: str | None = None, token: Any = _UNSET,
                 env: dict[str, str] | None = None) -> Result:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        environ.update(HOME=str(self.home), VAULT_ADDR=self.addr, NO_COLOR="1")
        if self.pycache is not None:
            # Cache bytecode outside the tree (as a normal install would) so ~150 short
            # processes do not each recompile the CLI from source.
            environ.pop("PYTHONDONTWRITEBYTECODE", None)
            environ["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        tok = self.token if token is _UNSET else token
        if tok:
            environ["VAULT_TOKEN"] = str(tok)
        environ.update(env or {})
        proc = subprocess.run([vaultraft_exe(), *args], input=stdin if stdin is not None else "",
                              capture_output=True, text=True, env=environ, timeout=30)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw: Any) -> Result:
        """Run and require exit 0 with nothing on stderr."""
        res = self(*args, **kw)
        assert res.code == 0, f"{args}: exit {res.code}\n{res.err}"
        assert res.err == "", f"{args}: unexpected stderr {res.err!r}"
        return res


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bytecode cache directory shared by this module's CLI processes."""
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
def cli(dev_node: Node, tmp_path: Path, pycache: Path) -> Cli:
    """A root-token CLI against the shared dev server."""
    home = tmp_path / "home"
    home.mkdir()
    return Cli(dev_node.addr, home, "root", pycache)


# --- 1 + 6: init, unseal, login, token helper, seal ------------------------------------


def test_init_unseal_login_and_seal(fresh_node: Node, tmp_path: Path, pycache: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(fresh_node.addr, home, pycache=pycache)

    res = cli("status")
    assert res.code == 2 and res.err == ""
    assert res.table()["Initialized"] == "false" and res.table()["Sealed"] == "true"
    res = cli("operator", "init", "-status")
    assert (res.code, res.out) == (2, "Vault is not initialized\n")

    res = cli.ok("operator", "init", "-key-shares=3", "-key-threshold=2", "-format=json")
    init = res.json()
    assert init["unseal_shares"] == 3 and init["unseal_threshold"] == 2
    assert len(init["unseal_keys_b64"]) == 3 and len(init["unseal_keys_hex"]) == 3
    root = init["root_token"]
    assert root.startswith("hvs.")
    again = cli("operator", "init", "-key-shares=1", "-key-threshold=1")
    assert again.code == 2 and "Vault is already initialized" in again.err

    res = cli("status")
    assert res.code == 2
    rows = res.table()
    assert rows["Initialized"] == "true" and rows["Sealed"] == "true"
    assert rows["Total Shares"] == "3" and rows["Threshold"] == "2" and rows["Unseal Progress"] == "0/2"

    # one key (b64) as an argument: progress 1/2, still sealed, nonce shown
    res = cli.ok("operator", "unseal", init["unseal_keys_b64"][0])
    rows = res.table()
    assert rows["Sealed"] == "true" and rows["Unseal Progress"] == "1/2"
    assert rows["Unseal Nonce"] not in ("", "n/a")
    res = cli("status", "-format=json")
    assert res.code == 2 and res.json()["progress"] == 1 and res.json()["sealed"] is True
    # the second key (hex this time) reaches the threshold
    res = cli.ok("operator", "unseal", init["unseal_keys_hex"][1])
    rows = res.table()
    assert rows["Sealed"] == "false" and "Unseal Progress" not in rows
    res = cli.ok("status")
    assert res.table()["Sealed"] == "false" and res.table()["Cluster ID"]

    # no token anywhere yet: an authenticated request is refused
    denied = cli("secrets", "list")
    assert denied.code == 2 and "permission denied" in denied.err

    res = cli.ok("login", root)
    assert res.out.startswith("Success! You are now authenticated.")
    assert res.table()["token"] == root and res.table()["token_policies"] == '["root"]'
    token_file = home / ".vault-token"
    assert token_file.read_text() == root
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    # from here on, no VAULT_TOKEN: the stored token is used
    res = cli.ok("token", "lookup", "-format=json")
    assert res.json()["data"]["policies"] == ["root"] and res.json()["data"]["id"] == root
    res = cli.ok("secrets", "enable", "-path=secret", "kv-v2")
    assert res.out == "Success! Enabled the kv-v2 secrets engine at: secret/\n"
    cli.ok("kv", "put", "secret/app", "password=p4ss")
    assert cli.ok("kv", "get", "-field=password", "secret/app").out == "p4ss"

    # the other ways in: stdin, -token-only, token=/lookup= config with -no-store
    res = cli("login", "-", stdin=root + "\n", token=root)
    assert res.code == 0 and res.err.startswith("WARNING! The VAULT_TOKEN environment variable is set!")
    assert cli.ok("login", "-token-only", root).out == root
    res = cli("login", "-no-store", "-format=json", f"token={root}", "lookup=false")
    assert res.code == 0 and res.err.startswith("The token was not stored in token helper.")
    assert res.json()["auth"]["client_token"] == root and list(res.json()["auth"])[:3] == [
        "client_token", "accessor", "policies"]
    both = cli("login", "-no-store", "-no-print", root)
    assert both.code == 1 and both.err == "-no-store and -no-print cannot be used together\n"
    assert token_file.read_text() == root

    # a bad token from login is refused and not stored
    bad = cli("login", "hvs.not-a-token")
    assert bad.code == 2 and "Error authenticating" in bad.err and "permission denied" in bad.err
    assert token_file.read_text() == root
    # VAULT_TOKEN wins over the helper file
    res = cli("kv", "get", "secret/app", token="hvs.bogus")
    assert res.code == 2 and "permission denied" in res.err

    # 6: seal; everything but status answers "Vault is sealed"
    res = cli.ok("operator", "seal")
    assert res.out == "Success! Vault is sealed.\n"
    res = cli("kv", "get", "secret/app")
    assert res.code == 2 and "Vault is sealed" in res.err and res.out == ""
    res = cli("read", "secret/data/app")
    assert res.code == 2 and "Vault is sealed" in res.err and "Code: 503" in res.err
    assert cli("status").code == 2

    # unseal again with the other two keys (one piped on stdin); the data is still there
    assert cli.ok("operator", "unseal", init["unseal_keys_b64"][2]).table()["Unseal Progress"] == "1/2"
    assert cli.ok("operator", "unseal", stdin=init["unseal_keys_b64"][1] + "\n").table()["Sealed"] == "false"
    assert cli.ok("kv", "get", "-field=password", "secret/app").out == "p4ss"
    # -reset clears a started unseal
    cli.ok("operator", "seal")
    cli.ok("operator", "unseal", init["unseal_keys_b64"][0])
    res = cli.ok("operator", "unseal", "-reset")
    assert res.table()["Unseal Progress"] == "0/2"


# --- 2: KV v2 -------------------------------------------------------------------------------


def test_kv_v2_getting_started(cli: Cli) -> None:
    # dev mode pre-mounts secret/ as KV v2, as Vault does
    res = cli("secrets", "enable", "-path=secret", "kv-v2")
    assert res.code == 2 and res.out == ""
    assert res.err.startswith("Error enabling: Error making API request.")
    assert "path is already in use at secret/" in res.err
    assert cli.ok("secrets", "enable", "-path=kv2", "-version=2", "kv").out == \
        "Success! Enabled the kv secrets engine at: kv2/\n"
    res = cli.ok("secrets", "list")
    lines = res.out.splitlines()
    assert lines[0].split() == ["Path", "Type", "Accessor", "Description"]
    paths = {line.split()[0]: line.split()[1] for line in lines[2:]}
    assert paths["secret/"] == "kv" and paths["kv2/"] == "kv" and paths["sys/"] == "system"
    mounts = cli.ok("secrets", "list", "-format=json").json()
    assert mounts["kv2/"]["options"] == {"version": "2"} and mounts["secret/"]["options"]["version"] == "2"

    _kv_v2_flow(cli, "secret")
    # the "-version=2 kv" mount behaves as KV v2 through the same commands
    res = cli.ok("kv", "put", "kv2/app", "k=v1")
    assert re.match("=+ Secret Path =+\nkv2/data/app\n", res.out) and res.table()["version"] == "1"
    cli.ok("kv", "put", "kv2/app", "k=v2")
    assert cli.ok("kv", "get", "-version=1", "-field=k", "kv2/app").out == "v1"
    assert cli.ok("kv", "metadata", "get", "-field=current_version", "kv2/app").out == "2"


def _kv_v2_flow(cli: Cli, mount: str) -> None:
    data_path = f"{mount}/data/hello"
    res = cli.ok("kv", "put", f"{mount}/hello", "foo=world")
    assert re.match(f"=+ Secret Path =+\n{data_path}\n\n======= Metadata =======\n", res.out)
    assert res.table()["version"] == "1" and res.table()["destroyed"] == "false"

    res = cli.ok("kv", "get", f"{mount}/hello")
    out = res.out
    assert re.match(f"=+ Secret Path =+\n{data_path}\n\n======= Metadata =======\n", out)
    assert "\n=== Data ===\nKey    Value\n---    -----\nfoo    world\n" in out
    assert res.table()["version"] == "1"
    assert cli.ok("kv", "get", "-field=foo", f"{mount}/hello").out == "world"
    doc = cli.ok("kv", "get", "-format=json", f"{mount}/hello").json()
    assert doc["data"]["data"] == {"foo": "world"} and doc["data"]["metadata"]["version"] == 1
    assert list(doc)[:6] == ["request_id", "lease_id", "lease_duration", "renewable", "data", "warnings"]
    # VAULT_FORMAT is the default for -format
    assert json.loads(cli.ok("kv", "get", f"{mount}/hello", env={"VAULT_FORMAT": "json"}).out)["data"]["data"] == {"foo": "world"}
    missing_field = cli("kv", "get", "-field=nope", f"{mount}/hello")
    assert missing_field.code == 1 and missing_field.err == 'Field "nope" not present in secret\n'

    res = cli.ok("kv", "put", f"{mount}/hello", "foo=world2", "bar=baz")
    assert res.table()["version"] == "2"
    assert cli.ok("kv", "get", "-version=1", "-field=foo", f"{mount}/hello").out == "world"
    assert cli.ok("kv", "get", "-field=foo", f"{mount}/hello").out == "world2"

    res = cli.ok("kv", "patch", f"{mount}/hello", "extra=1")
    assert res.table()["version"] == "3"
    doc = cli.ok("kv", "get", "-format=json", f"{mount}/hello").json()
    assert doc["data"]["data"] == {"foo": "world2", "bar": "baz", "extra": "1"}
    res = cli.ok("kv", "patch", "-method=rw", "-remove-data=bar", f"{mount}/hello", "extra=2")
    assert res.table()["version"] == "4"
    doc = cli.ok("kv", "get", "-format=json", f"{mount}/hello").json()
    assert doc["data"]["data"] == {"foo": "world2", "extra": "2"}
    stale = cli("kv", "patch", "-cas=1", f"{mount}/hello", "x=y")
    assert stale.code == 2 and "check-and-set parameter did not match the current version" in stale.err
    cas_put = cli("kv", "put", "-cas=0", f"{mount}/hello", "x=y")
    assert cas_put.code == 2 and "check-and-set parameter did not match the current version" in cas_put.err
    nothing = cli("kv", "patch", f"{mount}/nothing-here", "a=b")
    assert nothing.code == 2 and nothing.out == ""
    assert nothing.err.startswith(f"Error writing data to {mount}/data/nothing-here: Error making API request.")
    assert "Code: 404" in nothing.err
    bad_method = cli("kv", "patch", "-method=put", f"{mount}/hello", "a=b")
    assert (bad_method.code, bad_method.err) == (2, "Unsupported method provided to -method flag: put\n")

    res = cli.ok("kv", "metadata", "get", f"{mount}/hello")
    assert re.match(f"=+ Metadata Path =+\n{mount}/metadata/hello\n\n", res.out)
    assert res.table()["current_version"] == "4"
    for n in range(1, 5):
        assert f"====== Version {n} ======" in res.out
    meta = cli.ok("kv", "metadata", "get", "-format=json", f"{mount}/hello").json()
    assert sorted(meta["data"]["versions"]) == ["1", "2", "3", "4"]

    res = cli.ok("kv", "delete", f"{mount}/hello")
    assert res.out == f"Success! Data deleted (if it existed) at: {data_path}\n"
    # the deleted latest version: metadata with a deletion_time, no data section, exit 0
    res = cli.ok("kv", "get", f"{mount}/hello")
    assert res.table()["deletion_time"] not in ("", "n/a") and "=== Data ===" not in res.out
    # with -versions Vault posts to delete/ but reports the data path
    res = cli.ok("kv", "delete", "-versions=2", f"{mount}/hello")
    assert res.out == f"Success! Data deleted (if it existed) at: {data_path}\n"
    gone = cli.ok("kv", "get", "-version=2", "-format=json", f"{mount}/hello").json()
    assert gone["data"]["data"] is None and gone["data"]["metadata"]["deletion_time"]
    # patching a deleted latest version: rw mode refuses like Vault
    rw = cli("kv", "patch", "-method=rw", f"{mount}/hello", "x=1")
    assert rw.code == 2 and rw.err == f"No data found at {data_path}; patch only works on existing data\n"
    res = cli.ok("kv", "undelete", "-versions=2", f"{mount}/hello")
    assert res.out == f"Success! Data written to: {mount}/undelete/hello\n"
    assert cli.ok("kv", "get", "-version=2", "-field=bar", f"{mount}/hello").out == "baz"
    res = cli.ok("kv", "destroy", "-versions=1", f"{mount}/hello")
    assert res.out == f"Success! Data written to: {mount}/destroy/hello\n"
    res = cli.ok("kv", "get", "-version=1", f"{mount}/hello")
    assert res.table()["destroyed"] == "true" and "=== Data ===" not in res.out
    no_versions = cli("kv", "undelete", f"{mount}/hello")
    assert no_versions.code == 1 and 'use the "-versions" flag' in no_versions.err

    cli.ok("kv", "put", f"{mount}/team/a", "k=v")
    res = cli.ok("kv", "list", f"{mount}/")
    assert res.out == "Keys\n----\nhello\nteam/\n"
    assert cli.ok("kv", "list", "-format=json", f"{mount}/team").json() == ["a"]
    empty = cli("kv", "list", f"{mount}/nope")
    assert empty.code == 2 and empty.err == f"No value found at {mount}/metadata/nope\n"
    res = cli.ok("kv", "get", f"-mount={mount}", "-field=k", "team/a")
    assert res.out == "v"

    missing = cli("kv", "get", f"{mount}/missing")
    assert missing.code == 2 and missing.out == ""
    assert missing.err == f"No value found at {mount}/data/missing\n"
    missing_meta = cli("kv", "metadata", "get", f"{mount}/missing")
    assert missing_meta.code == 2 and missing_meta.err == f"No value found at {mount}/metadata/missing\n"
    res = cli.ok("kv", "metadata", "delete", f"{mount}/team/a")
    assert res.out == f"Success! Data deleted (if it existed) at: {mount}/metadata/team/a\n"
    assert cli("kv", "get", f"{mount}/team/a").code == 2

    usage = cli("kv", "put", f"{mount}/hello")
    assert usage.code == 1 and usage.err == "Must supply data\n"


# --- 3: policies and tokens ------------------------------------------------------------------


APP_POLICY = """\
path "secret/data/app/*" {
  capabilities = ["create", "read", "update", "patch"]
}
path "secret/metadata/app/*" {
  capabilities = ["list", "read"]
}
"""


def test_policies_and_tokens(cli: Cli, tmp_path: Path) -> None:
    policy_file = tmp_path / "app.hcl"
    policy_file.write_text(APP_POLICY)
    assert cli.ok("policy", "write", "app", str(policy_file)).out == "Success! Uploaded policy: app\n"
    assert cli.ok("policy", "read", "app").out == APP_POLICY
    assert cli.ok("policy", "write", "app", "-", stdin=APP_POLICY).out == "Success! Uploaded policy: app\n"
    assert cli.ok("policy", "read", "-format=json", "app").json() == {"policy": APP_POLICY}
    no_patch = APP_POLICY.replace(', "patch"', "")
    assert cli.ok("policy", "write", "app-stdin", "-", stdin=no_patch).out == "Success! Uploaded policy: app-stdin\n"
    assert cli.ok("policy", "read", "app-stdin").out == no_patch
    names = cli.ok("policy", "list").out.splitlines()
    assert {"app", "app-stdin", "default", "root"} <= set(names)
    assert cli.ok("policy", "list", "-format=json").json() == sorted(names)
    bad = cli("policy", "write", "broken", "-", stdin='path "x" { capabilities = ["fly"] }')
    assert bad.code == 2 and bad.err.startswith("Error uploading policy: Error making API request.")
    nofile = cli("policy", "write", "x", str(tmp_path / "missing.hcl"))
    assert nofile.code == 2 and "Error opening policy file" in nofile.err

    cli.ok("kv", "put", "secret/app/db", "password=dbpass")
    cli.ok("kv", "put", "secret/other", "password=nope")

    created = cli.ok("token", "create", "-policy=app", "-ttl=1h", "-format=json").json()
    auth = created["auth"]
    token, accessor = auth["client_token"], auth["accessor"]
    assert auth["policies"] == ["app", "default"] and auth["lease_duration"] == 3600
    assert auth["renewable"] is True and created["data"] is None
    app = cli.with_token(token)

    # allowed paths work
    assert app.ok("kv", "get", "-field=password", "secret/app/db").out == "dbpass"
    assert app.ok("kv", "put", "secret/app/cache", "url=redis").table()["version"] == "1"
    assert app.ok("kv", "patch", "secret/app/cache", "ttl=5").table()["version"] == "2"
    assert app.ok("kv", "list", "secret/app").out == "Keys\n----\ncache\ndb\n"
    # denied paths exit 2 with "permission denied"
    for args in (("kv", "get", "secret/other"), ("kv", "put", "secret/other", "a=b"),
                 ("read", "secret/data/other"), ("policy", "list"), ("secrets", "list")):
        res = app(*args)
        assert res.code == 2, args
        assert "permission denied" in res.err and "Code: 403" in res.err, args
        assert res.out == "", args

    # without the "patch" capability, kv patch falls back to read-then-write with a warning
    rw_token = cli.ok("token", "create", "-policy=app-stdin", "-field=token").out
    rw_app = cli.with_token(rw_token)
    res = rw_app("kv", "patch", "secret/app/cache", "extra=1")
    assert res.code == 0 and res.table()["version"] == "3"
    assert res.err.startswith("Data was written to secret/data/app/cache but we recommend that you add")
    strict = rw_app("kv", "patch", "-method=patch", "secret/app/cache", "extra=2")
    assert strict.code == 2 and "permission denied" in strict.err
    assert rw_app.ok("kv", "get", "-format=json", "secret/app/cache").json()["data"]["data"] == {
        "url": "redis", "ttl": "5", "extra": "1"}

    res = app.ok("token", "lookup")
    rows = res.table()
    assert rows["policies"] == "[app default]" and rows["id"] == token
    assert rows["accessor"] == accessor and rows["creation_ttl"] == "1h"
    by_accessor = cli.ok("token", "lookup", "-accessor", "-format=json", accessor).json()
    assert by_accessor["data"]["policies"] == ["app", "default"] and by_accessor["data"]["id"] == ""
    assert cli.ok("token", "lookup", "-format=json", token).json()["data"]["accessor"] == accessor

    res = app.ok("token", "renew", "-increment=30m")
    rows = res.table()
    assert rows["token"] == token and rows["token_duration"] == "30m"
    assert rows["token_policies"] == '["app" "default"]'
    res = cli.ok("token", "renew", "-format=json", token)
    assert res.json()["auth"]["client_token"] == token
    assert cli.ok("token", "create", "-policy=app", "-field=token").out.startswith("hvs.")

    assert cli.ok("token", "revoke", token).out == "Success! Revoked token (if it existed)\n"
    gone = app("token", "lookup")
    assert gone.code == 2 and "permission denied" in gone.err
    assert app("kv", "get", "secret/app/db").code == 2

    # revoke -self and -accessor
    child = cli.ok("token", "create", "-policy=app", "-field=token").out
    res = cli.with_token(child).ok("token", "revoke", "-self")
    assert res.out == "Success! Revoked token (if it existed)\n"
    assert cli.with_token(child)("token", "lookup").code == 2
    acc = cli.ok("token", "create", "-policy=app", "-field=token_accessor").out
    cli.ok("token", "revoke", "-accessor", acc)
    assert cli("token", "lookup", "-accessor", acc).code == 2
    usage = cli("token", "revoke")
    assert usage.code == 1 and usage.err == "Not enough arguments (expected 1 or -self, got 0)\n"

    assert cli.ok("policy", "delete", "app").out == "Success! Deleted policy: app\n"
    cli.ok("policy", "delete", "app-stdin")
    res = cli("policy", "read", "app")
    assert res.code == 2 and res.err == "No policy named: app\n"
    assert "app" not in cli.ok("policy", "list").out.splitlines()


# --- 4: generic read/write/list/delete on KV v1 --------------------------------------------


def test_generic_commands_on_kv_v1(cli: Cli, tmp_path: Path) -> None:
    assert cli.ok("secrets", "enable", "-path=kv1", "kv").out == "Success! Enabled the kv secrets engine at: kv1/\n"
    assert cli.ok("secrets", "list", "-format=json").json()["kv1/"]["type"] == "kv"

    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERT-----\nabc\n-----END CERT-----\n")
    res = cli.ok("write", "kv1/app", "user=bob", f"cert=@{cert}", "literal=\\@home")
    assert res.out == "Success! Data written to: kv1/app\n"
    res = cli.ok("read", "kv1/app")
    lines = res.out.splitlines()
    assert lines[0].split() == ["Key", "Value"]
    assert lines[2].split() == ["refresh_interval", "768h"]
    assert res.table()["user"] == "bob" and res.table()["literal"] == "@home"
    assert cli.ok("read", "-field=cert", "kv1/app").out == cert.read_text()
    doc = cli.ok("read", "-format=json", "kv1/app").json()
    assert doc["data"] == {"user": "bob", "cert": cert.read_text(), "literal": "@home"}
    assert doc["lease_duration"] == 768 * 3600

    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps({"nested": {"list": [1, 2]}, "flag": True}))
    cli.ok("write", "kv1/json", f"@{data_file}")
    assert cli.ok("read", "-format=json", "kv1/json").json()["data"] == {"nested": {"list": [1, 2]}, "flag": True}
    assert cli.ok("read", "kv1/json").table()["nested"] == "map[list:[1 2]]"

    cli.ok("write", "kv1/stdin", "-", stdin='{"from": "stdin", "n": 3}')
    assert cli.ok("read", "-format=json", "kv1/stdin").json()["data"] == {"from": "stdin", "n": 3}
    cli.ok("write", "kv1/value", "text=-", stdin="multi\nline")
    assert cli.ok("read", "-field=text", "kv1/value").out == "multi\nline"

    res = cli.ok("list", "kv1")
    assert res.out == "Keys\n----\napp\njson\nstdin\nvalue\n"
    assert cli.ok("list", "-format=json", "kv1/").json() == ["app", "json", "stdin", "value"]
    # the kv subcommands work on v1 too, with plain paths
    assert cli.ok("kv", "get", "-field=user", "kv1/app").out == "bob"
    res = cli.ok("kv", "get", "kv1/app")
    assert res.out.startswith("===== Data =====\nKey        Value\n") and "Secret Path" not in res.out
    assert cli.ok("kv", "put", "kv1/viakv", "a=b").out == "Success! Data written to: kv1/viakv\n"
    assert cli("kv", "metadata", "get", "kv1/app").err == "Metadata not supported on KV Version 1\n"

    res = cli.ok("delete", "kv1/app")
    assert res.out == "Success! Data deleted (if it existed) at: kv1/app\n"
    gone = cli("read", "kv1/app")
    assert gone.code == 2 and gone.out == "" and gone.err == "No value found at kv1/app\n"
    empty = cli("list", "kv1/nothing")
    assert empty.code == 2 and empty.err == "No value found at kv1/nothing/\n"
    empty_json = cli("list", "-format=json", "kv1/nothing")
    assert empty_json.code == 2 and empty_json.json() == {}

    # an endpoint answering without the standard envelope: its body becomes the data
    health = cli.ok("read", "-format=json", "sys/health").json()
    assert health["data"]["initialized"] is True and health["data"]["sealed"] is False
    assert cli.ok("read", "-field=sealed", "sys/health").out == "false"

    # local mistakes exit 1
    for args, err in (
        (("write", "kv1/x"), "Must supply data or use -force\n"),
        (("write", "kv1/x", "novalue"), "Failed to parse K=V data: format must be key=value\n"),
        (("read",), "Not enough arguments (expected 1, got 0)\n"),
        (("read", "-bogus", "kv1/x"), "flag provided but not defined: -bogus\n"),
        (("read", "-format=xml", "kv1/x"), "Invalid output format: xml\n"),
    ):
        res = cli(*args)
        assert (res.code, res.err) == (1, err), args
    nofile = cli("write", "kv1/x", f"v=@{tmp_path / 'missing'}")
    assert nofile.code == 1 and nofile.err.startswith("Failed to parse K=V data: error reading file")


# --- 5: audit -----------------------------------------------------------------------------------


def test_audit_file_device(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    res = cli("audit", "list")
    assert res.code == 2 and res.out == "No audit devices are enabled.\n"
    res = cli.ok("audit", "enable", "file", f"file_path={log}")
    assert res.out == "Success! Enabled the file audit device at: file/\n"
    res = cli.ok("audit", "list")
    assert res.out.splitlines()[0].split() == ["Path", "Type", "Description"]
    assert res.out.splitlines()[2].split()[:2] == ["file/", "file"]
    detailed = cli.ok("audit", "list", "-detailed").out
    assert f"map[file_path:{log}]" in detailed and "replicated" in detailed
    assert cli.ok("audit", "list", "-format=json").json()["file/"]["options"] == {"file_path": str(log)}

    plaintext = "audit-me-plaintext-7731"
    cli.ok("kv", "put", "secret/audited", f"pw={plaintext}")
    assert cli.ok("kv", "get", "-field=pw", "secret/audited").out == plaintext

    text = log.read_text()
    assert plaintext not in text and '"client_token":"root"' not in text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    writes = [e for e in entries if e["type"] == "request" and e["request"]["path"] == "secret/data/audited"
              and e["request"]["operation"] in ("create", "update")]
    assert len(writes) == 1
    logged = writes[0]["request"]["data"]["data"]["pw"]
    assert logged.startswith("hmac-sha256:")
    assert writes[0]["request"]["client_token"].startswith("hmac-sha256:")
    reads = [e for e in entries if e["type"] == "response" and e["request"]["path"] == "secret/data/audited"
             and e["request"]["operation"] == "read"]
    assert reads and reads[0]["response"]["data"]["data"]["pw"] == logged
    # the same HMAC through sys/audit-hash, with the generic write command
    hashed = cli.ok("write", "-field=hash", "sys/audit-hash/file", f"input={plaintext}").out
    assert hashed == logged

    res = cli.ok("audit", "disable", "file/")
    assert res.out == "Success! Disabled audit device (if it was enabled) at: file/\n"
    assert cli("audit", "list").code == 2
    size = log.stat().st_size
    cli.ok("kv", "get", "secret/audited")
    assert log.stat().st_size == size
    missing = cli("audit", "enable")
    assert missing.code == 1 and "audit type missing" in missing.err


# --- misc user-facing behaviour -------------------------------------------------------------


def test_unreachable_server_and_unknown_commands(tmp_path: Path, pycache: Path) -> None:
    cli = Cli(f"http://127.0.0.1:{free_port()}", tmp_path, "root", pycache)
    res = cli("kv", "get", "secret/x")
    assert res.code == 2 and "connection refused" in res.err
    res = cli("status")
    assert res.code == 1 and res.err.startswith("Error checking seal status: ")
    res = cli("read", "secret/x")
    assert res.code == 2 and res.err.startswith("Error reading secret/x: ") and "connection refused" in res.err
    assert cli("frobnicate").code == 127
    res = cli("kv")
    assert res.code == 1 and "Usage: vaultraft kv <subcommand>" in res.err
    res = cli("kv", "get", "-help")
    assert res.code == 0 and res.err.startswith("Usage: vault kv get")
