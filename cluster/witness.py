"""The fencing witness of a DR setup, and the fault proxies in front of each site's links.

:class:`Witness` lives in ``<dir>/witness``:

* ``data/`` — the witness's data dir (its CA and ``fence-state.json``, the epoch);
* ``primary.pem``, ``dr.pem`` — one client bundle per DR site (``vaultraft witness issue``,
  mode 0600), named in that site's ``replication {}`` stanza (:meth:`Witness.stanza`);
* ``witness.json`` — ports, timeouts and the witness's pid, so that every CLI invocation
  finds it; ``witness.log``;
* ``proxies.json`` (0600) and ``proxyd.log`` — the :mod:`cluster.proxyd` daemon, which
  runs two fault proxies per site: ``<site>-witness`` (the site's nodes dial the witness
  through it) and ``<site>-repl`` (in front of the site's replication ports; the site
  advertises it as ``primary_cluster_addr`` while it is the DR primary). Cutting both
  proxies of a site is a partition of that site's links while clients still reach it.

Nothing here reads a key or a token; the bundles are only issued and named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.local import ClusterError, ClusterNode, pid_alive, port_in_use
from cluster.node import free_port, vaultraft_exe
from cluster.proxyd import DaemonSpec, ProxySpec, Target

WITNESS_VERSION = 1
STATE_FILE = "witness.json"
#: The witness and its proxies take ports from this far above the base port.
WITNESS_PORT_OFFSET = 300
DEFAULT_FAILOVER_TIMEOUT = 4
DEFAULT_MAX_LEASE = 10
DR_SITES = ("primary", "dr")


def proxy_names(site: str) -> tuple[str, str]:
    """The names of ``site``'s witness-link and replication-link proxies."""
    return f"{site}-witness", f"{site}-repl"


