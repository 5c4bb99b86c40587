"""Run the benchmark scenarios and write ``latest.json`` + ``latest.md``.

``python -m benchmarks.run [--duration 5] [--concurrency 32] [--write-concurrency 16,20,24] [--reps 3] [--out benchmarks/results]``

Scenarios, in order (each node or cluster lives in a temporary directory, removed at the end):

1. ``dev``: a ``server -dev`` node (inmem storage): KV v2 writes and reads. The baseline.
2. ``raft1``: one node with ``storage "raft"`` (LMDB + a one-member Raft): writes and reads.
3. ``cluster``: three nodes on loopback (the third a performance standby): writes with the client
   at the active node (at ``--concurrency`` clients, then at each ``--write-concurrency``: the
   write targets hold at one load, and latency grows with the clients queued) and at a standby
   (forwarded); reads at the active node, at a standby
   (forwarded) and at the performance standby (served locally).
4. ``failover``: kill -9 the active node under a write load, time the first acknowledged write on
   the new active node; the killed node is restarted and unsealed between repetitions.

Every throughput figure is the median of ``--reps`` repetitions after an unrecorded warm-up;
ratios are against the dev baseline measured in the same run. Targets are printed as PASS/FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.load import (FailoverResult, LoadSpec, Op, Summary, measure_failover, median_summary, ratio, run_client,
                             run_load)
from cluster.local import LocalCluster
from cluster.node import Node

WRITES_TARGET = 1000.0     # acknowledged KV v2 writes/s on the three-node cluster (client at the active)
LATENCY_TARGET_MS = 20.0   # ... with a median latency below this
FAILOVER_TARGET_S = 2.0    # median time from kill -9 of the active to the next acknowledged write
GROUPS = ("dev", "raft1", "cluster", "failover")


@dataclass
class Scenario:
    """One row of the table: a measured load (or the failover drill) and its repetitions."""

    name: str
    op: str
    client_at: str
    concurrency: int = 0
    reps: list[Summary] = field(default_factory=list)
    failovers: list[FailoverResult] = field(default_factory=list)
    server_cpu_ms_per_op: list[float] = field(default_factory=list)
    client_cpu_ms_per_op: list[float] = field(default_factory=list)
    #: Per server process (keyed by role), CPU ms per acknowledged request of each repetition.
    node_cpu_ms_per_op: dict[str, list[float]] = field(default_factory=dict)

    @property
    def server_cpu(self) -> float | None:
        """Median CPU milliseconds the server processes spent per acknowledged request."""
        return statistics.median(self.server_cpu_ms_per_op) if self.server_cpu_ms_per_op else None

    @property
    def client_cpu(self) -> float | None:
        """Median CPU milliseconds the load generator spent per acknowledged request."""
        return statistics.median(self.client_cpu_ms_per_op) if self.client_cpu_ms_per_op else None

    @property
    def median(self) -> Summary | None:
        return median_summary(self.reps) if self.reps else None

    @property
    def failover_median_s(self) -> float | None:
        times = [f.failover_s for f in self.failovers if f.failover_s is not None]
        return statistics.median(times) if times and len(times) == len(self.failovers) else None


@dataclass
class Bench:
    """The run's settings and what it measured so far."""

    duration_s: float
    concurrency: int
    reps: int
    max_requests: int
    warmup_s: float
    #: Further client counts for writes at the active (the latency target's operating points).
    write_concurrency: tuple[int, ...] = ()
    scenarios: list[Scenario] = field(default_factory=list)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    async def measure(self, name: str, client_at: str, node: Node, token: str, op: Op,
                      keys: Sequence[str] = (), headers: tuple[tuple[str, str], ...] = (),
                      servers: dict[str, Node] | None = None, concurrency: int | None = None) -> list[str]:
        """Warm up, then ``reps`` measurements; the row is recorded; returns the acknowledged keys.

        CPU time per acknowledged request is taken from ``servers`` (default: ``node``) and from
        this process, so a figure less sensitive to a noisy machine is reported too.
        """
        servers = servers or {"node": node}
        clients = concurrency or self.concurrency
        spec = LoadSpec(base_url=node.addr, token=token, op=op, concurrency=clients,
                        duration_s=self.duration_s, max_requests=self.max_requests,
                        read_keys=tuple(keys), headers=headers)
        sc = Scenario(name, op, client_at, clients)
        written: list[str] = []
        await run_load(replace(spec, duration_s=self.warmup_s, key_prefix=f"bench/{name}-warm/"))
        for rep in range(self.reps):
            srv0, cli0 = servers_cpu_s(servers), self_cpu_s()
            res = await run_load(replace(spec, key_prefix=f"bench/{name}-r{rep}/"))
            srv1, cli1 = servers_cpu_s(servers), self_cpu_s()
            sc.reps.append(res.summary)
            ok = res.summary.ok
            if ok and srv0 is not None and srv1 is not None:
                sc.server_cpu_ms_per_op.append((sum(srv1.values()) - sum(srv0.values())) * 1000.0 / ok)
                sc.client_cpu_ms_per_op.append((cli1 - cli0) * 1000.0 / ok)
                for role in servers:
                    sc.node_cpu_ms_per_op.setdefault(role, []).append((srv1[role] - srv0[role]) * 1000.0 / ok)
            written.extend(res.written_keys)
            s = res.summary
            self.log(f"{name} rep {rep + 1}: {s.ops_per_s:.0f} ops/s, p50 {_ms(s.p50_ms)} ms, "
                     f"p99 {_ms(s.p99_ms)} ms, errors {s.error_count}")
        self.scenarios.append(sc)
        return written


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc; None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def servers_cpu_s(nodes: dict[str, Node]) -> dict[str, float] | None:
    """CPU seconds of each node's server process (None if any is unreadable)."""
    out: dict[str, float] = {}
    for role, n in nodes.items():
        v = proc_cpu_s(n.proc.pid) if n.proc is not None else None
        if v is None:
            return None
        out[role] = v
    return out


