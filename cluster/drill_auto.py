"""The automatic-promotion drill: lose the DR primary and let the DR site promote itself.

Needs a setup with a witness (``dr up --witness``): every node of both DR sites runs
``auto_promote`` with the witness, and each site's links (to the witness, and its
replication port) go through fault proxies. :func:`run_auto_drill` runs, in order:

1. **load** — ``writers`` threads write KV v2 (mount ``drill/``) to the primary's active node,
   and ``probes`` threads send the same writes to the DR site's active node (refused, 400,
   while it is a DR secondary). Every acknowledged write is recorded with its invoke and
   acknowledgement times. The load runs ``duration`` seconds, and longer if the voters
   still refuse promotions (the witness for ``-max-lease`` after it started, the DR site's
   own voter for 2 × ``failover_timeout`` after its active node started or was activated);
2. **loss** — ``partition``: the primary site's witness and replication proxies are cut
   (its clients still reach it); ``kill``: SIGKILL to every primary node. Nobody promotes
   anything: the DR site must notice the silence, win the witness's vote and promote itself;
3. **promotion** — waits for the first write acknowledged by the DR site:
   ``rto_s`` = loss → that acknowledgement. The writers keep hammering the old primary;
4. **heal** (partition) — the proxies are healed and the old primary must demote itself
   (``sys/health`` 472) once it meets the newer epoch: ``old_primary_demoted_after_heal_s``;
5. **verify** — **split brain** is any write acknowledged by the old primary that completed
   after the first acknowledged write of the promoted site was *sent* (``overlap_writes``,
   must be 0; ``gap_s`` is the margin). Every acknowledged write is read back from the
   promoted site: ``rpo_writes`` are the old primary's missing ones; those at or below the
   index the DR site had replicated (polled until it promoted) and the promoted site's
   own ones must all be there;
6. **fail-back** (optional) — as in :mod:`cluster.drill`, then a merkle check.

The result is a JSON-ready dict (no tokens, no keys) with ``passed`` and ``failures``;
:func:`to_markdown` renders it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import dr_api
from cluster.dr_api import HEALTH_DR_SECONDARY
from cluster.drill import MOUNT, _Clock, _fmt, ensure_mount
from cluster.drill_load import Ack, WriteLoad, read_back
from cluster.local import ClusterError, ClusterNode
from cluster.replication import ReplicatedClusters, Site
from cluster.sites import ReplicationSites

LOSSES = ("partition", "kill")


def process_started(pid: int | None) -> float | None:
    """When process ``pid`` started (``time.time()`` scale), None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


class _Monitor:
    """Polls the DR site's and the old primary's active nodes in the background."""

    def __init__(self, sec: str, sec_node: ClusterNode, old_node: ClusterNode, say: Callable[[str], None]) -> None:
        self.sec, self.sec_node, self.old_node, self.say = sec, sec_node, old_node, say
        self.replicated = 0  # the highest last_remote_wal seen while the DR site was a secondary
        self.promoted_at: float | None = None
        self.epoch: int | None = None
        self.old_health: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-monitor", daemon=True)

    def start(self) -> _Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                st = dr_api.dr_status(self.sec_node, timeout=1.0)
            except dr_api.DRError:
                st = {}
            if st.get("mode") == "secondary":
                self.replicated = max(self.replicated, int(st.get("last_remote_wal") or 0))
            elif st.get("mode") == "primary" and self.promoted_at is None:
                self.promoted_at, self.epoch = time.monotonic(), st.get("epoch")
                self.say(f"the {self.sec} site reports DR mode primary, epoch {self.epoch} (it promoted itself)")
            code = dr_api.health(self.old_node, timeout=0.5)
            if code != self.old_health:
                self.say(f"old primary {self.old_node.name}: sys/health {code}")
                self.old_health = code


def _quarantine_wait(sites: ReplicationSites, sec: Site, sec_node: ClusterNode) -> float:
    """Seconds until neither the witness nor the DR site's voter refuses a promotion."""
    w = sites.witness
    assert w is not None
    fo = w.failover_timeout
    ready = [(w.started_at or time.time()) + w.max_lease]
    started = process_started(sec_node.pid)
    ready.append((started or time.time()) + 2 * fo)
    try:
        ready.append(sec.role_file.stat().st_mtime + 2 * fo)  # rewritten at activation and every save
    except OSError:
        pass
    return max(0.0, max(ready) + 1.0 - time.time())


