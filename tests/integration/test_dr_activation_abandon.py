"""A DR activation that can never finish is recoverable without wiping the secondary.

Two single-node clusters of real processes. The primary holds ~20 MB, so the secondary's
first bulk sync takes a while; the primary is frozen (SIGSTOP) in small steps until the
secondary has dropped its own data for the bulk sync, then killed for good: the activation
is stuck, and the status says so. ``dr/secondary/disable`` with an operation token generated
from the secondary's OWN unseal keys abandons it: the secondary's own data comes back (its
root token reads it) and its own keys unseal it after a restart. Then a second activation is
stuck against an unreachable primary address, and ``dr/secondary/enable`` with a token from
a working primary replaces it: the secondary activates and streams. A stuck performance
activation is abandoned the same way (``performance/secondary/disable``). While an activation
is staged, ``sys/health`` reports the cluster as a secondary of that kind, as its replication
status does.

Last, a two-node performance secondary (active node + performance standby) whose primary dies
mid bulk-sync: every node refuses client requests (503) instead of serving its half-synced
copy, the standby without forwarding, and a standby restarted then is unsealed with the
cluster's own keys and refuses too; disable, sent to the standby, abandons the activation and
both nodes serve the cluster's own data again.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import hvac
import pytest

from cluster.local import ClusterNode, LocalCluster
from tests.integration.dr_helpers import (
    MOUNT,
    caught_up,
    client,
    dr_status,
    fill_big,
    kill_mid_bulk_sync,
    live_keys,
    node,
    operation_token,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("test_dr_activation_abandon")

OWN = "own"
STAGED_KEY = b"core/replication/activation"
STAGED_PREFIX = b"core/replication/staged/"
NEEDS_TOKEN = "a replication activation is staged on this cluster and has not finished"
PERF_ACTIVATING = "this cluster is being activated as a performance secondary"


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    p = LocalCluster(tmp_path_factory.mktemp("abandon-primary"), size=1)
    s = LocalCluster(tmp_path_factory.mktemp("abandon-secondary"), size=1)
    try:
        p.up()
        s.up()
        fill_big(p, MOUNT)  # a bulk sync that takes a moment
        client(s).sys.enable_secrets_engine("kv", path=OWN, options={"version": "2"})
        client(s).secrets.kv.v2.create_or_update_secret("mine", {"v": "secondary's own"}, mount_point=OWN)
        yield p, s
    finally:
        p.stop()
        s.stop()


def read_own(s: LocalCluster) -> str:
    got = client(s).secrets.kv.v2.read_secret_version("mine", mount_point=OWN, raise_on_deleted_version=True)
    return str(got["data"]["data"]["v"])


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_disable_abandons_an_activation_whose_primary_is_gone(sites: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = sites
    assert s.init is not None
    own_uuid = client(s).sys.list_mounted_secrets_engines()[f"{OWN}/"]["uuid"]
    own_prefix = f"logical/{own_uuid}/".encode()
    sn = s.nodes[0]
    assert live_keys(sn.data_dir, own_prefix)
    client(p).write("sys/replication/dr/primary/enable")
    tok = client(p).write("sys/replication/dr/primary/secondary-token", id="lost")["wrap_info"]["token"]
    client(s).write("sys/replication/dr/secondary/enable", token=tok)
    # freeze the primary as soon as the bulk sync runs, let it go on in small steps until the
    # secondary has dropped its own data for the bulk sync, then kill it for good
    wait_for("the bulk sync to start", lambda: dr_status(s).get("state") == "merkle-sync", timeout=20)
    kill_mid_bulk_sync(p, lambda: not live_keys(sn.data_dir, own_prefix))

    # stuck: the status says why, and the cluster serves nothing
    st = wait_for("the stuck activation in the status",
                  lambda: (st := dr_status(s)).get("last_error", "").startswith("cannot reach the primary") and st)
    assert st["mode"] == "secondary" and st["activation_staged"] is True and st["activation_staged_at"]
    assert st["state"] == "connecting" and st["secondary_id"] == "lost", st
    n = node(s)
    # sys/health says what the status says: a DR secondary (Vault's 472), not "disabled"
    status, body = n.request("GET", "sys/health")
    assert status == 472 and body["replication_dr_mode"] == "secondary", body
    assert body["replication_performance_mode"] == "disabled", body
    # enable and disable without an operation token: Vault-shaped 400s that say what to do
    for path, body in (("sys/replication/dr/secondary/enable", {"token": tok}),
                       ("sys/replication/dr/secondary/disable", {})):
        status, out = n.request("PUT", path, body, token=s.root_token)
        assert status == 400 and NEEDS_TOKEN in out["errors"][0], (path, status, out)
    status, out = n.request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": "x"})
    assert status == 400 and "has not finished" in out["errors"][0], out
    status, out = n.request("PUT", "sys/replication/performance/secondary/disable", {"dr_operation_token": "x"},
                            token=s.root_token)
    assert status == 400 and "DR secondary activation is staged" in out["errors"][0], out
    status, out = n.request("PUT", "sys/replication/dr/secondary/disable", {"dr_operation_token": "wrong"})
    assert status == 403, out

    # the operation token comes from the secondary's OWN unseal keys: its seal is still its own
    op = operation_token(s, s.init.keys)
    status, out = n.request("PUT", "sys/replication/dr/secondary/disable", {"dr_operation_token": op})
    assert status == 200 and "abandoned" in out["warnings"][0], out
    assert dr_status(s) == {"mode": "disabled"}
    status, body = n.request("GET", "sys/health")
    assert status == 200 and body["replication_dr_mode"] == "disabled", body
    assert read_own(s) == "secondary's own"  # with its own root token
    assert live_keys(sn.data_dir, STAGED_KEY) == [] and live_keys(sn.data_dir, STAGED_PREFIX) == []
    assert live_keys(sn.data_dir, b"logical/") == live_keys(sn.data_dir, own_prefix)  # nothing of the primary's
    client(s).secrets.kv.v2.create_or_update_secret("after", {"v": "standalone"}, mount_point=OWN)

    # its own keys unseal it after a restart
    s.restart(sn, unseal=False)
    for key in s.init.keys[: s.threshold]:
        status, out = sn.request("PUT", "sys/unseal", {"key": key})
        assert status == 200, out
    wait_for("the secondary to serve again", lambda: sn.request("GET", "sys/health")[0] == 200)
    assert read_own(s) == "secondary's own"
    assert dr_status(s) == {"mode": "disabled"}


def ensure_primary_up(p: LocalCluster) -> None:
    if not p.nodes[0].alive():
        p.restart(p.nodes[0])
        p.wait_active()


def test_performance_disable_abandons_a_stuck_activation(sites: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = sites
    assert s.init is not None
    ensure_primary_up(p)
    pc = client(p)
    # a performance primary whose replication address nobody listens on: the stream never starts
    pc.write("sys/replication/performance/primary/enable", primary_cluster_addr=f"127.0.0.1:{unused_port()}")
    tok = pc.write("sys/replication/performance/primary/secondary-token", id="perf-stuck")["wrap_info"]["token"]
    client(s).write("sys/replication/performance/secondary/enable", token=tok)
    n = node(s)

    def perf_status() -> dict:  # type: ignore[type-arg]
        return dict(n.request("GET", "sys/replication/performance/status")[1]["data"])

    st = wait_for("the stuck performance activation",
                  lambda: (st := perf_status()).get("last_error", "").startswith("cannot reach the primary") and st)
    assert st["activation_staged"] is True and st["mode"] == "secondary", st
    status, body = n.request("GET", "sys/health")
    assert status == 200 and body["replication_performance_mode"] == "secondary", body
    assert body["replication_dr_mode"] == "disabled", body
    status, out = n.request("GET", f"{OWN}/data/mine", token=s.root_token)
    assert status == 503 and PERF_ACTIVATING in out["errors"][0], out  # nothing served until it is over
    status, out = n.request("PUT", "sys/replication/performance/secondary/disable", {}, token=s.root_token)
    assert status == 400 and NEEDS_TOKEN in out["errors"][0], out
    op = operation_token(s, s.init.keys)  # the cluster's own keys
    status, out = n.request("PUT", "sys/replication/performance/secondary/disable", {"dr_operation_token": op})
    assert status == 200 and "abandoned" in out["warnings"][0], out
    assert perf_status() == {"mode": "disabled"}
    assert n.request("GET", "sys/health")[1]["replication_performance_mode"] == "disabled"
    assert read_own(s) == "secondary's own"
    assert live_keys(s.nodes[0].data_dir, STAGED_PREFIX) == []
    pc.write("sys/replication/performance/primary/revoke-secondary", secondary_id="perf-stuck")
    pc.write("sys/replication/performance/primary/disable")


def test_enable_replaces_an_activation_that_cannot_proceed(sites: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = sites
    assert s.init is not None and p.init is not None
    ensure_primary_up(p)
    pc = client(p)
    pc.write("sys/replication/dr/primary/revoke-secondary", secondary_id="lost")
    pc.write("sys/replication/dr/primary/disable")
    # a primary whose replication address is wrong (or unreachable): the activation call works,
    # the stream never does
    pc.write("sys/replication/dr/primary/enable", primary_cluster_addr=f"127.0.0.1:{unused_port()}")
    stuck = pc.write("sys/replication/dr/primary/secondary-token", id="stuck")["wrap_info"]["token"]
    client(s).write("sys/replication/dr/secondary/enable", token=stuck)
    st = wait_for("the stuck activation in the status",
                  lambda: (st := dr_status(s)).get("last_error", "").startswith("cannot reach the primary") and st)
    assert st["activation_staged"] is True and st["secondary_id"] == "stuck", st

    # a working primary's token replaces the staged activation (enable, with an operation token)
    pc.write("sys/replication/dr/primary/disable")
    pc.write("sys/replication/dr/primary/enable")
    fresh = pc.write("sys/replication/dr/primary/secondary-token", id="fresh")["wrap_info"]["token"]
    op = operation_token(s, s.init.keys)
    n = node(s)
    status, out = n.request("PUT", "sys/replication/dr/secondary/enable", {"token": fresh, "dr_operation_token": op})
    assert status == 200 and any("replaced" in w for w in out["warnings"]), out
    caught_up(p, s)
    st = dr_status(s)
    assert st["secondary_id"] == "fresh" and "activation_staged" not in st and st["last_error"] == "", st
    sn = s.nodes[0]
    assert live_keys(sn.data_dir, STAGED_KEY) == [] and live_keys(sn.data_dir, STAGED_PREFIX) == []
    # and it streams
    pc.secrets.kv.v2.create_or_update_secret("later", {"v": "streamed"}, mount_point=MOUNT)
    caught_up(p, s)
    assert n.request("GET", "sys/health")[0] == 472
    # the primary's keys are the secondary's now (and its own no longer are)
    assert operation_token(s, p.init.keys)
    hvac_client = hvac.Client(url=n.addr, token=s.root_token, timeout=10)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        hvac_client.secrets.kv.v2.read_secret_version("mine", mount_point=OWN)


@pytest.fixture(scope="module")
def ha_secondary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A two-node cluster whose standby is a performance standby (it serves reads itself)."""
    s = LocalCluster(tmp_path_factory.mktemp("abandon-ha-secondary"), size=2)
    for n in s.nodes:
        n.storage_extra = "performance_standby = true"
    try:
        s.up()
        client(s).sys.enable_secrets_engine("kv", path=OWN, options={"version": "2"})
        client(s).secrets.kv.v2.create_or_update_secret("mine", {"v": "secondary's own"}, mount_point=OWN)
        yield s
    finally:
        s.stop()


