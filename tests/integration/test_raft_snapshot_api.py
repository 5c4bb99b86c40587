"""sys/storage/raft/snapshot against a real three-node cluster (cluster.local.LocalCluster).

The first test drives the pieces in-process (one RaftPhysical node): the restore plan,
the file checks and the write gate. One cluster of real processes serves the rest; its nodes are performance standbys, so a read sent to a
standby is answered from that node's own copy of the store: "the old state is back on
every node" is checked on each node, not only on the active one. The last test force-
restores a snapshot of another (single-node) cluster, after which the module's cluster
holds the other cluster's data and keys.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from cluster.local import ClusterNode, InitOutput, LocalCluster
from cluster.node import free_port
from vaultraft.raft.node import RaftError, RaftPhysical, RaftTuning
from vaultraft.raft.snapshot import (
    SnapshotData,
    SnapshotError,
    extract_data,
    plan_restore,
    verify_snapshot,
    write_snapshot,
)
from vaultraft.raft.tls import ClusterCA
from vaultraft.raft.transport import make_transport_class, node_id_is_address
from vaultraft.storage import Batch, Op
from vaultraft.storage.lmdb_store import LMDBStore

# one module-scoped server per module: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("test_raft_snapshot_api")

MOUNT = "snapkv"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    lc = LocalCluster(tmp_path_factory.mktemp("snapshot-cluster"), size=3)
    for n in lc.nodes:
        n.storage_extra = "performance_standby = true"
    try:
        lc.up()
        client(lc, lc.wait_active()).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        yield lc
    finally:
        lc.stop()


def client(lc: LocalCluster, node: ClusterNode, token: str | None = None) -> hvac.Client:
    return hvac.Client(url=node.addr, token=token or lc.root_token, timeout=30)


def standby(lc: LocalCluster) -> ClusterNode:
    act = lc.wait_active()
    return next(n for n in lc.nodes if n is not act)


def put(lc: LocalCluster, key: str, value: str) -> None:
    client(lc, lc.wait_active()).secrets.kv.v2.create_or_update_secret(key, {"v": value}, mount_point=MOUNT)


def read_local(lc: LocalCluster, node: ClusterNode, key: str, token: str | None = None) -> str | None:
    """``key`` as ``node`` itself serves it (never forwarded), or None when absent."""
    status, body = node.request("GET", f"{MOUNT}/data/{key}", token=token or lc.root_token,
                                headers={"X-Vault-No-Request-Forwarding": "true"})
    if status == 404:
        return None
    assert status == 200, (node.name, status, body)
    return str(body["data"]["data"]["v"])


def caught_up(lc: LocalCluster) -> None:
    for n in lc.nodes:
        lc.wait_caught_up(n, timeout=20)


def raw(node: ClusterNode, method: str, path: str, token: str, body: bytes | None = None) -> requests.Response:
    return requests.request(method, f"{node.addr}/v1/{path}", data=body, headers={"X-Vault-Token": token}, timeout=60)


async def test_restore_plan_and_write_gate_in_process(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    store = LMDBStore(str(tmp_path / "store"), map_size=1 << 26)
    phys = RaftPhysical(store, data_dir=str(tmp_path / "node"), self_addr=addr, node_id="n1",
                        tuning=RaftTuning(election_min=0.2, election_max=0.5, heartbeat=0.03, commit_timeout=5.0))
    cert = ClusterCA.create("snapshot-test").issue(addr)
    await phys.start_consensus(make_transport_class(cert, expected_peer_id=node_id_is_address), peers=[])
    try:
        for _ in range(200):
            if phys.has_lease():
                break
            await asyncio.sleep(0.02)
        big = bytes(range(256)) * 3000  # 768 KiB: two of these never share a batch
        await phys.apply(Batch((Op.put("a", b"old"), Op.put("c", b"gone later"), Op.put("big1", big),
                                Op.put("big2", big), Op.put("keep/x", b"snapshot's"), Op.put("topo/n", b"old"),
                                Op.put("same", b"unchanged"))))
        snap = str(tmp_path / "s.snap")
        write_snapshot(snap, store, {"kind": "api"})
        assert verify_snapshot(snap)["kind"] == "api"
        await phys.apply(Batch((Op.put("a", b"new"), Op.delete("c"), Op.put("d", b"added"), Op.put("big1", b"small"),
                                Op.delete("big2"), Op.put("keep/x", b"live"), Op.put("topo/n", b"live"))))

        assert extract_data(snap, str(tmp_path / "x"))["applied_index"] > 0
        data = SnapshotData(str(tmp_path / "x"))
        assert data.get("a") == b"old"
        await phys.begin_exclusive("restore running")
        with pytest.raises(RaftError, match="restore running"):
            await phys.apply(Batch((Op.put("z", b"refused"),)))
        plan = list(plan_restore(data, store, keep=lambda k: k.startswith("keep/"),
                                 exclude=lambda k: k.startswith("topo/"), max_bytes=1 << 20))
        assert len(plan) == 2  # big1 and big2 cannot share one entry
        assert "same" not in {o.key for b in plan for o in b.ops}  # unchanged keys are not sent
        assert all(sum(len(o.key) + len(o.value or b"") for o in b.ops) <= 1 << 20 for b in plan)
        for b in plan:
            assert (await phys.apply_exclusive(b)).error is None
        await phys.end_exclusive()
        assert (await phys.apply(Batch((Op.put("z", b"accepted again"),)))).error is None
        data.close()
        assert dict(store.all_items()) == {"a": b"old", "big1": big, "big2": big, "c": b"gone later",
                                           "keep/x": b"live", "same": b"unchanged", "z": b"accepted again"}

        raw = bytearray(Path(snap).read_bytes())
        raw[-10] ^= 0xFF
        Path(snap).write_bytes(bytes(raw))
        with pytest.raises(SnapshotError, match="checksum"):
            verify_snapshot(snap)
    finally:
        await phys.close()


def test_save_write_restore_shows_the_old_state_on_every_node(cluster: LocalCluster) -> None:
    lc = cluster
    put(lc, "a", "old")
    put(lc, "kept", "same")
    put(lc, "canary", "plaintext-canary")
    # saved through a standby: the request is forwarded, the file streamed back through it
    resp = client(lc, standby(lc)).sys.take_raft_snapshot()
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/octet-stream"
    snap = resp.content
    assert snap.startswith(b"VRSNAP01") and len(snap) > 1000
    assert b"plaintext-canary" not in snap  # below the barrier: ciphertext only

    put(lc, "a", "new")
    put(lc, "b", "added later")
    c = client(lc, lc.wait_active())
    c.sys.create_or_update_policy("later", 'path "x/*" { capabilities = ["read"] }')
    c.sys.enable_secrets_engine("kv", path="later", options={"version": "1"})
    caught_up(lc)
    assert {read_local(lc, n, "a") for n in lc.nodes} == {"new"}

    started = time.monotonic()
    restored = c.sys.restore_raft_snapshot(snap)
    assert restored.status_code == 204
    assert time.monotonic() - started < 10
    caught_up(lc)
    for n in lc.nodes:
        assert read_local(lc, n, "a") == "old", n.name
        assert read_local(lc, n, "kept") == "same", n.name
        assert read_local(lc, n, "b") is None, n.name
        assert client(lc, n).sys.list_mounted_secrets_engines()["data"].get("later/") is None, n.name
    assert "later" not in client(lc, lc.wait_active()).sys.list_policies()["data"]["policies"]
    # the cluster keeps working: writes are accepted again and replicate
    put(lc, "after", "restore")
    caught_up(lc)
    assert {read_local(lc, n, "after") for n in lc.nodes} == {"restore"}
    peers = client(lc, lc.wait_active()).sys.read_raft_config()["data"]["config"]["servers"]
    assert len(peers) == 3 and all(not p["node_id"].startswith("127.0.0.1:") for p in peers)


def test_snapshot_endpoints_need_sudo_and_a_snapshot(cluster: LocalCluster) -> None:
    lc = cluster
    act = lc.wait_active()
    c = client(lc, act)
    c.sys.create_or_update_policy("snap-read", 'path "sys/storage/raft/snapshot" { capabilities = ["read", "update"] }')
    weak = c.auth.token.create(policies=["snap-read"], ttl="10m")["auth"]["client_token"]
    assert raw(act, "GET", "sys/storage/raft/snapshot", weak).status_code == 403
    assert raw(act, "POST", "sys/storage/raft/snapshot", weak, b"VRSNAP01garbage").status_code == 403
    assert raw(act, "GET", "sys/storage/raft/snapshot", "not-a-token").status_code == 403
    bad = raw(act, "POST", "sys/storage/raft/snapshot", lc.root_token, b"VRSNAP01 not really a snapshot")
    assert bad.status_code == 400 and "invalid snapshot" in bad.json()["errors"][0]
    empty = raw(act, "POST", "sys/storage/raft/snapshot", lc.root_token, b"")
    assert empty.status_code == 400
    # a snapshot whose data was altered fails its checksum and changes nothing
    put(lc, "after", "restore")
    good = raw(act, "GET", "sys/storage/raft/snapshot", lc.root_token).content
    tampered = good[:-100] + bytes(b ^ 0xFF for b in good[-100:])
    resp = raw(act, "POST", "sys/storage/raft/snapshot", lc.root_token, tampered)
    assert resp.status_code == 400 and "checksum" in resp.json()["errors"][0]
    assert raw(act, "GET", "sys/storage/raft/snapshot-force", lc.root_token).status_code == 405
    assert read_local(lc, act, "after") == "restore"


def _sealed(node: ClusterNode) -> bool:
    code, body = node.request("GET", "sys/seal-status", timeout=5)
    return code == 200 and bool(body["sealed"])


def test_foreign_snapshot_needs_force_then_the_other_clusters_keys(
        cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    lc = cluster
    other = LocalCluster(tmp_path_factory.mktemp("foreign-cluster"), size=1, shares=1, threshold=1)
    try:
        other.up()
        o = other.nodes[0]
        oc = client(other, o)
        oc.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        oc.secrets.kv.v2.create_or_update_secret("theirs", {"v": "foreign data"}, mount_point=MOUNT)
        foreign = oc.sys.take_raft_snapshot().content
    finally:
        other.stop()
    assert other.init is not None
    foreign_keys = InitOutput(other.init.keys, other.init.root_token)

    act = lc.wait_active()
    put(lc, "after", "restore")  # this test's own marker (tests may run on different workers)
    refused = raw(act, "POST", "sys/storage/raft/snapshot", lc.root_token, foreign)
    assert refused.status_code == 400
    assert refused.json()["errors"] == [("could not verify hash file, possibly the snapshot is using a different set "
                                         "of unseal keys; use the snapshot-force API to bypass this check")]
    assert read_local(lc, act, "after") == "restore"  # nothing changed

    forced = raw(standby(lc), "POST", "sys/storage/raft/snapshot-force", lc.root_token, foreign)
    assert forced.status_code == 204
    end = time.monotonic() + 15
    while not all(_sealed(n) for n in lc.nodes):
        assert time.monotonic() < end, [n.name for n in lc.nodes if not _sealed(n)]
        time.sleep(0.1)

    # this cluster's own keys no longer open the store (its seal config is the other's: 1 of 1)
    own = lc.init
    assert own is not None
    code, status = lc.nodes[0].request("GET", "sys/seal-status")
    assert (status["t"], status["n"]) == (1, 1)
    code, body = lc.nodes[0].request("PUT", "sys/unseal", {"key": own.keys[0]}, timeout=30)
    assert code == 400 and "invalid key" in body["errors"][0], body

    lc.init = foreign_keys  # the module's cluster now is the other cluster, keys and all
    lc.threshold = 1
    lc.unseal_all()
    lc.wait_active(timeout=30)
    for n in lc.nodes:
        n.wait_health({200, 429, 473}, timeout=30)
    caught_up(lc)
    for n in lc.nodes:
        assert read_local(lc, n, "theirs", token=foreign_keys.root_token) == "foreign data", n.name
        assert read_local(lc, n, "a", token=foreign_keys.root_token) is None
    old_root = raw(lc.wait_active(), "GET", f"{MOUNT}/data/theirs", own.root_token)
    assert old_root.status_code == 403
    names = {s["node_id"] for s in client(lc, lc.wait_active(), foreign_keys.root_token)
             .sys.read_raft_config()["data"]["config"]["servers"]}
    assert len(names) == 3 and not any(name.startswith("127.0.0.1:") for name in names)
