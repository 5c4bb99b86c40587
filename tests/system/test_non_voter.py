"""A non-voter (``operator raft join -non-voter``) follows the log, never votes, never
counts for a quorum and, once removed, is told so and stops — with real processes.

Two voters and one non-voter: if the non-voter counted, losing a voter would leave a
quorum of two; it does not, so the cluster has no active node until the voter returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import hvac
import pytest

from cluster.local import ClusterNode, LocalCluster
from cluster.node import free_port, vaultraft_exe

pytestmark = pytest.mark.xdist_group("test_non_voter")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, ClusterNode]]:
    root = tmp_path_factory.mktemp("non-voter")
    lc = LocalCluster(root / "cluster", size=2)
    nv = ClusterNode(root / "nv", port=free_port(), cluster_port=free_port(), name="nv")
    try:
        lc.up()
        nv.start()
        yield lc, nv
    finally:
        nv.stop()
        lc.stop()


def cli(lc: LocalCluster, addr: str, *args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env["VAULT_ADDR"] = addr
    if token:
        env["VAULT_TOKEN"] = lc.root_token
    return subprocess.run([vaultraft_exe(), *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def write_some(lc: LocalCluster, prefix: str, n: int) -> None:
    client = hvac.Client(url=lc.wait_active().addr, token=lc.root_token)
    for i in range(n):
        client.secrets.kv.v2.create_or_update_secret(path=f"{prefix}/{i}", secret={"i": str(i)}, mount_point="secret")


def test_non_voter_follows_never_votes_and_stops_when_removed(setup: tuple[LocalCluster, ClusterNode]) -> None:
    lc, nv = setup
    client = hvac.Client(url=lc.wait_active().addr, token=lc.root_token)
    client.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})

    joined = cli(lc, nv.addr, "operator", "raft", "join", "-non-voter", lc.wait_active().addr, token=False)
    assert joined.returncode == 0, joined.stderr
    lc.unseal(nv)
    assert nv.wait_health({429, 473}, timeout=30) in (429, 473)

    # listed as a non-voter by every view of the membership
    peers = cli(lc, lc.nodes[0].addr, "operator", "raft", "list-peers", "-format=json")
    assert peers.returncode == 0, peers.stderr

    servers = {s["address"]: s for s in json.loads(peers.stdout)["data"]["config"]["servers"]}
    nv_addr = f"127.0.0.1:{nv.cluster_port}"
    assert servers[nv_addr]["voter"] is False
    assert sum(1 for s in servers.values() if s["voter"]) == 2
    state = client.adapter.get("/v1/sys/storage/raft/autopilot/state")["data"]
    assert state["non_voters"] == [f"node-{nv.port}"] and len(state["voters"]) == 2

    # it follows the log
    write_some(lc, "before", 20)
    lc.wait_caught_up(nv, timeout=20)
    assert client.secrets.kv.v2.read_secret_version(path="before/19", mount_point="secret",
                                                    raise_on_deleted_version=True)["data"]["data"] == {"i": "19"}

    # a restarted non-voter is still one, and follows again after unsealing
    lc.restart(nv)
    nv.wait_health({429, 473}, timeout=30)
    write_some(lc, "restarted", 5)
    lc.wait_caught_up(nv, timeout=20)

    # losing one of the two voters loses the quorum: the non-voter does not make up for it
    active = lc.wait_active()
    other = next(n for n in lc.nodes if n is not active)
    lc.kill(other)
    end = time.monotonic() + 8
    while time.monotonic() < end and lc.health(active) == 200:
        time.sleep(0.1)
    assert lc.health(active) != 200, "the active node kept a quorum with a non-voter"
    for _ in range(20):  # and nobody else takes the active role meanwhile
        assert lc.health(nv) != 200 and lc.health(active) != 200
        time.sleep(0.1)
    lc.restart(other)
    lc.wait_active(timeout=60)
    write_some(lc, "healed", 5)
    lc.wait_caught_up(nv, timeout=30)

    # removed: its record goes, the voters cut it off, it stops following
    gone = cli(lc, lc.wait_active().addr, "operator", "raft", "remove-peer", f"node-{nv.port}")
    assert gone.returncode == 0, gone.stderr
    peers_after = cli(lc, lc.nodes[0].addr, "operator", "raft", "list-peers", "-format=json")
    addrs = {s["address"] for s in json.loads(peers_after.stdout)["data"]["config"]["servers"]}
    assert nv_addr not in addrs
    # it was told, and stopped: sealed, out of consensus, saying why
    code, health = nv.request("GET", "sys/health")
    assert code == 503 and health["sealed"] is True and health["removed_from_cluster"] is True
    write_some(lc, "after", 10)
    assert lc.health(lc.wait_active()) == 200
