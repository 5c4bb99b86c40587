"""A paused (SIGSTOP) active node that wakes up deposed, and a whole-cluster restart.

The paused leader keeps its sockets, so requests sent to it while it is stopped sit in
its accept queue and are the first thing it handles on SIGCONT, while it may still
believe it leads: it must neither acknowledge a write that is then lost nor serve a
read older than a write acknowledged by the new active node before the read was sent.
"""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import lmdb
import pytest

from cluster.local import pid_alive, port_in_use
from linearizability import History, Op, check_register

if TYPE_CHECKING:
    from conftest import SystemCluster

# One cluster per module: under xdist, `--dist loadgroup` keeps this module on one worker.
pytestmark = pytest.mark.xdist_group("system-restart-and-pause")


PAUSE = 3.0
STANDBY_BOUND = 5.0  # seconds from SIGCONT until the old leader answers sys/health 429


class Call(threading.Thread):
    """One request on its own thread, recording when it was sent and answered."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.invoke = self.complete = 0.0

    def run(self) -> None:
        self.invoke = time.monotonic()
        self.result = self.fn()
        self.complete = time.monotonic()


def test_paused_active_wakes_up_deposed(cluster: "SystemCluster", measure: Callable[[str, str], None]) -> None:
    sc = cluster
    hist = History()

    def put_acked(key: str, value: str) -> None:
        t0 = time.monotonic()
        sc.put_acked(key, value)
        hist.add(Op("write", value, t0, time.monotonic(), "client"))

    old = sc.healthy()
    put_acked("p", "v1")
    sc.lc.pause(old)
    t_pause = time.monotonic()
    try:
        new = sc.lc.wait_active(timeout=20, exclude=old)
        t_new = time.monotonic() - t_pause
        put_acked("p", "v2")
        # Sent to the stopped node after v2 was acknowledged elsewhere: queued until SIGCONT.
        read_fwd = Call(lambda: sc.get(old, "p", timeout=20))
        read_local = Call(lambda: sc.get(old, "p", timeout=20, forward=False))
        write_local = Call(lambda: sc.put(old, "p", "from-the-deposed-leader", timeout=20))
        for c in (read_fwd, read_local, write_local):
            c.start()
        time.sleep(max(0.0, PAUSE - (time.monotonic() - t_pause)))
    finally:
        sc.lc.resume(old)
    t_cont = time.monotonic()
    old.wait_health({429}, timeout=STANDBY_BOUND + 10)
    t_standby = time.monotonic() - t_cont
    for c in (read_fwd, read_local, write_local):
        c.join(30)
        assert not c.is_alive()
    measure("paused active: another node active after", f"{t_new:.3f}s")
    measure("paused active: requests queued while stopped answered",
            f"read {read_fwd.result}, read without forwarding {read_local.result}, "
            f"write without forwarding {write_local.result}")
    measure("paused active: after SIGCONT, answers 429 as standby after", f"{t_standby:.3f}s")
    assert t_standby < STANDBY_BOUND

    for c in (read_fwd, read_local):
        code, value = c.result
        assert code in (200, 307, 429, 503, None), c.result
        if code == 200:
            hist.add(Op("read", value, c.invoke, c.complete, "queued"))
    code = write_local.result
    hist.add(Op("write", "from-the-deposed-leader", write_local.invoke,
                write_local.complete if code in (200, 204) else None, "queued"))

    # Afterwards: the old leader is a standby that forwards; every node serves the same value.
    assert sc.lc.wait_active(exclude=old) is new
    for node in [new, *sc.standbys(new)]:
        t0 = time.monotonic()
        code, value = sc.get(node, "p")
        assert code == 200
        hist.add(Op("read", value, t0, time.monotonic(), f"after@{node.name}"))
    assert sc.lc.leader_status(old)["is_self"] is False  # type: ignore[index]
    # What the deposed leader acknowledged must not be lost, and it must not serve stale reads:
    # v2 was acknowledged by the new active node before any queued request was sent.
    violations = check_register(hist.snapshot())
    assert not violations, "\n".join(map(str, violations)) + f"\n{old.name} log: {old.log_tail(30)}"
    put_acked("p", "v3")
    code, value = sc.get(old, "p")
    assert (code, value) == (200, "v3")


LAPSE = 0.3  # both followers silent: past the 0.2 s quorum lease, short of the 0.4 s election timeout


def _raft_state_changes(node: Any) -> int:
    return Path(node.log_path).read_text(errors="replace").count('"raft_state_changed"')


def test_a_momentary_lease_lapse_delays_writes_instead_of_refusing_them(
        cluster: "SystemCluster", measure: Callable[[str, str], None]) -> None:
    """Both followers stop answering for LAPSE (as when their answers or the active node's
    Raft thread come late under load): the active node's quorum lease runs out but nobody
    holds an election. Writes sent to it meanwhile wait for the lease to come back and are
    acknowledged; none is refused (they used to get 503)."""
    sc = cluster
    for attempt in range(3):  # an attempt in which the followers did hold an election proves nothing
        act = sc.healthy()
        followers = sc.standbys(act)
        changes = [_raft_state_changes(n) for n in sc.nodes]
        calls = [Call(lambda i=i: sc.put(act, f"lapse/{attempt}-{i}", str(i), timeout=10.0)) for i in range(5)]
        for f in followers:
            sc.lc.pause(f)
        try:
            time.sleep(0.25)  # the lease has run out
            for c in calls:
                c.start()
            time.sleep(LAPSE - 0.25)
        finally:
            for f in followers:
                sc.lc.resume(f)
        for c in calls:
            c.join(15)
        if [_raft_state_changes(n) for n in sc.nodes] != changes:
            continue
        assert all(c.result in (200, 204) for c in calls), [c.result for c in calls]
        for i in range(5):
            assert sc.get(act, f"lapse/{attempt}-{i}", forward=False) == (200, str(i))
        measure("writes during a 0.3 s lease lapse", "all acknowledged, slowest after "
                f"{max(c.complete - c.invoke for c in calls):.2f}s")
        return
    pytest.fail("the followers held an election in every attempt: no lease lapse without one to test")


def test_whole_cluster_restart(cluster: "SystemCluster", measure: Callable[[str, str], None]) -> None:
    sc = cluster
    sc.healthy()
    written = {f"restart/{i}": f"value-{i}" for i in range(20)}
    for k, v in written.items():
        sc.put_acked(k, v)

    sc.lc.stop()
    assert not any(n.alive() for n in sc.nodes)
    t0 = time.monotonic()
    sc.lc.start()
    t_started = time.monotonic() - t0
    for n in sc.nodes:
        assert n.wait_health({503, 200, 429}, timeout=30) == 503, f"{n.name} did not come back sealed"
        code, status = n.request("GET", "sys/seal-status")
        assert code == 200 and status["sealed"] is True and status["initialized"] is True
        assert sc.get(n, "restart/0")[0] == 503  # a sealed node serves nothing
    t1 = time.monotonic()
    sc.lc.unseal_all()
    t_unsealed = time.monotonic() - t1
    act = sc.lc.wait_active(timeout=30)
    for n in sc.standbys(act):
        n.wait_health({429}, timeout=30)
    measure("whole-cluster restart: start + unseal to an active node",
            f"{time.monotonic() - t0:.2f}s (processes listening {t_started:.2f}s, unseal calls {t_unsealed:.2f}s)")

    for k, v in written.items():
        assert sc.get(act, k, forward=False) == (200, v)
    for n in sc.nodes:  # through every node (standbys forward)
        assert sc.get(n, "restart/19") == (200, "value-19")
    for n in sc.standbys(act):  # a standby forwards writes (body and all) to the active node
        assert sc.put(n, f"restart/via-{n.name}", n.name, forward=True) in (200, 204)
        assert sc.get(act, f"restart/via-{n.name}", forward=False) == (200, n.name)
        sc.lc.wait_caught_up(n)


def test_os_crash_of_a_standby_rebuilds_its_store(cluster: "SystemCluster", measure: Callable[[str, str], None]) -> None:
    """A node's store is written without fsync. After its OS crashed (another boot id in
    the store's marker, torn pages) it is set aside, refilled from the node's own journal
    before unsealing; the node catches up and then holds exactly what the other nodes hold."""
    sc = cluster
    act = sc.healthy()
    before = {f"oscrash/{i}": f"before-{i}" for i in range(20)}
    for k, v in before.items():
        sc.put_acked(k, v)
    victim = sc.standbys(act)[0]
    sc.lc.kill(victim)
    store = victim.data_dir / "vault.db"
    (store / "unsynced-boot-id").write_text("a-boot-before-the-crash")
    (store / "data.mdb").write_bytes(random.randbytes(1 << 16))  # whatever the disk kept
    after = {f"oscrash/late-{i}": f"after-{i}" for i in range(10)}
    for k, v in after.items():  # the cluster moves on without it
        sc.put_acked(k, v)

    t0 = time.monotonic()
    sc.lc.restart(victim)  # starts, unseals (its keyring comes from the rebuilt store)
    victim.wait_health({429}, timeout=30)
    sc.lc.wait_caught_up(victim)
    measure("OS crash of a standby: restart + rebuild + unseal + catch-up", f"{time.monotonic() - t0:.2f}s")
    logged = victim.log_path.read_text(errors="replace")
    assert "storage_set_aside_after_os_crash" in logged and "raft_store_rebuilt" in logged
    assert (store / "data.mdb.untrusted").exists()

    # its rebuilt store holds what the others hold: the same ciphertext under every KV key
    # (a read-only LMDB reader next to the servers; the cluster is idle now)
    other = next(n for n in sc.standbys(sc.lc.wait_active(timeout=30)) if n is not victim)
    sc.lc.wait_caught_up(other)
    mine, theirs = kv_items(victim.data_dir), kv_items(other.data_dir)
    assert len(mine) >= len(before) + len(after) and mine == theirs
    for k, v in {**before, **after}.items():  # and the cluster serves every key through it
        assert sc.get(victim, k) == (200, v), k


def kv_items(data_dir: Path) -> dict[bytes, bytes]:
    """Every stored item under ``logical/`` of a node's store, read without a lock."""
    env = lmdb.open(str(data_dir / "vault.db"), readonly=True, max_dbs=4, lock=False, subdir=True)
    try:
        with env.begin(db=env.open_db(b"data", create=False)) as txn:
            cur = txn.cursor()
            out: dict[bytes, bytes] = {}
            found = cur.set_range(b"logical/")
            while found and bytes(cur.key()).startswith(b"logical/"):
                out[bytes(cur.key())] = bytes(cur.value())
                found = cur.next()
            return out
    finally:
        env.close()


