"""Synchronous DR (``replication { dr_sync = true }``): a write is acknowledged only once a
DR secondary has applied it through its own log, so promoting the secondary after a kill -9
of the primary loses no acknowledged write (RPO 0); without a secondary, writes fail with 503
instead of being acknowledged."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from cluster.local import LocalCluster
from tests.integration.dr_helpers import (
    MOUNT,
    activate,
    client,
    dr_status,
    node,
    operation_token,
    unseal_with,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("test_dr_sync")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    p = LocalCluster(tmp_path_factory.mktemp("sync-primary"), size=1)
    p.nodes[0].extra_config = 'replication {\n  dr_sync = true\n  dr_sync_timeout = "2s"\n}\n'
    s = LocalCluster(tmp_path_factory.mktemp("sync-secondary"), size=1)
    try:
        p.up()
        s.up()
        client(p).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        activate(p, s, "sync-dr")
        yield p, s
    finally:
        p.stop()
        s.stop()


def put(lc: LocalCluster, key: str, value: str) -> tuple[int, object]:
    return node(lc).request("POST", f"{MOUNT}/data/{key}", {"data": {"v": value}}, token=lc.root_token)


def test_acknowledged_only_once_the_secondary_has_it(pair: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = pair
    for i in range(10):
        status, body = put(p, f"sync-{i}", str(i))
        assert status == 200, body
        assert dr_status(s)["last_remote_wal"] >= dr_status(p)["last_wal"]
    s.kill(node(s))
    started = time.monotonic()
    status, body = put(p, "unconfirmed", "x")
    waited = time.monotonic() - started
    assert status == 503 and "dr_sync" in str(body), body
    assert 1.5 < waited < 6, waited
    s.restart(node(s), unseal=False)
    assert p.init is not None
    unseal_with(s, p.init.keys, p.threshold)
    wait_for("sync writes to be acknowledged again", lambda: put(p, "again", "y")[0] == 200, timeout=30)


def test_promotion_after_kill_loses_no_acknowledged_write(pair: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = pair
    acked: dict[str, str] = {}
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                status, _ = put(p, f"load-{i}", str(i))
            except OSError:
                return
            if status == 200:
                acked[f"load-{i}"] = str(i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    wait_for("writes under load", lambda: len(acked) >= 50)
    p.kill(node(p))
    stop.set()
    t.join(10)
    assert p.init is not None
    op = operation_token(s, p.init.keys)
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op})
    assert status == 200, body
    wait_for("the promoted cluster to serve", lambda: node(s).request("GET", "sys/health")[0] == 200)
    missing = []
    for key, value in acked.items():
        status, got = node(s).request("GET", f"{MOUNT}/data/{key}", token=p.root_token)
        if status != 200 or got["data"]["data"]["v"] != value:
            missing.append(key)
    print(f"sync mode: {len(acked)} acknowledged writes, {len(missing)} missing after promotion (RPO)")
    assert missing == []
