"""Every site of a DR setup under one dir: the DR pair, a performance secondary, a witness.

:class:`ReplicationSites` composes

* :class:`cluster.replication.ReplicatedClusters` — ``<dir>/primary`` and ``<dir>/dr``;
* optionally :class:`cluster.perf_site.PerfSite` — ``<dir>/perf``, a performance secondary of
  the site that is the DR primary when it is wired (ports from ``base + 200``);
* optionally :class:`cluster.witness.Witness` — ``<dir>/witness``, the fencing witness and the
  fault proxies in front of each DR site's links (ports from ``base + 300``). With it, every
  node of both DR sites runs ``replication { auto_promote = true ... }`` and each DR site
  advertises its replication proxy as ``primary_cluster_addr``, so a drill can cut a
  primary's links while its clients still reach it.

The witness is part of the DR sites' configuration, so it can only be chosen when the pair
is created; the perf site can be added to an existing pair. Everything is persisted next
to the sites' ``state.json`` files, so each CLI invocation picks up where the last one
stopped. Nothing here prints a key or a token.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from cluster import dr_api
from cluster.local import ClusterError, LocalCluster, port_in_use
from cluster.perf_site import PERF_PORT_OFFSET, PerfSite, generate_root, perf_status
from cluster.replication import DR_PORT_OFFSET, SITES, Progress, ReplicatedClusters, Site
from cluster.witness import DEFAULT_FAILOVER_TIMEOUT, WITNESS_PORT_OFFSET, Witness


def layout_ports(base: int, size: int) -> list[int]:
    """Every port the sites, the witness and its proxies use from ``base`` (see :meth:`ReplicationSites.open`)."""
    nodes = [base + off + 10 * i + k for off in (0, DR_PORT_OFFSET, PERF_PORT_OFFSET) for i in range(size)
             for k in range(3)]
    return nodes + list(range(base + WITNESS_PORT_OFFSET, base + WITNESS_PORT_OFFSET + 6))


def free_base_port(size: int, low: int = 20000, high: int = 32000, tries: int = 200) -> int:
    """A random base port whose whole layout is free, below the kernel's ephemeral range
    (ports picked there with ``bind(0)`` can be taken as the source port of any outgoing
    connection before the server binds them)."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(low, high - WITNESS_PORT_OFFSET - 10, 10)
        if not any(port_in_use(p) for p in layout_ports(base, size)):
            return base
    raise ClusterError(f"no free base port between {low} and {high}")


