"""Fault proxies that outlive the launcher: a detached process, driven over a control port.

``python -m cluster dr up --witness`` returns while the clusters keep running, and a later
``dr drill`` (another process) must be able to cut the links the proxies carry. So the
proxies of a DR setup run in one detached daemon (``python -m cluster.proxyd SPEC``), which
serves every :class:`cluster.faultproxy.FaultProxy` named in the spec file on its fixed port
and answers one JSON line per connection on a loopback control port::

    {"secret": "...", "op": "cut" | "heal" | "status" | "stop", "names": ["primary-witness", ...]}

The secret is in the spec file (mode 0600) so that only whoever can read the setup's
directory drives its proxies. A proxy with several ``targets`` forwards each new connection
to the target whose API node says it is its cluster's active node (``sys/leader``
``is_self``, refreshed in the background), like a TCP load balancer in front of a cluster's
replication ports; with one target it simply forwards. Cuts are not persisted: a restarted
daemon forwards everything.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.faultproxy import FaultProxy
from cluster.local import REQUEST_ERRORS, ClusterError, pid_alive

SPEC_VERSION = 1
#: How often a multi-target proxy asks its targets which one is active.
RESOLVE_INTERVAL = 0.25


@dataclass(frozen=True)
class Target:
    """An upstream ``port`` on 127.0.0.1, and the API port of the node behind it (0: none)."""

    port: int
    api_port: int = 0


@dataclass(frozen=True)
class ProxySpec:
    """One proxy: listens on 127.0.0.1:``port`` and forwards to one of ``targets``."""

    name: str
    port: int
    targets: tuple[Target, ...]

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"


@dataclass
class DaemonSpec:
    """What the daemon serves (``spec.json``, mode 0600) and where it was started (``pid``)."""

    path: Path
    control_port: int
    proxies: list[ProxySpec]
    secret: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)
    pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.path.with_name("proxyd.log")

    def save(self) -> None:
        """Write the spec atomically, readable by the owner only."""
        data = {"version": SPEC_VERSION, "control_port": self.control_port, "secret": self.secret, "pid": self.pid,
                "proxies": [{"name": p.name, "port": p.port,
                             "targets": [{"port": t.port, "api_port": t.api_port} for t in p.targets]}
                            for p in self.proxies]}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> DaemonSpec:
        """Read a spec written by :meth:`save` (ClusterError if missing or corrupt)."""
        try:
            d = json.loads(Path(path).read_text())
            proxies = [ProxySpec(str(p["name"]), int(p["port"]),
                                 tuple(Target(int(t["port"]), int(t.get("api_port") or 0)) for t in p["targets"]))
                       for p in d["proxies"]]
            return cls(Path(path), int(d["control_port"]), proxies, str(d["secret"]), d.get("pid"))
        except FileNotFoundError:
            raise ClusterError(f"no proxy daemon spec at {path}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ClusterError(f"{path} is corrupt: {e}") from None

    # ---- the daemon as seen from the launcher ----------------------------------------------------

    def alive(self) -> bool:
        """Whether the daemon recorded in ``pid`` runs (its command line names this spec)."""
        return self.pid is not None and pid_alive(self.pid, str(self.path))

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon detached (no-op when it runs); wait until it answers."""
        if self.alive():
            return
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cluster.proxyd", str(self.path)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    env=env, cwd=root)
        self.pid = proc.pid
        self.save()
        end = time.monotonic() + timeout
        while True:
            try:
                self.control("status")
                return
            except ClusterError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise ClusterError(f"the proxy daemon did not start (see {self.log_path})") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the daemon to exit (SIGTERM, then SIGKILL, if it does not)."""
        if not self.alive():
            return
        try:
            self.control("stop")
        except ClusterError:
            pass
        end = time.monotonic() + timeout
        while self.alive() and time.monotonic() < end:
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            assert self.pid is not None
            os.kill(self.pid, sig)
            time.sleep(0.5)

    def control(self, op: str, names: list[str] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """One control request; the daemon's answer (ClusterError when it does not answer)."""
        req = json.dumps({"secret": self.secret, "op": op, "names": names or []}).encode() + b"\n"
        try:
            with socket.create_connection(("127.0.0.1", self.control_port), timeout=timeout) as s:
                s.sendall(req)
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            answer = json.loads(buf)
        except (OSError, ValueError) as e:
            raise ClusterError(f"the proxy daemon on control port {self.control_port} does not answer "
                               f"({type(e).__name__})") from None
        if not answer.get("ok"):
            raise ClusterError(f"proxy daemon: {answer.get('error')}")
        return dict(answer)

    def cut(self, names: list[str]) -> None:
        """Partition the named proxies (open connections dropped, new ones refused)."""
        self.control("cut", names)

    def heal(self, names: list[str]) -> None:
        """Forward again through the named proxies."""
        self.control("heal", names)

    def status(self) -> dict[str, dict[str, Any]]:
        """Each proxy's address, targets, current upstream and whether it is cut."""
        return dict(self.control("status")["proxies"])


