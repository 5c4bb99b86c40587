"""A three-node DR secondary: after activation its standbys cannot open the primary's keyring,
seal themselves while staying in the secondary's Raft group, and serve again (472) once
unsealed with the primary's keys; a sealed member never keeps the Raft leadership; after a
promotion every node follows the new role."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cluster.local import LocalCluster
from tests.integration.dr_helpers import MOUNT, activate, caught_up, client, dr_status, operation_token, wait_for

pytestmark = pytest.mark.xdist_group("test_dr_multinode_secondary")


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    p = LocalCluster(tmp_path_factory.mktemp("mn-primary"), size=1)
    s = LocalCluster(tmp_path_factory.mktemp("mn-secondary"), size=3)
    try:
        p.up()
        s.up()
        client(p).sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        yield p, s
    finally:
        p.stop()
        s.stop()


def health(n) -> int:  # type: ignore[no-untyped-def]
    try:
        return n.request("GET", "sys/health")[0]
    except OSError:
        return 0


def leads(n) -> bool:  # type: ignore[no-untyped-def]
    try:
        status, body = n.request("GET", "sys/leader")
    except OSError:
        return False
    return status == 200 and bool(body.get("is_self"))


def test_standbys_reseal_and_follow_the_primary_keys(sites: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = sites
    for i in range(20):
        client(p).secrets.kv.v2.create_or_update_secret(f"k{i}", {"v": str(i)}, mount_point=MOUNT)
    act = s.wait_active()
    standbys = [n for n in s.nodes if n is not act]
    activate(p, s, "three-node")
    for n in standbys:
        wait_for(f"{n.name} to seal itself", lambda n=n: health(n) == 503)
    assert p.init is not None
    # A sealed member that wins an election hands the leadership on. Kill the active node so
    # that a sealed standby leads the Raft group, bring the node back and unseal it with the
    # primary's keys: it must lead (and stream) again although both others stay sealed.
    s.kill(act)
    time.sleep(3.0)  # several election timeouts: a sealed standby leads the group now
    s.restart(act, unseal=False)
    for key in p.init.keys[: p.threshold]:
        status, body = act.request("PUT", "sys/unseal", {"key": key})
        assert status == 200, body
    wait_for("the unsealed node to lead again", lambda: leads(act), timeout=45)
    client(p).secrets.kv.v2.create_or_update_secret("k20", {"v": "20"}, mount_point=MOUNT)
    caught_up(p, s)
    for n in standbys:
        for key in p.init.keys[: p.threshold]:
            status, body = n.request("PUT", "sys/unseal", {"key": key})
            assert status == 200, body
        wait_for(f"{n.name} to serve as a DR secondary standby", lambda n=n: health(n) == 472)
    assert health(act) == 472
    # promote: every node of the secondary cluster follows
    op = operation_token(s, p.init.keys)
    status, body = act.request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op})
    assert status == 200, body
    wait_for("the promoted active node", lambda: health(act) == 200)
    for n in standbys:
        wait_for(f"{n.name} to be a standby of the promoted cluster", lambda n=n: health(n) == 429)
    got = client(s, p.root_token).secrets.kv.v2.read_secret_version("k19", mount_point=MOUNT,
                                                                  raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "19"
    assert dr_status(s)["mode"] == "primary"
