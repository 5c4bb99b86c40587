"""Render the replication benchmark's results: targets, Markdown tables, PNG plots.

Everything here reads the JSON-ready result dict built by :mod:`benchmarks.replication`
(keys starting with ``_`` hold raw series for the plots and are not written to JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.repl_drill import RTO_TARGET_S
from benchmarks.repl_lag import LAG_TARGET_MS, LAG_TARGET_RATE, LagRow
from benchmarks.repl_throughput import RATIO_TARGET


def _n(x: Any, nd: int = 1, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}{unit}"
    return f"{x}{unit}"


def strip_private(d: Any) -> Any:
    """``d`` without the keys that start with ``_`` (recursively)."""
    if isinstance(d, dict):
        return {k: strip_private(v) for k, v in d.items() if not str(k).startswith("_")}
    if isinstance(d, list):
        return [strip_private(v) for v in d]
    return d


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS/FAIL per target (``pass`` None when the benchmark did not run)."""
    out: list[dict[str, Any]] = []
    row = next((r for r in (res.get("lag") or {}).get("rows", []) if r["target_rate"] == LAG_TARGET_RATE), None)
    p99 = row["median"]["p99_ms"] if row else None
    rate = row["median"]["achieved_rate"] if row else None
    lag_t: dict[str, Any] = {
        "target": f"replication lag p99 < {LAG_TARGET_MS:.0f} ms at {LAG_TARGET_RATE:.0f} writes/s",
        "measured": None if p99 is None else f"{p99:.1f} ms at {rate:.0f} writes/s",
        "pass": None if p99 is None else p99 < LAG_TARGET_MS, "note": ""}
    if rate is not None and rate < 0.95 * LAG_TARGET_RATE:
        met = "met" if lag_t["pass"] else "missed"
        lag_t.update(verdict="UNVERIFIED", note=f"the primary acknowledged only {rate:.0f} writes/s (its maximum "
                     f"here), so the target rate was not reached; the p99 bound was {met} at that rate")
    out.append(lag_t)
    states = (res.get("throughput") or {}).get("states", [])
    one = next((s for s in states if s["secondaries"] == 1), None)
    r1 = one["ratio_to_0"] if one else None
    cb = one.get("cpu_bound_ratio_to_0") if one else None
    out.append({"target": f"primary write throughput with 1 DR secondary ≥ {RATIO_TARGET:.1f} × with 0",
                "measured": None if r1 is None else f"{r1:.2f}",
                "pass": None if r1 is None else r1 >= RATIO_TARGET,
                "note": "" if cb is None else f"CPU-bound ratio (primary CPU ms/write, 0 ÷ 1): {cb:.2f}"})
    modes = (res.get("drill") or {}).get("modes", {})
    for mode in ("async", "sync"):
        m = modes.get(mode)
        rto = m["rto_median_s"] if m else None
        out.append({"target": f"drill RTO ({mode}, median) < {RTO_TARGET_S:.0f} s", "measured":
                    None if rto is None else f"{rto:.2f} s", "pass": None if rto is None else rto < RTO_TARGET_S,
                    "note": "operator steps scripted (operation token + promote + re-point)"})
    m = modes.get("sync")
    rpo = m["rpo_max_writes"] if m else None
    out.append({"target": "drill RPO = 0 in dr_sync mode (every repetition)",
                "measured": None if rpo is None else f"{rpo} writes", "pass": None if rpo is None else rpo == 0,
                "note": ""})
    return out


def to_markdown(res: dict[str, Any]) -> str:
    """The whole run as Markdown."""
    meta = res["meta"]
    lines = [f"# vaultraft replication benchmarks — {meta['started']}", "",
             (f"{'Quick' if meta['quick'] else 'Full'} run (`python -m benchmarks.replication"
              f"{' --quick' if meta['quick'] else ''}`), {meta['wall_s']} s. {meta['cpus']} CPUs shared with other "
              f"jobs: load average at start **{meta['loadavg_before']}**, at the end {meta['loadavg_after']}. "
              "Every cluster is a **single node** (primary and secondaries alike), all on loopback on this machine, "
              "so the primary, the secondaries, the load generator and the status poller compete for the same 2 "
              "cores. Figures are **medians of repetitions** where repetitions are listed; absolute numbers move "
              "with the machine's load, CPU ms per write much less."), ""]
    lines += _lag_md(res.get("lag"))
    lines += _throughput_md(res.get("throughput"))
    lines += _catchup_md(res.get("catchup"))
    lines += _bulk_md(res.get("bulksync"))
    lines += _drill_md(res.get("drill"))
    lines += ["## Targets", "", "| target | measured | result | note |", "|---|---|---|---|"]
    for t in targets(res):
        verdict = t.get("verdict") or ("not run" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL"))
        lines.append(f"| {t['target']} | {_n(t['measured'])} | {verdict} | {t['note']} |")
    if res.get("errors"):
        lines += ["", "## Errors", ""] + [f"- **{g}**: {e}" for g, e in res["errors"].items()]
    plots = meta.get("plots") or []
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots)]
    elif meta.get("plots_note"):
        lines += ["", f"Plots: {meta['plots_note']}"]
    return "\n".join(lines) + "\n"


