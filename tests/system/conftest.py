"""System tests: a real three-node cluster (cluster.local.LocalCluster) per test module.

Each module shares one cluster (starting one costs ~12 s); tests in a module leave it
with every node running and unsealed. Clients here speak plain HTTP (http.client, no redirects) with short
timeouts and talk to whichever node is active, finding it again after a failure.
Measurements (failover times, ...) are printed in pytest's terminal summary.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from cluster.local import REQUEST_ERRORS, ClusterNode, LocalCluster

NO_FORWARD = {"X-Vault-No-Request-Forwarding": "true"}
MEASURE_PREFIX = "measure: "


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print what the system tests measured (from the reports: works under xdist too)."""
    lines = [f"{name}: {value}" for key in ("passed", "failed") for rep in terminalreporter.stats.get(key, [])
             if getattr(rep, "when", "") == "call" for name, value in getattr(rep, "user_properties", [])
             if str(name).startswith(MEASURE_PREFIX)]
    if lines:
        terminalreporter.section("system test measurements")
        for line in lines:
            terminalreporter.write_line(line[len(MEASURE_PREFIX):])


@pytest.fixture
def measure(record_property: Callable[[str, object], None]) -> Callable[[str, str], None]:
    """``measure(name, text)`` records a measurement for the terminal summary (and prints it)."""
    def record(name: str, value: str) -> None:
        record_property(MEASURE_PREFIX + name, value)
        print(f"{name}: {value}")
    return record


@dataclass(frozen=True)
class Ack:
    """A write the cluster acknowledged (2xx)."""

    key: str
    value: str
    node: str
    invoke: float
    complete: float


class SystemCluster:
    """A LocalCluster plus KV v2 helpers for tests."""

    def __init__(self, lc: LocalCluster) -> None:
        self.lc = lc

    @property
    def nodes(self) -> list[ClusterNode]:
        return self.lc.nodes

    @property
    def token(self) -> str:
        return self.lc.root_token

    def call(self, node: ClusterNode, method: str, path: str, body: Any = None, *, timeout: float = 3.0,
             forward: bool = True) -> tuple[int | None, Any]:
        """One request, never following redirects; (None, error) when the node does not answer."""
        headers = {"X-Vault-Token": self.token, **({} if forward else NO_FORWARD)}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
        try:
            conn.request(method, f"/v1/{path}", body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, raw
        except REQUEST_ERRORS as e:
            return None, e
        finally:
            conn.close()

    def put(self, node: ClusterNode, key: str, value: str, *, timeout: float = 3.0,
            forward: bool = False) -> int | None:
        """KV v2 write of ``{"v": value}``; the status (None: no answer)."""
        return self.call(node, "POST", f"secret/data/{key}", {"data": {"v": value}}, timeout=timeout,
                         forward=forward)[0]

    def get(self, node: ClusterNode, key: str, *, timeout: float = 3.0,
            forward: bool = True) -> tuple[int | None, str | None]:
        """KV v2 read: (status, value or None)."""
        code, body = self.call(node, "GET", f"secret/data/{key}", timeout=timeout, forward=forward)
        if code == 200 and isinstance(body, dict):
            return code, str(body["data"]["data"]["v"])
        return code, None

    def put_acked(self, key: str, value: str, timeout: float = 30.0) -> ClusterNode:
        """Write through the active node until acknowledged; the node that acknowledged."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            act = self.lc.active()
            if act is not None and self.put(act, key, value) in (200, 204):
                return act
            time.sleep(0.05)
        raise TimeoutError(f"write of {key} never acknowledged")

    def writer(self, timeout: float = 2.0) -> "Writer":
        """A background writer of distinct keys (not started); ``timeout`` per request."""
        return Writer(self, timeout=timeout)

    def standbys(self, active: ClusterNode) -> list[ClusterNode]:
        return [n for n in self.nodes if n is not active]

    def healthy(self, timeout: float = 60.0) -> ClusterNode:
        """Every node running, unsealed, one active and the rest standbys; the active one."""
        for n in self.nodes:
            if not n.alive():
                self.lc.restart(n)
            self.lc.resume(n)
        for n in self.nodes:
            self.lc.unseal(n)
        act = self.lc.wait_active(timeout)
        for n in self.standbys(act):
            n.wait_health({429}, timeout=timeout)
        return act


@dataclass
class Writer:
    """A background thread writing distinct keys through whichever node is active."""

    sc: SystemCluster
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    timeout: float = 2.0
    acked: list[Ack] = field(default_factory=list)
    failures: list[tuple[float, str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.prefix}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def wait_acks(self, n: int, timeout: float = 30.0, after: float = 0.0, exclude: str | None = None) -> Ack:
        """Block until ``n`` writes invoked after ``after`` (and not via ``exclude``) are acked."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = [a for a in list(self.acked) if a.invoke >= after and a.node != exclude]
            if len(got) >= n:
                return got[n - 1]
            time.sleep(0.01)
        raise TimeoutError(f"only {len(self.acked)} writes acknowledged; failures: {self.failures[-3:]}")

    def _run(self) -> None:
        target: ClusterNode | None = None
        i = 0
        while not self._stop.is_set():
            if target is None:
                target = self.sc.lc.active()
                if target is None:
                    time.sleep(0.02)
                    continue
            key, value = f"{self.prefix}/{i}", f"{self.prefix}-{i}-{uuid.uuid4().hex[:6]}"
            i += 1
            t0 = time.monotonic()
            code = self.sc.put(target, key, value, timeout=self.timeout)
            t1 = time.monotonic()
            if code in (200, 204):
                self.acked.append(Ack(key, value, target.name, t0, t1))
            else:
                self.failures.append((t1, target.name, code))
                target = None


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemCluster]:
    """A three-node cluster with KV v2 at secret/, shared by one test module.

    A module setting ``CLUSTER_CGROUPS = True`` gets every node in its own cgroup2
    directory, for partitions (needs root, cgroup2 and iptables).
    """
    workdir = tmp_path_factory.mktemp("cluster")
    lc = LocalCluster(workdir, size=3, cgroups=bool(getattr(request.module, "CLUSTER_CGROUPS", False)))
    try:
        lc.up()
        code, body = lc.wait_active().request("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}},
                                         token=lc.root_token, timeout=30)
        assert code in (200, 204), (code, body)
        sc = SystemCluster(lc)
        sc.put_acked("warmup", "1")
        yield sc
    finally:
        lc.stop()  # the work dir (logs, data) stays for inspection; pytest keeps the last 3 runs
