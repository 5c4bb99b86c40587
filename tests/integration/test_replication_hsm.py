"""Replication between clusters that keep their own seals (real processes, SoftHSM2, hvac).

Vault's rule (its replication docs, "Seals"): a secondary keeps its seal type; activation
replaces its unseal or recovery configuration and keys with the primary's. So:

* HSM primary → HSM DR secondary (its own token and keys): it auto-unseals with its own HSM
  after a restart and keeps following; a DR operation token comes from the primary's
  recovery keys (its own former recovery keys are refused); a merkle-check matches although
  the primary's keyring and a ``seal_wrap`` mount are wrapped by an HSM the secondary lacks.
* HSM primary → Shamir DR secondary: unsealed with the primary's recovery keys.
* HSM primary → HSM performance secondary: auto-unseals after a restart; a root token of its
  own comes from the primary's recovery keys; rekeying it is refused (400).
* Shamir primary → HSM DR secondary: auto-unseals; the primary's unseal keys make the DR
  operation token.
* Last, the HSM DR secondary is promoted: it serves the primary's data (the seal_wrap mount
  too), re-wraps the keyring with its own HSM, and restarts on its own HSM.
* An HSM DR secondary whose activation is stuck (its primary killed mid bulk-sync) unseals
  itself after a restart and is abandoned with an operation token from its OWN recovery keys:
  it restarts, auto-unseals with its own HSM, and its own data and root token work.

One HSM primary is shared by the module; every cluster has one node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hvac
import pytest
from hsm_fixtures import SoftHSM, softhsm  # noqa: F401  (fixtures)

from cluster.local import InitOutput, LocalCluster
from tests.integration.dr_helpers import (
    caught_up,
    client,
    fill_big,
    kill_mid_bulk_sync,
    live_keys,
    node,
    operation_token,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("test_replication_hsm")

MOUNT = "kv"
WRAPPED = "wrapped"  # a seal_wrap mount: its values are HSM-wrapped on an HSM primary
OP_TOKEN_PATH = "sys/replication/dr/secondary/generate-operation-token"


@dataclass
class Sites:
    """The module's clusters: an HSM primary and factories for more (all stopped at the end)."""

    primary: LocalCluster
    new_hsm: Callable[..., LocalCluster]
    new_shamir: Callable[[str], LocalCluster]
    dr_hsm: LocalCluster | None = None
    notes: dict[str, str] = field(default_factory=dict)


def init_hsm(lc: LocalCluster) -> LocalCluster:
    """Start every node and initialize the first one (3 recovery keys, threshold 2), which
    unseals itself. ``lc.init.keys`` are then its recovery keys."""
    lc.start()
    status, body = lc.nodes[0].request("PUT", "sys/init", {"recovery_shares": 3, "recovery_threshold": 2},
                                       timeout=60)
    assert status == 200 and body["keys"] == [] and len(body["recovery_keys"]) == 3, body
    lc.init = InitOutput(body["recovery_keys"], body["root_token"])
    assert lc.nodes[0].wait_health({200}, timeout=60) == 200
    return lc


