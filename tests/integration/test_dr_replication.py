"""DR replication end to end between two single-node clusters of real processes (hvac).

One module-scoped pair of clusters walks Vault's DR runbook in order: enable the primary,
issue a secondary token, activate the secondary, stream, generate a DR operation token from
the primary's unseal keys, merkle-check, lose the primary, promote, restart and unseal the
promoted cluster with the primary's keys, then fail back (demote the old primary,
update-primary with a new token, catch up).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import hvac
import pytest

from cluster.local import LocalCluster
from cluster.node import vaultraft_exe
from tests.integration.dr_helpers import MOUNT, caught_up, client, dr_status, node, operation_token, wait_for

pytestmark = pytest.mark.xdist_group("test_dr_replication")


class Pair:
    def __init__(self, primary: LocalCluster, secondary: LocalCluster) -> None:
        self.primary = primary
        self.secondary = secondary
        self.acked: dict[str, str] = {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = LocalCluster(tmp_path_factory.mktemp("dr-primary"), size=1)
    s = LocalCluster(tmp_path_factory.mktemp("dr-secondary"), size=1)
    try:
        p.up()
        s.up()
        client(p).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        yield Pair(p, s)
    finally:
        p.stop()
        s.stop()


def write(pair: Pair, lc: LocalCluster, key: str, value: str, token: str | None = None) -> None:
    client(lc, token).secrets.kv.v2.create_or_update_secret(key, {"v": value}, mount_point=MOUNT)
    pair.acked[key] = value


def test_activate_and_stream(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    for i in range(30):
        write(pair, p, f"before-{i}", f"v{i}")
    out = client(p).write("sys/replication/dr/primary/enable")
    assert out["warnings"]
    tok = client(p).write("sys/replication/dr/primary/secondary-token", id="dr-one", ttl="10m")
    token = tok["wrap_info"]["token"]
    # the secondary's own root token still works for the activation call itself
    out = client(s).write("sys/replication/dr/secondary/enable", token=token)
    assert any("secondary" in w for w in out["warnings"])
    caught_up(p, s)
    # the activation call needs the token's one-time secret
    status, body = node(p).request("PUT", "sys/replication/internal/activate",
                                   {"id": "dr-one", "secret": "AAAA", "public_key": "x"})
    assert status == 403, body
    # the secondary serves no client requests: 472 health, Vault's error for everything else
    status, health = node(s).request("GET", "sys/health")
    assert status == 472 and health["replication_dr_mode"] == "secondary"
    status, body = node(s).request("GET", f"{MOUNT}/data/before-1", token=p.root_token)
    assert status == 400 and body["errors"] == ["path disabled in replication DR secondary mode"], body
    # writes keep streaming
    for i in range(20):
        write(pair, p, f"after-{i}", f"w{i}")
    caught_up(p, s)
    st = dr_status(p)
    assert st["mode"] == "primary" and st["known_secondaries"] == ["dr-one"]
    assert st["secondaries"][0]["connection_status"] == "connected"
    assert st["secondaries"][0]["api_address"] == node(s).addr
    sst = dr_status(s)
    assert sst["mode"] == "secondary" and sst["secondary_id"] == "dr-one" and sst["primaries"]


def test_operation_token_and_merkle_check(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    # the secondary's own unseal keys are not the primary's: they cannot make a token
    n = node(s)
    status, start = n.request("PUT", "sys/replication/dr/secondary/generate-operation-token/attempt", {})
    assert status == 200
    status, body = n.request("PUT", "sys/replication/dr/secondary/generate-operation-token/update",
                             {"key": s.init.keys[0] if s.init else "", "nonce": start["nonce"]})
    status, body = n.request("PUT", "sys/replication/dr/secondary/generate-operation-token/update",
                             {"key": s.init.keys[1] if s.init else "", "nonce": start["nonce"]})
    assert status == 400, body
    n.request("DELETE", "sys/replication/dr/secondary/generate-operation-token/attempt")
    assert p.init is not None
    op = operation_token(s, p.init.keys)
    status, body = n.request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": "wrong"})
    assert status == 403, body
    status, body = n.request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op})
    assert status == 200 and body["data"]["equal"] is True, body
    assert body["data"]["merkle_corruption_report"]["corrupted_root"] is False

    # status shows the same merkle_root on both sides once both are idle at the same point
    def same_root() -> str | None:
        mine, theirs = dr_status(p)["merkle_root"], dr_status(s)["merkle_root"]
        return mine if mine and mine == theirs else None

    assert len(wait_for("equal merkle roots in status", same_root, timeout=40)) == 64
    pair.op_token = op  # type: ignore[attr-defined]


def _cli(addr: str, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(VAULT_ADDR=addr, NO_COLOR="1")
    if token:
        env["VAULT_TOKEN"] = token
    return subprocess.run([vaultraft_exe(), *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_operation_token_and_status(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    addr = node(s).addr
    out = _cli(addr, "read", "-format=json", "sys/replication/dr/status")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["data"]["mode"] == "secondary"
    init = _cli(addr, "operator", "generate-root", "-dr-token", "-init", "-format=json")
    assert init.returncode == 0, init.stderr
    started = json.loads(init.stdout)
    assert p.init is not None
    last: dict[str, Any] = {}
    for key in p.init.keys[: p.threshold]:
        step = _cli(addr, "operator", "generate-root", "-dr-token", f"-nonce={started['nonce']}", "-format=json", key)
        assert step.returncode == 0, step.stderr
        last = json.loads(step.stdout)
    assert last["complete"] is True
    decoded = _cli(addr, "operator", "generate-root", "-decode=" + last["encoded_token"], "-otp=" + started["otp"])
    assert decoded.returncode == 0, decoded.stderr
    op = decoded.stdout.strip()
    check = _cli(addr, "write", "-format=json", "sys/replication/dr/secondary/merkle-check", f"dr_operation_token={op}")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["data"]["equal"] is True
    pair.op_token = op  # type: ignore[attr-defined]  # the newest token replaces the earlier one
    # reindex: a full resync, after which the copies still match
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/reindex", {"dr_operation_token": op})
    assert status == 200, body
    caught_up(p, s)
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op})
    assert status == 200 and body["data"]["equal"] is True, body


def test_promote_after_losing_the_primary(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    caught_up(p, s)
    p.kill(node(p))
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/promote",
                                   {"dr_operation_token": "not-the-token"})
    assert status == 403, body
    started = time.monotonic()
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/promote",
                                   {"dr_operation_token": pair.op_token})  # type: ignore[attr-defined]
    assert status == 200, body
    # the primary's root token and data serve clients on the promoted cluster
    promoted = client(s, p.root_token)
    wait_for("the promoted cluster to serve", lambda: node(s).request("GET", "sys/health")[0] == 200)
    write(pair, s, "on-promoted", "yes", token=p.root_token)
    print(f"promotion to first acknowledged write: {time.monotonic() - started:.2f} s")
    for key, value in pair.acked.items():
        got = promoted.secrets.kv.v2.read_secret_version(key, mount_point=MOUNT, raise_on_deleted_version=True)
        assert got["data"]["data"]["v"] == value, key
    st = dr_status(s)
    assert st["mode"] == "primary" and st["epoch"] >= 2


def test_promoted_cluster_unseals_with_the_primary_keys(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    n = node(s)
    s.restart(n, unseal=False)
    assert p.init is not None
    for key in p.init.keys[: p.threshold]:
        status, body = n.request("PUT", "sys/unseal", {"key": key})
        assert status == 200, body
    assert body["sealed"] is False
    wait_for("the restarted primary to be active", lambda: n.request("GET", "sys/health")[0] == 200)
    got = client(s, p.root_token).secrets.kv.v2.read_secret_version("on-promoted", mount_point=MOUNT,
                                                                    raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "yes"


def test_fail_back(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    n = node(p)
    p.restart(n)  # the old primary comes back still believing it is the primary
    wait_for("the old primary to be active", lambda: n.request("GET", "sys/health")[0] == 200)
    client(p).write("sys/replication/dr/primary/demote")
    wait_for("the demoted primary to answer 472", lambda: n.request("GET", "sys/health")[0] == 472)
    tok = client(s, p.root_token).write("sys/replication/dr/primary/secondary-token", id="old-primary")
    assert p.init is not None
    op = operation_token(p, p.init.keys)
    status, body = n.request("PUT", "sys/replication/dr/secondary/update-primary",
                             {"dr_operation_token": op, "token": tok["wrap_info"]["token"]})
    assert status == 200, body
    caught_up(s, p)
    write(pair, s, "after-fail-back", "1", token=p.root_token)
    caught_up(s, p)
    status, body = n.request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op})
    assert status == 200 and body["data"]["equal"] is True, body