def self_cpu_s() -> float:
    """CPU seconds used by this process (the load generator)."""
    t = os.times()
    return t.user + t.system


# ---- node set-up --------------------------------------------------------------------------------


def init_single(node: Node) -> str:
    """Initialize (1 share) and unseal a fresh raft node, mount kv-v2 at secret/; the root token."""
    code, body = node.request("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, timeout=60)
    if code != 200:
        raise RuntimeError(f"init failed: {code}")
    code, _ = node.request("PUT", "sys/unseal", {"key": body["keys"][0]}, timeout=90)
    if code != 200:
        raise RuntimeError(f"unseal failed: {code}")
    node.wait_health({200}, timeout=60)
    token = str(body["root_token"])
    mount_kv2(node, token)
    return token


def mount_kv2(node: Node, token: str) -> None:
    """Enable a KV v2 engine at secret/ through ``node``."""
    code, body = node.request("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}},
                              token=token, timeout=30)
    if code not in (200, 204):
        raise RuntimeError(f"mounting secret/ failed: {code} {body}")


def roles(cluster: LocalCluster) -> dict[int, list[Node]]:
    """Nodes by sys/health code (200 active, 429 standby, 473 performance standby)."""
    out: dict[int, list[Node]] = {}
    for n in cluster.nodes:
        code = cluster.health(n)
        if code is not None:
            out.setdefault(code, []).append(n)
    return out


def wait_roles(cluster: LocalCluster, timeout: float = 60.0) -> dict[int, list[Node]]:
    """Block until one node is active and every other node is a (performance) standby."""
    end = time.monotonic() + timeout
    got: dict[int, list[Node]] = {}
    while time.monotonic() < end:
        got = roles(cluster)
        if len(got.get(200, [])) == 1 and len(got.get(429, [])) + len(got.get(473, [])) == len(cluster.nodes) - 1:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"cluster roles never settled: {sorted((k, len(v)) for k, v in got.items())}")


# ---- scenarios ----------------------------------------------------------------------------------


async def run_dev(b: Bench, work: Path) -> None:
    node = Node(work / "dev")
    b.log("starting a dev node (inmem storage)")
    node.start_dev("root")
    try:
        keys = await b.measure("dev write", "dev node", node, "root", "write")
        await b.measure("dev read", "dev node", node, "root", "read", keys)
    finally:
        node.stop()


async def run_raft1(b: Bench, work: Path) -> None:
    node = Node(work / "raft1")
    b.log("starting a single raft node (LMDB + one-member Raft)")
    node.start()
    try:
        token = init_single(node)
        keys = await b.measure("raft1 write", "single raft node", node, token, "write")
        await b.measure("raft1 read", "single raft node", node, token, "read", keys)
    finally:
        node.stop()