def _lose(rc: ReplicatedClusters, sites: ReplicationSites, site: Site, loss: str) -> str:
    if loss == "partition":
        assert sites.witness is not None
        cut = sites.witness.cut(site.name)
        return f"cut the {site.name} site's links ({', '.join(cut)} proxies); its clients still reach it"
    nodes = [n for n in site.cluster.nodes if n.alive()]
    for n in nodes:
        n.signal(signal.SIGKILL)
    for n in nodes:
        if not n.wait_exit(10):
            raise ClusterError(f"{site.name}/{n.name} survived SIGKILL")
    site.cluster.save_state()
    return f"kill -9 of {len(nodes)} nodes"


def _wait_first_ack(load: WriteLoad, site: str, timeout: float) -> Ack:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = load.acked_by(site)
        if got:
            return min(got, key=lambda a: a.ack)
        time.sleep(0.005)
    raise TimeoutError(f"the {site} site acknowledged no write within {timeout:.0f}s of the loss (it did not "
                       "promote itself: see replication_auto_promotion_refused in its server.log and the witness log)")


def run_auto_drill(sites: ReplicationSites, *, loss: str = "partition", writers: int = 4, probes: int = 1,
                   duration: float = 5.0, progress: Callable[[str], None] | None = None,
                   after_promotion: float = 2.0, fail_back: bool = False, merkle: bool = True,
                   timeout: float = 60.0, acks_out: list[Ack] | None = None) -> dict[str, Any]:
    """Run the automatic-promotion drill (see the module docstring); the result dict.

    Raises ClusterError/TimeoutError when a step cannot be done (links are healed again).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    if writers < 1 or probes < 1 or duration <= 0:
        raise ValueError("writers, probes and duration must be positive")
    w, rc = sites.witness, sites.rc
    if w is None:
        raise ClusterError("the automatic-promotion drill needs a witness: create the sites with `dr up --witness`")
    if not w.alive() or not w.proxyd.alive():
        raise ClusterError("the witness or its proxy daemon is not running: run `dr up` first")
    fo = w.failover_timeout
    clock = _Clock(progress)
    say = clock.say
    prim, sec = rc.primary, rc.secondary
    token = rc.root_token
    saved_progress, rc.progress = rc.progress, say
    phases: dict[str, Any] = {}
    load: WriteLoad | None = None
    probe: WriteLoad | None = None
    monitor: _Monitor | None = None
    cut = False
    try:
        say(f"checking the pair: {prim.name} site is the primary, {sec.name} site the DR secondary "
            f"(auto_promote, failover_timeout {fo}s)")
        w.heal(prim.name)
        p_act = rc.active_node(prim)
        ensure_mount(p_act, token)
        rc.wait_caught_up(sec, timeout)
        s_act = rc.active_node(sec)
        monitor = _Monitor(sec.name, s_act, p_act, say).start()

        wait = _quarantine_wait(sites, sec, s_act)
        load_s = max(duration, wait)
        say(f"starting {writers} writers against the {prim.name} site ({p_act.addr}) and {probes} probing "
            f"writer(s) against the {sec.name} site ({s_act.addr}) for {load_s:.1f}s"
            + (f" (the voters refuse promotions for {wait:.1f}s more)" if wait > duration else ""))
        t = time.monotonic()
        load = WriteLoad(MOUNT, token, writers).start(p_act, prim.name)
        probe = WriteLoad(MOUNT, token, probes).start(s_act, sec.name)
        end = t + load_s
        while (now := time.monotonic()) < end:
            time.sleep(min(1.0, end - now))
            say(f"load: {len(load.acks)} writes acknowledged by the {prim.name} site, {len(probe.acks)} by the "
                f"{sec.name} site, which replicated up to index {monitor.replicated}")
        phases["load_s"] = time.monotonic() - t
        if not load.acks:
            raise ClusterError(f"the primary acknowledged no write during the load ({load.errors} errors)")
        if probe.acks:
            raise ClusterError(f"the {sec.name} site acknowledged writes before the loss: it is not a DR secondary")

        t_loss = time.monotonic()
        say(f"losing the {prim.name} site ({loss})...")
        what = _lose(rc, sites, prim, loss)
        cut = loss == "partition"
        t_lost = time.monotonic()
        phases["loss_s"] = t_lost - t_loss
        say(f"{prim.name} site lost: {what}; waiting for the {sec.name} site to promote itself")

        first = _wait_first_ack(probe, sec.name, 6 * fo + timeout)
        rto = first.ack - t_loss
        say(f"first write acknowledged by the {sec.name} site: RTO {rto:.2f}s")
        phases["promotion_s"] = (monitor.promoted_at or first.ack) - t_loss
        time.sleep(after_promotion)

        demoted_s: float | None = None
        t_heal: float | None = None
        if loss == "partition":
            t_heal = time.monotonic()
            say(f"healing the {prim.name} site's links; it must meet the newer epoch and demote itself")
            w.heal(prim.name)
            cut = False
            try:
                dr_api.wait_for(f"the old primary ({p_act.name}) to answer 472",
                                lambda: dr_api.health(p_act) == HEALTH_DR_SECONDARY, 4 * fo + 30, interval=0.1)
                demoted_s = time.monotonic() - t_heal
                say(f"the old primary demoted itself {demoted_s:.2f}s after the heal (sys/health 472)")
            except TimeoutError as e:
                say(f"FAILURE: {e}")
            phases["heal_to_demoted_s"] = demoted_s
            time.sleep(0.5)  # the writers try the demoted primary once more
        load.stop()
        probe.stop()
        monitor.stop()
        rc.promoted(sec)
        acks = list(load.acks) + list(probe.acks)
        if acks_out is not None:
            acks_out.extend(acks)

        old = [a for a in acks if a.site == prim.name]
        new = [a for a in acks if a.site == sec.name]
        first_sent = min(a.invoke for a in new)
        last_old = max(a.ack for a in old)
        overlap = [a for a in old if a.ack > first_sent]
        replicated = monitor.replicated
        t = time.monotonic()
        new_act = rc.active_node(sec)
        say(f"reading back {len(acks)} acknowledged writes from the promoted site...")
        bad = read_back(new_act, MOUNT, token, acks)
        phases["verify_s"] = time.monotonic() - t
        missing = sorted((b for b in bad if b[0].site == prim.name), key=lambda b: b[0].ack)
        missing_low = [b for b in missing if b[0].index <= replicated]
        lost_after = [b for b in bad if b[0].site == sec.name]
        before = [a for a in old if a.invoke <= t_loss]
        result: dict[str, Any] = {
            "mode": "auto", "loss": loss, "lost_site": prim.name, "promoted_site": sec.name, "size": rc.size,
            "failover_timeout_s": fo, "witness_max_lease_s": w.max_lease, "writers": writers, "probes": probes,
            "duration_s": duration, "quarantine_wait_s": round(wait, 3),
            "rto_s": round(rto, 3),
            "promotion_observed_s": round(monitor.promoted_at - t_loss, 3) if monitor.promoted_at else None,
            "epoch_after": monitor.epoch, "witness_epoch": w.epoch(),
            "old_primary_last_ack_s": round(last_old - t_loss, 3),
            "first_new_write_sent_s": round(first_sent - t_loss, 3),
            "gap_s": round(first_sent - last_old, 3),
            "split_brain": bool(overlap), "overlap_writes": len(overlap),
            "writes_acked": len(acks), "writes_acked_before_loss": len(before),
            "writes_acked_by_old_primary": len(old), "writes_acked_by_promoted_site": len(new),
            "acked_by_old_primary_after_loss": sum(1 for a in old if a.invoke > t_lost),
            "acked_by_old_primary_after_heal": sum(1 for a in old if t_heal is not None and a.ack > t_heal),
            "write_errors": load.errors, "probe_refusals": probe.errors,
            "rpo_writes": len(missing), "rpo_s": round(max(t_loss - missing[0][0].ack, 0.0), 3) if missing else 0.0,
            "rpo_acked_after_loss": sum(1 for b in missing if b[0].ack > t_loss),
            "rpo_window_s": round(missing[-1][0].ack - missing[0][0].ack, 3) if missing else 0.0,
            "replicated_index": replicated, "last_acked_index": max((a.index for a in old), default=0),
            "acked_beyond_replicated_index": sum(1 for a in old if a.index > replicated),
            "missing_at_or_below_replicated_index": len(missing_low), "lost_after_promotion": len(lost_after),
            "missing_sample": [{"key": a.key, "index": a.index, "status": code, "acked_at_s": clock.at(a.ack)}
                               for a, code, _ in (missing_low or missing)[:5]],
            "old_primary_demoted": (demoted_s is not None) if loss == "partition" else None,
            "old_primary_demoted_after_heal_s": round(demoted_s, 3) if demoted_s is not None else None,
            "perf_site": _perf_note(sites), "catch_up_s": None, "merkle_equal": None,
            "phases": phases, "notes": list(rc.notes),
        }
        say(f"split brain: {'YES' if overlap else 'no'} (old primary's last ack "
            f"{result['old_primary_last_ack_s']:+.2f}s"
            f" from the loss, promoted site's first acknowledged write sent {result['first_new_write_sent_s']:+.2f}s)")
        say(f"RPO: {len(missing)} of {len(old)} writes acknowledged by the old primary are missing "
            f"({result['acked_beyond_replicated_index']} were acknowledged beyond replicated index {replicated})")
        result["fail_back_error"] = None
        if fail_back:
            say(f"fail-back: the {prim.name} site becomes the DR secondary of the {sec.name} site")
            try:
                fb = sites.fail_back(timeout=max(timeout, 120.0))
                phases["fail_back"] = {k: round(v, 3) for k, v in fb.items()}
                result["catch_up_s"] = round(fb["catch_up_s"], 3)
                if merkle:
                    check = dr_api.merkle_check(rc.active_node(prim), rc.operation_token(prim))
                    result["merkle_equal"] = bool(check.get("equal"))
                    say(f"merkle check on the {prim.name} site: {'equal' if check.get('equal') else 'NOT equal'}")
            except (ClusterError, TimeoutError) as e:  # the drill's figures stand; report the failure
                result["fail_back_error"] = str(e)
                say(f"FAILURE: fail-back: {e}")
            result["perf_site"] = _perf_note(sites)
            result["notes"] = list(rc.notes)
        for k, v in list(phases.items()):
            if isinstance(v, float):
                phases[k] = round(v, 3)
        result["failures"] = failures(result)
        result["passed"] = not result["failures"]
        result["timeline"] = clock.timeline
        say("drill complete: " + ("passed" if result["passed"] else "FAILED: " + "; ".join(result["failures"])))
        return result
    finally:
        rc.progress = saved_progress
        for lw in (load, probe):
            if lw is not None:
                lw.stop()
        if monitor is not None:
            monitor.stop()
        if cut:
            w.heal(prim.name)


def _perf_note(sites: ReplicationSites) -> str | None:
    """Where the perf site stands after the drill (it still follows the lost primary)."""
    if sites.perf is None:
        return None
    try:
        st = sites.perf.status()
    except ClusterError as e:
        return f"status unavailable: {e}"
    stale = sites.rc.sites.get(st["primary_site"] or "")
    why = " (a performance secondary does not follow a DR promotion: `dr fail-back` re-points it)" \
        if stale is not None and stale.role != "primary" else ""
    return f"follows the {st['primary_site']} site{why}: state {st['state']}, connection {st['connection']}"


def failures(r: dict[str, Any]) -> list[str]:
    """What went wrong in a result (empty: the drill passed)."""
    out: list[str] = []
    if r["split_brain"]:
        out.append(f"split brain: {r['overlap_writes']} write(s) acknowledged by the old primary completed after "
                   "the promoted site's first acknowledged write was sent")
    if r["missing_at_or_below_replicated_index"]:
        out.append(f"{r['missing_at_or_below_replicated_index']} replicated write(s) missing on the promoted site")
    if r["lost_after_promotion"]:
        out.append(f"{r['lost_after_promotion']} write(s) acknowledged by the promoted site missing")
    if r["loss"] == "kill" and r["acked_by_old_primary_after_loss"]:
        out.append("the killed primary acknowledged writes sent after the kill")
    if r["loss"] == "partition" and not r["old_primary_demoted"]:
        out.append("the old primary did not demote itself after the heal")
    if r["acked_by_old_primary_after_heal"]:
        out.append(f"the old primary acknowledged {r['acked_by_old_primary_after_heal']} write(s) after the heal")
    if r["merkle_equal"] is False:
        out.append("merkle check after fail-back: NOT equal")
    if r.get("fail_back_error"):
        out.append(f"fail-back: {r['fail_back_error']}")
    return out


def to_markdown(result: dict[str, Any]) -> str:
    """The automatic-promotion drill result as a Markdown table."""
    yes_no = {True: "yes", False: "NO", None: "-"}
    rows = [
        ("mode", f"auto ({result['loss']}), failover_timeout {result['failover_timeout_s']} s, witness max lease "
                 f"{result['witness_max_lease_s']} s"),
        ("lost site → promoted site",
         f"{result['lost_site']} → {result['promoted_site']} ({result['size']} nodes each)"),
        ("RTO (loss → first write acknowledged by the promoted site)", _fmt(result["rto_s"], " s")),
        ("promotion observed (loss → DR status mode primary)", _fmt(result["promotion_observed_s"], " s")),
        ("old primary's last acknowledged write (relative to the loss)", f"{result['old_primary_last_ack_s']:+.3f} s"),
        ("promoted site's first acknowledged write sent (relative to the loss)",
         f"{result['first_new_write_sent_s']:+.3f} s"),
        ("split brain: old primary's acks completed after that (must be 0)",
         f"{result['overlap_writes']} (gap {result['gap_s']:.3f} s)"),
        ("RPO (old primary's acknowledged writes missing on the promoted site)",
         f"{result['rpo_writes']} of {result['writes_acked_by_old_primary']}: {result['rpo_acked_after_loss']} "
         f"acknowledged after the loss, the first {_fmt(result['rpo_s'], ' s')} before it "
         f"(window {_fmt(result['rpo_window_s'], ' s')})"),
        ("replicated index at promotion / last acknowledged index",
         f"{result['replicated_index']} / {result['last_acked_index']}"),
        ("missing at or below the replicated index (must be 0)", result["missing_at_or_below_replicated_index"]),
        ("promoted site's writes missing (must be 0)", result["lost_after_promotion"]),
        ("acknowledged by the old primary after the loss / after the heal",
         f"{result['acked_by_old_primary_after_loss']} / {result['acked_by_old_primary_after_heal']}"),
        ("old primary demoted itself after the heal (472)",
         f"{yes_no[result['old_primary_demoted']]}"
         + (f" after {result['old_primary_demoted_after_heal_s']:.3f} s" if result["old_primary_demoted"] else "")),
        ("epoch after promotion (DR site / witness)", f"{result['epoch_after']} / {result['witness_epoch']}"),
        ("writes acknowledged (old primary / promoted site)",
         f"{result['writes_acked']} ({result['writes_acked_by_old_primary']} / "
         f"{result['writes_acked_by_promoted_site']})"),
        ("waited for the voters' quarantine", _fmt(result["quarantine_wait_s"], " s")),
        ("fail-back catch-up", _fmt(result["catch_up_s"], " s")),
        ("merkle check after fail-back", {True: "equal", False: "NOT equal", None: "-"}[result["merkle_equal"]]),
        ("perf site", result["perf_site"] or "-"),
        ("result", "passed" if result["passed"] else "FAILED"),
    ]
    for name, v in result["phases"].items():
        if isinstance(v, dict):
            rows += [(f"phase: {name}.{k.removesuffix('_s')}", _fmt(sub, " s")) for k, sub in v.items()]
        else:
            rows.append((f"phase: {name.removesuffix('_s')}", _fmt(v, " s")))
    out = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    out += [""] + [f"- failure: {f}" for f in result["failures"]] if result["failures"] else []
    out += [""] + [f"- note: {n}" for n in result["notes"]] if result.get("notes") else []
    return "\n".join(out) + "\n"
