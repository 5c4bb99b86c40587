"""One vaultraft server process on loopback: write its config, start, wait, stop, kill.

Used by the integration and system tests and by the cluster launcher. Every node runs as
a real process over real sockets; nothing here imports the server package.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


#: Where :func:`free_port` picks: below the kernel's ephemeral range (32768-60999 here), so
#: no outgoing connection's source port can take a port between its pick and the server's bind.
FREE_PORT_RANGE = (20000, 32000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, never handed out before by this
    process, from :data:`FREE_PORT_RANGE` (``bind(0)`` picks from the ephemeral range, where
    any test's client connection can take the port before the server listens on it)."""
    rng = random.SystemRandom()
    low, high = FREE_PORT_RANGE
    for _ in range(500):
        port = rng.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or TIME_WAIT leftovers a server might trip over
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between {low} and {high}")


def vaultraft_exe() -> str:
    """The console script of the running interpreter's environment."""
    cand = Path(sys.executable).parent / "vaultraft"
    if cand.exists():
        return str(cand)
    found = shutil.which("vaultraft")
    if not found:
        raise RuntimeError("vaultraft is not installed in this environment")
    return found


@dataclass
class Node:
    """A server process with its own data dir, config file and log file."""

    workdir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    #: The replication listener (secondaries of this node's cluster dial it when it is a primary).
    repl_port: int = field(default_factory=free_port)
    storage: str = "raft"
    extra_config: str = ""
    #: Extra lines inserted inside the ``storage "raft" {}`` stanza (e.g. ``performance_standby = true``).
    storage_extra: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.hcl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def write_config(self) -> None:
        """Write an HCL config for this node (raft storage at data/ or inmem)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        extra = f"  {self.storage_extra.strip()}\n" if self.storage_extra.strip() else ""
        storage = (f'storage "raft" {{\n  path = "{self.data_dir}"\n  node_id = "node-{self.port}"\n{extra}}}\n'
                   if self.storage == "raft" else 'storage "inmem" {}\n')
        self.config_path.write_text(
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.cluster_port}"\n'
            f'  replication_address = "127.0.0.1:{self.repl_port}"\n  tls_disable = true\n}}\n'
            f"{storage}"
            f'api_addr = "{self.addr}"\ncluster_addr = "https://127.0.0.1:{self.cluster_port}"\n'
            f'log_level = "info"\nlog_format = "json"\n{self.extra_config}'
        )

    def start(self, *args: str, wait: bool = True) -> None:
        """Start the process (``server -config``) and wait until it answers sys/health."""
        if not self.config_path.exists():
            self.write_config()
        log = open(self.log_path, "ab")
        cmd = [vaultraft_exe(), "server", f"-config={self.config_path}", *args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_listening()

    def start_dev(self, root_token: str = "root") -> None:
        """Start a ``server -dev`` node on this node's port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [vaultraft_exe(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
             f"-dev-root-token-id={root_token}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.wait_health({200})

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """A raw API call: (status, parsed JSON or None)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method, headers=headers or {})
        if token:
            req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, None

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Block until the API port answers anything."""
        self.wait_health(None, timeout)

    def wait_health(self, codes: set[int] | None, timeout: float = 20.0) -> int:
        """Block until sys/health answers one of ``codes`` (any, if None); the code."""
        end = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                code, _ = self.request("GET", "sys/health", timeout=1.0)
                if codes is None or code in codes:
                    return code
                last = code
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"node on {self.port} not ready ({last}): {self.log_tail()}")

    def log_tail(self, n: int = 5) -> str:
        """The last lines of the server log."""
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def temp_node(storage: str = "raft") -> Node:
    """A node in a fresh temporary directory."""
    return Node(Path(tempfile.mkdtemp(prefix="vaultraft-node-")), storage=storage)
