"""A DR drill on a :class:`cluster.replication.ReplicatedClusters` pair, end to end.

:func:`run_drill` runs, in order, and times each phase:

1. **load** — ``writers`` threads write KV v2 (mount ``drill/``) to the primary site's active
   node for ``duration`` seconds; every acknowledged write is recorded (key, value,
   X-Vault-Index, ack time);
2. **loss** of the primary site — ``kill``: SIGKILL to every primary node at once;
   ``partition``: iptables rules cut every primary node's API and replication ports (root,
   nodes started in cgroups), the site keeps running and believing it is the primary;
3. **operation token** — generated on the DR secondary with the primary's unseal keys;
4. **promote** the DR secondary, then re-point the clients to its active node and wait for
   the first acknowledged write there: ``rto_s`` = loss → that acknowledgement;
5. **verify** — read back every acknowledged write from the promoted site: ``rpo_writes`` =
   writes the lost primary acknowledged that the promoted site does not have. The
   secondary's ``last_remote_wal`` read just before promotion is the replicated index;
   a write acknowledged with an X-Vault-Index at or below it must be there
   (``missing_at_or_below_replicated_index`` is a correctness failure, not RPO);
6. **fail-back** — the old primary is restarted (or healed), demoted, pointed at the new
   primary with update-primary; ``catch_up_s`` = update-primary → streaming at the new
   primary's last WAL index; then a merkle check on the new secondary.

The result is a JSON-ready dict (no tokens, no keys); :func:`to_markdown` renders it.
Progress lines look like ``[  3.2s] promoting the dr site...``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from cluster import dr_api
from cluster.drill_load import Ack, WriteLoad, read_back
from cluster.local import ClusterError
from cluster.node import Node
from cluster.replication import ReplicatedClusters, Site

MOUNT = "drill"
MODES = ("kill", "partition")


class _Clock:
    """Elapsed time since the drill started, progress lines and the timeline."""

    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.t0 = time.monotonic()
        self.progress = progress
        self.timeline: list[dict[str, Any]] = []

    def at(self, t: float) -> float:
        return round(t - self.t0, 3)

    def say(self, msg: str) -> None:
        now = time.monotonic() - self.t0
        self.timeline.append({"t": round(now, 3), "event": msg})
        if self.progress is not None:
            self.progress(f"[{now:6.1f}s] {msg}")


def ensure_mount(node: Node, token: str, mount: str = MOUNT) -> None:
    """A KV v2 engine at ``mount`` on the primary (created if missing)."""
    mounts = dr_api.call(node, "GET", "sys/mounts", token=token)
    data = mounts.get("data", mounts) if isinstance(mounts, dict) else {}
    if f"{mount}/" not in data:
        dr_api.call(node, "POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}}, token)


def _lose(clusters: ReplicatedClusters, site: Site, mode: str) -> str:
    """Lose ``site``: SIGKILL every node at once (kill) or cut it off (partition)."""
    nodes = [n for n in site.cluster.nodes if n.alive()]
    if mode == "kill":
        for n in nodes:
            n.signal(signal.SIGKILL)
        for n in nodes:
            if not n.wait_exit(10):
                raise ClusterError(f"{site.name}/{n.name} survived SIGKILL")
        site.cluster.save_state()
        return f"kill -9 of {len(nodes)} nodes"
    rules = clusters.isolate_site(site)
    return f"partitioned {len(nodes)} nodes ({rules} iptables rules on their API and replication ports)"


def _load_phase(clusters: ReplicatedClusters, load: WriteLoad, prim: Site, sec: Site, duration: float,
                say: Callable[[str], None]) -> None:
    """Let the load run ``duration`` seconds, reporting throughput and replication lag."""
    p_node, s_node = clusters.active_node(prim), clusters.active_node(sec)
    start = time.monotonic()
    end = start + duration
    while (now := time.monotonic()) < end:
        time.sleep(min(1.0, end - now))
        n = len(load.acks)
        try:
            p_wal = int(dr_api.dr_status(p_node, timeout=2).get("last_wal") or 0)
            s_wal = int(dr_api.dr_status(s_node, timeout=2).get("last_remote_wal") or 0)
            lag = f"secondary at WAL {s_wal}, primary at {p_wal}"
        except dr_api.DRError:
            lag = "replication status unavailable"
        say(f"load: {n} writes acknowledged ({n / max(time.monotonic() - start, 1e-3):.0f}/s), {lag}")


def _wait_first_ack(load: WriteLoad, site: str, after: float, timeout: float) -> Ack:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = [a for a in load.acked_by(site) if a.invoke >= after]
        if got:
            return min(got, key=lambda a: a.ack)
        time.sleep(0.005)
    raise TimeoutError(f"no write acknowledged by the {site} site within {timeout:.0f}s ({load.errors} errors)")


def run_drill(clusters: ReplicatedClusters, *, mode: str = "kill", writers: int = 4, duration: float = 5.0,
              progress: Callable[[str], None] | None = None, after_promotion: float = 1.0,
              fail_back: bool = True, merkle: bool = True, timeout: float = 60.0,
              acks_out: list[Ack] | None = None) -> dict[str, Any]:
    """Run the DR drill on a streaming pair (see the module docstring); the result dict.

    ``acks_out``, if given, receives every acknowledged write (for callers that check the
    promoted site themselves).

    Raises ClusterError/TimeoutError when a step fails; the pair is then left as it was at
    that step (roles saved), except that a partition is healed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if writers < 1 or duration <= 0:
        raise ValueError("writers and duration must be positive")
    clock = _Clock(progress)
    say = clock.say
    prim, sec = clusters.primary, clusters.secondary
    if mode == "partition" and any(n.cgroup is None for n in prim.cluster.nodes):
        raise ClusterError("partition mode needs the primary site's nodes in cgroups (run `dr up` as root with "
                           "cgroup2 and iptables)")
    token = clusters.root_token
    saved_progress, clusters.progress = clusters.progress, say
    phases: dict[str, Any] = {}
    load: WriteLoad | None = None
    lost = False
    try:
        say(f"checking the pair: {prim.name} site is the primary, {sec.name} site the DR secondary")
        p_act = clusters.active_node(prim)
        ensure_mount(p_act, token)
        clusters.wait_caught_up(sec, timeout)

        say(f"starting {writers} writers against the {prim.name} site ({p_act.addr}) for {duration:g}s")
        t = time.monotonic()
        load = WriteLoad(MOUNT, token, writers).start(p_act, prim.name)
        _load_phase(clusters, load, prim, sec, duration, say)
        phases["load_s"] = time.monotonic() - t

        t_loss = time.monotonic()
        say(f"losing the {prim.name} site ({mode})...")
        lost = True
        what = _lose(clusters, prim, mode)
        t_lost = time.monotonic()  # every node is gone / cut off: nothing sent later can be acknowledged
        phases["loss_s"] = t_lost - t_loss
        say(f"{prim.name} site lost: {what}")

        t = time.monotonic()
        say(f"generating a DR operation token on the {sec.name} site with the primary's unseal keys...")
        s_node = clusters.active_node(sec)
        op = clusters.operation_token(sec)
        phases["operation_token_s"] = time.monotonic() - t
        st = dr_api.dr_status(s_node)
        replicated = int(st.get("last_remote_wal") or 0)
        say(f"{sec.name} site replicated up to index {replicated} (state {st.get('state')})")

        t = time.monotonic()
        say(f"promoting the {sec.name} site...")
        new_act = clusters.promote(op, wait_standbys=False, timeout=timeout)
        phases["promote_s"] = time.monotonic() - t
        say(f"{sec.name} site promoted: {new_act.addr} is active")

        t_repoint = time.monotonic()
        load.repoint(new_act, sec.name)
        say(f"clients re-pointed to {new_act.addr}")
        first = _wait_first_ack(load, sec.name, t_repoint, timeout)
        phases["first_write_s"] = first.ack - t_repoint
        rto = first.ack - t_loss
        say(f"first write acknowledged by the promoted site: RTO {rto:.2f}s")
        time.sleep(after_promotion)
        load.stop()
        acks = list(load.acks)
        if acks_out is not None:
            acks_out.extend(acks)

        t = time.monotonic()
        say(f"reading back {len(acks)} acknowledged writes from the promoted site...")
        bad = read_back(new_act, MOUNT, token, acks)
        phases["verify_s"] = time.monotonic() - t
        before = [a for a in acks if a.site == prim.name]
        missing = sorted((b for b in bad if b[0].site == prim.name), key=lambda b: b[0].ack)
        lost_after = [b for b in bad if b[0].site == sec.name]
        missing_low = [b for b in missing if b[0].index <= replicated]
        beyond = [a for a in before if a.index > replicated]
        rpo_s = t_loss - missing[0][0].ack if missing else 0.0
        say(f"RPO: {len(missing)} of {len(before)} writes acknowledged by the lost primary are missing "
            f"({len(beyond)} were acknowledged beyond the replicated index)")
        result: dict[str, Any] = {
            "mode": mode, "lost_site": prim.name, "promoted_site": sec.name, "size": clusters.size,
            "writers": writers, "duration_s": duration,
            "rto_s": round(rto, 3), "rpo_writes": len(missing), "rpo_s": round(max(rpo_s, 0.0), 3),
            "writes_acked": len(acks), "writes_acked_before_loss": len(before),
            "writes_acked_after_promotion": len(acks) - len(before), "write_errors": load.errors,
            "replicated_index": replicated, "last_acked_index": max((a.index for a in before), default=0),
            "acked_beyond_replicated_index": len(beyond),
            "missing_at_or_below_replicated_index": len(missing_low),
            "acked_by_lost_site_after_loss": sum(1 for a in before if a.invoke > t_lost),
            "lost_after_promotion": len(lost_after),
            "missing_sample": [{"key": a.key, "index": a.index, "status": code, "acked_at_s": clock.at(a.ack)}
                               for a, code, _ in (missing_low or missing)[:5]],
            "catch_up_s": None, "merkle_equal": None, "phases": phases, "notes": list(clusters.notes),
        }
        lost = False  # from here on the pair has a working primary again

        clusters.wait_serving(sec, timeout)
        if fail_back:
            say(f"fail-back: the {prim.name} site becomes the DR secondary of the {sec.name} site")
            fb = clusters.fail_back(timeout=max(timeout, 120.0))
            phases["fail_back"] = {k: round(v, 3) for k, v in fb.items()}
            result["catch_up_s"] = round(fb["catch_up_s"], 3)
            say(f"{prim.name} site caught up in {fb['catch_up_s']:.2f}s after update-primary")
            if merkle:
                t = time.monotonic()
                check = dr_api.merkle_check(clusters.active_node(prim), clusters.operation_token(prim))
                phases["merkle_check_s"] = time.monotonic() - t
                result["merkle_equal"] = bool(check.get("equal"))
                say(f"merkle check on the {prim.name} site: {'equal' if check.get('equal') else 'NOT equal'} "
                    f"(primary index {check.get('primary_index')}, secondary index {check.get('secondary_index')})")
        for k, v in list(phases.items()):
            if isinstance(v, float):
                phases[k] = round(v, 3)
        result["timeline"] = clock.timeline
        say("drill complete")
        return result
    finally:
        clusters.progress = saved_progress
        if load is not None:
            load.stop()
        if lost and mode == "partition":
            clusters.heal_site(prim)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}{unit}"
    return f"{v}{unit}"


