"""Performance replication between two single-node clusters of real processes (hvac).

The secondary receives the primary's replicated state (mounts, secrets, policies) but not its
local state (tokens, local mounts); it keeps tokens of its own, serves reads from its copy, and
forwards writes of replicated state to the primary transparently, returning only once the
change has arrived back on it (so a client reads its own write from the secondary).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hvac
import pytest

from cluster.local import LocalCluster
from tests.integration.dr_helpers import client, node, wait_for

pytestmark = pytest.mark.xdist_group("test_performance_replication")


def perf_status(lc: LocalCluster) -> dict[str, Any]:
    status, body = node(lc).request("GET", "sys/replication/performance/status")
    assert status == 200, body
    return dict(body["data"])


def caught_up(p: LocalCluster, s: LocalCluster) -> None:
    want = perf_status(p)["last_wal"]
    wait_for("the performance secondary to catch up",
             lambda: (st := perf_status(s)).get("state") == "stream-wals" and st["last_remote_wal"] >= want)


def generate_root(lc: LocalCluster, keys: list[str]) -> str:
    n = node(lc)
    status, start = n.request("PUT", "sys/generate-root/attempt", {})
    assert status == 200, start
    done: dict[str, Any] = {}
    for key in keys[: start["required"]]:
        status, done = n.request("PUT", "sys/generate-root/update", {"key": key, "nonce": start["nonce"]})
        assert status == 200, done
    status, decoded = n.request("PUT", "sys/decode-token", {"encoded_token": done["encoded_token"], "otp": start["otp"]})
    assert status == 200, decoded
    return str(decoded["data"]["token"])


class Pair:
    def __init__(self, p: LocalCluster, s: LocalCluster) -> None:
        self.primary, self.secondary = p, s
        self.secondary_root = ""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = LocalCluster(tmp_path_factory.mktemp("perf-primary"), size=1)
    s = LocalCluster(tmp_path_factory.mktemp("perf-secondary"), size=1)
    try:
        p.up()
        s.up()
        yield Pair(p, s)
    finally:
        p.stop()
        s.stop()


def test_activation_ships_replicated_state_only(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    pc = client(p)
    pc.sys.enable_secrets_engine("kv", path="shared", options={"version": "2"})
    pc.sys.enable_secrets_engine("kv", path="primary-local", options={"version": "1"}, local=True)
    pc.secrets.kv.v2.create_or_update_secret("app", {"v": "from-primary"}, mount_point="shared")
    pc.write("primary-local/only-here", v="local")
    pc.sys.create_or_update_policy("shared-rw", 'path "shared/*" { capabilities = ["create", "read", "update", "list"] }')
    out = pc.write("sys/replication/performance/primary/enable")
    assert out["warnings"]
    tok = pc.write("sys/replication/performance/primary/secondary-token", id="perf-one")["wrap_info"]["token"]
    client(s).write("sys/replication/performance/secondary/enable", token=tok)
    caught_up(p, s)
    assert p.init is not None
    # the secondary's old tokens are gone; a root token of its own comes from the primary's keys
    status, _ = node(s).request("GET", "sys/mounts", token=s.root_token)
    assert status == 403
    pair.secondary_root = generate_root(s, p.init.keys)
    sc = hvac.Client(url=node(s).addr, token=pair.secondary_root, timeout=30)
    got = sc.secrets.kv.v2.read_secret_version("app", mount_point="shared", raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "from-primary"
    mounts = sc.sys.list_mounted_secrets_engines()["data"]
    assert "shared/" in mounts and "primary-local/" not in mounts
    # the primary's root token is local to the primary, and the secondary's to the secondary
    status, _ = node(s).request("GET", "sys/mounts", token=p.root_token)
    assert status == 403
    status, _ = node(p).request("GET", "sys/mounts", token=pair.secondary_root)
    assert status == 403
    status, health = node(s).request("GET", "sys/health")
    assert status == 200 and health["replication_performance_mode"] == "secondary"
    st = perf_status(p)
    assert st["mode"] == "primary" and st["known_secondaries"] == ["perf-one"]


def test_writes_are_forwarded_and_read_back_on_the_secondary(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    sc = hvac.Client(url=node(s).addr, token=pair.secondary_root, timeout=30)
    # a token made on the secondary stays there and works for forwarded writes too
    limited = sc.auth.token.create(policies=["shared-rw"], ttl="1h")["auth"]["client_token"]
    lc = hvac.Client(url=node(s).addr, token=limited, timeout=30)
    for i in range(5):
        started = time.monotonic()
        lc.secrets.kv.v2.create_or_update_secret(f"w{i}", {"v": str(i)}, mount_point="shared")
        took = time.monotonic() - started
        got = lc.secrets.kv.v2.read_secret_version(f"w{i}", mount_point="shared", raise_on_deleted_version=True)
        assert got["data"]["data"]["v"] == str(i), "read-your-writes on the secondary"
        assert took < 5
    got = client(p).secrets.kv.v2.read_secret_version("w4", mount_point="shared", raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "4"
    status, _ = node(p).request("GET", "shared/data/w1", token=limited)
    assert status == 403  # the secondary's token does not exist on the primary
    # the primary re-checks the caller's policies: a write outside them is refused
    with pytest.raises(hvac.exceptions.Forbidden):
        lc.sys.create_or_update_policy("sneaky", 'path "*" { capabilities = ["sudo"] }')
    # a policy written through the secondary lands on the primary and comes back
    sc.sys.create_or_update_policy("via-secondary", 'path "shared/data/x" { capabilities = ["read"] }')
    assert "via-secondary" in client(p).sys.list_policies()["data"]["policies"]
    assert "via-secondary" in sc.sys.list_policies()["data"]["policies"]


def test_local_mounts_of_the_secondary_stay_local(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    sc = hvac.Client(url=node(s).addr, token=pair.secondary_root, timeout=30)
    sc.sys.enable_secrets_engine("kv", path="secondary-local", options={"version": "1"}, local=True)
    sc.write("secondary-local/mine", v="stays")
    assert sc.read("secondary-local/mine")["data"]["v"] == "stays"
    assert "secondary-local/" not in client(p).sys.list_mounted_secrets_engines()["data"]
    # more primary writes stream in without touching the secondary's local state
    client(p).secrets.kv.v2.create_or_update_secret("later", {"v": "1"}, mount_point="shared")
    caught_up(p, s)
    assert sc.read("secondary-local/mine")["data"]["v"] == "stays"
    got = sc.secrets.kv.v2.read_secret_version("later", mount_point="shared", raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "1"


def test_paths_filter_keeps_a_mount_off_the_secondary(pair: Pair) -> None:
    p, s = pair.primary, pair.secondary
    pc = client(p)
    pc.sys.enable_secrets_engine("kv", path="primary-only", options={"version": "1"})
    pc.write("primary-only/secret", v="not-for-secondary")
    out = pc.write("sys/replication/performance/primary/paths-filter/perf-one", mode="deny", paths=["primary-only/"])
    assert out["data"] == {"mode": "deny", "paths": ["primary-only/"]}
    assert pc.read("sys/replication/performance/primary/paths-filter/perf-one")["data"]["mode"] == "deny"
    pc.secrets.kv.v2.create_or_update_secret("after-filter", {"v": "yes"}, mount_point="shared")
    pc.write("primary-only/secret2", v="not-either")
    caught_up(p, s)
    sc = hvac.Client(url=node(s).addr, token=pair.secondary_root, timeout=30)
    got = sc.secrets.kv.v2.read_secret_version("after-filter", mount_point="shared", raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "yes"
    for key in ("secret", "secret2"):
        status, _ = node(s).request("GET", f"primary-only/{key}", token=pair.secondary_root)
        assert status == 404, key
    # the secondary's local state survived the resync the new filter caused
    assert sc.read("secondary-local/mine")["data"]["v"] == "stays"
    status, body = node(p).request("PUT", "sys/replication/performance/primary/paths-filter/perf-one",
                                   {"mode": "sideways", "paths": ["x/"]}, token=p.root_token)
    assert status == 400 and "allow" in body["errors"][0], body
