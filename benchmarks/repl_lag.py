"""Benchmark 1: DR replication lag at fixed write rates and at the primary's maximum.

A single-node primary and a single-node DR secondary. For each rate an open-loop writer
(:func:`benchmarks.repl_writer.paced_writes`) writes KV v2 secrets to the primary while a
poller process (:class:`benchmarks.repl_poll.Poller`) reads the secondary's
``last_remote_wal`` every few ms and the primary's ``last_wal`` every few polls.

The lag of write *i* (:func:`compute_lags`) is the first time the secondary was seen at
``last_remote_wal ≥ target_i`` minus the write's ack time, where ``target_i`` is the
write's ``X-Vault-Index`` capped by the first primary ``last_wal`` read *sent* after the ack
(the primary's applied index can be above its newest WAL entry when entries that changed
nothing were applied last; the write's own entry is in the WAL, so the cap never falls below
it). Both bounds err on the late side: the figures are upper bounds, by up to one poll
period plus a status round trip. A write the secondary had before its ack counts as 0 ms.
"""

from __future__ import annotations

import asyncio
import bisect
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import percentile
from benchmarks.repl_common import (
    activate_dr,
    dr_status,
    last_wal,
    log,
    mount_kv2,
    node,
    proc_cpu_s,
    self_cpu_s,
    start_clusters,
    stop_all,
    wait_caught_up,
)
from benchmarks.repl_poll import Poller, PollResult
from benchmarks.repl_writer import WriteAck, WriteRun, paced_writes
from cluster.local import LocalCluster

LAG_TARGET_MS = 100.0
LAG_TARGET_RATE = 1000.0


@dataclass
class LagStats:
    """Lag figures of one run (milliseconds)."""

    writes: int
    observed: int
    before_ack: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    #: (ack time relative to the first ack, lag ms) of every observed write, for the plots.
    series: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)
        return {"writes": self.writes, "observed": self.observed, "unobserved": self.writes - self.observed,
                "replicated_before_ack": self.before_ack, "p50_ms": r(self.p50_ms), "p90_ms": r(self.p90_ms),
                "p99_ms": r(self.p99_ms), "max_ms": r(self.max_ms), "mean_ms": r(self.mean_ms)}


def compute_lags(acks: list[WriteAck], secondary: list[tuple[float, int]],
                 primary: list[tuple[float, int]]) -> LagStats:
    """Per-write lag (see the module docstring) and its percentiles.

    ``secondary``: (time first seen, last_remote_wal), in time order; ``primary``: (time
    sent, last_wal), in time order. Writes the secondary was never seen to reach are left
    out of the percentiles and reported as unobserved.
    """
    s_times = [t for t, _ in secondary]
    s_vals: list[int] = []
    hi = 0
    for _, v in secondary:  # running max: a value never goes back, but be safe
        hi = max(hi, v)
        s_vals.append(hi)
    p_times = [t for t, _ in primary]
    lags: list[float] = []
    series: list[tuple[float, float]] = []
    before = 0
    t_first = acks[0].acked if acks else 0.0
    for a in acks:
        target = a.index
        j = bisect.bisect_left(p_times, a.acked)
        if j < len(primary) and primary[j][1] > 0:
            target = min(target, primary[j][1])
        k = bisect.bisect_left(s_vals, target)
        if k >= len(s_vals):
            continue
        lag = (s_times[k] - a.acked) * 1000.0
        if lag < 0:
            before += 1
            lag = 0.0
        lags.append(lag)
        series.append((a.acked - t_first, lag))
    srt = sorted(lags)
    if not srt:
        return LagStats(len(acks), 0, before, None, None, None, None, None, series)
    return LagStats(len(acks), len(srt), before, percentile(srt, 50), percentile(srt, 90), percentile(srt, 99),
                    srt[-1], statistics.fmean(srt), series)


@dataclass
class LagRep:
    """One repetition at one rate."""

    writes: WriteRun
    lag: LagStats
    poll: PollResult
    primary_cpu_ms_per_write: float | None
    secondary_cpu_ms_per_write: float | None
    client_cpu_ms_per_write: float | None

    def to_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 3)
        return {"writer": self.writes.to_json(), "lag": self.lag.to_json(),
                "poll_period_ms": r(self.poll.poll_period_ms), "secondary_polls": self.poll.secondary_polls,
                "primary_polls": self.poll.primary_polls, "poll_errors": self.poll.errors,
                "primary_cpu_ms_per_write": r(self.primary_cpu_ms_per_write),
                "secondary_cpu_ms_per_write": r(self.secondary_cpu_ms_per_write),
                "client_cpu_ms_per_write": r(self.client_cpu_ms_per_write)}