async def run_cluster(b: Bench, cluster: LocalCluster, groups: set[str]) -> None:
    token = cluster.root_token
    if "cluster" in groups:
        r = await asyncio.to_thread(wait_roles, cluster)
        active = r[200][0]
        perf = r[473][0] if r.get(473) else None
        standby = r[429][0] if r.get(429) else r[473][-1]
        nodes = {"active": active, "standby": standby}
        if perf is not None and perf is not standby:
            nodes["perf_standby"] = perf
        else:
            b.log("no performance standby (sys/health 473) in the cluster: skipping reads at one")
        keys = await b.measure("cluster write @active", "active", active, token, "write", servers=nodes)
        for clients in b.write_concurrency:
            await b.measure(f"cluster write @active, {clients} clients", "active", active, token, "write",
                            servers=nodes, concurrency=clients)
        await b.measure("cluster write @standby", "standby (forwarded)", standby, token, "write", servers=nodes)
        await b.measure("cluster read @active", "active", active, token, "read", keys, servers=nodes)
        await b.measure("cluster read @standby", "standby (forwarded)", standby, token, "read", keys, servers=nodes)
        if "perf_standby" in nodes:
            await b.measure("cluster read @perf-standby", "performance standby (local)", nodes["perf_standby"], token,
                            "read", keys, servers=nodes)
    if "failover" in groups:
        await run_failover(b, cluster)


async def run_failover(b: Bench, cluster: LocalCluster) -> None:
    sc = Scenario("failover (kill -9 active)", "write", "every node, no forwarding")
    urls = [n.addr for n in cluster.nodes]
    for rep in range(b.reps):
        active = await asyncio.to_thread(cluster.wait_active, 60.0)
        res = await measure_failover(urls, cluster.root_token, active.addr, partial(cluster.kill, active),
                                     key_prefix=f"bench/failover-r{rep}/")
        sc.failovers.append(res)
        shown = "none within the timeout" if res.failover_s is None else f"{res.failover_s:.3f} s"
        b.log(f"failover rep {rep + 1}: {shown} (new active {res.new_active}, "
              f"{res.acked_before_kill} acked before the kill, lost {res.lost})")
        await asyncio.to_thread(cluster.restart, active)
        await asyncio.to_thread(active.wait_health, {200, 429, 473}, 90.0)
        await asyncio.to_thread(cluster.wait_active, 60.0)
    b.scenarios.append(sc)


# ---- report -------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) if errors else "0"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def baseline_for(b: Bench, op: str) -> Summary | None:
    """The dev node's median for the same operation, if it was measured."""
    for sc in b.scenarios:
        if sc.name == f"dev {op}":
            return sc.median
    return None


def targets(b: Bench) -> list[dict[str, Any]]:
    """PASS/FAIL per target (None when the scenario was not run)."""
    by = {sc.name: sc for sc in b.scenarios}
    f = by.get("failover (kill -9 active)")
    fm = f.failover_median_s if f else None
    points = [(sc.concurrency, m) for sc in b.scenarios
              if sc.name.startswith("cluster write @active") and (m := sc.median) is not None]
    best = max(points, key=lambda p: p[1].ops_per_s, default=None)
    meets = [(c, m) for c, m in points
             if m.ops_per_s >= WRITES_TARGET and m.p50_ms is not None and m.p50_ms < LATENCY_TARGET_MS]
    fastest = min(points, key=lambda p: p[1].p50_ms if p[1].p50_ms is not None else math.inf, default=None)
    out: list[dict[str, Any]] = [
        {"target": f"3-node writes/s at the active >= {WRITES_TARGET:.0f} (best load)",
         "measured": None if best is None else f"{best[1].ops_per_s:.0f} ({best[0]} clients)",
         "pass": None if best is None else best[1].ops_per_s >= WRITES_TARGET},
        {"target": f"3-node write median latency < {LATENCY_TARGET_MS:.0f} ms (best load)",
         "measured": None if fastest is None or fastest[1].p50_ms is None
         else f"{fastest[1].p50_ms:.1f} ms ({fastest[0]} clients)",
         "pass": None if fastest is None or fastest[1].p50_ms is None else fastest[1].p50_ms < LATENCY_TARGET_MS},
        {"target": "both at the same load",
         "measured": None if not points else "; ".join(
             f"{c} clients: {m.ops_per_s:.0f}/s, p50 {_ms(m.p50_ms)} ms" for c, m in sorted(points, key=lambda p: p[0])),
         "pass": None if not points else bool(meets)},
        {"target": f"median failover after kill -9 < {FAILOVER_TARGET_S:.0f} s",
         "measured": None if fm is None else round(fm, 3),
         "pass": None if f is None else (fm is not None and fm < FAILOVER_TARGET_S)},
    ]
    return out


