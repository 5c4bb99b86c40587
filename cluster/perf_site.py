"""A performance secondary site of a DR setup's primary: ``<dir>/perf``.

:class:`PerfSite` is a :class:`cluster.local.LocalCluster` wired with Vault's
``sys/replication/performance/*`` API to the site that is the DR primary when it is
activated (normally the ``primary`` site). Its role is kept in ``<dir>/perf/replication.json``.

Keys and tokens. Activation replaces the perf site's data with the primary's replicated
state, keyring included: from then on its nodes are unsealed with the PRIMARY's unseal keys
(``<dir>/primary/init.json``) and its own ``init.json`` is meaningless. Its old tokens are
gone, and the primary's never reach it, so a root token of its own is generated on it with
the primary's keys (``sys/generate-root``) and kept in ``<dir>/perf/root-token`` (0600). It
serves reads from its copy and forwards writes of replicated data to the primary. Nothing
here prints a key or a token.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import dr_api
from cluster.dr_api import HEALTH_ACTIVE, HEALTH_PERF_STANDBY, HEALTH_SEALED, HEALTH_STANDBY, DRError
from cluster.local import ClusterError, ClusterNode, InitOutput, LocalCluster, role_name

ROLE_FILE = "replication.json"
ROOT_TOKEN_FILE = "root-token"
#: The perf site's ports start this far above the primary site's.
PERF_PORT_OFFSET = 200
SERVING = {HEALTH_ACTIVE, HEALTH_STANDBY, HEALTH_PERF_STANDBY}


def perf_status(node: ClusterNode, timeout: float = 5.0) -> dict[str, Any]:
    """``sys/replication/performance/status`` data of ``node``."""
    body = dr_api.call(node, "GET", "sys/replication/performance/status", timeout=timeout)
    return dict(body["data"]) if isinstance(body, dict) and isinstance(body.get("data"), dict) else {}


def generate_root(node: ClusterNode, keys: list[str]) -> str:
    """Vault's root token ceremony on ``node`` with ``keys`` (a pending attempt is cancelled
    first); the token, returned and never printed."""
    st = dr_api.call(node, "GET", "sys/generate-root/attempt")
    if st.get("started"):
        dr_api.call(node, "DELETE", "sys/generate-root/attempt")
    start = dr_api.call(node, "PUT", "sys/generate-root/attempt", {})
    otp, nonce, required = start["otp"], start["nonce"], int(start["required"])
    if len(keys) < required:
        raise DRError(f"generate-root needs {required} unseal keys, the keys file has {len(keys)}")
    done: dict[str, Any] = {}
    for key in keys[:required]:
        done = dr_api.call(node, "PUT", "sys/generate-root/update", {"key": key, "nonce": nonce})
    if not done.get("complete"):
        raise DRError(f"generate-root on {node.addr} did not complete")
    decoded = dr_api.call(node, "PUT", "sys/decode-token", {"encoded_token": done["encoded_token"], "otp": otp})
    return str(decoded["data"]["token"])


@dataclass
class PerfSite:
    """The performance secondary site (role ``none`` until wired, then ``secondary``)."""

    cluster: LocalCluster
    role: str = "none"
    secondary_id: str | None = None
    #: The DR site it was activated against (its performance primary).
    primary_site: str | None = None
    name: str = "perf"
    #: Workarounds applied for server misbehaviour (also announced through ``progress``).
    notes: list[str] = field(default_factory=list)

    @property
    def role_file(self) -> Path:
        return self.cluster.workdir / ROLE_FILE

    @property
    def root_token_file(self) -> Path:
        return self.cluster.workdir / ROOT_TOKEN_FILE

    @property
    def root_token(self) -> str:
        """The perf site's own root token (from :attr:`root_token_file`)."""
        try:
            return self.root_token_file.read_text().strip()
        except FileNotFoundError:
            raise ClusterError(f"no root token for the perf site ({self.root_token_file})") from None

    @classmethod
    def exists(cls, workdir: Path) -> bool:
        """Whether ``workdir`` (``<dir>/perf``) holds a perf site."""
        return (Path(workdir) / "state.json").exists()

    @classmethod
    def load(cls, workdir: Path) -> PerfSite:
        """The perf site recorded in ``workdir``."""
        site = cls(LocalCluster.load(workdir))
        try:
            d = json.loads(site.role_file.read_text())
            site.role, site.secondary_id, site.primary_site = str(d["role"]), d.get("secondary_id"), d.get("primary")
        except FileNotFoundError:
            pass
        except (ValueError, KeyError) as e:
            raise ClusterError(f"{site.role_file} is corrupt: {e}") from None
        return site

    def save(self, keys_file: Path) -> None:
        """Write the role file atomically (it names the keys file, it holds no secret)."""
        d = {"site": self.name, "role": self.role, "mode": "performance", "secondary_id": self.secondary_id,
             "primary": self.primary_site, "keys_file": str(keys_file), "root_token_file": str(self.root_token_file),
             "changed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = self.role_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        os.replace(tmp, self.role_file)
        self.cluster.save_state()

    def write_root_token(self, token: str) -> None:
        """Keep ``token`` in :attr:`root_token_file` (0600, written atomically)."""
        tmp = self.root_token_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root_token_file)

    # ---- lifecycle ---------------------------------------------------------------------------

    def activate(self, primary: ClusterNode, primary_site: str, root_token: str, keys: InitOutput,
                 threshold: int, keys_file: Path, advertise: str = "", timeout: float = 90.0,
                 progress: Any = print) -> None:
        """Wire this (initialized, serving) site as a performance secondary of the cluster whose
        active node is ``primary`` (``root_token`` and ``keys`` are that cluster's), wait until
        it streams and caught up, and generate its own root token with the primary's keys.
        ``advertise`` is passed as ``primary_cluster_addr`` when the primary is enabled."""
        if perf_status(primary).get("mode") != "primary":
            progress(f"enabling performance replication as primary on the {primary_site} site ({primary.addr})")
            body = {"primary_cluster_addr": advertise} if advertise else {}
            dr_api.call(primary, "PUT", "sys/replication/performance/primary/enable", body, root_token)
        sid = f"perf-{uuid.uuid4().hex[:6]}"
        progress(f"issuing a performance secondary token for id {sid}")
        resp = dr_api.call(primary, "PUT", "sys/replication/performance/primary/secondary-token",
                           {"id": sid, "ttl": "30m"}, root_token)
        act = self.cluster.wait_active(timeout)
        assert self.cluster.init is not None
        progress(f"activating the perf site as a performance secondary ({act.addr}); its data is replaced "
                 "by the primary's replicated state")
        dr_api.call(act, "PUT", "sys/replication/performance/secondary/enable", {"token": resp["wrap_info"]["token"]},
                    self.cluster.init.root_token, timeout=60)
        self.role, self.secondary_id, self.primary_site = "secondary", sid, primary_site
        self.cluster.init, self.cluster.threshold = keys, threshold  # it runs on the primary's keyring now
        self.save(keys_file)
        self.converge(primary, timeout, progress)
        progress("generating the perf site's own root token with the primary's unseal keys "
                 f"(kept in {self.root_token_file}, mode 0600)")
        self.write_root_token(generate_root(self.active(timeout), keys.keys))

    def follow(self, primary: ClusterNode, primary_site: str, root_token: str, keys: InitOutput, keys_file: Path,
               advertise: str = "", timeout: float = 90.0, progress: Any = print) -> None:
        """Point this performance secondary at a new primary (after a DR promotion): enable the
        performance primary role there, issue a token, ``update-primary`` here with this
        site's own root token, wait until it streams, and generate its root token again (the
        update replaces its local state, tokens included)."""
        if perf_status(primary).get("mode") != "primary":
            progress(f"enabling performance replication as primary on the {primary_site} site ({primary.addr})")
            body = {"primary_cluster_addr": advertise} if advertise else {}
            dr_api.call(primary, "PUT", "sys/replication/performance/primary/enable", body, root_token)
        sid = f"perf-{uuid.uuid4().hex[:6]}"
        resp = dr_api.call(primary, "PUT", "sys/replication/performance/primary/secondary-token",
                           {"id": sid, "ttl": "30m"}, root_token)
        act = self.active(timeout)
        if not self.root_token_file.exists():
            self.write_root_token(generate_root(act, keys.keys))
        progress(f"update-primary on the perf site: it follows the {primary_site} site as {sid}")
        dr_api.call(act, "PUT", "sys/replication/performance/secondary/update-primary",
                    {"token": resp["wrap_info"]["token"]}, self.root_token, timeout=60)
        self.role, self.secondary_id, self.primary_site = "secondary", sid, primary_site
        self.save(keys_file)
        self.converge(primary, timeout, progress)
        progress("generating the perf site's root token again with the primary's unseal keys")
        self.write_root_token(generate_root(self.active(timeout), keys.keys))

    def resume(self, keys: InitOutput, threshold: int, timeout: float = 60.0, progress: Any = print) -> None:
        """Start and unseal (with the primary's keys) a wired site's nodes; wait until it serves."""
        down = [n for n in self.cluster.nodes if not n.alive()]
        if down:
            self.cluster.start()
        self.cluster.init, self.cluster.threshold = keys, threshold
        self.converge(None, timeout, progress, activating=False)
        self.cluster.save_state()

    def active(self, timeout: float = 30.0) -> ClusterNode:
        """The perf site's active node (health 200)."""
        return self.cluster.wait_active(timeout)

    def converge(self, primary: ClusterNode | None, timeout: float = 90.0, progress: Any = print, *,
                 activating: bool = True) -> None:
        """Wait until every node serves and, when ``activating``, the site streams
        (``stream-wals``) at the primary's last WAL index as of this call.

        Sealed followers are unsealed with the primary's keys: at once when not
        ``activating``, otherwise once the active node streams (a follower seals itself when
        the keyring goes away during the bulk sync; the primary's keys open it only after the
        active node switched keyrings). A follower those keys cannot open twice in a row is
        rebuilt (:meth:`_rebuild`)."""
        want = int(perf_status(primary).get("last_wal") or 0) if primary is not None and activating else 0
        end = time.monotonic() + timeout
        failures: dict[str, int] = {}
        last: dict[str, Any] = {}
        codes: dict[str, int | None] = {}
        while time.monotonic() < end:
            codes = {n.name: dr_api.health(n) for n in self.cluster.nodes}
            act = next((n for n in self.cluster.nodes if codes[n.name] == HEALTH_ACTIVE), None)
            last = {}
            if act is not None:
                try:
                    last = perf_status(act, timeout=2)
                except DRError:
                    last = {}
            streaming = last.get("state") == "stream-wals"
            sealed = [n for n in self.cluster.nodes if codes[n.name] == HEALTH_SEALED]
            if sealed and (streaming or act is None or not activating):
                self._unseal(sealed, act, failures, progress)
                continue
            if all(c in SERVING for c in codes.values()) and (
                    not activating or (streaming and int(last.get("last_remote_wal") or 0) >= want)):
                return
            time.sleep(0.1)
        raise TimeoutError(f"the perf site did not converge within {timeout:.0f}s: health {codes}, state "
                           f"{last.get('state')}, last_remote_wal {last.get('last_remote_wal')} (want {want})")

    def _unseal(self, sealed: list[ClusterNode], act: ClusterNode | None, failures: dict[str, int],
                progress: Any) -> None:
        progress(f"unsealing {', '.join(n.name for n in sealed)} of the perf site with the primary's keys")
        for n in sealed:
            try:
                self.cluster.unseal(n)
                failures.pop(n.name, None)
            except ClusterError as e:
                failures[n.name] = failures.get(n.name, 0) + 1
                if failures[n.name] >= 2 and act is not None:
                    self._rebuild(n, act, progress)
                    failures.pop(n.name)
                else:
                    progress(f"unseal of {n.name} failed, retrying: {e}")
                    time.sleep(0.5)

    def _rebuild(self, node: ClusterNode, act: ClusterNode, progress: Any) -> None:
        """Wipe a follower that sealed itself in the middle of the activation's bulk sync and
        opens with no keys, join it again through ``act`` and unseal it (primary's keys)."""
        note = (f"perf/{node.name} sealed itself during the performance activation's bulk sync and then opened "
                "with neither the primary's keys (500, server.log: BarrierDecryptError) nor its own (400); as a "
                f"sealed node it does not run Raft to repair itself: wiped its data dir, joined it again through "
                f"{act.name} and unsealed it with the primary's keys")
        self.notes.append(note)
        progress(f"warning: {note}")
        node.stop()
        shutil.rmtree(node.data_dir, ignore_errors=True)
        node.start()
        dr_api.call(node, "PUT", "sys/storage/raft/join", {"leader_api_addr": act.addr})
        self.cluster.unseal(node)
        self.cluster.save_state()

    def status(self) -> dict[str, Any]:
        """Role, nodes, performance replication state (no secrets)."""
        nodes = []
        active: ClusterNode | None = None
        for n in self.cluster.nodes:
            code = dr_api.health(n) if n.alive() else None
            if code == HEALTH_ACTIVE and active is None:
                active = n
            nodes.append({"name": n.name, "api_addr": n.addr, "pid": n.pid if n.alive() else None, "health": code,
                          "role": role_name(code)})
        rep: dict[str, Any] = {}
        if active is not None:
            try:
                rep = perf_status(active)
            except DRError:
                rep = {}
        prims = rep.get("primaries") or []
        return {"site": self.name, "role": f"performance-{self.role}" if self.role != "none" else "none",
                "secondary_id": self.secondary_id, "primary_site": self.primary_site,
                "active": active.addr if active else None, "nodes": nodes, "perf_mode": rep.get("mode"),
                "state": rep.get("state"), "last_remote_wal": rep.get("last_remote_wal"),
                "connection": str(prims[0].get("connection_status")) if prims else None,
                "root_token_file": str(self.root_token_file) if self.root_token_file.exists() else None}
