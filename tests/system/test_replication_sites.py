"""Three sites and a witness, as ``python -m cluster dr up --perf --witness`` starts them.

One module-scoped setup of single-node sites (``cluster.sites.ReplicationSites``): a DR
primary, a DR secondary and a performance secondary of the primary, plus a fencing witness;
both DR sites run ``auto_promote`` with ``failover_timeout = "4s"`` and reach the witness and
each other through fault proxies (a detached ``cluster.proxyd`` process). The performance
site reads what the primary wrote and forwards its own writes; then the automatic-promotion
drill cuts the primary's links under load and the DR site must promote itself with no
operator step, without any write acknowledged by both clusters at overlapping times, and
the old primary must demote itself once the links heal. Fail-back then re-points the old
primary and the performance site at the promoted site.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from cluster import dr_api
from cluster.drill_auto import run_auto_drill, to_markdown
from cluster.local import ClusterNode
from cluster.perf_site import perf_status
from cluster.sites import ReplicationSites, free_base_port
from cluster.witness import proxy_names

pytestmark = pytest.mark.xdist_group("test_replication_sites")

FAILOVER = 4
RTO_BOUND = 15.0


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicationSites]:
    """The three sites and the witness on free ports (below the ephemeral range); stopped, not
    deleted, at the end."""
    s = ReplicationSites.open(tmp_path_factory.mktemp("sites"), size=1, base_port=free_base_port(1), perf=True,
                              witness=True, failover_timeout=FAILOVER, cgroups=False, progress=print)
    try:
        s.up()
        yield s
    finally:
        s.down()


def _kv(node: ClusterNode, token: str, method: str, key: str, value: str | None = None) -> tuple[int, str | None]:
    body = {"data": {"v": value}} if value is not None else None
    code, resp = node.request(method, f"shared/data/{key}", body, token=token, timeout=30)
    got = resp["data"]["data"]["v"] if code == 200 and method == "GET" else None
    return code, got


def _read_eventually(node: ClusterNode, token: str, key: str, timeout: float = 10.0) -> str | None:
    end = time.monotonic() + timeout
    while True:
        code, got = _kv(node, token, "GET", key)
        if code == 200 or time.monotonic() > end:
            return got
        time.sleep(0.1)


def test_up_wires_every_site(sites: ReplicationSites) -> None:
    st = sites.status()
    by = {s["site"]: s for s in st["sites"]}
    assert by["primary"]["role"] == "primary" and by["primary"]["dr_mode"] == "primary"
    assert by["dr"]["role"] == "secondary" and by["dr"]["state"] == "stream-wals"
    assert by["primary"]["connection"] == f"{by['dr']['secondary_id']}: connected"
    perf, wit = st["perf"], st["witness"]
    assert perf["role"] == "performance-secondary" and perf["primary_site"] == "primary"
    assert perf["state"] == "stream-wals" and perf["connection"] == "connected"
    assert [n["health"] for n in perf["nodes"]] == [200]
    assert wit["alive"] and wit["epoch"] == 1 and wit["failover_timeout_s"] == FAILOVER
    assert sorted(wit["proxies"]) == sorted([*proxy_names("primary"), *proxy_names("dr")])
    assert not any(p["cut"] for p in wit["proxies"].values())
    # the DR and perf secondaries dial the primary through its replication proxy, so it can be cut
    repl = wit["proxies"]["primary-repl"]["address"]
    assert dr_api.dr_status(sites.rc.active_node("dr"))["known_primary_cluster_addrs"] == [repl]
    assert sites.perf is not None
    assert perf_status(sites.perf.active())["known_primary_cluster_addrs"] == [repl]
    # secrets stay in 0600 files
    assert sites.witness is not None
    for path in (sites.perf.root_token_file, sites.rc.keys_file, sites.witness.bundle("primary"),
                 sites.witness.bundle("dr")):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_perf_site_reads_the_primary_and_forwards_writes(sites: ReplicationSites) -> None:
    assert sites.perf is not None
    prim, perf = sites.rc.active_node("primary"), sites.perf.active()
    root, perf_root = sites.rc.root_token, sites.perf.root_token
    dr_api.call(prim, "POST", "sys/mounts/shared", {"type": "kv", "options": {"version": "2"}}, root)
    assert _kv(prim, root, "POST", "from-primary", "p1")[0] == 200
    assert _read_eventually(perf, perf_root, "from-primary") == "p1"
    t0 = time.monotonic()
    assert _kv(perf, perf_root, "POST", "from-perf", "f1")[0] == 200  # forwarded to the primary
    assert time.monotonic() - t0 < 5
    assert _kv(perf, perf_root, "GET", "from-perf") == (200, "f1")  # read-your-writes on the perf site
    assert _kv(prim, root, "GET", "from-perf") == (200, "f1")
    # each cluster's tokens are its own
    assert perf.request("GET", "sys/mounts", token=root)[0] == 403
    assert prim.request("GET", "sys/mounts", token=perf_root)[0] == 403


def test_auto_drill_partition(sites: ReplicationSites, measure: Callable[[str, str], None]) -> None:
    r = run_auto_drill(sites, loss="partition", writers=4, probes=1, duration=3.0, progress=print)
    print(to_markdown(r))
    measure("auto-promotion drill (partition): RTO, cut to first write acknowledged by the promoted site",
            f"{r['rto_s']:.2f} s (promotion observed {r['promotion_observed_s']} s; failover_timeout {FAILOVER} s)")
    measure("auto-promotion drill (partition): old primary's last ack after the cut / gap to the new primary's "
            "first write", f"{r['old_primary_last_ack_s']:+.2f} s / {r['gap_s']:.2f} s")
    measure("auto-promotion drill (partition): RPO",
            f"{r['rpo_writes']} of {r['writes_acked_by_old_primary']} ({r['rpo_acked_after_loss']} acknowledged "
            f"after the cut); old primary demoted {r['old_primary_demoted_after_heal_s']} s after the heal")
    assert r["passed"], r["failures"]
    assert not r["split_brain"] and r["overlap_writes"] == 0 and r["gap_s"] > 0
    assert r["rto_s"] < RTO_BOUND
    assert r["old_primary_demoted"] is True and r["acked_by_old_primary_after_heal"] == 0
    # the old primary may acknowledge only while its lease may run
    assert r["old_primary_last_ack_s"] < FAILOVER
    assert r["writes_acked_before_loss"] >= 20 and r["writes_acked_by_promoted_site"] >= 1
    assert r["missing_at_or_below_replicated_index"] == 0 and r["lost_after_promotion"] == 0
    assert r["epoch_after"] == 2 and r["witness_epoch"] == 2
    assert sites.rc.sites["dr"].role == "primary" and sites.rc.sites["primary"].role == "stale-primary"
    old = sites.rc.sites["primary"].cluster.nodes[0]
    assert dr_api.health(old) == 472
    code, _ = _kv(old, sites.rc.root_token, "POST", "after-heal", "x")
    assert code not in (200, 204)


def test_fail_back_repoints_the_old_primary_and_the_perf_site(sites: ReplicationSites,
                                                              measure: Callable[[str, str], None]) -> None:
    assert sites.perf is not None
    t = sites.fail_back(timeout=90)
    measure("auto-promotion drill: fail-back of the old primary and the perf site",
            f"{t['fail_back_s'] + t.get('perf_follow_s', 0):.2f} s (catch-up {t['catch_up_s']:.2f} s)")
    st = sites.status()
    by = {s["site"]: s for s in st["sites"]}
    assert by["dr"]["role"] == "primary" and by["primary"]["role"] == "secondary"
    assert by["primary"]["state"] == "stream-wals"
    assert st["perf"]["primary_site"] == "dr" and st["perf"]["state"] == "stream-wals"
    # the promoted site advertises its own proxy now, so its links can be cut in the next drill
    dr_repl = st["witness"]["proxies"]["dr-repl"]["address"]
    assert dr_api.dr_status(sites.rc.active_node("primary"))["known_primary_cluster_addrs"] == [dr_repl]
    new = sites.rc.active_node("dr")
    assert _kv(new, sites.rc.root_token, "POST", "after-fail-back", "n1")[0] == 200
    assert _read_eventually(sites.perf.active(), sites.perf.root_token, "after-fail-back") == "n1"
    # what the perf site forwarded before the drill survived the promotion
    assert _kv(new, sites.rc.root_token, "GET", "from-perf") == (200, "f1")