def _lag_md(lag: dict[str, Any] | None) -> list[str]:
    if not lag:
        return []
    out = ["## 1. Replication lag", "",
           (f"{lag['cluster']}. Open-loop paced KV v2 writes (64-byte values) for {lag['duration_s']:g} s per "
            f"repetition, {lag['reps']} repetition(s) per rate; lag = first poll that saw the secondary's "
            "`last_remote_wal` ≥ the write's index (its `X-Vault-Index`, capped by the primary's `last_wal` read "
            "after the ack) minus the write's ack time. An upper bound by up to one poll period plus a status "
            "round trip; writes the secondary had before the ack count as 0."), "",
           ("| target rate | connections | achieved writes/s | lag p50 ms | lag p90 ms | lag p99 ms | lag max ms "
            "| write p50 ms | poll period ms | CPU ms/write primary / secondary / client | unobserved | errors |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in lag["rows"]:
        m = r["median"]
        out.append(f"| {r['label']} | {r['connections']} | {_n(m['achieved_rate'], 0)} | {_n(m['p50_ms'])} | "
                   f"{_n(m['p90_ms'])} | {_n(m['p99_ms'])} | {_n(m['max_ms'])} | {_n(m['write_p50_ms'])} | "
                   f"{_n(m['poll_period_ms'])} | {_n(m['primary_cpu_ms_per_write'], 2)} / "
                   f"{_n(m['secondary_cpu_ms_per_write'], 2)} / {_n(m['client_cpu_ms_per_write'], 2)} | "
                   f"{m['unobserved']} | {m['errors']} |")
    return out + [""]


def _throughput_md(tp: dict[str, Any] | None) -> list[str]:
    if not tp:
        return []
    att = tp.get("attachments") or []
    syncs = [a["caught_up_s"] for a in att if a["caught_up_s"] is not None]
    out = ["## 2. Primary write throughput with 0, 1, 2 DR secondaries", "",
           (f"{tp['cluster']}. Closed loop, {tp['concurrency']} clients, {tp['reps']} repetitions × "
            f"{tp['duration_s']:g} s per state, each after a 1 s warm-up; the primary is a DR primary in every "
            "state. States are interleaved (rounds 0→1→2, 2→1→0, …; a secondary is attached by activation or "
            "revoke + update-primary, detached by revoke + SIGSTOP), so drift falls on all of them. Ratio "
            "against 0 secondaries in the same run. *CPU-bound ratio* = primary CPU ms/write with 0 ÷ with N: the "
            "throughput ratio if the primary were alone on its cores and CPU-bound (here the secondaries and "
            f"the client share the same 2 cores). {len(att)} attachments took "
            f"{_n(min(syncs) if syncs else None, 2)}–{_n(max(syncs) if syncs else None, 2)} s to stream."), "",
           ("| state | writes/s | ratio vs 0 | CPU-bound ratio | p50 ms | p99 ms | errors | CPU ms/write primary | "
            "CPU ms/write secondaries | CPU ms/write client |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in tp["states"]:
        m = s["median"] or {}
        errs = sum((m.get("errors") or {}).values())
        out.append(f"| {s['state']} | {_n(m.get('ops_per_s'), 0)} | {_n(s['ratio_to_0'], 2)} | "
                   f"{_n(s.get('cpu_bound_ratio_to_0'), 2)} | {_n(m.get('p50_ms'))} | {_n(m.get('p99_ms'))} | {errs} | "
                   f"{_n(s['primary_cpu_ms_per_write'], 2)} | {_n(s['secondaries_cpu_ms_per_write'], 2)} | "
                   f"{_n(s['client_cpu_ms_per_write'], 2)} |")
    reps = "; ".join(f"{s['state']}: " + ", ".join(f"{r['ops_per_s']:.0f}" for r in s["reps"]) for s in tp["states"])
    return out + ["", f"Per repetition (writes/s, in round order): {reps}.", ""]


def _catchup_md(cus: list[dict[str, Any]] | None) -> list[str]:
    if not cus:
        return []
    out = ["## 3. Catch-up of a DR secondary after an outage", "",
           ("1-node primary → 1-node DR secondary. The secondary is killed (SIGKILL), N writes go to the primary "
            "(64 connections, closed loop), then the secondary is restarted and unsealed with the primary's keys. "
            "Catch-up = unseal answered → `stream-wals` at the primary's `last_wal`. *How* is read from both "
            "servers' logs and the states the secondary went through. Raft batches concurrent writes, so N writes "
            "take far fewer than N WAL (log) indexes."), "",
           ("| writes missed | WAL retention (indexes) | writing took | WAL indexes missed | how | restart s | "
            "unseal s | catch-up s | indexes/s |"),
           "|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for cu in cus:
        for r in cu["rows"]:
            w = r["writer"]
            out.append(f"| {r['writes']:,} | {cu['wal_retention_entries']} | {w['elapsed_s']:.1f} s "
                       f"({w['achieved_rate']:.0f}/s, {sum(w['errors'].values())} errors) | "
                       f"{r['wal_indexes_missed']:,} | {r['how']} | {_n(r['restart_s'], 2)} | {_n(r['unseal_s'], 2)} | "
                       f"{_n(r['catch_up_s'], 2)} | {_n(r['indexes_per_s'], 0)} |")
    return out + [""]


def _bulk_md(bss: list[dict[str, Any]] | None) -> list[str]:
    if not bss:
        return []
    out = ["## 4. Bulk-sync throughput", "",
           ("A fresh 1-node DR secondary activated against a 1-node primary holding K KV v2 secrets (64-byte "
            "values). Time = `dr/secondary/enable` call → `stream-wals` at the primary's `last_wal`. Items = "
            "storage entries the primary logged as sent (a KV v2 secret is a metadata and a version entry). MB/s "
            "= bytes the primary sent on the replication TCP connection (`ss -ti` bytes_acked: TLS + msgpack "
            "frames, handshake included) / time. The Raft snapshot size (compacted LMDB copy incl. WAL) is for "
            "scale."), "",
           "| keys | items sent | replication bytes sent | Raft snapshot bytes | sync s | keys/s | items/s | MB/s |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in bss:
        out.append(f"| {b['keys']:,} | {_n(b['items_sent'])} | {_n(b['replication_bytes_sent'])} | "
                   f"{_n(b['snapshot_bytes'])} | {_n(b['elapsed_s'], 2)} | {_n(b['keys_per_s'], 0)} | "
                   f"{_n(b['items_per_s'], 0)} | {_n(b['mb_per_s'], 1)} |")
    return out + [""]


def _drill_md(dr: dict[str, Any] | None) -> list[str]:
    if not dr:
        return []
    out = ["## 5. DR drill: RTO and RPO", "",
           (f"{dr['cluster']}; {dr['implementation']}. {dr['writers']} writer threads load the primary for "
            f"{dr['load_s']:g} s, then every primary node gets SIGKILL; DR operation token (primary's keys), "
            "promote, clients re-pointed. RTO = kill → first write acknowledged by the promoted site; RPO = writes "
            f"the killed primary acknowledged that the promoted site lacks. {dr['reps']} repetition(s) per mode, "
            "each on a fresh pair; `sync` runs the primary with `dr_sync = true` (`dr_sync_timeout = \"2s\"`)."), "",
           ("| mode | RTO median s | RTO max s | RPO median (writes) | RPO max (writes) | acked before kill (median) | "
            "op token / promote / first write s (rep 1) | missing at or below replicated index | failed reps |"),
           "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for mode, m in dr["modes"].items():
        ph = m["runs"][0]["phases"] if m["runs"] else {}
        low = sum(int(r.get("missing_at_or_below_replicated_index") or 0) for r in m["runs"])
        out.append(f"| {mode} | {_n(m['rto_median_s'], 3)} | {_n(m['rto_max_s'], 3)} | {_n(m['rpo_median_writes'])} | "
                   f"{_n(m['rpo_max_writes'])} | {_n(m['acked_before_loss_median'])} | "
                   f"{_n(ph.get('operation_token_s'), 3)} / {_n(ph.get('promote_s'), 3)} / "
                   f"{_n(ph.get('first_write_s'), 3)} | {low} | {len(m['errors'])} |")
    for mode, m in dr["modes"].items():
        for e in m["errors"]:
            out.append(f"\n- {mode} drill failed: {e}")
    return out + [""]


def plot(res: dict[str, Any], out_dir: Path, name: str) -> tuple[list[str], str]:
    """Write the PNG plots; (file names written, a note when none could be)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib is not installed (`pip install -e '.[bench]'`)"
    written: list[str] = []
    lag = res.get("lag")
    rows: list[LagRow] = (lag or {}).get("_rows") or []
    if rows:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for row in rows:
            lags = sorted(v for rep in row.reps for _, v in rep.lag.series)
            if lags:
                ys = [(i + 1) / len(lags) for i in range(len(lags))]
                ax1.plot(lags, ys, label=f"{row.label} ({row.median('achieved_rate') or 0:.0f}/s achieved)")
            if row.reps:
                xs = [t for t, _ in row.reps[0].lag.series]
                ax2.scatter(xs, [v for _, v in row.reps[0].lag.series], s=2, label=row.label)
        ax1.axvline(LAG_TARGET_MS, color="grey", linestyle=":", linewidth=1)
        ax1.set_xlim(left=0)
        ax1.set_xlabel("replication lag (ms)")
        ax1.set_ylabel("fraction of writes")
        ax1.set_title("DR lag CDF (all repetitions)")
        ax1.legend(fontsize=8)
        ax2.set_xlabel("time since the first ack (s)")
        ax2.set_ylabel("lag (ms)")
        ax2.set_title("DR lag per write (repetition 1)")
        ax2.legend(fontsize=8, markerscale=4)
        fig.tight_layout()
        fn = f"{name}_lag.png"
        fig.savefig(out_dir / fn, dpi=110)
        plt.close(fig)
        written.append(fn)
    tp = res.get("throughput")
    if tp:
        states = [s for s in tp["states"] if s["median"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [s["state"] for s in states]
        vals = [s["median"]["ops_per_s"] for s in states]
        bars = ax.bar(names, vals, color=["#888", "#4a7", "#37a"][: len(states)])
        for b_, s in zip(bars, states):
            label = f"{s['ratio_to_0']:.2f}×" if s["ratio_to_0"] is not None else ""
            ax.annotate(label, (b_.get_x() + b_.get_width() / 2, b_.get_height()), ha="center", va="bottom",
                        fontsize=9)
        ax.set_ylabel("acknowledged writes/s (median)")
        ax.set_title("Primary write throughput vs DR secondaries attached")
        fig.tight_layout()
        fn = f"{name}_throughput.png"
        fig.savefig(out_dir / fn, dpi=110)
        plt.close(fig)
        written.append(fn)
    series: list[tuple[str, list[tuple[float, str, int]], int, int]] = []
    for cu in res.get("catchup") or []:
        by_n = {str(r["writes"]): r for r in cu.get("rows", [])}
        for n, tl in (cu.get("_timelines") or {}).items():
            r = by_n.get(n)
            if r is not None:
                series.append((f"catch-up, {int(n):,} writes missed (retention {cu['wal_retention_entries']})", tl,
                               int(r["remote_wal_before"]), int(r["primary_last_wal"])))
    for b in res.get("bulksync") or []:
        if b.get("_timeline"):
            series.append((f"bulk sync of a fresh secondary, {b['keys']:,} keys", b["_timeline"], 0,
                           int(b.get("target_wal") or 0)))
    if series:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, tl, start, target in series:
            span = max(target - start, 1)
            xs = [t for t, _, _ in tl]
            ys = [min(max((v - start) / span, 0.0), 1.0) if v else 0.0 for _, _, v in tl]
            ax.step(xs, ys, where="post", label=label)
        ax.set_xlabel("seconds since the unseal (catch-up) / the activation call (bulk sync)")
        ax.set_ylabel("secondary last_remote_wal: share of the gap closed")
        ax.set_title("DR secondary catch-up and bulk sync")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fn = f"{name}_catchup.png"
        fig.savefig(out_dir / fn, dpi=110)
        plt.close(fig)
        written.append(fn)
    return written, ""