@pytest.fixture(scope="module")
def sites(softhsm: SoftHSM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:  # noqa: F811
    root = tmp_path_factory.mktemp("repl-hsm")
    started: list[LocalCluster] = []

    def new_hsm(name: str, size: int = 1) -> LocalCluster:
        lc = LocalCluster(root / name, size=size)
        started.append(lc)
        stanza = softhsm.new_token().stanza()
        for n in lc.nodes:
            n.extra_config = stanza
        return init_hsm(lc)

    def new_shamir(name: str) -> LocalCluster:
        lc = LocalCluster(root / name, size=1)
        started.append(lc)
        return lc.up()

    try:
        p = new_hsm("primary")
        pc = client(p)
        pc.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
        pc.sys.enable_secrets_engine("kv", path=WRAPPED, options={"version": "2"}, seal_wrap=True)
        pc.secrets.kv.v2.create_or_update_secret("app", {"v": "before"}, mount_point=MOUNT)
        pc.secrets.kv.v2.create_or_update_secret("vault", {"v": "seal-wrapped"}, mount_point=WRAPPED)
        pc.write("sys/replication/dr/primary/enable")
        yield Sites(p, new_hsm, new_shamir)
    finally:
        for lc in started:
            lc.stop()


def seal_status(lc: LocalCluster) -> dict[str, Any]:
    status, body = lc.nodes[0].request("GET", "sys/seal-status")
    assert status == 200, body
    return dict(body)


def restart(lc: LocalCluster, codes: set[int]) -> None:
    """Stop and start the node without unsealing it; wait for ``codes`` from sys/health."""
    n = lc.nodes[0]
    n.stop()
    n.start()
    assert n.wait_health(codes, timeout=60) in codes, n.log_tail()


def events(lc: LocalCluster, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of the cluster's node whose event is ``name``."""
    out = []
    for line in lc.nodes[0].log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == name:
            out.append(rec)
    return out


def kv_read(lc: LocalCluster, token: str, mount: str, key: str) -> Any:
    c = hvac.Client(url=node(lc).addr, token=token, timeout=30)
    return c.secrets.kv.v2.read_secret_version(key, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]


def activate(primary: LocalCluster, secondary: LocalCluster, secondary_id: str, kind: str = "dr") -> None:
    tok = client(primary).write(f"sys/replication/{kind}/primary/secondary-token", id=secondary_id)
    client(secondary).write(f"sys/replication/{kind}/secondary/enable", token=tok["wrap_info"]["token"])
    if kind == "dr":
        caught_up(primary, secondary)
    else:
        want = _status(primary, kind)["last_wal"]
        wait_for("the performance secondary to catch up",
                 lambda: (st := _status(secondary, kind)).get("state") == "stream-wals"
                 and st["last_remote_wal"] >= want)


def _status(lc: LocalCluster, kind: str) -> dict[str, Any]:
    status, body = node(lc).request("GET", f"sys/replication/{kind}/status")
    assert status == 200, body
    return dict(body["data"])


def refused(lc: LocalCluster, keys: list[str], path: str) -> dict[str, Any]:
    """A generate-root style ceremony at ``path`` with ``keys``: the (400) final answer."""
    n = node(lc)
    status, start = n.request("PUT", f"{path}/attempt", {})
    assert status == 200, start
    body: dict[str, Any] = {}
    for key in keys[: start["required"]]:
        status, body = n.request("PUT", f"{path}/update", {"key": key, "nonce": start["nonce"]})
    n.request("DELETE", f"{path}/attempt")
    assert status == 400, body
    return body


def generate_root(lc: LocalCluster, keys: list[str]) -> str:
    n = node(lc)
    status, start = n.request("PUT", "sys/generate-root/attempt", {})
    assert status == 200, start
    done: dict[str, Any] = {}
    for key in keys[: start["required"]]:
        status, done = n.request("PUT", "sys/generate-root/update", {"key": key, "nonce": start["nonce"]})
        assert status == 200, done
    status, decoded = n.request("PUT", "sys/decode-token", {"encoded_token": done["encoded_token"], "otp": start["otp"]})
    assert status == 200, decoded
    return str(decoded["data"]["token"])


def test_hsm_dr_secondary_auto_unseals_and_takes_the_primary_recovery_keys(sites: Sites) -> None:
    p = sites.primary
    s = sites.dr_hsm = sites.new_hsm("dr-hsm")
    assert p.init is not None and s.init is not None
    activate(p, s, "dr-hsm")
    st = seal_status(s)  # its own seal, the primary's recovery configuration
    assert st["type"] == "pkcs11" and st["recovery_seal"] is True and (st["t"], st["n"]) == (2, 3)
    assert events(s, "replication_key_holders_adopted")[-1]["rewrapped_root"] is True

    # a restart: it unseals itself with its own HSM and keeps following
    restart(s, {472})
    client(p).secrets.kv.v2.create_or_update_secret("app", {"v": "after-restart"}, mount_point=MOUNT)
    caught_up(p, s)

    # a DR operation token comes from the primary's recovery keys, never the secondary's own
    body = refused(s, s.init.keys, OP_TOKEN_PATH)
    assert "recovery key" in body["errors"][0], body
    op = operation_token(s, p.init.keys)
    status, check = node(s).request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op})
    assert status == 200 and check["data"]["equal"] is True, check
    sites.notes["op"] = op


