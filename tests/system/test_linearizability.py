"""Concurrent writes and reads of ONE key across faults, checked for linearizability.

Writer threads write unique values to the key through the node they believe is active
(no forwarding, so a deposed or standby node cannot hide behind the active one); reader
threads read it from the active node and, one of them, through every node in turn (a
standby forwards). Each operation records its invocation and completion time; a write
without a 2xx has an unknown outcome, a failed read is dropped. Mid-run the active node
is killed with SIGKILL (and later restarted), then the new active node is paused with
SIGSTOP and continued. tests/system/linearizability.py checks the history.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable

import pytest

from linearizability import History, Op, check_register

if TYPE_CHECKING:
    from conftest import SystemCluster
    from cluster.local import ClusterNode

# One cluster per module: under xdist, `--dist loadgroup` keeps this module on one worker.
pytestmark = pytest.mark.xdist_group("system-linearizability")


WRITERS = 2
READERS = 3
CLIENT_TIMEOUT = 2.0


class Client(threading.Thread):
    """One client thread: writes (``writer``) or reads the register until stopped."""

    def __init__(self, sc: "SystemCluster", key: str, hist: History, name: str, *, writer: bool,
                 roam: bool = False) -> None:
        super().__init__(name=name, daemon=True)
        self.sc, self.key, self.hist, self.writer, self.roam = sc, key, hist, writer, roam
        self.stop = threading.Event()
        self.acked = self.reads = 0

    def run(self) -> None:
        target: ClusterNode | None = None
        rotation = itertools.cycle(self.sc.nodes)
        for seq in itertools.count():
            if self.stop.is_set():
                return
            if self.roam:
                target = next(rotation)
                if not target.alive():
                    continue
            elif target is None:
                target = self.sc.lc.active()
                if target is None:
                    time.sleep(0.02)
                    continue
            if self.writer:
                ok = self._write(target, f"{self.name}-{seq}")
            else:
                ok = self._read(target)
            if not ok and not self.roam:
                target = None

    def _write(self, node: "ClusterNode", value: str) -> bool:
        t0 = time.monotonic()
        code = self.sc.put(node, self.key, value, timeout=CLIENT_TIMEOUT)
        t1 = time.monotonic()
        ok = code in (200, 204)
        self.hist.add(Op("write", value, t0, t1 if ok else None, self.name))
        self.acked += ok
        return ok

    def _read(self, node: "ClusterNode") -> bool:
        t0 = time.monotonic()
        code, value = self.sc.get(node, self.key, timeout=CLIENT_TIMEOUT, forward=self.roam)
        t1 = time.monotonic()
        if code in (200, 404):
            self.hist.add(Op("read", value if code == 200 else None, t0, t1, f"{self.name}@{node.name}"))
            self.reads += 1
            return True
        return False


def test_single_key_history_is_linearizable_across_faults(cluster: "SystemCluster",
                                                          measure: Callable[[str, str], None]) -> None:
    sc = cluster
    first = sc.healthy()
    key = f"lin-{uuid.uuid4().hex[:8]}"
    hist = History()
    clients = [Client(sc, key, hist, f"w{i}", writer=True) for i in range(WRITERS)]
    clients += [Client(sc, key, hist, f"r{i}", writer=False, roam=(i == READERS - 1)) for i in range(READERS)]
    for c in clients:
        c.start()

    def acked_writes_since(t: float, exclude: str | None = None) -> int:
        return sum(1 for o in hist.snapshot()
                   if o.kind == "write" and o.complete is not None and o.invoke >= t and o.client != exclude)

    def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, "clients made no progress"
            time.sleep(0.02)

    try:
        wait_for(lambda: acked_writes_since(0) >= 40)
        t_kill = time.monotonic()
        sc.lc.kill(first)
        second = sc.lc.wait_active(timeout=30, exclude=first)
        wait_for(lambda: acked_writes_since(t_kill) >= 1)
        failover = min(o.complete for o in hist.snapshot()
                       if o.kind == "write" and o.complete is not None and o.invoke >= t_kill) - t_kill
        sc.lc.restart(first)  # clients keep going meanwhile
        first.wait_health({429}, timeout=30)
        wait_for(lambda: acked_writes_since(time.monotonic() - 1.0) >= 20)
        t_pause = time.monotonic()
        sc.lc.pause(second)
        try:
            third = sc.lc.wait_active(timeout=30, exclude=second)
            time.sleep(max(0.0, 2.5 - (time.monotonic() - t_pause)))
        finally:
            sc.lc.resume(second)
        t_cont = time.monotonic()
        wait_for(lambda: acked_writes_since(t_cont) >= 40)
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(30)

    # Final reads through every node (standbys forward) join the history.
    for node in sc.nodes:
        t0 = time.monotonic()
        code, value = sc.get(node, key)
        assert code == 200
        hist.add(Op("read", value, t0, time.monotonic(), f"final@{node.name}"))
    ops = hist.snapshot()
    writes = [o for o in ops if o.kind == "write"]
    acked = [o for o in writes if o.complete is not None]
    reads = [o for o in ops if o.kind == "read"]
    measure("linearizability run", f"{len(acked)} acknowledged writes, {len(writes) - len(acked)} of unknown "
            f"outcome, {len(reads)} reads; active {first.name} -> {second.name} (kill -9, first write after "
            f"{failover:.3f}s) -> {third.name} (pause)")
    assert all(not c.is_alive() for c in clients)
    assert len(acked) >= 100 and len([o for o in reads if o.value is not None]) >= 100
    assert [o for o in reads if o.invoke > t_cont and o.value is not None], "no reads after the last fault"
    violations = check_register(ops)
    assert not violations, f"{len(violations)} violations, first ones:\n" + "\n".join(map(str, violations[:5]))
    # The check is not vacuous: one stale read appended to this very history is caught.
    t_end = time.monotonic()
    assert check_register([*ops, Op("read", acked[0].value, t_end, t_end + 0.001, "fake")])