def _median(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


@dataclass
class LagRow:
    """All repetitions at one target rate, and their medians."""

    label: str
    target_rate: float | None
    connections: int
    reps: list[LagRep] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        """The median over repetitions of one lag figure (``p50_ms`` …) or writer figure."""
        vals: list[float | None] = []
        for r in self.reps:
            if key == "achieved_rate":
                vals.append(r.writes.achieved_rate)
            elif key == "write_p50_ms":
                vals.append(r.writes.latency_ms(50))
            elif key == "poll_period_ms":
                vals.append(r.poll.poll_period_ms)
            elif key.endswith("cpu_ms_per_write"):
                vals.append(getattr(r, key))
            else:
                vals.append(getattr(r.lag, key))
        return _median(vals)

    def to_json(self) -> dict[str, Any]:
        keys = ("achieved_rate", "p50_ms", "p90_ms", "p99_ms", "max_ms", "write_p50_ms", "poll_period_ms",
                "primary_cpu_ms_per_write", "secondary_cpu_ms_per_write", "client_cpu_ms_per_write")
        med = {k: (None if (v := self.median(k)) is None else round(v, 2)) for k in keys}
        med["unobserved"] = sum(r.lag.writes - r.lag.observed for r in self.reps)
        med["errors"] = sum(sum(r.writes.errors.values()) for r in self.reps)
        return {"label": self.label, "target_rate": self.target_rate, "connections": self.connections,
                "median": med, "reps": [r.to_json() for r in self.reps]}


def connections_for(rate: float | None) -> int:
    """Enough keep-alive connections for ``rate`` at up to ~60 ms per write (32 when unpaced)."""
    if rate is None:
        return 32
    return max(8, min(96, int(rate * 0.06)))


async def run_lag(work: Path, rates: list[float | None], duration_s: float, reps: int) -> dict[str, Any]:
    """Run benchmark 1; the JSON-ready result (``rows``, one per rate)."""
    log("lag: starting a single-node primary and a single-node DR secondary")
    cl = start_clusters(work, ["lag-primary", "lag-secondary"])
    p, s = cl["lag-primary"], cl["lag-secondary"]
    rows: list[LagRow] = []
    try:
        mount_kv2(p)
        act = activate_dr(p, s, "bench-lag")
        cu = await asyncio.to_thread(wait_caught_up, s, last_wal(p), act.started, 120.0)
        log(f"lag: secondary activated and streaming ({cu.elapsed_s} s)")
        pn, sn = node(p), node(s)
        await paced_writes(pn.addr, p.root_token, rate=None, duration_s=1.0, connections=16, prefix="warm/")
        for rate in rates:
            label = "max (unpaced)" if rate is None else f"{rate:g}/s"
            row = LagRow(label, rate, connections_for(rate))
            for rep in range(reps):
                poller = Poller(sn.port, pn.port).start()
                c0 = (proc_cpu_s(pn.pid), proc_cpu_s(sn.pid), self_cpu_s())
                run = await paced_writes(pn.addr, p.root_token, rate=rate, duration_s=duration_s,
                                         connections=row.connections,
                                         prefix=f"lag-{'max' if rate is None else int(rate)}-r{rep}/")
                c1 = (proc_cpu_s(pn.pid), proc_cpu_s(sn.pid), self_cpu_s())
                target = max((a.index for a in run.acks), default=0)
                await asyncio.to_thread(_wait_remote, s, min(target, last_wal(p)), 15.0)
                await asyncio.sleep(0.05)
                poll = await asyncio.to_thread(poller.stop)
                stats = compute_lags(run.acks, poll.secondary, poll.primary)
                n = max(len(run.acks), 1)
                cpu = [None if a is None or b is None else (b - a) * 1000.0 / n for a, b in zip(c0, c1)]
                row.reps.append(LagRep(run, stats, poll, cpu[0], cpu[1], cpu[2]))
                log(f"lag {label} rep {rep + 1}: {run.achieved_rate:.0f} writes/s acked ({len(run.acks)}), "
                    f"lag p50 {_f(stats.p50_ms)} ms p99 {_f(stats.p99_ms)} ms max {_f(stats.max_ms)} ms, "
                    f"unobserved {stats.writes - stats.observed}, poll every {_f(poll.poll_period_ms)} ms, "
                    f"errors {dict(run.errors)}")
            rows.append(row)
    finally:
        stop_all(cl.values())
    return {"cluster": "1-node primary → 1-node DR secondary", "duration_s": duration_s, "reps": reps,
            "rows": [r.to_json() for r in rows], "_rows": rows}


def _wait_remote(s: LocalCluster, target: int, timeout: float) -> None:
    """Wait (bounded) until the secondary's last_remote_wal reaches ``target``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if int(dr_status(node(s)).get("last_remote_wal") or 0) >= target:
            return
        time.sleep(0.02)


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"