def to_json(b: Bench, meta: dict[str, Any]) -> dict[str, Any]:
    """The whole run as a JSON-ready dict."""
    rows: list[dict[str, Any]] = []
    for sc in b.scenarios:
        row: dict[str, Any] = {"scenario": sc.name, "op": sc.op, "client_at": sc.client_at}
        m = sc.median
        if m is not None:
            base = baseline_for(b, sc.op)
            row.update(median=m.to_json(), reps=[s.to_json() for s in sc.reps],
                       ops_ratio_to_baseline=_round(ratio(m.ops_per_s, base.ops_per_s if base else None)),
                       p50_ratio_to_baseline=_round(ratio(m.p50_ms, base.p50_ms if base else None)),
                       server_cpu_ms_per_op=_round(sc.server_cpu), client_cpu_ms_per_op=_round(sc.client_cpu),
                       node_cpu_ms_per_op={k: _round(statistics.median(v)) for k, v in sc.node_cpu_ms_per_op.items()})
        if sc.failovers:
            row.update(failover_median_s=_round(sc.failover_median_s, 3),
                       failovers=[f.to_json() for f in sc.failovers])
        rows.append(row)
    return {"meta": meta, "scenarios": rows, "targets": targets(b)}


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def to_markdown(b: Bench, meta: dict[str, Any]) -> str:
    """The results table (plus targets) as Markdown."""
    lines = [f"# vaultraft benchmark — {meta['started']}", "",
             (f"{meta['cpus']} CPUs, load average before {meta['loadavg_before']}, after {meta['loadavg_after']}; "
              f"{meta['concurrency']} concurrent clients, {meta['reps']} × {meta['duration_s']} s per scenario "
              f"(medians shown); ratios against the dev node (inmem) measured in the same run."), "",
             ("| scenario | client at | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors | ops/s vs baseline "
              "| p50 vs baseline | server CPU ms/op | client CPU ms/op |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for sc in b.scenarios:
        m = sc.median
        if m is not None:
            base = baseline_for(b, sc.op)
            lines.append(f"| {sc.name} | {sc.client_at} | {m.ops_per_s:.0f} | {_ms(m.p50_ms)} | {_ms(m.p90_ms)} | "
                         f"{_ms(m.p99_ms)} | {_ms(m.max_ms)} | {_errors(m.errors)} | "
                         f"{_x(ratio(m.ops_per_s, base.ops_per_s if base else None))} | "
                         f"{_x(ratio(m.p50_ms, base.p50_ms if base else None))} | "
                         f"{_ms(sc.server_cpu)} | {_ms(sc.client_cpu)} |")
    per_node = [sc for sc in b.scenarios if len(sc.node_cpu_ms_per_op) > 1]
    if per_node:
        lines += ["", "Server CPU ms per acknowledged request, by node:", ""]
        for sc in per_node:
            parts = ", ".join(f"{role} {statistics.median(v):.2f}" for role, v in sc.node_cpu_ms_per_op.items())
            lines.append(f"- {sc.name}: {parts}")
    budget = [sc for sc in b.scenarios if sc.server_cpu is not None and sc.client_cpu is not None]
    if budget:
        cpus = int(meta.get("cpus") or 1)
        lines += ["", (f"**CPU budget**: what the measured CPU per request allows at most on {cpus} CPUs "
                       "(all CPU time of the servers and the client, nothing else running), and what "
                       "the busiest server process alone allows (one Python process is bounded by "
                       "about one core):"), ""]
        for sc in budget:
            assert sc.server_cpu is not None and sc.client_cpu is not None
            total = sc.server_cpu + sc.client_cpu
            busiest = max((statistics.median(v) for v in sc.node_cpu_ms_per_op.values()), default=sc.server_cpu)
            lines.append(f"- {sc.name}: {total:.2f} ms/request in all → at most {cpus * 1000 / total:.0f}/s; "
                         f"busiest process {busiest:.2f} ms → at most {1000 / busiest:.0f}/s")
    for sc in b.scenarios:
        if sc.failovers:
            each = ", ".join("–" if f.failover_s is None else f"{f.failover_s:.2f}" for f in sc.failovers)
            med = sc.failover_median_s
            lost = [f.lost for f in sc.failovers]
            lines += ["", (f"**Failover** (kill -9 of the active node under a write load → first acknowledged "
                           f"write on the new active): median **{'–' if med is None else f'{med:.2f}'} s** "
                           f"(repetitions: {each} s; acknowledged writes lost: {lost}).")]
    if "error" in meta:
        lines += ["", f"**Run aborted:** {meta['error']}"]
    if "server_events" in meta:
        lines += ["", f"Requests failed: the servers' log lines other than per-request lines (role and Raft "
                      f"state changes, warnings) were kept in `{Path(meta['server_events']).name}`."]
    lines += ["", "| target | measured | result |", "|---|---:|---|"]
    for t in targets(b):
        res = "not run" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        lines.append(f"| {t['target']} | {'–' if t['measured'] is None else t['measured']} | {res} |")
    return "\n".join(lines) + "\n"


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ---- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per repetition (default 5)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent client workers (default 32)")
    p.add_argument("--write-concurrency", default="16,20,24",
                   help="further client counts for writes at the active, comma-separated (default 16,20,24)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per scenario (default 3)")
    p.add_argument("--max-requests", type=int, default=200_000, help="request cap per repetition")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded warm-up seconds per scenario")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated scenario groups to run, from {','.join(GROUPS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where latest.json/.md go")
    return p.parse_args(argv)


def keep_server_events(work: Path, dest: Path) -> Path:
    """Copy every server log line under ``work`` except the per-request lines (role changes,
    Raft state, warnings: what explains errors) into ``dest``, each prefixed by its node."""
    lines: list[str] = []
    for log_path in sorted(work.rglob("server.log")):
        node = str(log_path.parent.relative_to(work))
        with open(log_path, errors="replace") as f:
            lines.extend(f"{node}: {line.rstrip()}" for line in f if "http_request" not in line)
    dest.write_text("\n".join(lines) + "\n")
    return dest


async def run_all(b: Bench, groups: set[str], work: Path) -> None:
    """Run the chosen scenario groups in order, tearing every node down afterwards."""
    if "dev" in groups:
        await run_dev(b, work)
    if "raft1" in groups:
        await run_raft1(b, work)
    if groups & {"cluster", "failover"}:
        b.log("starting a 3-node cluster (node 2 is a performance standby)")
        cluster = LocalCluster(work / "cluster")
        cluster.nodes[2].storage_extra = "performance_standby = true"
        try:
            t0 = time.monotonic()
            await asyncio.to_thread(cluster.up)
            mount_kv2(cluster.wait_active(), cluster.root_token)
            b.log(f"cluster up in {time.monotonic() - t0:.1f} s")
            await run_cluster(b, cluster, groups)
        finally:
            cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write latest.json and latest.md under ``--out``."""
    a = parse_args(argv)
    groups = {g.strip() for g in a.only.split(",") if g.strip()}
    if not groups <= set(GROUPS):
        print(f"unknown scenario group(s): {sorted(groups - set(GROUPS))}", file=sys.stderr)
        return 2
    try:
        extra = tuple(int(x) for x in a.write_concurrency.split(",") if x.strip())
    except ValueError:
        print(f"--write-concurrency: not a list of integers: {a.write_concurrency!r}", file=sys.stderr)
        return 2
    if any(c < 1 for c in extra):
        print("--write-concurrency: client counts must be positive", file=sys.stderr)
        return 2
    b = Bench(duration_s=a.duration, concurrency=a.concurrency, reps=a.reps, max_requests=a.max_requests,
              warmup_s=a.warmup, write_concurrency=tuple(c for c in extra if c != a.concurrency))
    meta: dict[str, Any] = {"started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                            "cpus": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform(), "loadavg_before": loadavg(),
                            "duration_s": a.duration, "concurrency": a.concurrency,
                            "write_concurrency": list(extra), "reps": a.reps,
                            "warmup_s": a.warmup, "max_requests": a.max_requests, "groups": sorted(groups)}
    work = Path(tempfile.mkdtemp(prefix="vaultraft-bench-"))
    t0 = time.monotonic()
    try:
        run_client(run_all(b, groups, work))
    except Exception as e:  # noqa: BLE001  # still write what was measured; the failure goes into the report
        meta["error"] = f"{type(e).__name__}: {e}"
        b.log(f"run aborted: {meta['error']}")
    finally:
        a.out.mkdir(parents=True, exist_ok=True)
        if "error" in meta or any(r.error_count for sc in b.scenarios for r in sc.reps):
            meta["server_events"] = str(keep_server_events(work, a.out / "latest-server-events.log"))
            b.log(f"errors seen: the servers' non-request log lines are in {meta['server_events']}")
        shutil.rmtree(work, ignore_errors=True)
    meta.update(loadavg_after=loadavg(), wall_s=round(time.monotonic() - t0, 1))
    (a.out / "latest.json").write_text(json.dumps(to_json(b, meta), indent=2) + "\n")
    md = to_markdown(b, meta)
    (a.out / "latest.md").write_text(md)
    print()
    print(md)
    print(f"wrote {a.out / 'latest.json'} and {a.out / 'latest.md'} ({meta['wall_s']} s)")
    return 1 if "error" in meta else 0


if __name__ == "__main__":
    raise SystemExit(main())