class ReplicationSites:
    """The DR pair ``rc``, and the optional ``perf`` site and ``witness``."""

    def __init__(self, rc: ReplicatedClusters, perf: PerfSite | None = None, witness: Witness | None = None) -> None:
        self.rc = rc
        self.perf = perf
        self.witness = witness
        if witness is not None:
            rc.advertise = {name: witness.repl_addr(name) for name in SITES}
        rc.before_demote = self._drop_perf_primary
        if perf is not None:
            perf.notes = rc.notes  # one list of workarounds for every site

    @property
    def workdir(self) -> Path:
        return self.rc.workdir

    @property
    def progress(self) -> Progress:
        return self.rc.progress

    # ---- persistence -------------------------------------------------------------------------

    @staticmethod
    def perf_dir(workdir: Path) -> Path:
        return Path(workdir) / "perf"

    @staticmethod
    def witness_dir(workdir: Path) -> Path:
        return Path(workdir) / "witness"

    @classmethod
    def load(cls, workdir: Path, progress: Progress | None = None) -> ReplicationSites:
        """Everything recorded under ``workdir`` (ClusterError if there is no DR pair)."""
        return cls._with_extras(ReplicatedClusters.load(Path(workdir), progress))

    @classmethod
    def _with_extras(cls, rc: ReplicatedClusters) -> ReplicationSites:
        perf = PerfSite.load(cls.perf_dir(rc.workdir)) if PerfSite.exists(cls.perf_dir(rc.workdir)) else None
        wit = Witness.load(cls.witness_dir(rc.workdir)) if Witness.exists(cls.witness_dir(rc.workdir)) else None
        return cls(rc, perf, wit)

    @classmethod
    def open(cls, workdir: Path, size: int | None = None, base_port: int | None = None, *, perf: bool = False,
             witness: bool = False, failover_timeout: int | None = None, cgroups: bool | None = None,
             progress: Progress | None = None) -> ReplicationSites:
        """The setup under ``workdir`` (adding a perf site if asked), or a new one.

        A witness can only be added to a new pair (it is in the DR sites' node configs).
        """
        workdir = Path(workdir)
        if ReplicatedClusters.exists(workdir):
            s = cls._with_extras(ReplicatedClusters.open(workdir, size, base_port, progress))
            if witness and s.witness is None:
                raise ClusterError(f"the DR pair in {workdir} was created without a witness; a witness is part of "
                                   "the sites' node configuration (use `dr down --purge` first, or another --dir)")
            if s.witness is not None and failover_timeout is not None \
                    and failover_timeout != s.witness.failover_timeout:
                raise ClusterError(f"the sites in {workdir} use failover_timeout {s.witness.failover_timeout}s, "
                                   f"not {failover_timeout}s (use `dr down --purge` first)")
            if perf and s.perf is None:
                s.perf = cls._new_perf(workdir, s.rc)
                s.perf.notes = s.rc.notes
            return s
        if Witness.exists(cls.witness_dir(workdir)) or PerfSite.exists(cls.perf_dir(workdir)):
            raise ClusterError(f"{workdir} holds a half-started setup: run `dr down --purge` first")
        rc = ReplicatedClusters(workdir, size=3 if size is None else size, base_port=base_port, cgroups=cgroups,
                                progress=progress)
        wit: Witness | None = None
        if witness:
            nodes = {name: rc.sites[name].cluster.nodes for name in SITES}
            wit = Witness.create(cls.witness_dir(workdir), nodes, base_port,
                                 failover_timeout or DEFAULT_FAILOVER_TIMEOUT)
            for name in SITES:
                for n in rc.sites[name].cluster.nodes:
                    n.extra_config = wit.stanza(name)
        elif failover_timeout is not None:
            raise ClusterError("--failover-timeout needs --witness")
        return cls(rc, cls._new_perf(workdir, rc) if perf else None, wit)

    @classmethod
    def _new_perf(cls, workdir: Path, rc: ReplicatedClusters) -> PerfSite:
        base = rc.sites["primary"].cluster.base_port
        return PerfSite(LocalCluster(cls.perf_dir(workdir), size=rc.size,
                                     base_port=None if base is None else base + PERF_PORT_OFFSET))

    # ---- lifecycle -----------------------------------------------------------------------------

    def up(self, timeout: float = 120.0) -> ReplicationSites:
        """Bring every site to its role (idempotent): the witness and its proxies first (the
        DR sites' nodes dial it), then the DR pair (:meth:`ReplicatedClusters.up`) while a
        new perf site initializes, then the perf site is wired to the current DR primary or,
        if it was wired earlier, started and unsealed with the primary's keys."""
        if self.witness is not None:
            self.progress(f"starting the witness on {self.witness.address} and its fault proxies")
            if self.witness.start():
                self.progress(f"the witness refuses promotions for its first {self.witness.max_lease}s")
            self.witness.heal()
        perf_up: threading.Thread | None = None
        errors: list[BaseException] = []
        if self.perf is not None and self.perf.role == "none":
            perf = self.perf

            def start_perf() -> None:
                try:
                    perf.cluster.up()
                except BaseException as e:  # re-raised below
                    errors.append(e)
            self.progress(f"starting the perf site: {self.rc.size} node(s), initialize, unseal, join")
            perf_up = threading.Thread(target=start_perf, daemon=True)
            perf_up.start()
        try:
            self.rc.up(timeout)
        finally:
            if perf_up is not None:
                perf_up.join()
        if errors:
            raise errors[0]
        if self.perf is not None:
            self._perf_up(timeout)
        return self

    def _perf_up(self, timeout: float) -> None:
        assert self.perf is not None
        keys, threshold = self.rc.keys, self.rc.sites["primary"].cluster.threshold
        if self.perf.role == "none":
            prim = self.rc.primary
            act = self.rc.wait_serving(prim, timeout)
            advertise = self.witness.repl_addr(prim.name) if self.witness is not None else ""
            self.perf.activate(act, prim.name, self.rc.root_token, keys, threshold, self.rc.keys_file, advertise,
                               timeout, self.progress)
        else:
            self.progress("starting and unsealing the perf site with the primary's keys")
            self.perf.resume(keys, threshold, timeout, self.progress)
            self.perf.save(self.rc.keys_file)
            followed = self.rc.sites.get(self.perf.primary_site or "")
            if followed is not None and followed.role == "secondary":  # failed back meanwhile
                self.progress(f"the perf site follows the {followed.name} site, a DR secondary now: re-pointing it")
                self.perf_follow(timeout)
            elif not self.perf.root_token_file.exists():
                self.progress(f"generating the perf site's root token with the primary's unseal keys "
                              f"(kept in {self.perf.root_token_file}, mode 0600)")
                self.perf.write_root_token(generate_root(self.perf.active(timeout), keys.keys))

    def fail_back(self, timeout: float = 120.0) -> dict[str, float]:
        """:meth:`ReplicatedClusters.fail_back` (healing the stale primary's proxies first), then
        the perf site follows the new DR primary if it followed the stale one."""
        old = next((s for s in self.rc.sites.values() if s.role == "stale-primary"), None)
        if self.witness is not None and old is not None:
            self.witness.heal(old.name)
        t = self.rc.fail_back(timeout)
        if self.perf is not None and self.perf.primary_site != self.rc.primary.name:
            t0 = time.monotonic()
            try:
                self.perf_follow(timeout)
            except ClusterError as e:
                raise ClusterError(f"the DR fail-back is done, but re-pointing the perf site failed: {e}") from None
            t["perf_follow_s"] = time.monotonic() - t0
        return t

    def perf_follow(self, timeout: float = 90.0) -> None:
        """Point the perf site at the current DR primary (Vault's runbook: a performance
        secondary does not follow a DR promotion by itself)."""
        assert self.perf is not None
        prim = self.rc.primary
        advertise = self.witness.repl_addr(prim.name) if self.witness is not None else ""
        try:
            self.perf.follow(self.rc.active_node(prim), prim.name, self.rc.root_token, self.rc.keys,
                             self.rc.keys_file, advertise, timeout, self.progress)
        except (TimeoutError, dr_api.DRError) as e:
            raise ClusterError(f"{e}. A perf site whose bulk sync was cut short by a leadership change may never "
                               "become active again (server.log: become_active_failed ReplicatedReadOnly); to start "
                               f"it over: `dr down`, delete {self.perf.cluster.workdir}, `dr up --perf`") from None

    def _drop_perf_primary(self, old: Site) -> None:
        """Before the stale primary ``old`` is demoted and re-pointed: drop the performance
        primary role it may also hold (``update-primary`` refuses a cluster with a primary
        role). A DR demotion — by hand or by fencing — drops that role itself, so this only
        acts on a stale primary that has not been demoted yet."""
        act = self.rc.active_node(old)
        if perf_status(act).get("mode") != "primary":
            return
        self.progress(f"disabling the performance primary role of the {old.name} site (the perf site will "
                      "follow the new DR primary)")
        dr_api.call(act, "PUT", "sys/replication/performance/primary/disable", {}, self.rc.root_token)

    def promote(self, timeout: float | None = None) -> Any:
        """:meth:`ReplicatedClusters.promote`; with a witness the vote is retried while the
        primary's lease may still run (up to 3 × failover_timeout)."""
        if self.witness is None:
            return self.rc.promote()
        end = time.monotonic() + (timeout or 3 * self.witness.failover_timeout + 10)
        while True:
            try:
                return self.rc.promote()
            except dr_api.DRError as e:
                if "lease has not expired" not in str(e) or time.monotonic() > end:
                    raise
                self.progress("the voters refuse the promotion while the primary's lease may run; retrying")
                time.sleep(1.0)

    def down(self, purge: bool = False) -> int:
        """Stop every site, the witness and its proxies; ``purge`` deletes the dir. The
        number of nodes stopped."""
        stopped = sum(len(s.cluster.nodes) for s in self.rc.sites.values())
        if self.perf is not None:
            self.perf.cluster.stop()
            stopped += len(self.perf.cluster.nodes)
        self.rc.down()
        if self.witness is not None:
            self.witness.stop()
        if purge and self.workdir.exists():
            shutil.rmtree(self.workdir)
        return stopped

    @classmethod
    def down_partial(cls, workdir: Path, purge: bool = False) -> int:
        """Stop what a half-started setup left running; the number of nodes stopped."""
        stopped = 0
        if PerfSite.exists(cls.perf_dir(workdir)):
            c = LocalCluster.load(cls.perf_dir(workdir))
            c.stop()
            stopped += len(c.nodes)
        if Witness.exists(cls.witness_dir(workdir)):
            Witness.load(cls.witness_dir(workdir)).stop()
        return stopped + ReplicatedClusters.down_partial(workdir, purge)

    # ---- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """:meth:`ReplicatedClusters.status` plus ``perf`` and ``witness`` (None when absent)."""
        out = self.rc.status()
        out["perf"] = None
        if self.perf is not None:
            p = self.perf.status()
            p["lag_wal_entries"] = None
            src = self.rc.sites.get(self.perf.primary_site or "")
            if src is not None and p["last_remote_wal"] is not None:
                try:
                    prim = perf_status(self.rc.active_node(src, timeout=1.0))
                    if prim.get("mode") == "primary":
                        p["lag_wal_entries"] = max(0, int(prim.get("last_wal") or 0) - int(p["last_remote_wal"]))
                except (dr_api.DRError, TimeoutError):
                    pass
            out["perf"] = p
        out["witness"] = self.witness.status() if self.witness is not None else None
        return out