# ---- the launcher itself: python -m cluster ------------------------------------------------


def _free_base_port() -> int:
    """A base port whose six node ports (base + 10i, base + 10i + 1) are all free."""
    for _ in range(200):
        base = random.randrange(20000, 30000, 100)
        if not any(port_in_use(base + 10 * i + j) for i in range(3) for j in (0, 1)):
            return base
    raise RuntimeError("no free port block")


def _cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster", "--dir", str(workdir), *args],
                          capture_output=True, text=True, timeout=180)


def test_cli_up_down_and_idempotent_restart(tmp_path: Path, measure: Callable[[str, str], None]) -> None:
    d = tmp_path / "cli-cluster"
    base = _free_base_port()
    t0 = time.monotonic()
    up = _cli(d, "up", "--nodes", "3", "--base-port", str(base))
    measure("python -m cluster up (fresh, 3 nodes)", f"{time.monotonic() - t0:.2f}s")
    try:
        assert up.returncode == 0, up.stderr
        init = json.loads((d / "init.json").read_text())
        assert stat.S_IMODE((d / "init.json").stat().st_mode) == 0o600
        secrets = [init["root_token"], *init["unseal_keys_hex"], *init["unseal_keys_b64"]]
        for port in (base, base + 10, base + 20):
            assert f"http://127.0.0.1:{port}" in up.stdout
        assert "active node: http://127.0.0.1:" in up.stdout and str(d / "init.json") in up.stdout
        state = json.loads((d / "state.json").read_text())
        assert [n["cluster_port"] for n in state["nodes"]] == [base + 1, base + 11, base + 21]
        assert all(n["pid"] for n in state["nodes"])

        st = _cli(d, "status", "--json")
        roles = sorted(n["role"] for n in json.loads(st.stdout)["nodes"])
        assert roles == ["active", "standby", "standby"], st.stdout

        again = _cli(d, "up")  # idempotent: nothing restarted, nothing re-initialized
        assert again.returncode == 0, again.stderr
        assert json.loads((d / "state.json").read_text())["nodes"] == state["nodes"]
        assert json.loads((d / "init.json").read_text()) == init

        assert _cli(d, "kill", "1").returncode == 0
        assert not pid_alive(state["nodes"][1]["pid"])
        rs = _cli(d, "restart", "1")
        assert rs.returncode == 0 and "standby" in rs.stdout, (rs.stdout, rs.stderr)

        assert _cli(d, "down").returncode == 0
        assert not any(pid_alive(n["pid"]) for n in state["nodes"])
        t1 = time.monotonic()
        back = _cli(d, "up")  # an initialized cluster is restarted and unsealed, not re-initialized
        measure("python -m cluster up (restart of a stopped cluster)", f"{time.monotonic() - t1:.2f}s")
        assert back.returncode == 0, back.stderr
        assert json.loads((d / "init.json").read_text()) == init
        st = json.loads(_cli(d, "status", "--json").stdout)
        assert sorted(n["role"] for n in st["nodes"]) == ["active", "standby", "standby"]

        busy = _cli(tmp_path / "other", "up", "--base-port", str(base))  # our own nodes hold the ports
        assert busy.returncode == 1 and f"port {base}" in busy.stderr and "in use" in busy.stderr
        for out in (up, again, rs, back, busy, _cli(d, "status")):
            assert not any(s in out.stdout + out.stderr for s in secrets)
    finally:
        _cli(d, "down")
    assert _cli(d, "down", "--purge").returncode == 0 and not d.exists()