def refuses_clients(n: ClusterNode, token: str) -> None:
    """``n`` answers client requests with the activation's 503, whatever the path; the
    staged-activation endpoints, health, status and seal status still answer."""
    for path in (f"{OWN}/data/mine", f"{MOUNT}/data/big0", "sys/mounts", "auth/token/lookup-self"):
        status, out = n.request("GET", path, token=token)
        assert status == 503 and PERF_ACTIVATING in (out or {}).get("errors", [""])[0], (n.name, path, status, out)
    status, out = n.request("PUT", "sys/generate-root/attempt", {})
    assert status == 503 and PERF_ACTIVATING in out["errors"][0], (n.name, status, out)
    status, out = n.request("GET", "sys/seal-status")
    assert status == 200 and out["sealed"] is False, (n.name, out)
    status, out = n.request("PUT", "sys/replication/performance/secondary/disable", {}, token=token)
    assert status == 400 and NEEDS_TOKEN in out["errors"][0], (n.name, status, out)


def perf_mode(n: ClusterNode) -> tuple[int, str, dict[str, Any]]:
    """``n``'s sys/health code, its ``replication_performance_mode`` and its performance status."""
    status, health = n.request("GET", "sys/health")
    assert health["replication_dr_mode"] == "disabled", health
    st = n.request("GET", "sys/replication/performance/status")[1]["data"]
    return status, str(health["replication_performance_mode"]), dict(st)