def to_markdown(result: dict[str, Any]) -> str:
    """The drill result as a Markdown table (headline figures, then each phase)."""
    rows = [
        ("mode", result["mode"]),
        ("lost site → promoted site", f"{result['lost_site']} → {result['promoted_site']} ({result['size']} nodes each)"),
        ("RTO (loss → first write acknowledged by the promoted site)", _fmt(result["rto_s"], " s")),
        ("RPO (acknowledged writes missing on the promoted site)",
         f"{result['rpo_writes']} of {result['writes_acked_before_loss']} ({_fmt(result['rpo_s'], ' s')} of writes)"),
        ("writes acknowledged (before loss / after promotion)",
         f"{result['writes_acked']} ({result['writes_acked_before_loss']} / {result['writes_acked_after_promotion']})"),
        ("replicated index at promotion / last acknowledged index",
         f"{result['replicated_index']} / {result['last_acked_index']}"),
        ("missing at or below the replicated index (must be 0)", result["missing_at_or_below_replicated_index"]),
        ("lost after promotion (must be 0)", result["lost_after_promotion"]),
        ("fail-back catch-up (update-primary → streaming, caught up)", _fmt(result["catch_up_s"], " s")),
        ("merkle check after fail-back", {True: "equal", False: "NOT equal", None: "-"}[result["merkle_equal"]]),
    ]
    for name, v in result["phases"].items():
        if isinstance(v, dict):
            for k, sub in v.items():
                rows.append((f"phase: {name}.{k.removesuffix('_s')}", _fmt(sub, " s")))
        else:
            rows.append((f"phase: {name.removesuffix('_s')}", _fmt(v, " s")))
    out = ["| metric | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    if result.get("notes"):
        out.append("")
        out += [f"- note: {n}" for n in result["notes"]]
    return "\n".join(out) + "\n"
