"""``vaultraft operator raft ...``, ``operator step-down`` and ``operator members`` as a user
types them, against a real three-node cluster (cluster.local.LocalCluster, one per module).

Commands run as subprocesses with ``VAULT_ADDR`` / ``VAULT_TOKEN`` and a private ``HOME``;
tables, messages and exit codes are Vault's.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.local import ClusterNode, LocalCluster
from cluster.node import free_port, vaultraft_exe

# one module-scoped server per module: keep the module on one xdist worker
pytestmark = pytest.mark.xdist_group("test_cli_raft")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    lc = LocalCluster(tmp_path_factory.mktemp("cli-raft-cluster"), size=3)
    try:
        lc.up()
        yield lc
    finally:
        lc.stop()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-raft-home")


def run(home: Path, addr: str, *args: str, token: str | None = None) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    env.update(HOME=str(home), VAULT_ADDR=addr)
    if token:
        env["VAULT_TOKEN"] = token
    proc = subprocess.run([vaultraft_exe(), *args], capture_output=True, text=True, env=env, timeout=60)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rows(table: str) -> list[list[str]]:
    """The body rows of a columnized table (header and dashes dropped)."""
    lines = [ln for ln in table.splitlines() if ln.strip()]
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[2:]]


def standby(lc: LocalCluster) -> ClusterNode:
    act = lc.wait_active()
    return next(n for n in lc.nodes if n is not act)


def test_list_peers_members_and_autopilot_tables(cluster: LocalCluster, home: Path) -> None:
    lc = cluster
    addr = standby(lc).addr  # a standby forwards to the active node
    r = run(home, addr, "operator", "raft", "list-peers", token=lc.root_token)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert re.fullmatch(r"Node\s+Address\s+State\s+Voter", lines[0])
    assert re.fullmatch(r"----\s+-------\s+-----\s+-----", lines[1])
    peers = rows(r.out)
    assert len(peers) == 3
    assert sorted(p[2] for p in peers) == ["follower", "follower", "leader"]
    assert {p[3] for p in peers} == {"true"}
    assert {p[1] for p in peers} == {f"127.0.0.1:{n.cluster_port}" for n in lc.nodes}
    assert {p[0] for p in peers} == {f"node-{n.port}" for n in lc.nodes}

    j = run(home, addr, "operator", "raft", "list-peers", "-format=json", token=lc.root_token)
    assert j.code == 0 and '"servers"' in j.out and '"request_id"' in j.out

    m = run(home, addr, "operator", "members", token=lc.root_token)
    assert m.code == 0, m.err
    head = m.out.splitlines()[0]
    assert re.fullmatch(r"Host Name\s+API Address\s+Cluster Address\s+Active Node\s+Version\s+Upgrade Version\s+"
                        r"Redundancy Zone\s+Last Echo", head)
    members = rows(m.out)
    assert len(members) == 3
    assert sorted(x[3] for x in members) == ["false", "false", "true"]
    active = next(x for x in members if x[3] == "true")
    assert active[1] == lc.wait_active().addr

    a = run(home, addr, "operator", "raft", "autopilot", "state", token=lc.root_token)
    assert a.code == 0, a.err
    assert re.search(r"^Healthy:\s+true$", a.out, re.M)
    assert re.search(r"^Failure Tolerance:\s+1$", a.out, re.M)
    assert re.search(r"^Leader:\s+node-\d+$", a.out, re.M)
    assert a.out.count("      Healthy:         true") == 3
    aj = run(home, addr, "operator", "raft", "autopilot", "state", "-format=json", token=lc.root_token)
    assert aj.code == 0 and '"failure_tolerance": 1' in aj.out

    denied = run(home, addr, "operator", "raft", "list-peers", token="bogus")
    assert denied.code == 2
    assert denied.err.startswith("Error reading the raft cluster configuration: Error making API request.")
    assert "Code: 403" in denied.err


def test_join_a_new_node_then_remove_peer_shrinks_list_peers(cluster: LocalCluster, home: Path,
                                                             tmp_path: Path) -> None:
    lc = cluster
    new = ClusterNode(tmp_path / "node3", port=free_port(), cluster_port=free_port(), name="node3")
    new.start()
    try:
        r = run(home, new.addr, "operator", "raft", "join", lc.wait_active().addr)
        assert r.code == 0, r.err
        assert re.fullmatch(r"Key\s+Value\n---\s+-----\nJoined\s+true\n", r.out)
        lc.unseal(new)
        new.wait_health({429, 473}, timeout=30)
        peers = rows(run(home, lc.nodes[0].addr, "operator", "raft", "list-peers", token=lc.root_token).out)
        assert len(peers) == 4 and f"node-{new.port}" in {p[0] for p in peers}

        bad = run(home, lc.nodes[0].addr, "operator", "raft", "remove-peer", token=lc.root_token)
        assert bad.code == 1 and bad.err == "Incorrect arguments (expected 1, got 0)\n"
        gone = run(home, lc.nodes[0].addr, "operator", "raft", "remove-peer", f"node-{new.port}", token=lc.root_token)
        assert gone.code == 0, gone.err
        assert gone.out == "Peer removed successfully!\n"
        peers = rows(run(home, lc.nodes[0].addr, "operator", "raft", "list-peers", token=lc.root_token).out)
        assert len(peers) == 3 and f"node-{new.port}" not in {p[0] for p in peers}

        # the removed node was told: it sealed itself and says why; unsealing it again is refused
        code, health = new.request("GET", "sys/health")
        assert code == 503 and health["sealed"] is True and health["removed_from_cluster"] is True
        assert lc.health(lc.nodes[0]) in (200, 429, 473)
        assert lc.nodes[0].request("GET", "sys/health")[1]["removed_from_cluster"] is False
        refused = None
        for key in lc.load_init().keys:
            code, refused = new.request("PUT", "sys/unseal", {"key": key})
            if code != 200:
                break
        assert code == 400 and "removed from the raft cluster" in refused["errors"][0]
        # a forged or replayed notice is refused by a member
        forged = lc.nodes[0].request("PUT", "sys/storage/raft/bootstrap/removed",
                                     {"address": f"127.0.0.1:{lc.nodes[0].cluster_port}", "index": 10**9,
                                      "signature": "AAAA"})
        assert forged[0] == 400
    finally:
        new.stop()
    for n in lc.nodes:
        n.wait_health({200, 429, 473}, timeout=30)


def test_snapshot_save_and_restore(cluster: LocalCluster, home: Path, tmp_path: Path) -> None:
    lc = cluster
    act = lc.wait_active()
    tok = lc.root_token
    assert act.request("POST", "sys/mounts/clikv", {"type": "kv", "options": {"version": "1"}}, token=tok)[0] == 204
    assert act.request("PUT", "clikv/k", {"v": "before"}, token=tok)[0] == 204
    snap = tmp_path / "raft.snap"
    r = run(home, standby(lc).addr, "operator", "raft", "snapshot", "save", str(snap), token=tok)
    assert r.code == 0 and r.out == "" and r.err == "", r
    assert stat.S_IMODE(snap.stat().st_mode) == 0o600
    assert snap.read_bytes().startswith(b"VRSNAP01")

    assert lc.wait_active().request("PUT", "clikv/k", {"v": "after"}, token=tok)[0] == 204
    r = run(home, lc.nodes[0].addr, "operator", "raft", "snapshot", "restore", str(snap), token=tok)
    assert r.code == 0 and r.out == "", r
    code, body = lc.wait_active().request("GET", "clikv/k", token=tok)
    assert code == 200 and body["data"]["v"] == "before"

    # -force with this cluster's own snapshot: restored, and nothing seals (the keys still fit)
    assert lc.wait_active().request("PUT", "clikv/k", {"v": "after again"}, token=tok)[0] == 204
    r = run(home, lc.nodes[1].addr, "operator", "raft", "snapshot", "restore", "-force", str(snap), token=tok)
    assert r.code == 0, r
    assert lc.wait_active().request("GET", "clikv/k", token=tok)[1]["data"]["v"] == "before"
    assert all(lc.health(n) in (200, 429, 473) for n in lc.nodes)

    missing = run(home, act.addr, "operator", "raft", "snapshot", "restore", str(tmp_path / "nope.snap"), token=tok)
    assert missing.code == 2
    assert missing.err == f"Error opening policy file: open {tmp_path / 'nope.snap'}: no such file or directory\n"
    denied = run(home, act.addr, "operator", "raft", "snapshot", "save", str(tmp_path / "x.snap"), token="bogus")
    assert denied.code == 2 and denied.err.startswith("Error taking the snapshot: Error making API request.")
    assert not (tmp_path / "x.snap").exists()
    garbage = tmp_path / "garbage.snap"
    garbage.write_bytes(b"not a snapshot at all")
    bad = run(home, act.addr, "operator", "raft", "snapshot", "restore", str(garbage), token=tok)
    assert bad.code == 2 and "Error installing the snapshot" in bad.err and "invalid snapshot" in bad.err


def test_step_down_moves_the_active_role(cluster: LocalCluster, home: Path) -> None:
    lc = cluster
    old = lc.wait_active()
    r = run(home, old.addr, "operator", "step-down", token=lc.root_token)
    assert r.code == 0, r.err
    assert r.out == f"Success! Stepped down: {old.addr}\n"
    started = time.monotonic()
    new = lc.wait_active(timeout=10, exclude=old)
    assert new is not old and time.monotonic() - started < 5
    assert run(home, old.addr, "operator", "step-down", "extra", token=lc.root_token).code == 1
