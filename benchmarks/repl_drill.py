"""Benchmark 5: DR drill RTO and RPO, asynchronous and ``dr_sync = true``.

Uses :func:`cluster.drill.run_drill` (``cluster/drill.py``) on a
:class:`cluster.replication.ReplicatedClusters` pair of single-node sites: writers load the
primary, every primary node is sent SIGKILL, a DR operation token is generated on the
secondary with the primary's unseal keys, the secondary is promoted, the clients are
re-pointed and the first acknowledged write on the promoted site stops the RTO clock. The
RPO is the number of writes the lost primary acknowledged that the promoted site does not
have (every acknowledged write is read back). Each repetition uses a fresh pair; fail-back
is skipped (it is not part of RTO/RPO).

For ``sync`` the primary site's node runs with ``replication { dr_sync = true,
dr_sync_timeout = "2s" }`` (the value the integration test uses).
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

from benchmarks.repl_common import log
from cluster.drill import run_drill
from cluster.replication import ReplicatedClusters

SYNC_HCL = 'replication {\n  dr_sync = true\n  dr_sync_timeout = "2s"\n}\n'
RTO_TARGET_S = 5.0
MODES = ("async", "sync")
KEEP = ("rto_s", "rpo_writes", "rpo_s", "writes_acked", "writes_acked_before_loss", "writes_acked_after_promotion",
        "write_errors", "replicated_index", "last_acked_index", "acked_beyond_replicated_index",
        "missing_at_or_below_replicated_index", "acked_by_lost_site_after_loss", "lost_after_promotion",
        "phases", "notes")


def _one(work: Path, mode: str, writers: int, duration_s: float) -> dict[str, Any]:
    """One drill on a fresh pair; the drill's result (a subset, JSON-ready)."""
    rc = ReplicatedClusters(work, size=1, cgroups=False, progress=lambda m: log(f"drill[{mode}]: {m}"))
    if mode == "sync":
        for n in rc.sites["primary"].cluster.nodes:
            n.extra_config = SYNC_HCL
    try:
        rc.up(timeout=120.0)
        res = run_drill(rc, mode="kill", writers=writers, duration=duration_s, fail_back=False, merkle=False,
                        timeout=60.0, progress=lambda m: log(f"drill[{mode}] {m}"))
        return {k: res.get(k) for k in KEEP}
    finally:
        rc.down()


async def run_drills(work: Path, reps: int, writers: int, duration_s: float) -> dict[str, Any]:
    """Run ``reps`` drills per mode; the JSON-ready result with medians."""
    out: dict[str, Any] = {"cluster": "1-node primary site, 1-node DR site (cluster/replication.py)",
                           "implementation": "cluster.drill.run_drill (mode kill, no fail-back)",
                           "writers": writers, "load_s": duration_s, "reps": reps, "modes": {}}
    for mode in MODES:
        runs: list[dict[str, Any]] = []
        errors: list[str] = []
        for rep in range(reps):
            try:
                r = await asyncio.to_thread(_one, work / f"drill-{mode}-r{rep}", mode, writers, duration_s)
                runs.append(r)
                log(f"drill[{mode}] rep {rep + 1}: RTO {r['rto_s']} s, RPO {r['rpo_writes']} writes "
                    f"of {r['writes_acked_before_loss']} acknowledged before the loss")
            except Exception as e:  # noqa: BLE001  # one failed drill is a result, not the end of the run
                errors.append(f"{type(e).__name__}: {e}")
                log(f"drill[{mode}] rep {rep + 1} FAILED: {errors[-1]}")
        rtos = [r["rto_s"] for r in runs if r.get("rto_s") is not None]
        acked = [r["writes_acked_before_loss"] for r in runs]
        rpos = [r["rpo_writes"] for r in runs if r.get("rpo_writes") is not None]
        out["modes"][mode] = {
            "rto_median_s": round(statistics.median(rtos), 3) if rtos else None,
            "rto_max_s": max(rtos) if rtos else None,
            "rpo_median_writes": statistics.median(rpos) if rpos else None,
            "rpo_max_writes": max(rpos) if rpos else None,
            "acked_before_loss_median": statistics.median(acked) if acked else None,
            "runs": runs, "errors": errors}
    return out