# ---- the daemon itself --------------------------------------------------------------------------


def _is_active(api_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/sys/leader", timeout=0.5) as r:
            return bool(json.loads(r.read()).get("is_self"))
    except (*REQUEST_ERRORS, AttributeError):
        return False


class _Upstream:
    """The target a multi-target proxy forwards to: the active node's, refreshed in the background."""

    def __init__(self, targets: tuple[Target, ...], stop: threading.Event) -> None:
        self.targets = targets
        self.current: Target = targets[0]
        self._stop = stop
        if len(targets) > 1:
            threading.Thread(target=self._refresh, name="proxy-resolve", daemon=True).start()

    def _refresh(self) -> None:
        while not self._stop.is_set():
            for t in self.targets:
                if t.api_port and _is_active(t.api_port):
                    self.current = t
                    break
            self._stop.wait(RESOLVE_INTERVAL)

    def __call__(self) -> tuple[str, int]:
        return "127.0.0.1", self.current.port


def serve(spec: DaemonSpec) -> None:
    """Run every proxy of ``spec`` and the control port until told to stop (or SIGTERM)."""
    stop = threading.Event()
    proxies: dict[str, FaultProxy] = {}
    upstreams: dict[str, _Upstream] = {}
    for p in spec.proxies:
        up = _Upstream(p.targets, stop)
        upstreams[p.name] = up
        proxies[p.name] = FaultProxy("127.0.0.1", p.targets[0].port, port=p.port, resolve=up).start()

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        if not secrets.compare_digest(str(req.get("secret", "")), spec.secret):
            return {"ok": False, "error": "bad secret"}
        op, names = req.get("op"), list(req.get("names") or [])
        unknown = [n for n in names if n not in proxies]
        if unknown:
            return {"ok": False, "error": f"no proxy {', '.join(map(str, unknown))}"}
        if op in ("cut", "heal"):
            for n in names:
                getattr(proxies[n], op)()
            print(f"{time.strftime('%H:%M:%S')} {op} {', '.join(names)}", flush=True)
        elif op == "stop":
            stop.set()
        elif op != "status":
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True, "proxies": {
            n: {"address": p.address, "cut": p.is_cut, "upstream": f"127.0.0.1:{upstreams[n].current.port}",
                "targets": [t.port for t in upstreams[n].targets]} for n, p in proxies.items()}}

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                req = json.loads(self.rfile.readline(65536))
                out = answer(req if isinstance(req, dict) else {})
            except ValueError:
                out = {"ok": False, "error": "bad request"}
            self.wfile.write(json.dumps(out).encode() + b"\n")

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", spec.control_port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    print(f"{time.strftime('%H:%M:%S')} serving {len(proxies)} proxies, control port {spec.control_port}", flush=True)
    stop.wait()
    server.shutdown()
    for proxy in proxies.values():
        proxy.stop()
    print(f"{time.strftime('%H:%M:%S')} stopped", flush=True)


def main(argv: list[str]) -> int:
    """``python -m cluster.proxyd SPEC``."""
    if len(argv) != 1:
        print("usage: python -m cluster.proxyd SPEC", file=sys.stderr)
        return 2
    serve(DaemonSpec.load(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