def test_every_node_refuses_clients_while_a_performance_activation_is_staged(
        sites: tuple[LocalCluster, LocalCluster], ha_secondary: LocalCluster) -> None:
    p, s = sites[0], ha_secondary
    assert s.init is not None
    ensure_primary_up(p)
    active = node(s)
    standby = next(n for n in s.nodes if n is not active)
    # before: the performance standby answers reads from its own copy
    wait_for("the standby to serve its own copy",
             lambda: standby.request("GET", f"{OWN}/data/mine", token=s.root_token)[0] == 200)
    own_prefix = f"logical/{client(s).sys.list_mounted_secrets_engines()[f'{OWN}/']['uuid']}/".encode()
    pc = client(p)
    pc.write("sys/replication/performance/primary/enable")
    tok = pc.write("sys/replication/performance/primary/secondary-token", id="perf-ha")["wrap_info"]["token"]
    client(s).write("sys/replication/performance/secondary/enable", token=tok)
    # the primary dies once the secondary's active node holds a half-synced copy: its own data
    # dropped by the bulk sync, part of the primary's arrived. Frozen at once (the whole bulk
    # sync takes well under a second), then let go in small steps until then. (The active
    # node is watched, not the standby that follows its log: waiting for the standby let the
    # active node drain the rest of the stream from its socket and finish the activation.)
    kill_mid_bulk_sync(p, lambda: not live_keys(active.data_dir, own_prefix)
                       and bool(live_keys(active.data_dir, b"logical/")))
    wait_for("the standby to hold the half-synced copy too",
             lambda: not live_keys(standby.data_dir, own_prefix) and bool(live_keys(standby.data_dir, b"logical/")))
    wait_for("the stuck activation in the status",
             lambda: perf_mode(active)[2].get("last_error", "").startswith("cannot reach the primary"))

    # every node: health and status agree (a performance secondary), and no client request is
    # served, by the standby either (it neither reads its half-synced copy nor forwards)
    for n, code in ((active, 200), (standby, 473)):
        status, mode, st = perf_mode(n)
        assert (status, mode, st["mode"], st["activation_staged"]) == (code, "secondary", "secondary", True), st
        refuses_clients(n, s.root_token)
    probe = f"{OWN}/data/probe-{uuid.uuid4().hex}"
    assert standby.request("GET", probe, token=s.root_token)[0] == 503
    assert probe not in active.log_path.read_text(), "the standby forwarded instead of refusing"

    # a standby restarted now is unsealed with the cluster's own keys and refuses clients at once
    s.restart(standby)
    active = node(s)
    standby = next(n for n in s.nodes if n is not active)
    for n in s.nodes:
        wait_for(f"{n.name} to report the staged activation", lambda n=n: perf_mode(n)[1] == "secondary")
        refuses_clients(n, s.root_token)

    # the staged-activation operations reach the active node from the standby too: the
    # operation token from the cluster's own keys, then disable abandons the activation
    op = operation_token(s, s.init.keys)
    status, out = standby.request("PUT", "sys/replication/performance/secondary/disable", {"dr_operation_token": op})
    assert status == 200 and "abandoned" in out["warnings"][0], out
    for n in s.nodes:
        wait_for(f"{n.name} to serve its own data again",
                 lambda n=n: (r := n.request("GET", f"{OWN}/data/mine", token=s.root_token))[0] == 200
                 and r[1]["data"]["data"]["v"] == "secondary's own")
        assert perf_mode(n)[1] == "disabled"
        assert live_keys(n.data_dir, b"logical/") == live_keys(n.data_dir, own_prefix)
    ensure_primary_up(p)
    client(p).write("sys/replication/performance/primary/revoke-secondary", secondary_id="perf-ha")
    client(p).write("sys/replication/performance/primary/disable")