def test_standby_of_an_hsm_dr_secondary_unseals_itself_with_the_new_keys(sites: Sites) -> None:
    p = sites.primary
    s = sites.new_hsm("dr-ha", size=2)  # two nodes on one HSM token
    first, second = s.nodes
    status, body = second.request("PUT", "sys/storage/raft/join", {"leader_api_addr": first.addr}, timeout=90)
    assert status == 200, body
    assert second.wait_health({429, 473}, timeout=60) in (429, 473)  # joined, unsealed by the HSM
    activate(p, s, "dr-ha")
    # the standby cannot open the primary's keyring with its old root key: it seals itself,
    # then unseals itself again once the active node has re-wrapped the primary's root key
    wait_for("the standby to unseal itself with the primary's root key",
             lambda: second.request("GET", "sys/health")[0] == 472 and any(
                 "keyring_unreadable_sealing" in line for line in second.log_path.read_text().splitlines()),
             timeout=60)
    status, body = second.request("GET", "sys/seal-status")
    assert status == 200 and body["sealed"] is False, body


def test_shamir_dr_secondary_of_an_hsm_primary_unseals_with_its_recovery_keys(sites: Sites) -> None:
    p = sites.primary
    s = sites.new_shamir("dr-shamir")
    assert p.init is not None and s.init is not None
    activate(p, s, "dr-shamir")
    restart(s, {503})
    st = seal_status(s)
    assert st["type"] == "shamir" and st["sealed"] is True and (st["t"], st["n"]) == (2, 3)
    status, body = s.nodes[0].request("PUT", "sys/unseal", {"key": s.init.keys[0]})
    status, body = s.nodes[0].request("PUT", "sys/unseal", {"key": s.init.keys[1]})
    assert status == 400, body  # its own former unseal keys no longer open it
    for key in p.init.keys[:2]:  # the primary's recovery keys are its unseal keys now
        status, body = s.nodes[0].request("PUT", "sys/unseal", {"key": key})
        assert status == 200, body
    assert s.nodes[0].wait_health({472}) == 472
    client(p).secrets.kv.v2.create_or_update_secret("app", {"v": "for-shamir"}, mount_point=MOUNT)
    caught_up(p, s)
    op = operation_token(s, p.init.keys)
    status, check = node(s).request("PUT", "sys/replication/dr/secondary/merkle-check", {"dr_operation_token": op})
    assert status == 200 and check["data"]["equal"] is True, check


def test_hsm_performance_secondary(sites: Sites) -> None:
    p = sites.primary
    s = sites.new_hsm("perf-hsm")
    assert p.init is not None and s.init is not None
    client(p).write("sys/replication/performance/primary/enable")
    activate(p, s, "perf-hsm", kind="performance")
    root = generate_root(s, p.init.keys)  # the primary's recovery keys, a token of its own
    assert kv_read(s, root, MOUNT, "app")["v"] in ("after-restart", "for-shamir")
    assert kv_read(s, root, WRAPPED, "vault") == {"v": "seal-wrapped"}
    restart(s, {200})  # its own HSM unseals it
    sc = hvac.Client(url=node(s).addr, token=root, timeout=30)
    sc.secrets.kv.v2.create_or_update_secret("from-perf", {"v": "forwarded"}, mount_point=MOUNT)
    assert kv_read(p, p.root_token, MOUNT, "from-perf") == {"v": "forwarded"}
    assert kv_read(s, root, MOUNT, "from-perf") == {"v": "forwarded"}
    status, body = node(s).request("PUT", "sys/rekey-recovery-key/init", {"secret_shares": 1, "secret_threshold": 1},
                                   token=root)
    assert status == 400 and "primary" in body["errors"][0], body


def test_hsm_dr_secondary_of_a_shamir_primary(sites: Sites) -> None:
    p = sites.new_shamir("shamir-primary")
    s = sites.new_hsm("dr-of-shamir")
    assert p.init is not None and s.init is not None
    pc = client(p)
    pc.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    pc.secrets.kv.v2.create_or_update_secret("app", {"v": "from-shamir"}, mount_point=MOUNT)
    pc.write("sys/replication/dr/primary/enable")
    activate(p, s, "dr-of-shamir")
    restart(s, {472})
    pc.secrets.kv.v2.create_or_update_secret("app", {"v": "later"}, mount_point=MOUNT)
    caught_up(p, s)
    refused(s, s.init.keys, OP_TOKEN_PATH)
    op = operation_token(s, p.init.keys)  # the primary's unseal keys are its recovery keys now
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op})
    assert status == 200, body
    wait_for("the promoted cluster to serve", lambda: node(s).request("GET", "sys/health")[0] == 200)
    assert kv_read(s, p.root_token, MOUNT, "app") == {"v": "later"}
    restart(s, {200})


