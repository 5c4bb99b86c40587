"""Benchmarks 3 and 4: DR secondary catch-up after an outage, and bulk-sync throughput.

**Catch-up** (:func:`run_catchup`): a single-node primary and a single-node DR secondary,
streaming. For each N the secondary is killed (SIGKILL), N KV v2 writes go to the primary
(a closed-loop writer with many connections), then the secondary is restarted and unsealed
with the primary's keys. The catch-up time runs from the moment the unseal answered until
the secondary reports ``stream-wals`` at ``last_remote_wal`` ≥ the primary's ``last_wal``.
Whether it streamed the missed WAL entries or bulk-synced (the WAL keeps 100,000 log
indexes by default) is read from both servers' logs (``replication_bulk_sync_started``,
``replication_secondary_fell_behind``, ``replication_connected`` ``bulk``) and the states
the secondary went through.

**Bulk sync** (:func:`run_bulksync`): a fresh single-node primary gets K keys, then a fresh
single-node secondary is activated; the time runs from the ``dr/secondary/enable`` call
until ``stream-wals`` at the primary's ``last_wal``. Throughput is reported as KV secrets/s,
storage items/s (the primary logs how many it sent) and MB/s of the bytes the primary sent
on the replication connection (``bytes_acked`` of its TCP socket on the replication port,
from ``ss -ti``: msgpack frames inside TLS, handshake included) once the secondary streams.
The size of the primary's Raft snapshot (``GET sys/storage/raft/snapshot``, a compacted
copy of its LMDB file, WAL included) is recorded for scale.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.repl_common import (
    activate_dr,
    dr_status,
    enable_dr_primary,
    last_wal,
    log,
    log_events,
    log_offset,
    mount_kv2,
    node,
    start_clusters,
    stop_all,
    tcp_bytes_sent,
    unseal_with_primary_keys,
    wait_caught_up,
)
from benchmarks.repl_writer import paced_writes
from cluster.local import LocalCluster

P_EVENTS = ("replication_bulk_sync_started", "replication_bulk_sync_finished", "replication_secondary_fell_behind",
            "replication_secondary_connected")
S_EVENTS = ("replication_bulk_sync_started", "replication_bulk_sync_finished", "replication_connected")


async def fast_write(p: LocalCluster, n: int, prefix: str, connections: int) -> dict[str, Any]:
    """Write ``n`` KV v2 secrets to the primary as fast as it takes them; writer figures."""
    run = await paced_writes(node(p).addr, p.root_token, rate=None, count=n, duration_s=24 * 3600.0,
                             connections=connections, prefix=prefix)
    out = run.to_json()
    log(f"wrote {len(run.acks)} of {n} keys in {run.elapsed_s:.1f} s ({run.achieved_rate:.0f}/s, "
        f"errors {dict(run.errors)})")
    return out


def _fields(lines: list[str], key: str) -> list[Any]:
    """The values of ``key`` in JSON log lines (lines that do not parse are skipped)."""
    out: list[Any] = []
    for ln in lines:
        try:
            d = json.loads(ln)
        except ValueError:
            continue
        if key in d:
            out.append(d[key])
    return out


def _sync_kind(p_ev: dict[str, list[str]], s_ev: dict[str, list[str]], states: list[str]) -> str:
    """``bulk-sync`` when either side logged one or the secondary went through merkle-sync."""
    bulk_flags = _fields(s_ev["replication_connected"], "bulk")
    if p_ev["replication_bulk_sync_started"] or s_ev["replication_bulk_sync_started"] or "merkle-sync" in states \
            or any(bulk_flags):
        return "bulk-sync"
    return "stream" if s_ev["replication_connected"] or "stream-wals" in states else "unknown"


async def run_catchup(work: Path, sizes: list[int], connections: int = 64, timeout_s: float = 1800.0,
                      wal_retention_entries: int | None = None) -> dict[str, Any]:
    """Run benchmark 3 for each N in ``sizes`` (on one pair, in order); the JSON-ready result.

    ``wal_retention_entries`` (None: the server's default, 100,000) goes into the primary's
    ``replication {}`` stanza; a small value forces the bulk-sync path.
    """
    tag = "default" if wal_retention_entries is None else f"ret{wal_retention_entries}"
    extra = "" if wal_retention_entries is None else \
        f"replication {{\n  wal_retention_entries = {wal_retention_entries}\n}}\n"
    log(f"catch-up: starting a single-node primary (WAL retention {wal_retention_entries or 'default'}) "
        "and a single-node DR secondary")
    cl = start_clusters(work, [f"cu-{tag}-primary", f"cu-{tag}-secondary"], {f"cu-{tag}-primary": extra})
    p, s = cl[f"cu-{tag}-primary"], cl[f"cu-{tag}-secondary"]
    pn, sn = node(p), node(s)
    rows: list[dict[str, Any]] = []
    timelines: dict[str, list[tuple[float, str, int]]] = {}
    try:
        mount_kv2(p)
        act = activate_dr(p, s, "bench-catchup")
        cu0 = await asyncio.to_thread(wait_caught_up, s, last_wal(p), act.started, 120.0)
        log(f"catch-up: secondary streaming after {cu0.elapsed_s} s")
        for n in sizes:
            before = int(dr_status(sn).get("last_remote_wal") or 0)
            s.kill(sn)
            log(f"catch-up {n}: secondary killed at remote WAL {before}; writing {n} keys to the primary")
            off_p, off_s = log_offset(pn), log_offset(sn)
            writer = await fast_write(p, n, f"cu-{tag}-{n}/", connections)
            target = last_wal(p)
            t0 = time.monotonic()
            await asyncio.to_thread(s.restart, sn, unseal=False)
            t_listening = time.monotonic()
            await asyncio.to_thread(unseal_with_primary_keys, s)
            t_unsealed = time.monotonic()
            cu = await asyncio.to_thread(wait_caught_up, s, target, t_unsealed, timeout_s, 0.05)
            p_ev, s_ev = log_events(pn, off_p, P_EVENTS), log_events(sn, off_s, S_EVENTS)
            kind = _sync_kind(p_ev, s_ev, cu.states)
            missed = target - before
            row = {"writes": n, "writer": writer, "remote_wal_before": before, "primary_last_wal": target,
                   "wal_indexes_missed": missed, "restart_s": round(t_listening - t0, 3),
                   "unseal_s": round(t_unsealed - t_listening, 3),
                   "catch_up_s": None if cu.elapsed_s is None else round(cu.elapsed_s, 3),
                   "restart_to_caught_up_s": None if cu.elapsed_s is None else round(cu.elapsed_s + t_unsealed - t0, 3),
                   "how": kind, "states_seen": cu.states,
                   "indexes_per_s": None if not cu.elapsed_s else round(missed / cu.elapsed_s, 1),
                   "primary_log": {e: len(v) for e, v in p_ev.items()},
                   "secondary_log": {e: len(v) for e, v in s_ev.items()},
                   "bulk_items_sent": _fields(p_ev["replication_bulk_sync_finished"], "items")}
            rows.append(row)
            timelines[str(n)] = cu.timeline
            log(f"catch-up {n}: {kind}, caught up {row['catch_up_s']} s after the unseal "
                f"(restart {row['restart_s']} s, unseal {row['unseal_s']} s; states {cu.states})")
            if cu.elapsed_s is None:
                log(f"catch-up {n}: TIMED OUT; secondary log tail: {sn.log_tail(5)}")
                break
    finally:
        stop_all(cl.values())
    return {"cluster": "1-node primary → 1-node DR secondary", "connections": connections,
            "wal_retention_entries": wal_retention_entries or "default (100000)", "rows": rows,
            "_timelines": timelines}


def snapshot_bytes(p: LocalCluster) -> int | None:
    """The size of the primary's Raft snapshot (None if it cannot be taken)."""
    n = node(p)
    req = urllib.request.Request(f"{n.addr}/v1/sys/storage/raft/snapshot", headers={"X-Vault-Token": p.root_token})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            total = 0
            while chunk := r.read(1 << 20):
                total += len(chunk)
            return total
    except (OSError, ValueError) as e:
        log(f"bulk sync: no snapshot size ({type(e).__name__})")
        return None


async def run_bulksync(work: Path, keys: int, connections: int = 64, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run benchmark 4; the JSON-ready result."""
    log(f"bulk sync: starting a single-node primary and a fresh single-node secondary; {keys} keys")
    cl = start_clusters(work, ["bs-primary", "bs-secondary"])
    p, s = cl["bs-primary"], cl["bs-secondary"]
    pn = node(p)
    try:
        mount_kv2(p)
        enable_dr_primary(p)
        writer = await fast_write(p, keys, "bs/", connections)
        size = await asyncio.to_thread(snapshot_bytes, p)
        target = last_wal(p)
        off_p = log_offset(pn)
        act = activate_dr(p, s, "bench-bulk")
        cu = await asyncio.to_thread(wait_caught_up, s, target, act.started, timeout_s)
        sent = tcp_bytes_sent(pn.repl_port)
        p_ev = log_events(pn, off_p, P_EVENTS)
        items = sum(int(x) for x in _fields(p_ev["replication_bulk_sync_finished"], "items"))
        el = cu.elapsed_s
        acked = int(writer["acked"])
        res = {"cluster": "1-node primary → fresh 1-node DR secondary", "keys": acked, "writer": writer,
               "target_wal": target,
               "snapshot_bytes": size, "replication_bytes_sent": sent, "items_sent": items or None,
               "activation_call_s": round(act.call_s, 3),
               "elapsed_s": None if el is None else round(el, 3), "states_seen": cu.states,
               "keys_per_s": None if not el else round(acked / el, 1),
               "items_per_s": None if not el or not items else round(items / el, 1),
               "mb_per_s": None if not el or not sent else round(sent / el / 1e6, 3),
               "bulk_syncs_logged": len(p_ev["replication_bulk_sync_started"]),
               "_timeline": cu.timeline}
        log(f"bulk sync: {acked} keys ({items} items, {sent} bytes sent on the replication connection, "
            f"{size} snapshot bytes) "
            f"synced in {el} s; states {cu.states}")
        return res
    finally:
        stop_all(cl.values())
