"""Shared plumbing of the replication benchmarks: single-node clusters, DR wiring, status.

Every cluster is a :class:`cluster.local.LocalCluster` of real server processes on loopback,
started in the benchmark's temporary directory. Keys and tokens stay in memory (the launcher
keeps its own 0600 copy in the cluster's work dir); nothing here prints them.

DR wiring follows Vault's API exactly as ``tests/integration/dr_helpers.py`` does: enable
the primary, ``secondary-token`` → ``wrap_info.token``, ``dr/secondary/enable`` with the
secondary's own root token. After activation a secondary runs on the primary's keyring:
:func:`activate_dr` points the secondary's :class:`LocalCluster` at the primary's keys so that
``LocalCluster.unseal`` and ``restart(unseal=True)`` use them.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import dr_api
from cluster.local import REQUEST_ERRORS, ClusterNode, LocalCluster

MOUNT = "bench"

_T0 = time.monotonic()


def log(msg: str) -> None:
    """One progress line on stdout (never a secret)."""
    print(f"[repl {time.strftime('%H:%M:%S')} +{time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


def loadavg() -> str:
    """The 1/5/15-minute load averages, formatted."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (all threads), from /proc; None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def tcp_bytes_sent(local_port: int) -> int | None:
    """Bytes sent (and acknowledged) on the established TCP connections whose local port is
    ``local_port``, from ``ss -ti`` (None when ``ss`` is missing or fails)."""
    try:
        out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{local_port} )"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sum(int(m) for m in re.findall(r"\bbytes_acked:(\d+)", out))


def self_cpu_s() -> float:
    """CPU seconds this process (the load generator) has used."""
    t = os.times()
    return t.user + t.system


def node(lc: LocalCluster) -> ClusterNode:
    """The only node of a single-node cluster."""
    return lc.nodes[0]


