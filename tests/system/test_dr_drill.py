"""The DR drill end to end on a pair of three-node clusters (cluster.replication + cluster.drill).

One module-scoped pair: a DR primary site and a DR secondary site, wired through Vault's
``sys/replication/dr/*`` API by ``ReplicatedClusters.up``. The drill kills -9 every node of
the primary site under a steady KV v2 write load, generates a DR operation token with the
primary's unseal keys, promotes the secondary, re-points the writers and reads every
acknowledged write back from the promoted site; then fails back (the old primary is
restarted, demoted and made the new DR secondary) and a merkle check compares both sites.

Replication is asynchronous: writes the primary acknowledged after the secondary's last
replicated index may be lost (RPO). Writes acknowledged with an X-Vault-Index at or below
that index, and every write acknowledged by the promoted site, may not.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import dr_api
from cluster.drill import MOUNT, run_drill, to_markdown
from cluster.drill_load import Ack, read_back
from cluster.replication import ReplicatedClusters

pytestmark = pytest.mark.xdist_group("test_dr_drill")

RTO_BOUND = 5.0  # seconds from kill -9 of the primary site to the first write acknowledged by the promoted site
RPO_FRACTION = 0.1  # at most this share of the primary's acknowledged writes may be missing after promotion,
RPO_FLOOR = 20  # or this many (about 0.2 s of writes here), whichever is more
LOAD_S = 4.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedClusters]:
    """Two streaming three-node clusters (free ports); stopped, not deleted, at the end."""
    rc = ReplicatedClusters(tmp_path_factory.mktemp("dr-pair"), size=3, cgroups=False, progress=print)
    try:
        rc.up()
        yield rc
    finally:
        rc.down()


class Drill:
    """The drill's result and every write it saw acknowledged."""

    def __init__(self, result: dict[str, Any], acks: list[Ack]) -> None:
        self.result = result
        self.acks = acks


@pytest.fixture(scope="module")
def drill(pair: ReplicatedClusters) -> Drill:
    """The drill up to promotion and the read-back (fail-back is the last test's own step)."""
    acks: list[Ack] = []
    result = run_drill(pair, mode="kill", writers=4, duration=LOAD_S, progress=print, fail_back=False,
                       acks_out=acks)
    print(to_markdown(result))
    return Drill(result, acks)


def _write(node: Any, token: str, key: str, value: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.request("POST", f"/v1/{MOUNT}/data/{key}", body=json.dumps({"data": {"v": value}}),
                     headers={"X-Vault-Token": token, "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_pair_streams_with_the_primary_keys(pair: ReplicatedClusters) -> None:
    st = pair.status()
    sites = {s["site"]: s for s in st["sites"]}
    assert sites["primary"]["role"] == "primary" and sites["primary"]["dr_mode"] == "primary"
    assert sorted(n["health"] for n in sites["primary"]["nodes"]) == [200, 429, 429]
    assert sites["dr"]["role"] == "secondary" and sites["dr"]["state"] == "stream-wals"
    # every node of the secondary, followers included, runs on the primary's keyring
    assert [n["health"] for n in sites["dr"]["nodes"]] == [472, 472, 472]
    assert sites["primary"]["connection"] == f"{sites['dr']['secondary_id']}: connected"
    assert Path(st["keys_file"]).stat().st_mode & 0o777 == 0o600
    # the secondary refuses client requests, even with the primary's root token
    code, body = pair.sites["dr"].cluster.nodes[0].request("GET", "sys/mounts", token=pair.root_token)
    assert code == 400 and body["errors"] == ["path disabled in replication DR secondary mode"], body


def test_kill_primary_under_load_promote(pair: ReplicatedClusters, drill: Drill,
                                         measure: Callable[[str, str], None]) -> None:
    r = drill.result
    measure("DR drill: RTO (kill -9 of the primary site to the first write acknowledged by the promoted site)",
            f"{r['rto_s']:.3f}s (operation token {r['phases']['operation_token_s']:.3f}s, "
            f"promote {r['phases']['promote_s']:.3f}s, first write {r['phases']['first_write_s']:.3f}s)")
    measure("DR drill: RPO (acknowledged writes missing on the promoted site)",
            f"{r['rpo_writes']} of {r['writes_acked_before_loss']} ({r['acked_beyond_replicated_index']} "
            f"acknowledged beyond replicated index {r['replicated_index']})")
    assert r["promoted_site"] == "dr" and pair.sites["dr"].role == "primary"
    assert r["writes_acked_before_loss"] >= 50 and r["writes_acked_after_promotion"] >= 1
    assert r["rto_s"] < RTO_BOUND
    # Nothing the secondary had replicated is lost; what is lost was acknowledged beyond that point.
    assert r["missing_at_or_below_replicated_index"] == 0, r["missing_sample"]
    assert r["rpo_writes"] <= r["acked_beyond_replicated_index"]
    assert r["rpo_writes"] <= max(RPO_FLOOR, RPO_FRACTION * r["writes_acked_before_loss"]), r["missing_sample"]
    assert r["lost_after_promotion"] == 0
    assert r["acked_by_lost_site_after_loss"] == 0  # a dead primary acknowledges nothing sent after it died
    # Independently of the drill's own accounting: read back from the promoted site (with the
    # primary's root token) every write acknowledged at or below the replicated index, and
    # every write the promoted site acknowledged.
    replicated = r["replicated_index"]
    must = [a for a in drill.acks if (a.site == "primary" and a.index <= replicated) or a.site == "dr"]
    assert len(must) >= r["writes_acked_before_loss"] - r["acked_beyond_replicated_index"]
    node = pair.active_node("dr")
    assert read_back(node, MOUNT, pair.root_token, must) == []
    assert sorted(n["health"] for n in pair.status()["sites"][1]["nodes"]) == [200, 429, 429]


def test_fail_back_catches_up_and_merkle_check(pair: ReplicatedClusters, drill: Drill,
                                               measure: Callable[[str, str], None]) -> None:
    old, new = pair.sites["primary"], pair.sites["dr"]
    assert old.role == "stale-primary" and new.role == "primary" and drill.result["promoted_site"] == "dr"
    # restart the killed primary site, demote it, update-primary with a token from the new primary
    fb = pair.fail_back(timeout=120)
    measure("DR drill: fail-back catch-up (update-primary to caught up)",
            f"{fb['catch_up_s']:.3f}s (whole fail-back {fb['fail_back_s']:.2f}s: restart {fb['restart_s']:.2f}s, "
            f"demote {fb['demote_s']:.2f}s)")
    assert old.role == "secondary" and new.role == "primary"
    assert fb["catch_up_s"] < 30
    # the new primary keeps streaming to the old one
    t0 = time.monotonic()
    assert _write(pair.active_node(new), pair.root_token, "after-fail-back", "1") in (200, 204)
    st = pair.wait_caught_up(old, timeout=30)
    measure("DR drill: one write on the new primary to caught up on the new secondary",
            f"{time.monotonic() - t0:.3f}s")
    assert st["mode"] == "secondary" and st["secondary_id"] == old.secondary_id
    assert [dr_api.health(n) for n in old.cluster.nodes] == [472, 472, 472]
    prim = dr_api.dr_status(pair.active_node(new))
    assert prim["epoch"] >= 2 and prim["known_secondaries"] == [old.secondary_id]
    op = pair.operation_token(old)
    check = dr_api.merkle_check(pair.active_node(old), op)
    assert check["equal"] is True, check
    assert check["merkle_corruption_report"]["corrupted_root"] is False