@dataclass
class Witness:
    """A ``vaultraft witness`` process for the ``primary`` and ``dr`` sites, and their proxies."""

    workdir: Path
    port: int
    proxyd: DaemonSpec
    failover_timeout: int = DEFAULT_FAILOVER_TIMEOUT
    max_lease: int = DEFAULT_MAX_LEASE
    pid: int | None = None
    #: When the witness process last started (``time.time()``): it refuses promotions for
    #: ``max_lease`` seconds after that.
    started_at: float | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def state_file(self) -> Path:
        return self.workdir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.workdir / "witness.log"

    @property
    def address(self) -> str:
        """The witness's ``-listen`` address."""
        return f"127.0.0.1:{self.port}"

    def bundle(self, site: str) -> Path:
        """The client bundle of ``site`` (a PEM file with a key: 0600, never printed)."""
        return self.workdir / f"{site}.pem"

    # ---- creation and persistence --------------------------------------------------------------

    @classmethod
    def create(cls, workdir: Path, sites: dict[str, list[ClusterNode]], base_port: int | None = None,
               failover_timeout: int = DEFAULT_FAILOVER_TIMEOUT, max_lease: int = DEFAULT_MAX_LEASE) -> Witness:
        """A new witness setup for ``sites`` (site name → its nodes), not started yet.

        Ports: from ``base_port + 300`` (witness, then each site's witness and replication
        proxies, then the daemon's control port) or free ones when ``base_port`` is None.
        """
        if failover_timeout < 3 or max_lease < failover_timeout:
            raise ClusterError("failover_timeout must be at least 3 s and at most the witness's max lease "
                               f"({max_lease} s)")
        workdir = Path(workdir).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        ports = iter(range(base_port + WITNESS_PORT_OFFSET, base_port + WITNESS_PORT_OFFSET + 20)) \
            if base_port is not None else None

        def port() -> int:
            return next(ports) if ports is not None else free_port()

        wport = port()
        proxies: list[ProxySpec] = []
        for name, nodes in sites.items():
            wname, rname = proxy_names(name)
            proxies.append(ProxySpec(wname, port(), (Target(wport),)))
            proxies.append(ProxySpec(rname, port(), tuple(Target(n.repl_port, n.port) for n in nodes)))
        spec = DaemonSpec(workdir / "proxies.json", port(), proxies)
        busy = [str(p) for p in (wport, spec.control_port, *(p.port for p in proxies)) if port_in_use(p)]
        if busy:
            raise ClusterError(f"port {', '.join(busy)} on 127.0.0.1 is in use by another process "
                               "(pick another --base-port, or stop what holds it)")
        spec.save()
        w = cls(workdir, wport, spec, failover_timeout, max_lease)
        w.save()
        return w

    @classmethod
    def exists(cls, workdir: Path) -> bool:
        """Whether ``workdir`` holds a witness setup."""
        return (Path(workdir) / STATE_FILE).exists()

    @classmethod
    def load(cls, workdir: Path) -> Witness:
        """The witness setup recorded in ``workdir`` (ClusterError if none)."""
        path = Path(workdir) / STATE_FILE
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no witness in {workdir}") from None
        except ValueError as e:
            raise ClusterError(f"{path} is corrupt: {e}") from None
        return cls(Path(workdir).absolute(), int(d["port"]), DaemonSpec.load(Path(workdir) / "proxies.json"),
                   int(d["failover_timeout"]), int(d["max_lease"]), d.get("pid"), d.get("started_at"))

    def save(self) -> None:
        """Write ``witness.json`` atomically (no secrets: bundles are named, not read)."""
        data = {"version": WITNESS_VERSION, "port": self.port, "failover_timeout": self.failover_timeout,
                "max_lease": self.max_lease, "pid": self.pid, "started_at": self.started_at,
                "bundles": {s: str(self.bundle(s)) for s in DR_SITES}, "proxies": str(self.proxyd.path)}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    # ---- configuration of the sites ------------------------------------------------------------

    def stanza(self, site: str) -> str:
        """The ``replication {}`` stanza for every node of ``site`` (dialing the witness through
        the site's witness proxy)."""
        w, _ = proxy_names(site)
        addr = self._proxy(w).address
        return (f'replication {{\n  auto_promote = true\n  failover_timeout = "{self.failover_timeout}s"\n'
                f'  witness_address = "{addr}"\n  witness_tls_bundle = "{self.bundle(site)}"\n}}\n')

    def repl_addr(self, site: str) -> str:
        """What ``site`` advertises as ``primary_cluster_addr`` while it is the DR primary."""
        return f"https://{self._proxy(proxy_names(site)[1]).address}"

    def _proxy(self, name: str) -> ProxySpec:
        for p in self.proxyd.proxies:
            if p.name == name:
                return p
        raise ClusterError(f"no proxy {name!r} in {self.proxyd.path}")

    def issue(self) -> None:
        """Issue the bundles that do not exist yet (``vaultraft witness issue``)."""
        for site in DR_SITES:
            out = self.bundle(site)
            if out.exists():
                continue
            proc = subprocess.run([vaultraft_exe(), "witness", "issue", f"-data-dir={self.data_dir}",
                                   f"-name={site}", f"-out={out}"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise ClusterError(f"vaultraft witness issue for {site} failed: {proc.stderr.strip()[:300]}")

    # ---- processes -------------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the witness process runs (its command line names this data dir)."""
        return self.pid is not None and pid_alive(self.pid, str(self.data_dir))

    def start(self, timeout: float = 20.0) -> bool:
        """Issue missing bundles, start the proxy daemon and the witness if they are not
        running; whether the witness was (re)started (it then refuses promotions for
        ``max_lease`` seconds)."""
        self.issue()
        self.proxyd.start()
        if self.alive():
            return False
        if port_in_use(self.port):
            raise ClusterError(f"the witness port {self.port} on 127.0.0.1 is in use by another process")
        cmd = [vaultraft_exe(), "witness", f"-data-dir={self.data_dir}", f"-listen={self.address}",
               f"-max-lease={self.max_lease}", "-log-format=json"]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        self.pid, self.started_at = proc.pid, time.time()
        self.save()
        end = time.monotonic() + timeout
        while not port_in_use(self.port):
            if proc.poll() is not None or time.monotonic() > end:
                raise ClusterError(f"the witness did not start: {self._log_tail()}")
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the witness (SIGTERM, SIGKILL after ``timeout``) and the proxy daemon."""
        if self.alive():
            assert self.pid is not None
            os.killpg(self.pid, signal.SIGTERM)
            end = time.monotonic() + timeout
            while self.alive() and time.monotonic() < end:
                time.sleep(0.05)
            if self.alive():
                os.killpg(self.pid, signal.SIGKILL)
        self.proxyd.stop()
        if self.state_file.exists():
            self.save()

    def cut(self, site: str) -> list[str]:
        """Cut ``site``'s links: to the witness and to its replication port; the proxies cut."""
        names = list(proxy_names(site))
        self.proxyd.cut(names)
        return names

    def heal(self, site: str | None = None) -> list[str]:
        """Heal ``site``'s links (every site's when None); the proxies healed."""
        names = [n for s in ([site] if site else DR_SITES) for n in proxy_names(s)]
        if self.proxyd.alive():
            self.proxyd.heal(names)
        return names

    def quarantine_left(self) -> float:
        """Seconds until the witness grants promotions again after its last start."""
        if self.started_at is None:
            return float(self.max_lease)
        return max(0.0, self.started_at + self.max_lease - time.time())

    def epoch(self) -> int | None:
        """The witness's persisted epoch (``fence-state.json``), None before its first vote."""
        try:
            return int(json.loads((self.data_dir / "fence-state.json").read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def status(self) -> dict[str, Any]:
        """Witness process, epoch and each proxy (address, upstream, cut or not)."""
        proxies: dict[str, Any] = {}
        if self.proxyd.alive():
            try:
                proxies = self.proxyd.status()
            except ClusterError as e:
                proxies = {"error": str(e)}
        return {"address": self.address, "pid": self.pid if self.alive() else None, "alive": self.alive(),
                "max_lease_s": self.max_lease, "failover_timeout_s": self.failover_timeout, "epoch": self.epoch(),
                "quarantine_left_s": round(self.quarantine_left(), 1) if self.alive() else None,
                "proxyd_pid": self.proxyd.pid if self.proxyd.alive() else None, "proxies": proxies,
                "bundles": {s: str(self.bundle(s)) for s in DR_SITES}, "log": str(self.log_path)}

    def _log_tail(self, n: int = 3) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""