def test_promote_the_hsm_dr_secondary(sites: Sites) -> None:
    p, s, op = sites.primary, sites.dr_hsm, sites.notes.get("op", "")
    assert s is not None and op, "needs the first test"
    p.nodes[0].stop()  # the primary is lost
    status, body = node(s).request("PUT", "sys/replication/dr/secondary/promote", {"dr_operation_token": op})
    assert status == 200, body
    wait_for("the promoted cluster to serve", lambda: node(s).request("GET", "sys/health")[0] == 200)
    assert kv_read(s, p.root_token, WRAPPED, "vault") == {"v": "seal-wrapped"}
    client(s, p.root_token).secrets.kv.v2.create_or_update_secret("on-promoted", {"v": "yes"}, mount_point=MOUNT)
    wait_for("the keyring to be re-wrapped by its own HSM", lambda: events(s, "replication_keyring_rewrapped"))
    restart(s, {200})
    assert kv_read(s, p.root_token, MOUNT, "on-promoted") == {"v": "yes"}
    assert kv_read(s, p.root_token, WRAPPED, "vault") == {"v": "seal-wrapped"}


def test_abandon_a_stuck_activation_of_an_hsm_secondary(sites: Sites) -> None:
    p = sites.new_shamir("stuck-primary")
    fill_big(p, "big")  # ~20 MB: a bulk sync that takes a moment
    client(p).write("sys/replication/dr/primary/enable")
    s = sites.new_hsm("hsm-abandon")
    assert p.init is not None and s.init is not None
    sc = client(s)
    sc.sys.enable_secrets_engine("kv", path="own", options={"version": "2"})
    sc.secrets.kv.v2.create_or_update_secret("mine", {"v": "the HSM secondary's own"}, mount_point="own")
    own_prefix = f"logical/{sc.sys.list_mounted_secrets_engines()['own/']['uuid']}/".encode()
    sn = s.nodes[0]
    tok = client(p).write("sys/replication/dr/primary/secondary-token", id="hsm-stuck")["wrap_info"]["token"]
    sc.write("sys/replication/dr/secondary/enable", token=tok)
    # the primary's root key is staged encrypted by the secondary's HSM until the switch
    assert live_keys(sn.data_dir, b"core/hsm/root-key-next")
    wait_for("the bulk sync to start", lambda: _status(s, "dr").get("state") == "merkle-sync", timeout=20)
    kill_mid_bulk_sync(p, lambda: not live_keys(sn.data_dir, own_prefix))
    st = wait_for("the stuck activation in the status",
                  lambda: (st := _status(s, "dr")).get("last_error", "").startswith("cannot reach the primary") and st)
    assert st["activation_staged"] is True and st["secondary_id"] == "hsm-stuck", st
    status, health = sn.request("GET", "sys/health")
    assert status == 472 and health["replication_dr_mode"] == "secondary", health
    # restarted while stuck, it unseals itself with its own HSM and still reports the activation
    restart(s, {472})
    wait_for("the restarted node to resume the activation",
             lambda: (st := _status(s, "dr")).get("activation_staged") is True
             and st.get("last_error", "").startswith("cannot reach the primary"))

    # its seal still holds its own root key: the primary's shares are refused, its own
    # recovery keys make the operation token, and disable abandons the activation
    body = refused(s, p.init.keys, OP_TOKEN_PATH)
    assert "recovery key" in body["errors"][0], body
    op = operation_token(s, s.init.keys)
    status, out = sn.request("PUT", "sys/replication/dr/secondary/disable", {"dr_operation_token": op})
    assert status == 200 and "abandoned" in out["warnings"][0], out
    assert _status(s, "dr") == {"mode": "disabled"}
    assert live_keys(sn.data_dir, b"core/hsm/root-key-next") == []
    assert live_keys(sn.data_dir, b"core/replication/activation") == []
    assert live_keys(sn.data_dir, b"core/replication/staged/") == []
    assert kv_read(s, s.root_token, "own", "mine") == {"v": "the HSM secondary's own"}

    # a restart: its own HSM unseals it, with its own seal configuration, data and root token
    restart(s, {200})
    st = seal_status(s)
    assert st["type"] == "pkcs11" and st["recovery_seal"] is True and st["sealed"] is False, st
    assert kv_read(s, s.root_token, "own", "mine") == {"v": "the HSM secondary's own"}
    hvac.Client(url=sn.addr, token=s.root_token, timeout=30).secrets.kv.v2.create_or_update_secret(
        "after", {"v": "standalone"}, mount_point="own")
    assert kv_read(s, s.root_token, "own", "after") == {"v": "standalone"}
    assert _status(s, "dr") == {"mode": "disabled"}
