"""A multi-node vaultraft cluster on loopback: start, init, unseal, join, and faults.

Each node is a real server process (:class:`cluster.node.Node`) with its own data dir,
API port and Raft port. The unseal keys and root token are written to ``init.json`` in
the cluster's work dir with mode 0600 and never printed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.node import Node, free_port


@dataclass
class InitOutput:
    """What ``sys/init`` returned (kept on disk, 0600)."""

    keys: list[str]
    root_token: str


@dataclass
class LocalCluster:
    """``size`` nodes under ``workdir``; ports from ``base_port`` (+10 per node) or free ones."""

    workdir: Path
    size: int = 3
    base_port: int | None = None
    shares: int = 3
    threshold: int = 2
    nodes: list[Node] = field(default_factory=list)
    init: InitOutput | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            if self.base_port is not None:
                api, cl = self.base_port + 10 * i, self.base_port + 10 * i + 1
            else:
                api, cl = free_port(), free_port()
            self.nodes.append(Node(self.workdir / f"node{i}", port=api, cluster_port=cl))

    @property
    def init_file(self) -> Path:
        return self.workdir / "init.json"

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node process (sealed, uninitialized on first start)."""
        for n in self.nodes:
            n.start()

    def up(self) -> "LocalCluster":
        """Start, init node 0, unseal it, join and unseal the others; wait for health."""
        self.start()
        self.initialize()
        self.unseal(self.nodes[0])
        self.nodes[0].wait_health({200})
        for n in self.nodes[1:]:
            self.join(n)
        for n in self.nodes[1:]:
            n.wait_health({429, 473, 200}, timeout=60)
        return self

    def initialize(self) -> InitOutput:
        """``sys/init`` on node 0; the output goes to init.json (0600)."""
        code, body = self.nodes[0].request("PUT", "sys/init", {"secret_shares": self.shares,
                                                                "secret_threshold": self.threshold})
        if code != 200:
            raise RuntimeError(f"init failed: {code} {body}")
        self.init = InitOutput(body["keys"], body["root_token"])
        fd = os.open(self.init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"unseal_keys_hex": body["keys"], "root_token": body["root_token"]}, f)
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
        """Submit threshold keys to ``node``; returns the last seal status."""
        assert self.init is not None
        body: Any = None
        for key in self.init.keys[: self.threshold]:
            code, body = node.request("PUT", "sys/unseal", {"key": key}, timeout=90)
            if code != 200:
                raise RuntimeError(f"unseal of node on {node.port} failed: {code} {body}")
        return body

    def join(self, node: Node) -> None:
        """Join ``node`` to the cluster through the active node, then unseal it."""
        leader = self.active() or self.nodes[0]
        code, body = node.request("PUT", "sys/storage/raft/join", {"leader_api_addr": leader.addr}, timeout=30)
        if code != 200:
            raise RuntimeError(f"join failed: {code} {body}")
        self.unseal(node)

    def stop(self) -> None:
        """Stop every node (SIGTERM)."""
        for n in self.nodes:
            n.stop()

    # ---- observation -------------------------------------------------------------------------

    def health(self, node: Node) -> int | None:
        """sys/health status code, or None when the node does not answer."""
        try:
            return node.request("GET", "sys/health", timeout=1.0)[0]
        except OSError:
            return None

    def active(self) -> Node | None:
        """The node answering sys/health 200, if any."""
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None and self.health(n) == 200:
                return n
        return None

    def wait_active(self, timeout: float = 30.0, exclude: Node | None = None) -> Node:
        """Block until some node (other than ``exclude``) is active."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for n in self.nodes:
                if n is exclude or n.proc is None or n.proc.poll() is not None:
                    continue
                if self.health(n) == 200:
                    return n
            time.sleep(0.05)
        raise TimeoutError("no active node")

    # ---- faults --------------------------------------------------------------------------------

    def kill(self, node: Node) -> None:
        """kill -9 the node."""
        node.kill()

    def pause(self, node: Node) -> None:
        """SIGSTOP the node (it keeps its sockets but answers nothing)."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        """SIGCONT a paused node."""
        assert node.proc is not None
        os.killpg(node.proc.pid, signal.SIGCONT)

    def restart(self, node: Node, *, unseal: bool = True) -> None:
        """Start a stopped/killed node again (it comes back sealed); optionally unseal it."""
        node.start()
        if unseal:
            self.unseal(node)

    def describe(self) -> dict[str, Any]:
        """Addresses, roles and where the secrets were written."""
        act = self.active()
        return {
            "nodes": [{"api_addr": n.addr, "cluster_addr": f"127.0.0.1:{n.cluster_port}",
                       "health": self.health(n), "data_dir": str(n.data_dir)} for n in self.nodes],
            "active": act.addr if act else None,
            "init_file": str(self.init_file),
        }
