"""Replication benchmarks: DR lag, throughput cost of secondaries, catch-up, bulk sync, drill.

``python -m benchmarks.replication [--quick] [--only lag,throughput,catchup,bulksync,drill]``

Groups, in order (each starts its own single-node clusters of real server processes in a
temporary directory, removed at the end):

1. ``lag``: DR replication lag p50/p99 at 100, 500, 1000 writes/s and unpaced (the max the
   primary sustains), open-loop writer + status poller (:mod:`benchmarks.repl_lag`);
2. ``throughput``: primary writes/s with 0, 1, 2 DR secondaries (interleaved rounds), ratio vs 0
   (:mod:`benchmarks.repl_throughput`);
3. ``catchup``: a killed DR secondary catching up on 10k (and, full run, 100k) missed writes,
   plus 10k with a small WAL retention (100 indexes) to force the bulk-sync path
   (:mod:`benchmarks.repl_sync`);
4. ``bulksync``: activation of a fresh secondary against K keys, keys/s and MB/s;
5. ``drill``: RTO/RPO of a kill -9 + promote drill, async and ``dr_sync = true``
   (:mod:`benchmarks.repl_drill`, via ``cluster.drill.run_drill``).

Results: ``<out>/<name>.json``, ``<out>/<name>.md`` and ``<out>/<name>_*.png`` (matplotlib,
the ``bench`` extra), rewritten after every group so an interrupted run keeps what it
measured. Nothing is asserted: targets are reported PASS/FAIL. Keys and tokens are never
printed or written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.load import run_client
from benchmarks.repl_common import loadavg, log
from benchmarks.repl_drill import run_drills
from benchmarks.repl_lag import run_lag
from benchmarks.repl_report import plot, strip_private, targets, to_markdown
from benchmarks.repl_sync import run_bulksync, run_catchup
from benchmarks.repl_throughput import run_throughput

GROUPS = ("lag", "throughput", "catchup", "bulksync", "drill")


@dataclass(frozen=True)
class Plan:
    """Durations, sizes and repetitions of one run (``--quick`` or full)."""

    lag_rates: tuple[float | None, ...]
    lag_duration_s: float
    lag_reps: int
    tp_duration_s: float
    tp_reps: int
    catchup_sizes: tuple[int, ...]
    catchup_forced_bulk: tuple[int, ...]
    forced_retention: int
    bulk_keys: tuple[int, ...]
    drill_reps: int
    drill_load_s: float
    drill_writers: int = 4

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


QUICK = Plan(lag_rates=(100.0, 500.0, 1000.0, None), lag_duration_s=4.0, lag_reps=1, tp_duration_s=3.0, tp_reps=3,
             catchup_sizes=(10_000,), catchup_forced_bulk=(10_000,), forced_retention=100, bulk_keys=(10_000,),
             drill_reps=1, drill_load_s=3.0)
FULL = Plan(lag_rates=(100.0, 500.0, 1000.0, None), lag_duration_s=10.0, lag_reps=3, tp_duration_s=8.0, tp_reps=5,
            catchup_sizes=(10_000, 100_000), catchup_forced_bulk=(10_000,), forced_retention=100,
            bulk_keys=(20_000, 100_000), drill_reps=3, drill_load_s=5.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replication", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short durations, 1 repetition where slow, 10k catch-up only "
                   "(2.5-4 minutes on a busy 2-core machine)")
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups from {','.join(GROUPS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--name", default="replication", help="output file stem (default: replication)")
    p.add_argument("--render", action="store_true", help="measure nothing: rewrite <name>.md (and the targets in "
                   "<name>.json) from <name>.json; the plots are left as they are")
    return p.parse_args(argv)


def render(out: Path, name: str) -> int:
    """``--render``: rebuild the Markdown and the targets from the saved JSON."""
    res = json.loads((out / f"{name}.json").read_text())
    res["targets"] = targets(res)
    (out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / f"{name}.md").write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


def write_results(res: dict[str, Any], out: Path, name: str, final: bool) -> None:
    """Write JSON + Markdown (+ plots when ``final``)."""
    out.mkdir(parents=True, exist_ok=True)
    if final:
        plots, note = plot(res, out, name)
        res["meta"]["plots"], res["meta"]["plots_note"] = plots, note
    res["targets"] = targets(res)
    (out / f"{name}.json").write_text(json.dumps(strip_private(res), indent=2) + "\n")
    (out / f"{name}.md").write_text(to_markdown(res))


async def run_group(group: str, plan: Plan, work: Path) -> Any:
    """Run one group; its JSON-ready result."""
    if group == "lag":
        return await run_lag(work, list(plan.lag_rates), plan.lag_duration_s, plan.lag_reps)
    if group == "throughput":
        return await run_throughput(work, plan.tp_duration_s, plan.tp_reps)
    if group == "catchup":
        out = [await run_catchup(work, list(plan.catchup_sizes))]
        if plan.catchup_forced_bulk:
            out.append(await run_catchup(work, list(plan.catchup_forced_bulk),
                                         wal_retention_entries=plan.forced_retention))
        return out
    if group == "bulksync":
        return [await run_bulksync(work / f"bulk-{k}", k) for k in plan.bulk_keys]
    if group == "drill":
        return await run_drills(work, plan.drill_reps, plan.drill_writers, plan.drill_load_s)
    raise ValueError(group)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen groups; write the results; print the Markdown. Exit 1 if a group failed."""
    a = parse_args(argv)
    if a.render:
        return render(a.out, a.name)
    groups = [g.strip() for g in a.only.split(",") if g.strip()]
    if not set(groups) <= set(GROUPS):
        print(f"unknown group(s): {sorted(set(groups) - set(GROUPS))}", file=sys.stderr)
        return 2
    plan = QUICK if a.quick else FULL
    res: dict[str, Any] = {"meta": {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "quick": a.quick, "groups": groups,
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_before": loadavg(), "loadavg_after": None, "wall_s": None, "plan": plan.to_json()}, "errors": {}}
    log(f"replication benchmarks ({'quick' if a.quick else 'full'}): {', '.join(groups)}; "
        f"load average {res['meta']['loadavg_before']}")
    work = Path(tempfile.mkdtemp(prefix="vaultraft-repl-bench-"))
    t0 = time.monotonic()
    try:
        for g in groups:
            tg = time.monotonic()
            try:
                res[g] = run_client(run_group(g, plan, work / g))
            except Exception as e:  # noqa: BLE001  # a failed group is reported; the others still run
                res["errors"][g] = f"{type(e).__name__}: {e}"
                log(f"{g} FAILED: {res['errors'][g]}")
                traceback.print_exc()
            log(f"{g} took {time.monotonic() - tg:.0f} s (load average {loadavg()})")
            res["meta"].update(loadavg_after=loadavg(), wall_s=round(time.monotonic() - t0, 1))
            write_results(res, a.out, a.name, final=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["meta"].update(loadavg_after=loadavg(), wall_s=round(time.monotonic() - t0, 1))
    write_results(res, a.out, a.name, final=True)
    print()
    print(to_markdown(res))
    log(f"wrote {a.out / (a.name + '.json')}, {a.out / (a.name + '.md')} and plots {res['meta']['plots']} "
        f"in {res['meta']['wall_s']} s")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
