"""A TCP fault proxy for drills on one machine: forward ``listen`` → ``target`` until cut.

``cut()`` drops every open connection and refuses (closes at once) new ones — a network
partition as both ends see it (the peer disappears, reconnects fail); ``heal()`` restores
forwarding. Runs its own thread; bytes are forwarded untouched (TLS passes through).
With ``resolve``, the upstream is chosen per connection (e.g. whichever node of a cluster
is active now, as a TCP load balancer in front of a cluster's replication ports would).
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``target_host``:``target_port`` (or to what ``resolve``
    returns for each new connection; None from it refuses the connection)."""

    target_host: str
    target_port: int
    port: int = 0
    resolve: Callable[[], tuple[str, int] | None] | None = None
    _cut: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)

    def start(self) -> "FaultProxy":
        """Listen and forward (returns self; ``port`` is the bound port)."""
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.port = self._listener.getsockname()[1]
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> str:
        """``127.0.0.1:port``."""
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Partition: close every connection; refuse new ones until :meth:`heal`."""
        self._cut.set()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def heal(self) -> None:
        """Forward again."""
        self._cut.clear()

    @property
    def is_cut(self) -> bool:
        """Whether the proxy is cut (refusing connections)."""
        return self._cut.is_set()

    def stop(self) -> None:
        """Close everything and end the thread."""
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(2)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            target = self.resolve() if self.resolve is not None else (self.target_host, self.target_port)
            if target is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            a.setblocking(False)
            b.setblocking(False)
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._cut.is_set() and not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