def parallel(fns: list[Callable[[], Any]]) -> None:
    """Run ``fns`` in threads and re-raise the first exception in the caller."""
    errors: list[BaseException] = []

    def run(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def start_clusters(work: Path, names: list[str], extra_config: dict[str, str] | None = None) -> dict[str, LocalCluster]:
    """Start, initialize and unseal one single-node cluster per name (concurrently).

    ``extra_config`` maps a name to top-level HCL for that node (e.g. a ``replication {}``
    stanza). If any cluster fails to come up, every one started is stopped again.
    """
    extra_config = extra_config or {}
    out = {name: LocalCluster(work / name, size=1) for name in names}
    for name, lc in out.items():
        node(lc).extra_config = extra_config.get(name, "")
    try:
        parallel([lc.up for lc in out.values()])
    except BaseException:
        stop_all(out.values())
        raise
    return out


def stop_all(clusters: Any) -> None:
    """Stop every cluster in the iterable, ignoring errors (used in ``finally`` blocks)."""
    for lc in clusters:
        try:
            lc.stop()
        except Exception as e:  # noqa: BLE001  # teardown must go on
            log(f"warning: stopping {lc.workdir.name} failed: {type(e).__name__}: {e}")


def mount_kv2(lc: LocalCluster, mount: str = MOUNT) -> None:
    """Enable a KV v2 engine at ``mount`` on the (primary) cluster."""
    dr_api.call(node(lc), "POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}},
                lc.root_token)


def dr_status(n: ClusterNode, timeout: float = 5.0) -> dict[str, Any]:
    """``sys/replication/dr/status`` data of a node ({} when it does not answer)."""
    try:
        return dr_api.dr_status(n, timeout=timeout)
    except dr_api.DRError:
        return {}


def last_wal(lc: LocalCluster) -> int:
    """The primary's newest retained WAL index."""
    return int(dr_status(node(lc)).get("last_wal") or 0)


def enable_dr_primary(lc: LocalCluster) -> None:
    """Make a cluster a DR primary (no-op when it is one)."""
    dr_api.enable_primary(node(lc), lc.root_token)


@dataclass(frozen=True)
class Activation:
    """When a DR secondary was activated (``time.monotonic()`` just before the enable call)."""

    secondary_id: str
    started: float
    call_s: float


def activate_dr(primary: LocalCluster, secondary: LocalCluster, secondary_id: str) -> Activation:
    """Enable ``primary`` as DR primary if needed, activate ``secondary`` with a fresh token.

    Returns right after ``dr/secondary/enable`` answered; the caller waits for the catch-up
    (:func:`wait_caught_up`). From then on ``secondary`` unseals with the primary's keys.
    """
    enable_dr_primary(primary)
    token = dr_api.secondary_token(node(primary), primary.root_token, secondary_id)
    assert secondary.init is not None
    own_root = secondary.init.root_token
    t0 = time.monotonic()
    dr_api.activate_secondary(node(secondary), own_root, token)
    call_s = time.monotonic() - t0
    secondary.init = primary.init
    secondary.threshold = primary.threshold
    return Activation(secondary_id, t0, call_s)


def revoke_dr_secondary(primary: LocalCluster, secondary_id: str) -> None:
    """``dr/primary/revoke-secondary``."""
    dr_api.call(node(primary), "PUT", "sys/replication/dr/primary/revoke-secondary",
                {"secondary_id": secondary_id}, primary.root_token)


@dataclass
class CatchUp:
    """How a secondary got to the primary's WAL index: time, states seen, a status timeline."""

    target_wal: int
    elapsed_s: float | None
    states: list[str]
    #: (seconds since the start, state, last_remote_wal) at every poll where something changed.
    timeline: list[tuple[float, str, int]]
    start_remote_wal: int

    def to_json(self) -> dict[str, Any]:
        el = None if self.elapsed_s is None else round(self.elapsed_s, 3)
        return {"target_wal": self.target_wal, "elapsed_s": el,
                "states_seen": self.states, "start_remote_wal": self.start_remote_wal}


def wait_caught_up(secondary: LocalCluster, target_wal: int, started: float, timeout: float = 120.0,
                   interval: float = 0.02) -> CatchUp:
    """Poll the secondary's DR status until ``stream-wals`` at ``last_remote_wal`` ≥ ``target_wal``.

    ``elapsed_s`` is measured from ``started`` (a ``time.monotonic()`` value) to the poll
    that saw it (None on timeout). Errors (a restarting node) count as polls with no answer.
    """
    n = node(secondary)
    states: list[str] = []
    timeline: list[tuple[float, str, int]] = []
    first_remote: int | None = None
    last: tuple[str, int] | None = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = dr_api.dr_status(n, timeout=2.0)
        except (dr_api.DRError, *REQUEST_ERRORS):
            st = {}
        now = time.monotonic()
        state = str(st.get("state") or "no-answer")
        remote = int(st.get("last_remote_wal") or 0)
        if first_remote is None and st:
            first_remote = remote
        if state not in states:
            states.append(state)
        if (state, remote) != last:
            timeline.append((round(now - started, 4), state, remote))
            last = (state, remote)
        if state == "stream-wals" and remote >= target_wal:
            return CatchUp(target_wal, now - started, states, timeline, first_remote or 0)
        time.sleep(interval)
    return CatchUp(target_wal, None, states, timeline, first_remote or 0)


def unseal_with_primary_keys(secondary: LocalCluster) -> None:
    """Unseal a (restarted) DR secondary; after :func:`activate_dr` its init is the primary's."""
    secondary.unseal(node(secondary))


def log_offset(n: ClusterNode) -> int:
    """The current size of a node's server.log (to read only what comes later)."""
    try:
        return n.log_path.stat().st_size
    except OSError:
        return 0


def log_events(n: ClusterNode, since: int, events: tuple[str, ...]) -> dict[str, list[str]]:
    """The server.log lines after byte ``since`` that mention each event name (JSON lines)."""
    try:
        with open(n.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return {e: [] for e in events}
    return {e: [ln for ln in text.splitlines() if f'"{e}"' in ln] for e in events}
