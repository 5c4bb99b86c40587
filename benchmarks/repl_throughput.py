"""Benchmark 2: primary write throughput with 0, 1 and 2 DR secondaries attached.

Three single-node clusters: the primary (a DR primary from the start, so the states differ
only by the secondaries) and two DR secondaries, A and B. The closed-loop load generator of
:mod:`benchmarks.load` writes KV v2 secrets to the primary with ``concurrency`` clients for
``duration_s`` per repetition.

The states are **interleaved** so that the machine's drift (other jobs, a growing store)
falls on every state alike: each round measures one repetition of every state, in the order
0 → 1 → 2 secondaries on even rounds and 2 → 1 → 0 on odd ones. Between states secondaries
are attached and detached the way an operator does it:

* attach: the first time ``dr/secondary/enable`` (activation, bulk sync); afterwards a new
  ``secondary-token`` for the same id and ``dr/secondary/update-primary`` with a DR operation
  token made from the primary's keys (a bulk sync again); then wait until it streams at the
  primary's ``last_wal``;
* detach: ``dr/primary/revoke-secondary`` (the primary closes its connection and refuses
  it), then SIGSTOP the secondary's process so its reconnection attempts cost nothing; it
  gets SIGCONT before it is attached again.

Every figure is the median of the repetitions; the ratio is against 0 secondaries, measured
in the same run. Primary CPU per acknowledged write is reported too, and from it a
"CPU-bound" ratio (CPU ms/write with 0 ÷ with N): what the throughput ratio would be if the
primary had its cores to itself and were CPU-bound. Here the secondaries, the load
generator and other jobs share the same 2 cores, which the measured ratio also pays for.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import LoadSpec, Summary, median_summary, ratio, run_load
from benchmarks.repl_common import (
    MOUNT,
    activate_dr,
    enable_dr_primary,
    last_wal,
    log,
    mount_kv2,
    node,
    proc_cpu_s,
    revoke_dr_secondary,
    self_cpu_s,
    start_clusters,
    stop_all,
    wait_caught_up,
)
from cluster import dr_api
from cluster.local import LocalCluster

RATIO_TARGET = 0.9


@dataclass
class State:
    """One attachment state and its repetitions."""

    secondaries: int
    reps: list[Summary] = field(default_factory=list)
    primary_cpu_ms: list[float] = field(default_factory=list)
    secondary_cpu_ms: list[float] = field(default_factory=list)
    client_cpu_ms: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.secondaries} secondar{'y' if self.secondaries == 1 else 'ies'}"

    @property
    def median(self) -> Summary | None:
        return median_summary(self.reps) if self.reps else None

    @property
    def primary_cpu(self) -> float | None:
        return statistics.median(self.primary_cpu_ms) if self.primary_cpu_ms else None

    def to_json(self, base: State) -> dict[str, Any]:
        m, b = self.median, base.median

        def med(xs: list[float]) -> float | None:
            return round(statistics.median(xs), 3) if xs else None
        r = ratio(m.ops_per_s if m else None, b.ops_per_s if b else None)
        cpu_r = ratio(base.primary_cpu, self.primary_cpu)
        return {"state": self.name, "secondaries": self.secondaries, "median": m.to_json() if m else None,
                "ratio_to_0": None if r is None else round(r, 3),
                "cpu_bound_ratio_to_0": None if cpu_r is None else round(cpu_r, 3),
                "primary_cpu_ms_per_write": med(self.primary_cpu_ms),
                "secondaries_cpu_ms_per_write": med(self.secondary_cpu_ms),
                "client_cpu_ms_per_write": med(self.client_cpu_ms),
                "reps": [s.to_json() for s in self.reps]}


class Attachments:
    """Attach/detach DR secondaries of one primary (see the module docstring)."""

    def __init__(self, primary: LocalCluster, secondaries: dict[str, LocalCluster]) -> None:
        self.primary = primary
        self.secondaries = secondaries
        self.ids = list(secondaries)
        self.activated: set[str] = set()
        self.attached: list[str] = []
        #: (secondary id, "activate" | "update-primary", seconds until it streamed at last_wal)
        self.log: list[tuple[str, str, float | None]] = []

    def attach(self, sid: str) -> None:
        p, sec = self.primary, self.secondaries[sid]
        sn = node(sec)
        sn.signal(signal.SIGCONT)
        t0 = time.monotonic()
        if sid not in self.activated:
            activate_dr(p, sec, sid)
            self.activated.add(sid)
            how = "activate"
        else:
            assert p.init is not None
            op = dr_api.operation_token(sn, p.init.keys)
            token = dr_api.secondary_token(node(p), p.root_token, sid)
            dr_api.update_primary(sn, op, token)
            how = "update-primary"
        cu = wait_caught_up(sec, last_wal(p), t0, 600.0)
        self.log.append((sid, how, None if cu.elapsed_s is None else round(cu.elapsed_s, 3)))
        if cu.elapsed_s is None:
            raise TimeoutError(f"secondary {sid} did not catch up after {how} (states {cu.states}); "
                               f"its log: {sn.log_tail(3)}")
        self.attached.append(sid)

    def detach(self, sid: str) -> None:
        revoke_dr_secondary(self.primary, sid)
        node(self.secondaries[sid]).signal(signal.SIGSTOP)
        self.attached.remove(sid)

    def set_count(self, k: int) -> None:
        """Attach the first ``k`` secondaries and detach the others."""
        want = self.ids[:k]
        for sid in [s for s in self.attached if s not in want]:
            self.detach(sid)
        for sid in want:
            if sid not in self.attached:
                self.attach(sid)


def _delta_sum(before: list[float | None], after: list[float | None]) -> float | None:
    """The summed CPU seconds between two readings of several processes (None if any is missing)."""
    total = 0.0
    for x, y in zip(before, after):
        if x is None or y is None:
            return None
        total += y - x
    return total


async def _measure(state: State, p: LocalCluster, secs: list[LocalCluster], spec: LoadSpec, rep: int,
                   warmup_s: float) -> None:
    """Warm up, then one repetition of ``state``."""
    pn = node(p)
    tag = f"tp{state.secondaries}-r{rep}"
    await run_load(LoadSpec(base_url=spec.base_url, token=spec.token, op="write", concurrency=spec.concurrency,
                            duration_s=warmup_s, mount=MOUNT, key_prefix=f"{tag}-warm/"))
    c0 = proc_cpu_s(pn.pid), [proc_cpu_s(node(s).pid) for s in secs], self_cpu_s()
    res = await run_load(LoadSpec(base_url=spec.base_url, token=spec.token, op="write", concurrency=spec.concurrency,
                                  duration_s=spec.duration_s, mount=MOUNT, key_prefix=f"{tag}/"))
    c1 = proc_cpu_s(pn.pid), [proc_cpu_s(node(s).pid) for s in secs], self_cpu_s()
    s = res.summary
    state.reps.append(s)
    if s.ok:
        if c0[0] is not None and c1[0] is not None:
            state.primary_cpu_ms.append((c1[0] - c0[0]) * 1000.0 / s.ok)
        sec_cpu = _delta_sum(c0[1], c1[1])
        if secs and sec_cpu is not None:
            state.secondary_cpu_ms.append(sec_cpu * 1000.0 / s.ok)
        state.client_cpu_ms.append((c1[2] - c0[2]) * 1000.0 / s.ok)
    cpu = f"{state.primary_cpu_ms[-1]:.2f}" if state.primary_cpu_ms else "–"
    log(f"throughput [{state.name}] rep {rep + 1}: {s.ops_per_s:.0f} writes/s, p50 {s.p50_ms or 0:.1f} ms, "
        f"p99 {s.p99_ms or 0:.1f} ms, errors {s.error_count}, primary CPU {cpu} ms/write")


async def run_throughput(work: Path, duration_s: float, rounds: int, concurrency: int = 32,
                         warmup_s: float = 1.0) -> dict[str, Any]:
    """Run benchmark 2 (``rounds`` interleaved repetitions of each state); the JSON-ready result."""
    log("throughput: starting a single-node primary and two single-node DR secondaries")
    cl = start_clusters(work, ["tp-primary", "tp-dr-a", "tp-dr-b"])
    p = cl["tp-primary"]
    att = Attachments(p, {"bench-tp-a": cl["tp-dr-a"], "bench-tp-b": cl["tp-dr-b"]})
    states = [State(0), State(1), State(2)]
    spec = LoadSpec(base_url=node(p).addr, token=p.root_token, op="write", concurrency=concurrency,
                    duration_s=duration_s, mount=MOUNT)
    try:
        mount_kv2(p)
        enable_dr_primary(p)
        for rnd in range(rounds):
            order = states if rnd % 2 == 0 else states[::-1]
            for st in order:
                await asyncio.to_thread(att.set_count, st.secondaries)
                secs = [att.secondaries[sid] for sid in att.attached]
                await _measure(st, p, secs, spec, rnd, warmup_s)
    finally:
        stop_all(cl.values())
    return {"cluster": "1-node primary; 1-node DR secondaries", "concurrency": concurrency,
            "duration_s": duration_s, "reps": rounds, "order": "interleaved rounds: 0,1,2 then 2,1,0, …",
            "attachments": [{"secondary_id": s, "how": h, "caught_up_s": t} for s, h, t in att.log],
            "states": [s.to_json(states[0]) for s in states]}
