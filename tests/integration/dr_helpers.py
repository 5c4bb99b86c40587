"""Shared steps of the DR replication integration tests (real processes, hvac)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import lmdb

from cluster.local import ClusterNode, LocalCluster

MOUNT = "drkv"


def node(lc: LocalCluster) -> ClusterNode:
    """The cluster's active node (its only node for a single-node cluster)."""
    if len(lc.nodes) == 1:
        return lc.nodes[0]
    for n in lc.nodes:
        try:
            status, body = n.request("GET", "sys/leader")
        except OSError:
            continue
        if status == 200 and body.get("is_self"):
            return n
    return lc.wait_active()


def client(lc: LocalCluster, token: str | None = None) -> hvac.Client:
    return hvac.Client(url=node(lc).addr, token=token or lc.root_token, timeout=30)


def dr_status(lc: LocalCluster) -> dict[str, Any]:
    status, body = node(lc).request("GET", "sys/replication/dr/status")
    assert status == 200, body
    return dict(body["data"])


def wait_for(what: str, check: Any, timeout: float = 30.0) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def caught_up(primary: LocalCluster, secondary: LocalCluster) -> None:
    want = dr_status(primary)["last_wal"]
    wait_for("the secondary to catch up", lambda: (st := dr_status(secondary))["state"] == "stream-wals"
             and st["last_remote_wal"] >= want)


def operation_token(lc: LocalCluster, keys: list[str]) -> str:
    """Vault's DR operation token ceremony with ``keys`` (the primary's unseal keys)."""
    n = node(lc)
    status, start = n.request("PUT", "sys/replication/dr/secondary/generate-operation-token/attempt", {})
    assert status == 200 and start["started"], start
    otp, nonce = start["otp"], start["nonce"]
    done: dict[str, Any] = {}
    for key in keys[: start["required"]]:
        status, done = n.request("PUT", "sys/replication/dr/secondary/generate-operation-token/update",
                                 {"key": key, "nonce": nonce})
        assert status == 200, done
    assert done["complete"], done
    status, decoded = n.request("PUT", "sys/decode-token", {"encoded_token": done["encoded_token"], "otp": otp})
    assert status == 200, decoded
    return str(decoded["data"]["token"])


def activate(primary: LocalCluster, secondary: LocalCluster, secondary_id: str) -> None:
    """Enable ``primary`` as a DR primary (if it is not one yet) and make ``secondary`` its
    DR secondary; returns once the secondary streams and has caught up."""
    if dr_status(primary).get("mode") != "primary":
        client(primary).write("sys/replication/dr/primary/enable")
    tok = client(primary).write("sys/replication/dr/primary/secondary-token", id=secondary_id)
    client(secondary).write("sys/replication/dr/secondary/enable", token=tok["wrap_info"]["token"])
    caught_up(primary, secondary)


def unseal_with(lc: LocalCluster, keys: list[str], threshold: int) -> None:
    """Unseal every node of ``lc`` with ``keys`` (a DR secondary takes its primary's keys)."""
    for n in lc.nodes:
        for key in keys[:threshold]:
            status, body = n.request("PUT", "sys/unseal", {"key": key})
            assert status == 200, body


def fill_big(lc: LocalCluster, mount: str, count: int = 20) -> None:
    """``count`` secrets of 1 MiB each on a new kv-v2 ``mount``: a bulk sync that takes a moment."""
    c = client(lc)
    c.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    big = "x" * (1 << 20)
    for i in range(count):
        c.secrets.kv.v2.create_or_update_secret(f"big{i}", {"v": big}, mount_point=mount)


def live_keys(data_dir: Path, prefix: bytes) -> list[bytes]:
    """Keys under ``prefix`` in a node's store (a read-only LMDB reader next to the server)."""
    out: list[bytes] = []
    for mdb in Path(data_dir).rglob("data.mdb"):
        env = lmdb.open(str(mdb.parent), readonly=True, max_dbs=4, lock=False, subdir=True)
        try:
            try:
                db = env.open_db(b"data", create=False)
            except lmdb.Error:
                continue
            with env.begin(db=db) as txn:
                cur = txn.cursor()
                found = cur.set_range(prefix)
                while found and bytes(cur.key()).startswith(prefix):
                    out.append(bytes(cur.key()))
                    found = cur.next()
        finally:
            env.close()
    return out


def kill_mid_bulk_sync(primary: LocalCluster, own_data_gone: Callable[[], bool], timeout: float = 20.0) -> None:
    """Freeze the (single-node) primary as a secondary's first bulk sync runs, let it go on in
    small steps until ``own_data_gone`` (the secondary dropped its own data for the bulk sync),
    then kill it for good: the activation can never finish. The primary must hold enough data
    for its bulk sync to take a while (~20 MB)."""
    pn = primary.nodes[0]
    primary.pause(pn)
    end = time.monotonic() + timeout
    try:
        # Short steps, checked often: a secondary applies a 1 MiB chunk in a few ms now (its
        # Raft store does not fsync), so one 5 ms step could carry the rest of the bulk sync.
        while not own_data_gone():
            assert time.monotonic() < end, "the secondary never started its bulk sync"
            primary.resume(pn)
            time.sleep(0.002)
            primary.pause(pn)
            time.sleep(0.03)
    finally:
        pn.signal(signal.SIGKILL)
        pn.wait_exit(10)
