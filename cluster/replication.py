"""A DR primary cluster and a DR secondary cluster on loopback, wired with Vault's DR API.

:class:`ReplicatedClusters` holds two :class:`cluster.local.LocalCluster` "sites" under one
directory: ``<dir>/primary`` and ``<dir>/dr``. Sites keep their names for life; their DR
*roles* move (after a promotion the ``dr`` site is the primary). Each site's role is saved
in ``<site>/replication.json`` next to its ``state.json``, so that every CLI invocation can
pick up where the last one stopped.

Keys. After activation a DR secondary runs on the primary's keyring: it is unsealed with
the primary's unseal keys, and the primary's root token works on it after a promotion.
The keys operators use for *both* sites are therefore the ones in ``<dir>/primary/init.json``
(0600, written by ``sys/init`` of the primary site); the ``dr`` site's own init.json is
meaningless once it was activated. Nothing here prints a key or a token.

Roles (``Site.role``): ``none`` (not wired yet), ``primary``, ``secondary`` (streams from the
other site) and ``stale-primary`` (a primary whose secondary was promoted: it must be
demoted with :meth:`ReplicatedClusters.fail_back` before it serves anything again).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster import dr_api, partition
from cluster.dr_api import (
    HEALTH_ACTIVE,
    HEALTH_DR_SECONDARY,
    HEALTH_PERF_STANDBY,
    HEALTH_STANDBY,
)
from cluster.dr_followers import FollowerRepair, parallel
from cluster.local import (
    ClusterError,
    ClusterNode,
    InitOutput,
    LocalCluster,
    PortBusy,
    port_in_use,
    role_name,
)

ROLE_VERSION = 1
ROLE_FILE = "replication.json"
SITES = ("primary", "dr")
#: The dr site's ports start this far above the primary site's.
DR_PORT_OFFSET = 100
ROLES = ("none", "primary", "secondary", "stale-primary")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def health_role(code: int | None) -> str:
    """A sys/health code in words, DR secondary (472) included."""
    return "dr-secondary" if code == HEALTH_DR_SECONDARY else role_name(code)


@dataclass
class Site:
    """One of the two clusters and its DR role (persisted in ``<site dir>/replication.json``)."""

    name: str
    cluster: LocalCluster
    role: str = "none"
    secondary_id: str | None = None

    @property
    def role_file(self) -> Path:
        return self.cluster.workdir / ROLE_FILE

    def save(self, keys_file: Path, peer: str) -> None:
        """Write the role file atomically (no secrets in it: it names the keys file)."""
        data = {"version": ROLE_VERSION, "site": self.name, "role": self.role, "secondary_id": self.secondary_id,
                "peer": peer, "keys_file": str(keys_file) if self.role != "none" else str(self.cluster.init_file),
                "changed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.role_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.role_file)

    def load_role(self) -> None:
        """Read the role file if there is one (role ``none`` otherwise)."""
        try:
            data = json.loads(self.role_file.read_text())
        except FileNotFoundError:
            return
        except ValueError as e:
            raise ClusterError(f"{self.role_file} is corrupt: {e}") from None
        role = str(data.get("role", "none"))
        if role not in ROLES:
            raise ClusterError(f"{self.role_file}: unknown role {role!r}")
        self.role, self.secondary_id = role, data.get("secondary_id")


class ReplicatedClusters:
    """A DR primary site and a DR secondary site of ``size`` nodes each, under ``workdir``.

    Ports: the primary site from ``base_port`` (node i: base+10i API, +1 Raft, +2 replication),
    the dr site from ``base_port + 100``; free ports when ``base_port`` is None. ``cgroups``
    (None: when usable, i.e. root + cgroup2) starts every node in its own cgroup, which
    :meth:`isolate_site` needs. ``progress`` receives one line per step.
    """

    def __init__(self, workdir: Path, size: int = 3, base_port: int | None = None, cgroups: bool | None = None,
                 progress: Progress | None = None, *, sites: dict[str, Site] | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.progress: Progress = progress or _quiet
        if sites is None:
            use_cgroups = partition.cgroups_usable() if cgroups is None else cgroups
            sites = {}
            for i, name in enumerate(SITES):
                base = None if base_port is None else base_port + i * DR_PORT_OFFSET
                sites[name] = Site(name, LocalCluster(self.workdir / name, size=size, base_port=base,
                                                      cgroups=use_cgroups))
        self.sites = sites
        #: Workarounds applied for server misbehaviour (also announced through ``progress``).
        self.notes: list[str] = []
        #: Site name → the ``primary_cluster_addr`` it advertises while it is the DR primary
        #: (a fault proxy in front of its replication ports; none: its nodes' own addresses).
        self.advertise: dict[str, str] = {}
        #: Called by :meth:`fail_back` with the stale primary once it runs and is unsealed,
        #: before it is demoted (e.g. to drop a performance primary role it also holds).
        self.before_demote: Callable[[Site], None] | None = None
        self.size = self.sites["primary"].cluster.size

    # ---- persistence -------------------------------------------------------------------------

    @classmethod
    def exists(cls, workdir: Path) -> bool:
        """Whether ``workdir`` holds a pair started earlier."""
        return all((Path(workdir) / name / "state.json").exists() for name in SITES)

    @classmethod
    def load(cls, workdir: Path, progress: Progress | None = None) -> ReplicatedClusters:
        """The pair recorded under ``workdir`` (ClusterError if there is none)."""
        workdir = Path(workdir)
        if not cls.exists(workdir):
            raise ClusterError(f"no DR cluster pair in {workdir}: run `python -m cluster --dir {workdir} dr up` first")
        sites = {name: Site(name, LocalCluster.load(workdir / name)) for name in SITES}
        for s in sites.values():
            s.load_role()
        return cls(workdir, progress=progress, sites=sites)

    @classmethod
    def open(cls, workdir: Path, size: int | None = None, base_port: int | None = None,
             progress: Progress | None = None) -> ReplicatedClusters:
        """The pair under ``workdir`` if there is one (checking size and ports), else a new one."""
        if cls.exists(workdir):
            rc = cls.load(workdir, progress)
            if size is not None and size != rc.size:
                raise ClusterError(f"the clusters in {workdir} have {rc.size} nodes, not {size} "
                                   "(use `dr down --purge` first, or another --dir)")
            have = rc.sites["primary"].cluster.base_port
            if base_port is not None and base_port != have:
                raise ClusterError(f"the clusters in {workdir} use base port {have}, not {base_port} "
                                   "(use `dr down --purge` first, or another --dir)")
            return rc
        return cls(workdir, size=3 if size is None else size, base_port=base_port, progress=progress)

    @property
    def keys_file(self) -> Path:
        """The init.json whose unseal keys and root token serve both sites once wired."""
        return self.sites["primary"].cluster.init_file

    @property
    def keys(self) -> InitOutput:
        """The primary site's unseal keys and root token (read from :attr:`keys_file`)."""
        c = self.sites["primary"].cluster
        return c.init if c.init is not None else c.load_init()

    @property
    def root_token(self) -> str:
        """The primary site's root token: valid on whichever site is the primary."""
        return self.keys.root_token

    def _save(self) -> None:
        for s in self.sites.values():
            s.save(self.keys_file, self.peer(s).name)
            s.cluster.save_state()

    # ---- roles -------------------------------------------------------------------------------

    def peer(self, site: Site) -> Site:
        """The other site."""
        return self.sites["dr" if site.name == "primary" else "primary"]

    def site(self, which: str | Site) -> Site:
        """A site by name (``primary``/``dr``) or by role (``current-primary``/``current-secondary``)."""
        if isinstance(which, Site):
            return which
        if which in self.sites:
            return self.sites[which]
        if which == "current-primary":
            return self.primary
        if which == "current-secondary":
            return self.secondary
        raise ClusterError(f"no site {which!r} (sites: {', '.join(SITES)})")

    @property
    def primary(self) -> Site:
        """The site that is the DR primary now."""
        for s in self.sites.values():
            if s.role == "primary":
                return s
        raise ClusterError("no site is a DR primary (run `dr up`)")

    @property
    def secondary(self) -> Site:
        """The site that is the DR secondary now."""
        for s in self.sites.values():
            if s.role == "secondary":
                return s
        roles = ", ".join(f"{s.name}: {s.role}" for s in self.sites.values())
        raise ClusterError(f"no site is a DR secondary ({roles}); after a promotion run `dr fail-back`")

    def _arm_keys(self, site: Site) -> None:
        """Make ``site.cluster.unseal`` use the keys that open it now (the primary's once wired)."""
        if site.role != "none":
            site.cluster.init = self.keys
            site.cluster.threshold = self.sites["primary"].cluster.threshold

    # ---- nodes -------------------------------------------------------------------------------

    def active_node(self, site: Site | str, timeout: float = 30.0) -> ClusterNode:
        """The node of ``site`` that is its cluster's active node (a DR secondary's too)."""
        s = self.site(site)
        return dr_api.wait_for(f"an active node in the {s.name} site",
                               lambda: next((n for n in s.cluster.nodes if n.alive() and dr_api.is_self_active(n)),
                                            None), timeout)

    def wait_serving(self, site: Site, timeout: float = 60.0) -> ClusterNode:
        """Primary role: wait until one node answers 200 and the others 429/473; the active."""
        act = site.cluster.wait_active(timeout)
        for n in site.cluster.nodes:
            if n is not act and n.alive():
                n.wait_health({HEALTH_STANDBY, HEALTH_PERF_STANDBY, HEALTH_ACTIVE}, timeout=timeout)
        return act

    def _converge(self, site: Site, want: int | None, timeout: float = 60.0, settle: float = 1.0) -> float | None:
        """Bring the DR secondary ``site`` to a steady state, repairing its followers with the
        primary's keys (see :meth:`cluster.dr_followers.FollowerRepair.converge`); when its
        active node first streamed at WAL index ``want`` (None if ``want`` is None)."""
        self._arm_keys(site)
        repair = FollowerRepair(site.cluster, site.name, self.keys_file, self.progress, self.notes)
        return repair.converge(want, timeout, settle)

    # ---- replication state -------------------------------------------------------------------

    def _last_wal(self, prim: Site) -> int:
        """The primary site's last WAL index (from its active node)."""
        return int(dr_api.dr_status(self.active_node(prim)).get("last_wal") or 0)

    def wait_caught_up(self, secondary: Site | str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the secondary streams (``stream-wals``) and applied the primary's last WAL
        index as of this call; the secondary's status then. Raises TimeoutError."""
        sec = self.site(secondary) if secondary is not None else self.secondary
        prim = self.peer(sec)
        want = int(dr_api.dr_status(self.active_node(prim, timeout)).get("last_wal", 0))
        node = self.active_node(sec, timeout)

        def check() -> dict[str, Any] | None:
            st = dr_api.dr_status(node)
            ok = st.get("state") == "stream-wals" and int(st.get("last_remote_wal", 0)) >= want
            return st if ok else None
        return dr_api.wait_for(f"the {sec.name} site to stream and reach WAL index {want}", check, timeout)

    def operation_token(self, site: Site | str | None = None) -> str:
        """A DR operation token from the DR secondary ``site`` (default: the current one),
        generated with the PRIMARY's unseal keys. Returned, never printed."""
        s = self.site(site) if site is not None else self.secondary
        return dr_api.operation_token(self.active_node(s), self.keys.keys)

    def status(self) -> dict[str, Any]:
        """Both sites: roles, nodes, replication state and lag (no secrets)."""
        out: dict[str, Any] = {"dir": str(self.workdir), "keys_file": str(self.keys_file), "sites": []}
        wal: dict[str, int] = {}
        for s in self.sites.values():
            nodes = []
            active: ClusterNode | None = None
            for n in s.cluster.nodes:
                code = dr_api.health(n) if n.alive() else None
                if code in (HEALTH_ACTIVE, HEALTH_DR_SECONDARY) and active is None and dr_api.is_self_active(n):
                    active = n
                nodes.append({"name": n.name, "api_addr": n.addr, "pid": n.pid if n.alive() else None,
                              "health": code, "role": health_role(code) if n.alive() else "down"})
            rep: dict[str, Any] = {}
            if active is not None:
                try:
                    rep = dr_api.dr_status(active)
                except dr_api.DRError:
                    rep = {}
            entry = {"site": s.name, "role": s.role, "secondary_id": s.secondary_id,
                     "active": active.addr if active else None, "nodes": nodes,
                     "dr_mode": rep.get("mode"), "state": rep.get("state"), "epoch": rep.get("epoch"),
                     "last_wal": rep.get("last_wal"), "last_remote_wal": rep.get("last_remote_wal"),
                     "connection": _connection(rep)}
            if rep.get("mode") == "primary":
                wal["primary"] = int(rep.get("last_wal") or 0)
            elif rep.get("mode") == "secondary":
                wal["secondary"] = int(rep.get("last_remote_wal") or 0)
            out["sites"].append(entry)
        # after a bulk sync the secondary sits at the primary's applied index, which may be above its last WAL entry
        out["lag_wal_entries"] = max(0, wal["primary"] - wal["secondary"]) if len(wal) == 2 else None
        return out

    # ---- lifecycle ---------------------------------------------------------------------------

    def up(self, timeout: float = 120.0) -> ReplicatedClusters:
        """Bring both sites to a streaming DR pair (idempotent).

        A new pair: start and initialize both clusters, enable the DR primary, issue a
        secondary token, activate the ``dr`` site with it, unseal its followers with the
        primary's keys and wait until it streams and caught up. A pair that was stopped:
        start every node and unseal it with the keys that open it now; sites keep their
        roles (a ``stale-primary`` is left for :meth:`fail_back`).
        """
        fresh = [s for s in self.sites.values() if s.role == "none"]
        wired = [s for s in self.sites.values() if s.role != "none"]
        busy = [str(p) for s in fresh for n in s.cluster.nodes if not n.alive()
                for p in (n.port, n.cluster_port, n.repl_port) if port_in_use(p)]
        if busy:  # checked for both sites before either starts
            raise PortBusy(f"port {', '.join(busy)} on 127.0.0.1 is in use by another process "
                           "(pick another --base-port, or stop what holds it)")
        if fresh:
            self.progress(f"starting {' and '.join(s.name for s in fresh)} site(s): "
                          f"{self.size} node(s) each, initialize, unseal, join")
            parallel([s.cluster.up for s in fresh])
            for s in fresh:
                s.cluster.save_state()
        for s in sorted(wired, key=lambda s: s.role != "primary"):  # primaries first: secondaries dial them
            self._resume(s, timeout)
        prim, dr = self.sites["primary"], self.sites["dr"]
        if prim.role == "none":
            act = self.wait_serving(prim)
            self.progress(f"enabling DR replication as primary on the primary site ({act.addr})")
            dr_api.enable_primary(act, self.root_token, self.advertise.get(prim.name, ""))
            prim.role = "primary"
            self._save()
        if dr.role == "none":
            self._activate(dr, prim, timeout)
        self._save()
        return self

    def _resume(self, site: Site, timeout: float, *, warn_stale: bool = True) -> None:
        """Start and unseal a wired site's nodes; wait until it serves in its role."""
        c = site.cluster
        down = [n for n in c.nodes if not n.alive()]
        if down:
            self.progress(f"starting {', '.join(n.name for n in down)} of the {site.name} site")
            c.start()
        self._arm_keys(site)
        if site.role == "secondary":
            self._converge(site, None, timeout)  # unseals, and repairs followers a bulk sync broke
        elif site.role == "stale-primary":  # with fencing it may demote itself (472) once unsealed
            c.unseal_all()
            self.active_node(site, timeout)
            if warn_stale:
                self.progress(f"warning: the {site.name} site is a stale primary (its secondary was promoted); "
                              "run `dr fail-back` before using it")
        else:
            c.unseal_all()
            self.wait_serving(site, timeout)
        c.save_state()

    def _activate(self, sec: Site, prim: Site, timeout: float) -> None:
        """Make ``sec`` a DR secondary of ``prim`` (a fresh secondary-token each time)."""
        p_act = self.wait_serving(prim)
        s_act = self.wait_serving(sec)
        sid = f"{sec.name}-{uuid.uuid4().hex[:6]}"
        self.progress(f"issuing a DR secondary token for id {sid} on {p_act.addr}")
        token = dr_api.secondary_token(p_act, self.root_token, sid)
        self.progress(f"activating the {sec.name} site as a DR secondary ({s_act.addr}); its data is replaced "
                      "by the primary's")
        assert sec.cluster.init is not None
        dr_api.activate_secondary(s_act, sec.cluster.init.root_token, token)
        sec.role, sec.secondary_id = "secondary", sid
        self._save()
        self.progress(f"waiting for the {sec.name} site to stream from the primary")
        self._converge(sec, self._last_wal(prim), timeout)

    def promote(self, op_token: str | None = None, *, wait_standbys: bool = True,
                timeout: float = 60.0) -> ClusterNode:
        """Promote the DR secondary to DR primary (generating an operation token with the
        primary's keys unless one is given); the promoted site's active node once it answers
        200. The old primary becomes ``stale-primary``."""
        sec = self.secondary
        old = self.peer(sec)
        node = self.active_node(sec, timeout)
        token = op_token or self.operation_token(sec)
        self.progress(f"promoting the {sec.name} site ({node.addr})")
        dr_api.promote(node, token)
        sec.role, sec.secondary_id = "primary", None
        if old.role == "primary":
            old.role = "stale-primary"
        self._save()
        act = sec.cluster.wait_active(timeout)
        if wait_standbys:
            self.wait_serving(sec, timeout)
        return act

    def promoted(self, site: Site | str) -> None:
        """Record that the DR secondary ``site`` promoted itself (automatic promotion): it is
        the DR primary now, and its peer a stale primary."""
        sec = self.site(site)
        old = self.peer(sec)
        sec.role, sec.secondary_id = "primary", None
        if old.role == "primary":
            old.role = "stale-primary"
        self._save()

    def fail_back(self, timeout: float = 120.0) -> dict[str, float]:
        """Make the stale primary a DR secondary of the promoted site and wait until it caught up.

        Heals its partition rules, starts its dead nodes and unseals them (it comes back
        believing it is the primary), demotes it, issues a secondary token on the new primary,
        generates an operation token on the demoted site with the primary's keys and calls
        update-primary. Returns the phases' durations in seconds (``catch_up_s`` is from
        update-primary until the demoted site streams at the new primary's last WAL index).
        """
        old = next((s for s in self.sites.values() if s.role == "stale-primary"), None)
        if old is None:
            raise ClusterError("no stale primary to fail back (promote the DR secondary first)")
        new = self.primary
        t: dict[str, float] = {}
        t0 = time.monotonic()
        if self.heal_site(old):
            self.progress(f"removed the {old.name} site's partition rules")
        self.progress(f"restarting and unsealing the {old.name} site (it may still believe it is the primary)")
        self._resume(old, timeout, warn_stale=False)
        if self.before_demote is not None:
            self.before_demote(old)
        t["restart_s"] = time.monotonic() - t0
        t1 = time.monotonic()
        node = self._demote_stale(old, timeout)
        t["demote_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        addr = self.advertise.get(new.name, "")
        n_act = self.active_node(new)
        if addr and dr_api.dr_status(n_act).get("primary_cluster_addr") != addr:
            # an automatic promotion advertises the nodes' own addresses: re-enable the DR
            # primary role (the epoch is kept) so its secondaries dial its proxy
            self.progress(f"re-enabling the DR primary on the {new.name} site with primary_cluster_addr {addr}")
            dr_api.disable_primary(n_act, self.root_token)
            dr_api.enable_primary(n_act, self.root_token, addr)
        sid = f"{old.name}-{uuid.uuid4().hex[:6]}"
        self.progress(f"issuing a DR secondary token for id {sid} on the new primary, {new.name} site")
        token = dr_api.secondary_token(self.active_node(new), self.root_token, sid)
        self.progress(f"generating a DR operation token on the {old.name} site with the primary's keys")
        op = dr_api.operation_token(node, self.keys.keys)
        t["tokens_s"] = time.monotonic() - t2
        t3 = time.monotonic()
        self.progress(f"update-primary on the {old.name} site: it follows the {new.name} site")
        dr_api.update_primary(node, op, token)
        old.role, old.secondary_id = "secondary", sid
        self._save()
        caught_up = self._converge(old, self._last_wal(new), timeout)
        assert caught_up is not None
        t["catch_up_s"] = caught_up - t3
        t["fail_back_s"] = time.monotonic() - t0
        return t

    def _demote_stale(self, old: Site, timeout: float) -> ClusterNode:
        """Demote the stale primary ``old`` unless it did so itself (fencing: it met the newer
        epoch); its active node once it answers 472."""
        end = time.monotonic() + timeout
        while True:
            act = self.active_node(old, max(1.0, end - time.monotonic()))
            code = dr_api.health(act)
            if code == HEALTH_DR_SECONDARY:
                return act
            if code == HEALTH_ACTIVE:
                self.progress(f"demoting the {old.name} site ({act.addr})")
                try:
                    dr_api.demote(act, self.root_token)
                except dr_api.DRError as e:  # it may have demoted itself meanwhile
                    self.progress(f"demote: {e}")
            if time.monotonic() > end:
                raise TimeoutError(f"the {old.name} site did not answer 472 within {timeout:.0f}s (health {code})")
            time.sleep(0.2)

    @staticmethod
    def down_partial(workdir: Path, purge: bool = False) -> int:
        """Stop the sites of a pair whose start failed half-way (only some state.json files
        exist); the number of nodes stopped. ``purge`` deletes the dir."""
        stopped = 0
        for name in SITES:
            if (Path(workdir) / name / "state.json").exists():
                c = LocalCluster.load(Path(workdir) / name)
                c.stop()
                stopped += len(c.nodes)
        if purge and Path(workdir).exists():
            shutil.rmtree(workdir)
        return stopped

    def down(self, purge: bool = False) -> None:
        """Stop every node of both sites (and remove partition rules); ``purge`` deletes the dir."""
        for s in self.sites.values():
            self.heal_site(s)
        parallel([s.cluster.stop for s in self.sites.values()])
        if purge and self.workdir.exists():
            shutil.rmtree(self.workdir)

    # ---- site loss by partition (root: cgroup2 + iptables) ----------------------------------

    def _site_tags(self, site: Site) -> list[tuple[ClusterNode, str, int]]:
        c = site.cluster
        return [(n, f"{c.tag}-{n.name}-{what}", port) for n in c.nodes
                for what, port in (("api", n.port), ("repl", n.repl_port))]

    def isolate_site(self, site: Site | str) -> int:
        """Cut ``site`` off from everyone else: nothing reaches or leaves its nodes' API and
        replication ports (clients and the other site lose it; its Raft stays internal, so it
        keeps believing it is whatever it was). Returns the number of iptables rules added."""
        s = self.site(site)
        added = 0
        try:
            for n, tag, port in self._site_tags(s):
                ep = n.endpoint()
                added += partition.isolate(partition.Endpoint(ep.name, ep.api_port, port, ep.pid, ep.cgroup), [], tag)
        except partition.PartitionError as e:
            self.heal_site(s)
            raise ClusterError(f"cannot partition the {s.name} site: {e}") from None
        return added

    def heal_site(self, site: Site | str) -> int:
        """Remove the rules :meth:`isolate_site` added for ``site``; how many."""
        try:
            return sum(partition.heal(tag) for _, tag, _ in self._site_tags(self.site(site)))
        except partition.PartitionError as e:
            raise ClusterError(str(e)) from None


def _connection(rep: dict[str, Any]) -> str | None:
    if rep.get("mode") == "primary":
        secs = rep.get("secondaries") or []
        return ", ".join(f"{s.get('node_id')}: {s.get('connection_status')}" for s in secs) or "no secondaries"
    if rep.get("mode") == "secondary":
        prims = rep.get("primaries") or []
        return str(prims[0].get("connection_status")) if prims else "no primary"
    return None
