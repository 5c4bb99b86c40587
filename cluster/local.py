"""A multi-node vaultraft cluster on loopback: start, init, unseal, join, and faults.

Each node is a real server process (:class:`ClusterNode`, a :class:`cluster.node.Node`)
with its own data dir, API port and Raft port, started in its own session so it outlives
the launcher (``python -m cluster``). ``state.json`` in the work dir records ports, pids
and directories so a later command can act on the running cluster; ``init.json`` (mode
0600) holds the unseal keys and root token, which are never printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import partition
from cluster.node import Node, free_port, vaultraft_exe

STATE_VERSION = 1
REQUEST_ERRORS = (OSError, ValueError)  # URLError, timeouts, resets, undecodable bodies


class ClusterError(RuntimeError):
    """The cluster cannot do what was asked (message is meant for the operator)."""


class PortBusy(ClusterError):
    """A port a node needs is taken by another process."""


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, with ``marker``, its command line has it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return marker is None or marker.encode() in cmdline


@dataclass
class ClusterNode(Node):
    """A node that can also be driven by pid alone (started by an earlier launcher run)."""

    name: str = "node"
    pid: int | None = None
    cgroup: Path | None = None  # a cgroup2 directory to start in (partition drills)

    def alive(self) -> bool:
        """Whether this node's server process is running (paused counts as running)."""
        if self.proc is not None and self.proc.pid == self.pid:
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid, str(self.config_path))

    def start(self, *args: str, wait: bool = True) -> None:
        """Start the server detached (own session, stdin closed); fail clearly on a busy port."""
        if self.alive():
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        busy = [p for p in (self.port, self.cluster_port) if port_in_use(p)]
        if busy:
            raise PortBusy(f"{self.name}: port {', '.join(map(str, busy))} on 127.0.0.1 is in use by another "
                           "process (pick another --base-port, or stop what holds it)")
        if not self.config_path.exists():
            self.write_config()
        cmd = [vaultraft_exe(), "server", f"-config={self.config_path}", *args]
        if self.cgroup is not None:  # join the cgroup first, so every socket is created inside it
            self.cgroup.mkdir(exist_ok=True)
            cmd = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup), *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True)
        self.pid = self.proc.pid
        if wait:
            self.wait_listening()

    def wait_health(self, codes: set[int] | None, timeout: float = 20.0) -> int:
        """Block until sys/health answers one of ``codes`` (any, if None); the code."""
        end = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < end:
            if not self.alive():
                raise ClusterError(f"{self.name} is not running: {self.log_tail()}")
            try:
                code, _ = self.request("GET", "sys/health", timeout=1.0)
                if codes is None or code in codes:
                    return code
                last = code
            except REQUEST_ERRORS as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} on {self.port} not ready ({last}): {self.log_tail()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's process group (no-op when it is not running)."""
        if self.pid is not None and self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float) -> bool:
        """Wait until the process is gone (reaping it when it is our child)."""
        end = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGCONT + SIGTERM the group and wait (SIGKILL after ``timeout``)."""
        if not self.alive():
            return
        self.signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
        self.signal(signal.SIGTERM)
        if not self.wait_exit(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group and wait until it is gone."""
        self.signal(signal.SIGKILL)
        if not self.wait_exit(10):
            raise ClusterError(f"{self.name} (pid {self.pid}) survived SIGKILL")

    def to_state(self) -> dict[str, Any]:
        """What state.json records for this node (no secrets)."""
        return {"name": self.name, "api_port": self.port, "cluster_port": self.cluster_port,
                "repl_port": self.repl_port,
                "api_addr": self.addr, "workdir": str(self.workdir), "data_dir": str(self.data_dir),
                "config": str(self.config_path), "log": str(self.log_path),
                "pid": self.pid if self.alive() else None, "cgroup": str(self.cgroup) if self.cgroup else None}

    def endpoint(self) -> partition.Endpoint:
        """This node as the partition module sees it."""
        root = partition.cgroup2_root()
        rel = str(self.cgroup.relative_to(root)) if self.cgroup is not None and root is not None else None
        return partition.Endpoint(self.name, self.port, self.cluster_port, self.pid if self.alive() else None, rel)


@dataclass
class InitOutput:
    """What ``sys/init`` returned (kept on disk, 0600)."""

    keys: list[str]
    root_token: str


