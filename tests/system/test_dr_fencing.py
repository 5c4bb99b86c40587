"""Fenced automatic DR promotion: never two clusters acknowledging writes at once.

A witness process, a single-node primary and a single-node DR secondary, both configured
with ``auto_promote`` and a short ``failover_timeout``. The primary's links to the witness and
to its secondary go through fault proxies (``cluster/faultproxy.py``), so the test can cut
the primary off while clients still reach its API. Under a steady write load against both
clusters the history must show every write the old primary acknowledged completing before
the first write the promoted cluster acknowledged was even sent; the old primary then learns
the newer epoch from the witness and demotes itself. A second drill pauses the new primary
(SIGSTOP) with the roles reversed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.faultproxy import FaultProxy
from cluster.local import LocalCluster
from cluster.node import free_port, vaultraft_exe
from tests.integration.dr_helpers import MOUNT, client, dr_status, node, operation_token, wait_for

pytestmark = pytest.mark.xdist_group("test_dr_fencing")

FAILOVER = 4.0


@dataclass
class Site:
    cluster: LocalCluster
    to_witness: FaultProxy | None = None
    to_replication: FaultProxy | None = None


@dataclass
class World:
    witness: subprocess.Popen[bytes]
    a: Site
    b: Site
    keys: list[str] = field(default_factory=list)
    root: str = ""
    threshold: int = 2


def _stanza(witness_addr: str, bundle: Path) -> str:
    return (f'replication {{\n  auto_promote = true\n  failover_timeout = "{int(FAILOVER)}s"\n'
            f'  witness_address = "{witness_addr}"\n  witness_tls_bundle = "{bundle}"\n}}\n')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    wdir = tmp_path_factory.mktemp("witness")
    data = wdir / "data"
    for name in ("site-a", "site-b"):
        subprocess.run([vaultraft_exe(), "witness", "issue", f"-data-dir={data}", f"-name={name}",
                        f"-out={wdir / (name + '.pem')}"], check=True, capture_output=True)
    wport = free_port()
    log = open(wdir / "witness.log", "ab")
    witness = subprocess.Popen([vaultraft_exe(), "witness", f"-data-dir={data}", f"-listen=127.0.0.1:{wport}",
                                "-max-lease=10"], stdout=log, stderr=subprocess.STDOUT)
    a = LocalCluster(tmp_path_factory.mktemp("fence-a"), size=1)
    b = LocalCluster(tmp_path_factory.mktemp("fence-b"), size=1)
    sites = {"a": Site(a), "b": Site(b)}
    for name, site in sites.items():
        n = site.cluster.nodes[0]
        site.to_witness = FaultProxy("127.0.0.1", wport).start()
        site.to_replication = FaultProxy("127.0.0.1", n.repl_port).start()
        n.extra_config = _stanza(site.to_witness.address, wdir / f"site-{name}.pem")
    try:
        a.up()
        b.up()
        assert a.init is not None
        yield World(witness, sites["a"], sites["b"], a.init.keys, a.root_token, a.threshold)
    finally:
        a.stop()
        b.stop()
        for site in sites.values():
            for p in (site.to_witness, site.to_replication):
                if p is not None:
                    p.stop()
        witness.terminate()
        witness.wait(10)


def put(lc: LocalCluster, root: str, key: str) -> int:
    try:
        status, _ = node(lc).request("POST", f"{MOUNT}/data/{key}", {"data": {"v": key}}, token=root)
    except OSError:
        return 0
    return status


@dataclass
class Load:
    """Writers against both clusters, recording (invoke, complete) of every 2xx."""

    world: World
    acks: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"a": [], "b": []})
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, name: str, lc: LocalCluster) -> None:
        i = 0
        while not self.stop.is_set():
            invoke = time.monotonic()
            status = put(lc, self.world.root, f"{name}-{i}")
            if status in (200, 204):
                self.acks[name].append((invoke, time.monotonic()))
            i += 1
            time.sleep(0.01)

    def __enter__(self) -> "Load":
        self.threads = [threading.Thread(target=self.run, args=(n, s.cluster))
                        for n, s in (("a", self.world.a), ("b", self.world.b))]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def assert_no_overlap(old: list[tuple[float, float]], new: list[tuple[float, float]]) -> float:
    """Every ack of the old primary completed before the new primary's first ack was sent;
    returns that gap in seconds."""
    assert old and new, (len(old), len(new))
    last_old = max(c for _, c in old)
    first_new = min(i for i, _ in new)
    assert last_old < first_new, f"split brain: old primary acknowledged at {last_old}, new at {first_new}"
    return first_new - last_old


def test_partitioned_primary_stops_before_the_secondary_promotes(world: World, measure) -> None:  # type: ignore[no-untyped-def]
    a, b = world.a, world.b
    client(a.cluster, world.root).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    assert a.to_replication is not None and a.to_witness is not None
    client(a.cluster, world.root).write("sys/replication/dr/primary/enable",
                                        primary_cluster_addr=f"https://{a.to_replication.address}")
    tok = client(a.cluster, world.root).write("sys/replication/dr/primary/secondary-token", id="site-b")
    client(b.cluster).write("sys/replication/dr/secondary/enable", token=tok["wrap_info"]["token"])
    wait_for("site b streaming", lambda: dr_status(b.cluster).get("state") == "stream-wals", timeout=60)
    with Load(world) as load:
        wait_for("writes acknowledged by site a", lambda: len(load.acks["a"]) >= 20)
        cut_at = time.monotonic()
        a.to_witness.cut()
        a.to_replication.cut()
        wait_for("site b to promote itself and acknowledge", lambda: load.acks["b"], timeout=30)
        time.sleep(1.0)
    gap = assert_no_overlap(load.acks["a"], load.acks["b"])
    stopped = max(c for _, c in load.acks["a"]) - cut_at
    rto = min(i for i, _ in load.acks["b"]) - cut_at
    measure("fencing partition: old primary's last ack after the cut", f"{stopped:.2f} s")
    measure("fencing partition: automatic promotion RTO (cut to first ack)", f"{rto:.2f} s (gap {gap:.2f} s)")
    assert stopped < FAILOVER
    assert rto < 15
    assert dr_status(b.cluster)["mode"] == "primary" and dr_status(b.cluster)["epoch"] >= 2
    # healed, the old primary learns the newer epoch from the witness and steps down
    a.to_witness.heal()
    a.to_replication.heal()
    wait_for("the old primary to demote itself", lambda: node(a.cluster).request("GET", "sys/health")[0] == 472,
             timeout=30)
    assert put(a.cluster, world.root, "after-heal") != 200


def test_fail_back_then_paused_primary_is_fenced(world: World, measure) -> None:  # type: ignore[no-untyped-def]
    a, b = world.a, world.b
    assert b.to_replication is not None
    # fail back: a becomes b's secondary (b advertises its replication port through its proxy)
    client(b.cluster, world.root).write("sys/replication/dr/primary/disable")
    client(b.cluster, world.root).write("sys/replication/dr/primary/enable",
                                        primary_cluster_addr=f"https://{b.to_replication.address}")
    tok = client(b.cluster, world.root).write("sys/replication/dr/primary/secondary-token", id="site-a")
    op = operation_token(a.cluster, world.keys)
    status, body = node(a.cluster).request("PUT", "sys/replication/dr/secondary/update-primary",
                                           {"dr_operation_token": op, "token": tok["wrap_info"]["token"]})
    assert status == 200, body
    wait_for("site a streaming from b", lambda: dr_status(a.cluster).get("state") == "stream-wals", timeout=60)
    with Load(world) as load:
        wait_for("writes acknowledged by site b", lambda: len(load.acks["b"]) >= 20)
        paused_at = time.monotonic()
        b.cluster.pause(b.cluster.nodes[0])
        try:
            wait_for("site a to promote itself and acknowledge", lambda: load.acks["a"], timeout=30)
        finally:
            b.cluster.resume(b.cluster.nodes[0])
        time.sleep(2.0)  # requests that were in flight on b during the pause complete (or fail) now
    gap = assert_no_overlap(load.acks["b"], load.acks["a"])
    rto = min(i for i, _ in load.acks["a"]) - paused_at
    measure("fencing pause: automatic promotion RTO (SIGSTOP to first ack)", f"{rto:.2f} s (gap {gap:.2f} s)")
    assert rto < 15
    wait_for("the paused primary to demote itself", lambda: node(b.cluster).request("GET", "sys/health")[0] == 472,
             timeout=30)


def test_killed_primary_is_replaced_automatically(world: World, measure) -> None:  # type: ignore[no-untyped-def]
    a, b = world.a, world.b
    assert a.to_replication is not None
    # roles now: a primary, b demoted; make b a's secondary again
    client(a.cluster, world.root).write("sys/replication/dr/primary/disable")
    client(a.cluster, world.root).write("sys/replication/dr/primary/enable",
                                        primary_cluster_addr=f"https://{a.to_replication.address}")
    tok = client(a.cluster, world.root).write("sys/replication/dr/primary/secondary-token", id="site-b-again")
    op = operation_token(b.cluster, world.keys)
    status, body = node(b.cluster).request("PUT", "sys/replication/dr/secondary/update-primary",
                                           {"dr_operation_token": op, "token": tok["wrap_info"]["token"]})
    assert status == 200, body
    wait_for("site b streaming from a", lambda: dr_status(b.cluster).get("state") == "stream-wals", timeout=60)
    with Load(world) as load:
        wait_for("writes acknowledged by site a", lambda: len(load.acks["a"]) >= 20)
        killed_at = time.monotonic()
        a.cluster.kill(a.cluster.nodes[0])
        wait_for("site b to promote itself and acknowledge", lambda: load.acks["b"], timeout=30)
    assert_no_overlap(load.acks["a"], load.acks["b"])
    rto = min(i for i, _ in load.acks["b"]) - killed_at
    measure("fencing kill -9: automatic promotion RTO (kill to first ack)", f"{rto:.2f} s")
    assert rto < 15
