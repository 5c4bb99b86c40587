"""A Shamir DR secondary whose active node is killed (SIGKILL) during its activation still
ends up activated: the activation is staged in the secondary's own Raft log (the primary's
root key sealed under the secondary's own root key, ``core/replication/activation``), so
another node that becomes active resumes it, bulk-syncs and switches to the primary's keys;
the staged record is gone afterwards and the killed node rejoins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import lmdb
import pytest

from cluster.local import LocalCluster
from tests.integration.dr_helpers import (
    MOUNT,
    client,
    dr_status,
    operation_token,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("test_dr_activation_resume")

STAGED_KEY = b"core/replication/activation"


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    p = LocalCluster(tmp_path_factory.mktemp("resume-primary"), size=1)
    s = LocalCluster(tmp_path_factory.mktemp("resume-secondary"), size=3)
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


def leader_of(s: LocalCluster):  # type: ignore[no-untyped-def]
    """The secondary's active node (alive nodes only; a DR secondary answers 472)."""
    def find():  # type: ignore[no-untyped-def]
        for n in s.nodes:
            if not n.alive():
                continue
            try:
                status, body = n.request("GET", "sys/leader")
            except OSError:
                continue
            if status == 200 and body.get("is_self"):
                return n
        return None
    return wait_for("the secondary's active node", find, timeout=30)


def secondary_caught_up(p: LocalCluster, s: LocalCluster) -> dict:  # type: ignore[type-arg]
    want = dr_status(p)["last_wal"]

    def check():  # type: ignore[no-untyped-def]
        status, body = leader_of(s).request("GET", "sys/replication/dr/status")
        st = body["data"] if status == 200 else {}
        return st if st.get("state") == "stream-wals" and st.get("last_remote_wal", 0) >= want else None
    return wait_for("the secondary to catch up", check, timeout=30)


def staged_present(data_dir: Path) -> bool:
    """Whether a node's store holds a staged activation (read-only LMDB reader)."""
    envs = {f.parent for f in Path(data_dir).rglob("data.mdb")}
    assert envs, f"no LMDB environment under {data_dir}"
    found = False
    for env_dir in envs:
        env = lmdb.open(str(env_dir), readonly=True, max_dbs=4, lock=False, subdir=True)
        try:
            try:
                db = env.open_db(b"data", create=False)
            except lmdb.Error:
                continue
            with env.begin(db=db) as txn:
                found = found or txn.get(STAGED_KEY) is not None
        finally:
            env.close()
    return found


def test_activation_survives_killing_the_active_node(sites: tuple[LocalCluster, LocalCluster]) -> None:
    p, s = sites
    assert p.init is not None and s.init is not None
    for i in range(20):
        client(p).secrets.kv.v2.create_or_update_secret(f"k{i}", {"v": str(i)}, mount_point=MOUNT)
    client(p).write("sys/replication/dr/primary/enable")
    tok = client(p).write("sys/replication/dr/primary/secondary-token", id="resume")["wrap_info"]["token"]
    act = s.wait_active()
    others = [n for n in s.nodes if n is not act]
    hvac.Client(url=act.addr, token=s.root_token, timeout=30).write(
        "sys/replication/dr/secondary/enable", token=tok)
    # The answer comes once the activation is staged (committed by the secondary's Raft
    # group). Kill the active node at once, mid-activation.
    s.kill(act)

    # Normally the bulk sync has not finished: the two others still run on their own keys,
    # one of them becomes active, resumes the staged activation and switches to the
    # primary's keys. Should the switch already have happened, both seal themselves (they
    # cannot open the primary's keyring) and are unseal with the primary's keys instead.
    def settled() -> str:
        codes = [health(n) for n in others]
        if 472 in codes:
            return "resumed"
        if codes == [503, 503]:
            return "switched"
        return ""

    path = wait_for("the secondary to settle after the kill", settled, timeout=45)
    if path == "switched":
        for n in others:
            for key in p.init.keys[: p.threshold]:
                status, body = n.request("PUT", "sys/unseal", {"key": key})
                assert status == 200, body
    st = secondary_caught_up(p, s)
    assert st["mode"] == "secondary" and st["secondary_id"] == "resume"
    # the resuming node switched: its standby seals itself and takes the primary's keys now
    for n in others:
        if health(n) == 503:
            for key in p.init.keys[: p.threshold]:
                status, body = n.request("PUT", "sys/unseal", {"key": key})
                assert status == 200, body
        wait_for(f"{n.name} to serve as a DR secondary", lambda n=n: health(n) == 472)
    for n in others:
        assert not staged_present(n.data_dir), f"{n.name} still holds the staged activation"

    # the killed node comes back: its own shares open its stale copy; it then catches up with
    # the switch, seals itself and is unsealed with the primary's keys like any standby
    s.restart(act, unseal=False)
    for key in s.init.keys[: s.threshold]:
        status, body = act.request("PUT", "sys/unseal", {"key": key})
        if status != 200 or not body.get("sealed", True):
            break
    wait_for(f"{act.name} to seal itself for the primary's keys", lambda: health(act) == 503, timeout=30)
    time.sleep(0.5)
    for key in p.init.keys[: p.threshold]:
        status, body = act.request("PUT", "sys/unseal", {"key": key})
        assert status == 200, body
    wait_for(f"{act.name} to serve as a DR secondary", lambda: health(act) == 472)
    assert not staged_present(act.data_dir)

    # the primary's data is there: promote and read it with the primary's root token
    client(p).secrets.kv.v2.create_or_update_secret("k20", {"v": "20"}, mount_point=MOUNT)
    secondary_caught_up(p, s)
    op = operation_token(s, p.init.keys)
    n = leader_of(s)
    status, body = n.request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op})
    assert status == 200, body
    wait_for("the promoted active node", lambda: health(n) == 200)
    got = client(s, p.root_token).secrets.kv.v2.read_secret_version("k20", mount_point=MOUNT,
                                                                  raise_on_deleted_version=True)
    assert got["data"]["data"]["v"] == "20"
    assert dr_status(s)["mode"] == "primary"