@dataclass
class LocalCluster:
    """``size`` nodes under ``workdir``; ports from ``base_port`` (+10 per node) or free ones.

    With ``cgroups`` (root, cgroup2) every node starts in its own cgroup, so that
    :meth:`partition` can cut it off from its peers with iptables.
    """

    workdir: Path
    size: int = 3
    base_port: int | None = None
    shares: int = 3
    threshold: int = 2
    nodes: list[ClusterNode] = field(default_factory=list)
    init: InitOutput | None = None
    cgroups: bool = False

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.nodes:
            for i in range(self.size):
                if self.base_port is not None:
                    api, cl, rp = self.base_port + 10 * i, self.base_port + 10 * i + 1, self.base_port + 10 * i + 2
                else:
                    api, cl, rp = free_port(), free_port(), free_port()
                self.nodes.append(ClusterNode(self.workdir / f"node{i}", port=api, cluster_port=cl, repl_port=rp,
                                              name=f"node{i}"))
        if self.cgroups:
            root = partition.cgroup2_root()
            if root is None or not partition.cgroups_usable():
                raise ClusterError("cgroups need root and a cgroup2 mount (for partition drills)")
            for n in self.nodes:
                n.cgroup = root / f"{self.tag}-{n.name}"

    @property
    def tag(self) -> str:
        """A name unique to this cluster dir, used for its cgroups and iptables rules."""
        return "vr-test-" + hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]

    @property
    def init_file(self) -> Path:
        return self.workdir / "init.json"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    # ---- persistence -----------------------------------------------------------------------

    def save_state(self) -> None:
        """Write state.json (ports, pids, directories; atomically)."""
        state = {"version": STATE_VERSION, "size": self.size, "base_port": self.base_port, "cgroups": self.cgroups,
                 "shares": self.shares, "threshold": self.threshold, "init_file": str(self.init_file),
                 "nodes": [n.to_state() for n in self.nodes]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, workdir: Path) -> "LocalCluster":
        """The cluster recorded in ``workdir/state.json`` (raises ClusterError if none)."""
        path = Path(workdir) / "state.json"
        try:
            st = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster in {workdir} (no state.json): run `python -m cluster up` first") from None
        except ValueError as e:
            raise ClusterError(f"{path} is corrupt: {e}") from None
        nodes = [ClusterNode(Path(n["workdir"]), port=int(n["api_port"]), cluster_port=int(n["cluster_port"]),
                             repl_port=int(n.get("repl_port") or int(n["cluster_port"]) + 1),
                             name=str(n["name"]), pid=n.get("pid")) for n in st["nodes"]]
        c = cls(Path(workdir), size=len(nodes), base_port=st.get("base_port"), shares=int(st["shares"]),
                threshold=int(st["threshold"]), nodes=nodes, cgroups=bool(st.get("cgroups")))
        if c.init_file.exists():
            c.load_init()
        return c

    @classmethod
    def open(cls, workdir: Path, size: int | None = None, base_port: int | None = None,
             cgroups: bool = False) -> "LocalCluster":
        """The cluster in ``workdir`` if one was recorded (checking it matches), else a new one."""
        if (Path(workdir) / "state.json").exists():
            c = cls.load(workdir)
            if size is not None and size != c.size:
                raise ClusterError(f"the cluster in {workdir} has {c.size} nodes, not {size} "
                                   "(use `down --purge` first, or another --dir)")
            if base_port is not None and base_port != c.base_port:
                raise ClusterError(f"the cluster in {workdir} uses base port {c.base_port}, not {base_port} "
                                   "(use `down --purge` first, or another --dir)")
            return c
        return cls(Path(workdir), size=3 if size is None else size, base_port=base_port, cgroups=cgroups)

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node that is not running (together), then wait until each listens."""
        started = [n for n in self.nodes if not n.alive()]
        busy = [f"{p}" for n in started for p in (n.port, n.cluster_port, n.repl_port) if port_in_use(p)]
        if busy:
            raise PortBusy(f"port {', '.join(busy)} on 127.0.0.1 is in use by another process "
                           "(pick another --base-port, or stop what holds it)")
        for n in started:
            n.start(wait=False)
        self.save_state()
        for n in started:
            n.wait_listening(timeout=30)

    def up(self) -> "LocalCluster":
        """Bring the cluster to serving: start what is stopped, init once, unseal, join.

        Idempotent: on a cluster that is already initialized it starts and unseals the
        nodes instead of initializing again; nodes that never joined are joined.
        """
        self.start()
        inited = {n.name: self._initialized(n) for n in self.nodes}
        if not any(inited.values()):
            self.initialize()
            inited[self.nodes[0].name] = True
        elif self.init is None:
            if not self.init_file.exists():
                raise ClusterError(f"the cluster in {self.workdir} is initialized but {self.init_file} is "
                                   "missing: cannot unseal it")
            self.load_init()
        self.unseal_all([n for n in self.nodes if inited[n.name]])
        self.wait_active(timeout=60)
        for n in self.nodes:
            if not inited[n.name]:
                self.join(n)
        for n in self.nodes:
            n.wait_health({200, 429, 473}, timeout=60)
        self.save_state()
        return self

    def _initialized(self, node: Node) -> bool:
        code, body = node.request("GET", "sys/init", timeout=10)
        if code != 200:
            raise ClusterError(f"{node.addr}: sys/init answered {code}")
        return bool(body["initialized"])

    def initialize(self) -> InitOutput:
        """``sys/init`` on node 0; the output goes to init.json (0600)."""
        code, body = self.nodes[0].request("PUT", "sys/init", {"secret_shares": self.shares,
                                                                "secret_threshold": self.threshold}, timeout=60)
        if code != 200:
            raise ClusterError(f"init failed: {code} {body}")
        self.init = InitOutput(body["keys"], body["root_token"])
        tmp = self.init_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"unseal_keys_hex": body["keys"], "unseal_keys_b64": body.get("keys_base64", []),
                       "unseal_threshold": self.threshold, "root_token": body["root_token"]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.init_file)
        return self.init

    def load_init(self) -> InitOutput:
        """Read init.json written by an earlier :meth:`initialize`."""
        d = json.loads(self.init_file.read_text())
        self.init = InitOutput(d["unseal_keys_hex"], d["root_token"])
        return self.init

    @property
    def root_token(self) -> str:
        assert self.init is not None
        return self.init.root_token

    def unseal(self, node: Node) -> Any:
        """Submit threshold keys to ``node`` (nothing if it is unsealed); the last seal status."""
        if self.init is None:
            self.load_init()
        assert self.init is not None
        code, body = node.request("GET", "sys/seal-status", timeout=10)
        if code == 200 and body and not body.get("sealed", True):
            return body
        if code == 200 and body and body.get("progress"):
            node.request("PUT", "sys/unseal", {"reset": True}, timeout=10)
        for key in self.init.keys[: self.threshold]:
            code, body = node.request("PUT", "sys/unseal", {"key": key}, timeout=90)
            if code != 200:
                raise ClusterError(f"unseal of node on {node.port} failed: {code} {body}")
        return body

    def unseal_all(self, nodes: list[ClusterNode] | None = None) -> None:
        """Unseal ``nodes`` (default: all) concurrently: each unseal may wait for a leader."""
        todo = self.nodes if nodes is None else nodes
        errors: list[BaseException] = []

        def one(n: ClusterNode) -> None:
            try:
                self.unseal(n)
            except BaseException as e:  # re-raised below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def join(self, node: Node) -> None:
        """Join ``node`` to the cluster through the active node, then unseal it."""
        leader = self.active() or self.nodes[0]
        code, body = node.request("PUT", "sys/storage/raft/join", {"leader_api_addr": leader.addr}, timeout=30)
        if code != 200:
            raise ClusterError(f"join failed: {code} {body}")
        self.unseal(node)

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 10 s)."""
        for n in self.nodes:
            n.signal(signal.SIGCONT)
            n.signal(signal.SIGTERM)
        for n in self.nodes:
            n.stop()
        if self.cgroups:
            self.heal()
            for n in self.nodes:
                if n.cgroup is not None:
                    partition.remove_cgroup(n.cgroup)
        if self.state_file.exists():
            self.save_state()

    # ---- observation -------------------------------------------------------------------------

    def node(self, which: int | str) -> ClusterNode:
        """A node by index (0-based), name (``node1``) or API port."""
        for i, n in enumerate(self.nodes):
            if str(which) in (str(i), n.name, str(n.port)):
                return n
        raise ClusterError(f"no node {which!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def health(self, node: Node) -> int | None:
        """sys/health status code, or None when the node does not answer within 1 s."""
        try:
            return node.request("GET", "sys/health", timeout=1.0)[0]
        except REQUEST_ERRORS:
            return None

    def leader_status(self, node: Node) -> dict[str, Any] | None:
        """``sys/leader`` as ``node`` sees it, or None when it does not answer."""
        try:
            code, body = node.request("GET", "sys/leader", timeout=2.0)
        except REQUEST_ERRORS:
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def active(self) -> ClusterNode | None:
        """The node answering sys/health 200, if any."""
        for n in self.nodes:
            if n.alive() and self.health(n) == 200:
                return n
        return None

    def wait_active(self, timeout: float = 30.0, exclude: Node | None = None) -> ClusterNode:
        """Block until some node (other than ``exclude``) is active."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for n in self.nodes:
                if n is exclude or not n.alive():
                    continue
                if self.health(n) == 200:
                    return n
            time.sleep(0.05)
        raise TimeoutError("no active node")

    def wait_caught_up(self, node: Node, timeout: float = 30.0) -> tuple[int, int]:
        """Wait until ``node`` applied what the active node had applied when called.

        Returns (target index, node's applied index); raises TimeoutError if it lags.
        """
        act = self.wait_active(timeout)
        leader = self.leader_status(act)
        if leader is None:
            raise ClusterError(f"{act.addr} does not answer sys/leader")
        target = int(leader["raft_applied_index"])
        end = time.monotonic() + timeout
        seen = -1
        while time.monotonic() < end:
            st = self.leader_status(node)
            if st is not None:
                seen = int(st["raft_applied_index"])
                if seen >= target:
                    return target, seen
            time.sleep(0.05)
        raise TimeoutError(f"{node.addr} applied index {seen} never reached {target}")

    def describe(self) -> dict[str, Any]:
        """Addresses, roles and where the secrets were written (never the secrets)."""
        act = self.active()
        return {
            "nodes": [{"name": n.name, "api_addr": n.addr, "cluster_addr": f"127.0.0.1:{n.cluster_port}",
                       "pid": n.pid if n.alive() else None, "health": self.health(n) if n.alive() else None,
                       "role": role_name(self.health(n) if n.alive() else None),
                       "data_dir": str(n.data_dir), "log": str(n.log_path)} for n in self.nodes],
            "active": act.addr if act else None,
            "init_file": str(self.init_file),
        }

    # ---- faults --------------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """kill -9 the node's process group."""
        node.kill()

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP the node (it keeps its sockets but answers nothing)."""
        node.signal(signal.SIGSTOP)

    def resume(self, node: ClusterNode) -> None:
        """SIGCONT a paused node."""
        node.signal(signal.SIGCONT)

    def restart(self, node: ClusterNode, *, unseal: bool = True) -> None:
        """(Stop and) start a node again with the same config; it comes back sealed; unseal it."""
        node.stop()
        node.start()
        if self.state_file.exists():
            self.save_state()
        if unseal:
            self.unseal(node)


    def partition(self, node: ClusterNode) -> int:
        """Cut ``node`` off from its peers (clients still reach its API); rules added."""
        if not node.alive():
            raise ClusterError(f"{node.name} is not running")
        try:
            return partition.isolate(node.endpoint(), [n.endpoint() for n in self.nodes if n is not node],
                                     f"{self.tag}-{node.name}")
        except partition.PartitionError as e:
            raise ClusterError(str(e)) from None

    def heal(self, node: ClusterNode | None = None) -> int:
        """Remove this cluster's partition rules (for ``node``, or all); how many."""
        try:
            return sum(partition.heal(f"{self.tag}-{n.name}") for n in ([node] if node else self.nodes))
        except partition.PartitionError as e:
            raise ClusterError(str(e)) from None


def role_name(code: int | None) -> str:
    """A sys/health status code in words."""
    return {200: "active", 429: "standby", 473: "perf-standby", 503: "sealed", 501: "uninitialized",
            None: "down"}.get(code, f"http {code}")
