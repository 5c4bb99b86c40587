"""Instructions per request under valgrind's callgrind: a figure the machine's noise cannot move.

Wall-clock throughput and even CPU time per request drift by 30 % and more between runs on a
shared 2-core machine. The user-space instructions a server executes per request do not:
callgrind counts them exactly (the same build, inputs and concurrency give the same count to
within about 1 %). So a change to the request path is judged here first, and the load
benchmarks (``benchmarks.run``) say what it buys in requests per second.

Each scenario starts a real server process under ``valgrind --tool=callgrind`` with
instrumentation off (start-up runs at valgrind's uninstrumented speed), initializes it when
needed, switches instrumentation on, sends a warm-up load, zeroes the counters, sends exactly
``--writes`` KV v2 writes (then, for ``--reads``, as many reads of those keys) from the usual
load generator and dumps the counters. Kernel time (system calls, context switches) is not
counted, nor is waiting: this measures the Python work per request, nothing else.

    .venv/bin/python -m benchmarks.instructions [--only dev,raft1] [--writes 500] [--updates 500]
                                                [--reads 500] [--concurrency 8]

Needs valgrind (``apt-get install -y valgrind``). Writes ``results/instructions.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load import LoadSpec, run_load
from benchmarks.run import init_single
from cluster.node import Node, vaultraft_exe

SCENARIOS = ("dev", "raft1")
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)


@dataclass(frozen=True)
class Count:
    """Instructions executed by the server while it answered ``requests`` requests."""

    scenario: str
    op: str
    requests: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=120)


def _read_totals(prefix: str) -> int:
    """The instruction count of the last dump (callgrind writes one file per dump)."""
    files = sorted(glob.glob(prefix + "*"), key=os.path.getmtime)
    if not files:
        raise RuntimeError("callgrind wrote no profile")
    m = _TOTALS.search(Path(files[-1]).read_text(errors="replace"))
    if m is None:
        raise RuntimeError("no totals in the callgrind profile")
    return int(m.group(1))


async def _counted(pid: int, prefix: str, spec: LoadSpec) -> tuple[int, int, tuple[str, ...]]:
    """(acknowledged requests, instructions, keys written) of one load, counted alone."""
    _callgrind_control("-z", str(pid))
    result = await run_load(spec)
    _callgrind_control("-d", str(pid))
    await asyncio.sleep(0.5)
    if result.summary.error_count:
        raise RuntimeError(f"{spec.op} load had errors: {result.summary.errors}")
    return result.summary.ok, _read_totals(prefix), result.written_keys


async def measure(scenario: str, work: Path, writes: int, reads: int, concurrency: int,
                  updates: int = 0, update_keys: int = 64) -> list[Count]:
    """Start one server under callgrind, count its instructions for the writes (and reads)."""
    node = Node(work / scenario, storage="raft" if scenario == "raft1" else "inmem")
    node.workdir.mkdir(parents=True, exist_ok=True)
    prefix = str(node.workdir / "callgrind.out")
    if scenario == "dev":
        server_args = ["server", "-dev", f"-dev-listen-address=127.0.0.1:{node.port}", "-dev-root-token-id=root"]
    else:
        node.write_config()
        server_args = ["server", f"-config={node.config_path}"]
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={prefix}",
           sys.executable, vaultraft_exe(), *server_args]
    with open(node.log_path, "ab") as log:
        node.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        node.wait_listening(timeout=600)
        token = "root" if scenario == "dev" else await asyncio.to_thread(init_single, node)
        if scenario == "dev":
            node.wait_health({200}, timeout=120)
            await asyncio.to_thread(_ensure_kv2, node)
        pid = node.proc.pid
        _callgrind_control("-i", "on", str(pid))
        # Bounded by request count, not time: the server runs ~50 times slower under callgrind.
        base = LoadSpec(node.addr, token, "write", concurrency=concurrency, duration_s=3600.0,
                        request_timeout_s=120.0)
        await run_load(dataclasses.replace(base, max_requests=200, key_prefix="warmup/"))
        ok, ir, keys = await _counted(pid, prefix, dataclasses.replace(base, max_requests=writes))
        out = [Count(scenario, "write", ok, ir)]
        if updates:  # the same keys again and again: KV v2 reads each key's metadata first
            await run_load(dataclasses.replace(base, max_requests=2 * update_keys, key_prefix="upd/",
                                               key_space=update_keys))
            ok, ir, _ = await _counted(pid, prefix, dataclasses.replace(base, max_requests=updates, key_prefix="upd/",
                                                                        key_space=update_keys))
            out.append(Count(scenario, "update", ok, ir))
        if reads:
            ok, ir, _ = await _counted(pid, prefix, dataclasses.replace(base, op="read", max_requests=reads,
                                                                          read_keys=keys))
            out.append(Count(scenario, "read", ok, ir))
        return out
    finally:
        node.stop()


def _ensure_kv2(node: Node) -> None:
    """A dev server mounts KV v2 at secret/ itself; fail clearly if that ever changes."""
    code, body = node.request("GET", "sys/mounts", token="root", timeout=60)
    mounts = (body or {}).get("data", body) or {}
    options = (mounts.get("secret/") or {}).get("options") or {}
    if code != 200 or options.get("version") != "2":
        raise RuntimeError("the dev server has no KV v2 mount at secret/")


def render(counts: list[Count], meta: dict[str, Any]) -> str:
    """A Markdown table of instructions per request, with ratios against the dev node."""
    base = {c.op: c.per_request for c in counts if c.scenario == "dev"}
    lines = [f"# vaultraft instructions per request — {meta['time']}", "",
             f"callgrind, {meta['concurrency']} concurrent clients; counted per scenario after a 200-write "
             f"warm-up: {meta['writes']} writes of new keys, {meta['updates']} updates of 64 keys written "
             f"before, {meta['reads']} reads; user-space instructions of the server process (all threads), "
             "kernel time not included.", "",
             "| scenario | op | requests | instructions per request | vs dev |", "|---|---|---:|---:|---:|"]
    for c in counts:
        ratio = f"{c.per_request / base[c.op]:.2f}×" if c.op in base else "–"
        lines.append(f"| {c.scenario} | {c.op} | {c.requests} | {c.per_request / 1e6:.3f} M | {ratio} |")
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("benchmarks.instructions needs valgrind: apt-get install -y valgrind", file=sys.stderr)
        return 2
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    counts: list[Count] = []
    work = Path(tempfile.mkdtemp(prefix="vaultraft-instr-"))
    t0 = time.monotonic()
    try:
        for scenario in only:
            print(f"[instructions] {scenario}: starting a server under callgrind", flush=True)
            got = await measure(scenario, work, args.writes, args.reads, args.concurrency, args.updates)
            for c in got:
                print(f"[instructions] {scenario} {c.op}: {c.per_request / 1e6:.3f} M instructions per request "
                      f"({c.requests} requests)", flush=True)
            counts.extend(got)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "writes": args.writes,
            "reads": args.reads, "updates": args.updates, "concurrency": args.concurrency, "python": platform.python_version(),
            "event_loop": os.environ.get("VAULTRAFT_EVENT_LOOP", "uvloop"), "seconds": round(time.monotonic() - t0, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "counts": [{"scenario": c.scenario, "op": c.op, "requests": c.requests,
                                   "instructions": c.instructions, "per_request": round(c.per_request)}
                                  for c in counts]}, indent=2) + "\n")
    md = render(counts, meta)
    (out / f"{args.name}.md").write_text(md)
    print(md)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated from {','.join(SCENARIOS)}")
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--reads", type=int, default=500, help="reads counted after the writes (0: none)")
    p.add_argument("--updates", type=int, default=500,
                   help="writes counted to 64 keys written before (updates; 0: none)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--name", default="instructions")
    args = p.parse_args()
    if args.writes < 1 or args.reads < 0 or args.updates < 0 or args.concurrency < 1:
        p.error("--writes and --concurrency must be positive, --reads and --updates not negative")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
